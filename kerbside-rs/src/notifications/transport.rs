//! oslo.messaging transport URLs (`rabbit://user:pass@host1:5672,user:pass@host2:5672/vhost`)
//! turned into AMQP URIs for lapin, and shown without their password.
//!
//! Owns parsing and redaction only; connecting is the consumer's job. oslo's rules: several
//! comma-separated hosts (tried in turn), user and password percent-encoded, the virtual host
//! is the path without its leading `/` (empty means the broker's default `/`, and `//` is
//! `/` written explicitly). `amqps://` or `?ssl=1` select TLS.

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use secrecy::{ExposeSecret, SecretString};

use super::error::NotifyError;

/// AMQP heartbeat asked of the broker, in seconds: a dead TCP path is noticed within two
/// intervals even when no notification flows.
const HEARTBEAT_SECONDS: u16 = 30;
/// TCP connect timeout, in milliseconds.
const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// One broker of a transport URL.
#[derive(Clone)]
pub struct BrokerHost {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name (percent-decoded).
    pub username: String,
    /// Password (percent-decoded).
    password: SecretString,
}

impl std::fmt::Debug for BrokerHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHost")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// A parsed transport URL.
#[derive(Clone, Debug)]
pub struct TransportUrl {
    /// The brokers, in the order given.
    pub hosts: Vec<BrokerHost>,
    /// The AMQP virtual host.
    pub vhost: String,
    /// Whether to use TLS.
    pub tls: bool,
    /// The scheme as written (for display).
    scheme: String,
}

impl TransportUrl {
    /// Parses an oslo transport URL.
    ///
    /// # Errors
    /// [`NotifyError::InvalidTransportUrl`] naming the problem, never the password.
    pub fn parse(text: &str) -> Result<Self, NotifyError> {
        let invalid = |reason: String| NotifyError::InvalidTransportUrl { reason };
        let (scheme, rest) = text
            .split_once("://")
            .ok_or_else(|| invalid("expected rabbit://user:password@host:port/vhost".to_owned()))?;
        let scheme = scheme.to_ascii_lowercase();
        let mut tls = match scheme.as_str() {
            "rabbit" | "amqp" | "kombu+rabbit" => false,
            "amqps" => true,
            other => {
                return Err(invalid(format!(
                    "unsupported scheme '{other}': expected rabbit://"
                )));
            }
        };
        let (before_query, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        // The host list ends at the first '/' after the last '@' of each host; a password
        // containing '/' must be percent-encoded (oslo's rule as well).
        let (netloc, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let vhost = match path.strip_prefix('/') {
            None | Some("") => "/".to_owned(),
            Some(v) => percent_decode(v).map_err(|e| invalid(format!("virtual host: {e}")))?,
        };
        if let Some(query) = query {
            for pair in query.split('&') {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                if key == "ssl" {
                    tls = matches!(
                        value.to_ascii_lowercase().as_str(),
                        "1" | "true" | "yes" | "on"
                    );
                }
            }
        }
        let default_port = if tls { 5671 } else { 5672 };
        let mut hosts: Vec<BrokerHost> = Vec::new();
        for (i, part) in netloc.split(',').enumerate() {
            let n = i + 1;
            let (userinfo, hostport) = match part.rfind('@') {
                Some(at) => (
                    Some(part.get(..at).unwrap_or_default()),
                    part.get(at + 1..).unwrap_or_default(),
                ),
                None => (None, part),
            };
            let (host, port) =
                split_host_port(hostport).map_err(|e| invalid(format!("host {n}: {e}")))?;
            let port = port.unwrap_or(default_port);
            let (username, password) = match userinfo {
                Some(info) => {
                    let (user, pass) = info.split_once(':').unwrap_or((info, ""));
                    (
                        percent_decode(user)
                            .map_err(|e| invalid(format!("host {n} user name: {e}")))?,
                        SecretString::from(percent_decode(pass).map_err(|_| {
                            invalid(format!(
                                "host {n}: the password is not valid percent-encoded UTF-8"
                            ))
                        })?),
                    )
                }
                // oslo: a host without credentials uses the previous host's.
                None => match hosts.last() {
                    Some(prev) => (prev.username.clone(), prev.password.clone()),
                    None => ("guest".to_owned(), SecretString::from("guest".to_owned())),
                },
            };
            hosts.push(BrokerHost {
                host,
                port,
                username,
                password,
            });
        }
        Ok(TransportUrl {
            hosts,
            vhost,
            tls,
            scheme,
        })
    }

    /// The URL with every password replaced by `***`, for logs and errors.
    #[must_use]
    pub fn redacted(&self) -> String {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .map(|h| {
                let host = if h.host.contains(':') {
                    format!("[{}]", h.host)
                } else {
                    h.host.clone()
                };
                format!("{}:***@{host}:{}", h.username, h.port)
            })
            .collect();
        let vhost = if self.vhost == "/" {
            String::new()
        } else {
            self.vhost.clone()
        };
        format!("{}://{}/{vhost}", self.scheme, hosts.join(","))
    }

    /// `text` with every password of the URL replaced by `***` (for the client library's
    /// error messages, which should not contain it but are not ours).
    #[must_use]
    pub fn scrub(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for host in &self.hosts {
            let password = host.password.expose_secret();
            if !password.is_empty() {
                out = out.replace(password, "***");
            }
        }
        out
    }

    /// How many brokers the URL lists.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether the URL lists no broker (never true for a parsed URL).
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The AMQP URI of broker `index` (modulo the number of brokers), and its redacted form.
    #[must_use]
    pub fn amqp_uri(&self, index: usize) -> Option<(AMQPUri, String)> {
        let host = self.hosts.get(index.checked_rem(self.hosts.len())?)?;
        let uri = AMQPUri {
            scheme: if self.tls {
                AMQPScheme::AMQPS
            } else {
                AMQPScheme::AMQP
            },
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo {
                    username: host.username.clone(),
                    password: host.password.expose_secret().to_owned(),
                },
                host: host.host.clone(),
                port: host.port,
            },
            vhost: self.vhost.clone(),
            query: AMQPQueryString {
                heartbeat: Some(HEARTBEAT_SECONDS),
                connection_timeout: Some(CONNECT_TIMEOUT_MS),
                ..AMQPQueryString::default()
            },
        };
        let hostname = if host.host.contains(':') {
            format!("[{}]", host.host)
        } else {
            host.host.clone()
        };
        let scheme = if self.tls { "amqps" } else { "amqp" };
        let shown = format!(
            "{scheme}://{}:***@{hostname}:{}/{}",
            host.username,
            host.port,
            self.vhost.trim_start_matches('/')
        );
        Some((uri, shown))
    }
}

/// What is wrong with one `host[:port]` of a transport URL.
#[derive(Debug, thiserror::Error)]
enum HostPortError {
    /// The port is not a number from 0 to 65535.
    #[error("invalid port '{0}'")]
    Port(String),
    /// `[v6` without `]`.
    #[error("unclosed '[' in the host")]
    Unclosed,
    /// Text after `[v6]` that is not a port.
    #[error("unexpected '{0}' after the host")]
    Trailing(String),
    /// Nothing before the port.
    #[error("no host name")]
    NoHost,
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> Result<(String, Option<u16>), HostPortError> {
    let parse_port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| HostPortError::Port(p.to_owned()))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']').ok_or(HostPortError::Unclosed)?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(parse_port(p)?),
            None if after.is_empty() => None,
            None => return Err(HostPortError::Trailing(after.to_owned())),
        };
        return Ok((host.to_owned(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(parse_port(p)?)),
        None => (s, None),
    };
    if host.is_empty() {
        return Err(HostPortError::NoHost);
    }
    Ok((host.to_owned(), port))
}

/// Decodes `%XX` escapes; the result must be UTF-8. The error's words never repeat the text
/// (it may be a password).
fn percent_decode(s: &str) -> Result<String, PercentError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PercentError::Truncated)?;
            let hex = std::str::from_utf8(hex).map_err(|_| PercentError::Invalid)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| PercentError::Invalid)?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::NotUtf8)
}

/// Why a percent-encoded part does not decode.
#[derive(Debug, thiserror::Error)]
enum PercentError {
    /// `%` near the end.
    #[error("truncated %-escape")]
    Truncated,
    /// `%` not followed by two hex digits.
    #[error("invalid %-escape")]
    Invalid,
    /// The bytes are not UTF-8.
    #[error("not UTF-8 after %-decoding")]
    NotUtf8,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devstack_url() {
        let u = TransportUrl::parse("rabbit://stackrabbit:s3cr%40t@192.0.2.10:5672/").unwrap();
        assert_eq!(u.vhost, "/");
        assert!(!u.tls);
        let (uri, shown) = u.amqp_uri(0).unwrap();
        assert_eq!(uri.authority.userinfo.password, "s3cr@t");
        assert_eq!(uri.authority.host, "192.0.2.10");
        assert_eq!(uri.vhost, "/");
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(!u.redacted().contains("s3cr"));
        assert_eq!(u.redacted(), "rabbit://stackrabbit:***@192.0.2.10:5672/");
    }

    #[test]
    fn kolla_cluster_url_rotates_hosts() {
        let u = TransportUrl::parse(
            "rabbit://openstack:pw1@10.0.0.1:5672,openstack:pw2@10.0.0.2:5672,10.0.0.3//",
        )
        .unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u.vhost, "/");
        assert_eq!(u.amqp_uri(1).unwrap().0.authority.userinfo.password, "pw2");
        // The third host has no credentials: it reuses the previous host's.
        let (third, _) = u.amqp_uri(2).unwrap();
        assert_eq!(
            (
                third.authority.host.as_str(),
                third.authority.userinfo.password.as_str()
            ),
            ("10.0.0.3", "pw2")
        );
        assert_eq!(third.authority.port, 5672);
        assert_eq!(u.amqp_uri(3).unwrap().0.authority.host, "10.0.0.1");
        let shown = u.redacted();
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
    }

    #[test]
    fn vhost_tls_and_ipv6() {
        let u = TransportUrl::parse("rabbit://u:p@[fd00::1]:5671/nova?ssl=1").unwrap();
        assert!(u.tls);
        assert_eq!(u.vhost, "nova");
        let (uri, shown) = u.amqp_uri(0).unwrap();
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(uri.authority.host, "fd00::1");
        assert_eq!(shown, "amqps://u:***@[fd00::1]:5671/nova");
        assert_eq!(
            TransportUrl::parse("amqps://u:p@h")
                .unwrap()
                .hosts
                .first()
                .unwrap()
                .port,
            5671
        );
    }

    #[test]
    fn bad_urls_do_not_echo_the_password() {
        for bad in [
            "http://u:hunter2@h/",
            "rabbit://u:hunter2@h:notaport/",
            "rabbit//u:hunter2@h",
            "rabbit://u:hunter2%zz@h/",
        ] {
            let e = TransportUrl::parse(bad).unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
        }
    }
}
