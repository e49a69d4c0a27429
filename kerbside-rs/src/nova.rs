//! The Nova client: looks up spice-direct console tokens with the kerbside service user
//! (`GET /os-console-auth-tokens/{token}`) and, for the broker call, creates spice-direct
//! consoles as a user (`POST /servers/{id}/remote-consoles`).
//!
//! Always sends `OpenStack-API-Version: compute 2.99`: older microversions silently drop
//! `tls_port`. Owns the mapping of Nova's answers to [`NovaError`]; it does not decide HTTP
//! statuses of kerbside's own API, and never logs a token.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use secrecy::ExposeSecret;
use serde::Deserialize;

use crate::config::{Config, Interface};
use crate::keystone::{Catalog, KeystoneError, ServiceSession, Timeouts, error_chain};
use crate::token::hash_token;

/// Most console-token answers kept in the lookup cache.
const MAX_CACHED_LOOKUPS: usize = 10_000;

/// The microversion that added spice-direct consoles and `tls_port`.
pub const MICROVERSION: &str = "compute 2.99";

/// What went wrong asking Nova. Never carries a token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NovaError {
    /// Nova does not know the console token, or it expired.
    #[error("console token not found or expired")]
    TokenNotFound,
    /// The token is for another console type (noVNC, spice-html5, serial, ...).
    #[error("the console token is not a spice-direct token")]
    NotSpiceDirect,
    /// The service user lacks the admin role Nova's policy requires.
    #[error(
        "the kerbside service user lacks the admin role in Nova (policy \
         os_compute_api:os-console-auth-tokens refused, HTTP 403)"
    )]
    ServiceForbidden,
    /// Nova refused the service user's token even after re-authenticating.
    #[error("Nova refused the kerbside service user's token (HTTP 401)")]
    ServiceUnauthorized,
    /// Nova does not support microversion 2.99 (it predates 2025.1 Epoxy).
    #[error("Nova does not support microversion 2.99 (spice-direct needs Nova 2025.1 or later)")]
    TooOld,
    /// Nova could not be reached or timed out.
    #[error("Nova at {url} is unreachable: {cause}")]
    Unreachable {
        /// The URL called (without the token).
        url: String,
        /// Why.
        cause: String,
    },
    /// Nova answered with a server error.
    #[error("Nova answered HTTP {status}: {message}")]
    ServerError {
        /// Nova's status.
        status: u16,
        /// Nova's message.
        message: String,
    },
    /// Nova refused the user's request (broker call): status and Nova's message.
    #[error("Nova refused the request (HTTP {status}): {message}")]
    Refused {
        /// Nova's status.
        status: u16,
        /// Nova's message.
        message: String,
    },
    /// No compute endpoint matches the configuration.
    #[error("no compute endpoint with interface {interface}{region} in the Keystone catalog")]
    NoEndpoint {
        /// The interface asked for.
        interface: String,
        /// `" in region X"` or empty.
        region: String,
    },
    /// Nova answered something unexpected.
    #[error("Nova answered unexpectedly: {0}")]
    Unexpected(String),
    /// Keystone failed while authenticating the service user.
    #[error(transparent)]
    Keystone(#[from] KeystoneError),
}

impl NovaError {
    /// Whether Nova or Keystone is down (503) rather than misbehaving or misconfigured (502).
    #[must_use]
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::ServerError { status, .. } => *status == 503,
            Self::Keystone(k) => k.is_unavailable(),
            _ => false,
        }
    }

    /// What failed, in words fit for any client: no URL and no upstream error text (the
    /// `Display` text, which has them, goes to the log).
    #[must_use]
    pub fn public_message(&self) -> String {
        match self {
            Self::Unreachable { .. } => "Nova is unreachable".to_owned(),
            Self::ServerError { status, .. } => {
                format!("Nova answered a server error (HTTP {status})")
            }
            Self::Refused { status, .. } => format!("Nova refused the request (HTTP {status})"),
            Self::NoEndpoint { .. } => "the Keystone catalog has no compute endpoint for the \
                                        configured [nova] interface and region"
                .to_owned(),
            Self::Unexpected(_) => "Nova answered unexpectedly".to_owned(),
            Self::Keystone(k) => k.public_message().to_owned(),
            Self::TokenNotFound
            | Self::NotSpiceDirect
            | Self::ServiceForbidden
            | Self::ServiceUnauthorized
            | Self::TooOld => self.to_string(),
        }
    }

    /// The `result` label of a lookup: `found` is for success, the rest name the error.
    #[must_use]
    pub fn result_label(&self) -> &'static str {
        match self {
            Self::TokenNotFound => "not_found",
            Self::NotSpiceDirect => "not_spice_direct",
            _ => "error",
        }
    }
}

/// Where a spice-direct console is, as Nova reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleConnectInfo {
    /// The instance.
    pub instance_uuid: String,
    /// Hypervisor address (`[spice] server_proxyclient_address`).
    pub host: String,
    /// Plain SPICE port.
    pub port: Option<u16>,
    /// TLS SPICE port, when the hypervisor has TLS.
    pub tls_port: Option<u16>,
    /// The SPICE firewall profile named by the instance's flavor
    /// (extra spec `kerbside:firewall_profile`), read by kerbside's service user.
    pub firewall_profile: Option<String>,
    /// Whether it is a spice-direct token (Nova answers `tls_port` only for those). Other
    /// tokens are spice-html5 ones (for the browser client at `/spice_auto.html`), or tokens
    /// of other console types, which Nova's answer cannot tell apart.
    pub spice_direct: bool,
}

/// The flavor extra spec naming a console's SPICE firewall profile.
pub const FIREWALL_PROFILE_SPEC: &str = "kerbside:firewall_profile";

/// The firewall profile a `GET /servers/{id}` body (microversion 2.47 or later, which embeds
/// the flavor with its extra specs) names, if any.
pub fn flavor_firewall_profile(body: &serde_json::Value) -> Option<String> {
    body.get("server")?
        .get("flavor")?
        .get("extra_specs")?
        .get(FIREWALL_PROFILE_SPEC)?
        .as_str()
        .map(str::to_owned)
}

/// Parses `GET /os-console-auth-tokens/{token}` at 2.99. Only spice-direct tokens carry the
/// `tls_port` key (possibly null), so its absence means another console type
/// ([`ConsoleConnectInfo::spice_direct`] is then false).
///
/// # Errors
/// A body without the expected fields.
pub fn parse_connect_info(body: &serde_json::Value) -> Result<ConsoleConnectInfo, NovaError> {
    let console = body
        .get("console")
        .and_then(serde_json::Value::as_object)
        .ok_or_else(|| NovaError::Unexpected("no console object".to_owned()))?;
    let spice_direct = console.contains_key("tls_port");
    let port = |key: &str| -> Result<Option<u16>, NovaError> {
        match console.get(key) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|p| u16::try_from(p).ok())
                .map(Some)
                .ok_or_else(|| NovaError::Unexpected(format!("invalid {key}"))),
        }
    };
    let text = |key: &str| console.get(key).and_then(serde_json::Value::as_str);
    let info = ConsoleConnectInfo {
        instance_uuid: text("instance_uuid")
            .ok_or_else(|| NovaError::Unexpected("no instance_uuid".to_owned()))?
            .to_lowercase(),
        host: text("host")
            .ok_or_else(|| NovaError::Unexpected("no host".to_owned()))?
            .to_owned(),
        port: port("port")?,
        tls_port: port("tls_port")?,
        firewall_profile: None,
        spice_direct,
    };
    if info.port.is_none() && info.tls_port.is_none() {
        return Err(NovaError::Unexpected(
            "neither port nor tls_port".to_owned(),
        ));
    }
    Ok(info)
}

/// Nova's error message from a fault body such as `{"itemNotFound": {"message": ...}}`.
fn fault_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.as_object()?
                .values()
                .find_map(|f| f.get("message")?.as_str().map(str::to_owned))
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Where to find Nova.
#[derive(Clone, Debug)]
pub struct NovaEndpoint {
    /// Used as is when set.
    pub endpoint_override: Option<String>,
    /// Catalog interface.
    pub interface: Interface,
    /// Catalog region.
    pub region_name: Option<String>,
}

impl NovaEndpoint {
    /// The compute URL from `catalog`, or the override.
    ///
    /// # Errors
    /// No matching endpoint.
    pub fn resolve(&self, catalog: &Catalog) -> Result<String, NovaError> {
        if let Some(url) = &self.endpoint_override {
            return Ok(url.trim_end_matches('/').to_owned());
        }
        catalog
            .endpoint("compute", self.interface, self.region_name.as_deref())
            .map(|u| u.trim_end_matches('/').to_owned())
            .ok_or_else(|| NovaError::NoEndpoint {
                interface: self.interface.as_str().to_owned(),
                region: self
                    .region_name
                    .as_ref()
                    .map(|r| format!(" in region {r}"))
                    .unwrap_or_default(),
            })
    }
}

/// Whether an answer of [`NovaClient::lookup_console_token`] came from Nova.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LookupSource {
    /// This call asked Nova.
    Nova,
    /// A cached answer, or one shared with a concurrent call that asked Nova.
    Cache,
}

/// One cached answer: filled by the first caller, awaited by concurrent ones.
type CachedLookup = tokio::sync::OnceCell<(Instant, Result<ConsoleConnectInfo, NovaError>)>;

/// Nova's answers about console tokens, by token hash: found ones (of any console type) for
/// `[nova] cache_time`, unknown ones for `negative_cache_time`, failures not at all (but a
/// failure is shared by the calls that waited for it). Concurrent lookups of one token
/// send one request.
struct LookupCache {
    /// How long a found token is trusted.
    positive: Duration,
    /// How long "not found" and "not spice-direct" are remembered.
    negative: Duration,
    /// sha-256 of the token → its answer, or the lookup in flight.
    entries: std::sync::Mutex<HashMap<String, Arc<CachedLookup>>>,
}

impl LookupCache {
    /// How long to keep `result`.
    fn ttl(&self, result: &Result<ConsoleConnectInfo, NovaError>) -> Duration {
        match result {
            Ok(_) => self.positive,
            Err(NovaError::TokenNotFound | NovaError::NotSpiceDirect) => self.negative,
            Err(_) => Duration::ZERO,
        }
    }

    /// The entry of `key`: a live one, or a fresh empty one put in its place.
    fn entry(&self, key: String) -> Arc<CachedLookup> {
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        let live = |e: &CachedLookup| e.get().is_none_or(|(until, _)| *until > now);
        if let Some(e) = entries.get(&key)
            && live(e)
        {
            return e.clone();
        }
        if entries.len() >= MAX_CACHED_LOOKUPS {
            entries.retain(|_, e| live(e));
            if entries.len() >= MAX_CACHED_LOOKUPS {
                entries.clear();
            }
        }
        let fresh = Arc::new(CachedLookup::new());
        entries.insert(key, fresh.clone());
        fresh
    }
}

/// Nova, reached with the kerbside service user.
pub struct NovaClient {
    /// The service user's session.
    session: Arc<ServiceSession>,
    /// Where Nova is.
    endpoint: NovaEndpoint,
    /// Nova's recent answers about console tokens.
    cache: LookupCache,
}

impl NovaClient {
    /// A client from `[nova]` (falling back to `[keystone_authtoken]`), or `None` when no
    /// service user is configured.
    ///
    /// # Errors
    /// An unusable CA file.
    pub fn from_config(config: &Config) -> Result<Option<Self>, crate::keystone::ClientError> {
        let Some(creds) = crate::keystone::Credentials::nova(config) else {
            return Ok(None);
        };
        let n = &config.nova;
        let k = &config.keystone_authtoken;
        let timeouts = Timeouts::nova(config);
        let http = crate::keystone::http_client(
            n.cafile.as_deref().or(k.cafile.as_deref()),
            n.insecure.unwrap_or(k.insecure),
            timeouts,
        )?;
        Ok(Some(NovaClient {
            session: Arc::new(ServiceSession::new(creds, http, timeouts)),
            endpoint: NovaEndpoint {
                endpoint_override: n.endpoint_override.as_ref().map(ToString::to_string),
                interface: n.interface,
                region_name: n.region_name.clone().or_else(|| k.region_name.clone()),
            },
            cache: LookupCache {
                positive: Duration::from_secs(n.cache_time),
                negative: Duration::from_secs(n.negative_cache_time),
                entries: std::sync::Mutex::new(HashMap::new()),
            },
        }))
    }

    /// What Nova says about a console token, from the cache when it answered recently
    /// (see `[nova] cache_time` and `negative_cache_time`); concurrent lookups of one token
    /// share one request. Also says whether this call asked Nova.
    ///
    /// # Errors
    /// See [`NovaClient::console_connect_info`].
    ///
    /// # Cancel safety
    /// Cancel safe: a cancelled lookup is taken over by a caller still waiting for it.
    pub async fn lookup_console_token(
        &self,
        token: &str,
    ) -> (Result<ConsoleConnectInfo, NovaError>, LookupSource) {
        let entry = self.cache.entry(hash_token(token));
        let mut source = LookupSource::Cache;
        let (_, result) = entry
            .get_or_init(|| async {
                source = LookupSource::Nova;
                let result = self.console_connect_info(token).await;
                (Instant::now() + self.cache.ttl(&result), result)
            })
            .await;
        (result.clone(), source)
    }

    /// Where Nova is.
    pub fn endpoint(&self) -> &NovaEndpoint {
        &self.endpoint
    }

    /// The HTTP client.
    pub fn http(&self) -> &reqwest::Client {
        self.session.http()
    }

    /// Looks up a console token (`GET /os-console-auth-tokens/{token}` at 2.99),
    /// re-authenticating once when Nova refuses the service token.
    ///
    /// # Errors
    /// See [`NovaError`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn console_connect_info(&self, token: &str) -> Result<ConsoleConnectInfo, NovaError> {
        let mut retried = false;
        loop {
            let service = self.session.token().await?;
            let base = self.endpoint.resolve(&service.catalog)?;
            let (status, body) = self
                .get_as_service(
                    &service,
                    &format!("{base}/os-console-auth-tokens/{token}"),
                    &format!("{base}/os-console-auth-tokens/<token>"),
                )
                .await?;
            match status {
                200 => {
                    let value: serde_json::Value = serde_json::from_str(&body)
                        .map_err(|e| NovaError::Unexpected(format!("invalid JSON: {e}")))?;
                    let mut info = parse_connect_info(&value)?;
                    info.firewall_profile = self
                        .server_firewall_profile(&base, &service, &info.instance_uuid)
                        .await?;
                    return Ok(info);
                }
                404 => return Err(NovaError::TokenNotFound),
                401 if !retried => {
                    tracing::warn!("Nova refused the service token; re-authenticating");
                    self.session.invalidate(&service.token);
                    retried = true;
                }
                401 => return Err(NovaError::ServiceUnauthorized),
                403 => return Err(NovaError::ServiceForbidden),
                406 => return Err(NovaError::TooOld),
                s if s >= 500 => {
                    return Err(NovaError::ServerError {
                        status: s,
                        message: fault_message(&body),
                    });
                }
                s => {
                    return Err(NovaError::Unexpected(format!(
                        "HTTP {s}: {}",
                        fault_message(&body)
                    )));
                }
            }
        }
    }

    /// `GET url` at microversion 2.99 as kerbside's service user: (status, body). `shown` is
    /// the URL as errors and logs may name it (without a console token).
    ///
    /// # Errors
    /// `Unreachable` when no answer arrives.
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn get_as_service(
        &self,
        service: &crate::keystone::ServiceToken,
        url: &str,
        shown: &str,
    ) -> Result<(u16, String), NovaError> {
        // reqwest's errors name the URL, and a token lookup's URL holds the console token:
        // never let it into the cause (which is logged).
        let unreachable = |e: reqwest::Error| NovaError::Unreachable {
            url: shown.to_owned(),
            cause: error_chain(&e.without_url()),
        };
        let resp = self
            .session
            .http()
            .get(url)
            .header("X-Auth-Token", service.token.expose_secret())
            .header("OpenStack-API-Version", MICROVERSION)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(unreachable)?;
        Ok((status, body))
    }

    /// The firewall profile the server's flavor names (`GET /servers/{id}` at 2.99, which
    /// embeds the flavor and its extra specs), as kerbside's service user. A server Nova does
    /// not show gets the most restrictive profile; any other failure fails the lookup: a
    /// console is never given without knowing its policy.
    ///
    /// # Errors
    /// See [`NovaError`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    async fn server_firewall_profile(
        &self,
        base: &str,
        service: &crate::keystone::ServiceToken,
        server_id: &str,
    ) -> Result<Option<String>, NovaError> {
        let url = format!("{base}/servers/{server_id}");
        let (status, body) = self.get_as_service(service, &url, &url).await?;
        match status {
            200 => {
                let value: serde_json::Value = serde_json::from_str(&body)
                    .map_err(|e| NovaError::Unexpected(format!("invalid JSON: {e}")))?;
                Ok(flavor_firewall_profile(&value))
            }
            // A token for a server Nova no longer shows: its flavor's policy is unknown, so
            // the console fails closed.
            404 => {
                tracing::warn!(instance.uuid = %server_id, "Nova does not show the console's server: using the most restrictive firewall profile");
                Ok(Some(
                    crate::spice::firewall::MOST_RESTRICTIVE_PROFILE.to_owned(),
                ))
            }
            401 => Err(NovaError::ServiceUnauthorized),
            403 => Err(NovaError::ServiceForbidden),
            s if s >= 500 => Err(NovaError::ServerError {
                status: s,
                message: fault_message(&body),
            }),
            s => Err(NovaError::Unexpected(format!(
                "server {server_id}: HTTP {s}: {}",
                fault_message(&body)
            ))),
        }
    }

    /// Creates a spice-direct console of `server_id` as the user holding `user_token`
    /// (`POST /servers/{id}/remote-consoles` at 2.99) and returns the console URL.
    ///
    /// # Errors
    /// See [`NovaError`]; Nova's 4xx answers are [`NovaError::Refused`].
    ///
    /// # Cancel safety
    /// Cancel safe (at worst Nova created a console token nobody uses; it expires).
    pub async fn create_spice_direct_console(
        &self,
        user_token: &str,
        catalog: &Catalog,
        server_id: &str,
    ) -> Result<String, NovaError> {
        let base = self.endpoint.resolve(catalog)?;
        let url = format!("{base}/servers/{server_id}/remote-consoles");
        let resp = self
            .session
            .http()
            .post(&url)
            .header("X-Auth-Token", user_token)
            .header("OpenStack-API-Version", MICROVERSION)
            .json(&serde_json::json!({
                "remote_console": {"protocol": "spice", "type": "spice-direct"}
            }))
            .send()
            .await
            .map_err(|e| NovaError::Unreachable {
                url: url.clone(),
                cause: error_chain(&e),
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(|e| NovaError::Unreachable {
            url: url.clone(),
            cause: error_chain(&e),
        })?;
        match status {
            200 => remote_console_token(&body).map(|t| t.to_owned()),
            s => Err(user_call_failure(s, &body)),
        }
    }
}

/// What a call made as the user gets for a status other than success: Nova too old for
/// microversion 2.99, Nova failing, or Nova refusing the user (its words passed on).
fn user_call_failure(status: u16, body: &str) -> NovaError {
    match status {
        406 => NovaError::TooOld,
        s if s >= 500 => NovaError::ServerError {
            status: s,
            message: fault_message(body),
        },
        s => NovaError::Refused {
            status: s,
            message: fault_message(body),
        },
    }
}

/// A server as `GET /servers/detail` lists it for its owner.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct ServerSummary {
    /// Server (instance) uuid.
    pub id: String,
    /// Display name.
    pub name: String,
    /// Nova's status (`ACTIVE`, `SHUTOFF`, `BUILD`, ...).
    pub status: String,
    /// The task in progress, if any.
    #[serde(rename = "OS-EXT-STS:task_state", default)]
    pub task_state: Option<String>,
}

#[derive(Deserialize)]
struct ServerList {
    servers: Vec<ServerSummary>,
}

impl NovaClient {
    /// The servers of the project of `user_token`, as that user sees them
    /// (`GET /servers/detail` at 2.99 with the user's token), by name.
    ///
    /// # Errors
    /// See [`NovaError`]; Nova's 4xx answers are [`NovaError::Refused`].
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn list_servers(
        &self,
        user_token: &str,
        catalog: &Catalog,
    ) -> Result<Vec<ServerSummary>, NovaError> {
        let base = self.endpoint.resolve(catalog)?;
        let url = format!("{base}/servers/detail");
        let unreachable = |e: reqwest::Error| NovaError::Unreachable {
            url: url.clone(),
            cause: error_chain(&e),
        };
        let resp = self
            .session
            .http()
            .get(&url)
            .header("X-Auth-Token", user_token)
            .header("OpenStack-API-Version", MICROVERSION)
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let body = resp.text().await.map_err(unreachable)?;
        match status {
            200 => {
                let mut list: ServerList = serde_json::from_str(&body)
                    .map_err(|e| NovaError::Unexpected(format!("invalid server list: {e}")))?;
                list.servers
                    .sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
                Ok(list.servers)
            }
            s => Err(user_call_failure(s, &body)),
        }
    }
}

#[derive(Deserialize)]
struct RemoteConsoleBody {
    remote_console: RemoteConsole,
}

#[derive(Deserialize)]
struct RemoteConsole {
    #[serde(rename = "type")]
    console_type: String,
    url: String,
}

/// The console token inside a `POST /servers/{id}/remote-consoles` answer: the `token`
/// query parameter of its URL.
///
/// # Errors
/// Not a spice-direct console, or a URL without exactly one token.
pub fn remote_console_token(body: &str) -> Result<String, NovaError> {
    let parsed: RemoteConsoleBody = serde_json::from_str(body)
        .map_err(|e| NovaError::Unexpected(format!("invalid remote console: {e}")))?;
    if parsed.remote_console.console_type != "spice-direct" {
        return Err(NovaError::NotSpiceDirect);
    }
    let url = url::Url::parse(&parsed.remote_console.url)
        .map_err(|e| NovaError::Unexpected(format!("invalid console URL: {e}")))?;
    let tokens: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .collect();
    match tokens.as_slice() {
        [token] if !token.is_empty() => Ok(token.clone()),
        _ => Err(NovaError::Unexpected(
            "the console URL has no single token parameter".to_owned(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_firewall_profile_from_the_embedded_flavor() {
        let body = serde_json::json!({"server": {"flavor": {"original_name": "m1",
            "extra_specs": {"kerbside:firewall_profile": "no-usb", "hw:cpu_policy": "shared"}}}});
        assert_eq!(flavor_firewall_profile(&body).as_deref(), Some("no-usb"));
        let none = serde_json::json!({"server": {"flavor": {"extra_specs": {}}}});
        assert_eq!(flavor_firewall_profile(&none), None);
    }

    #[test]
    fn parses_nova_sample_2_99() {
        let v: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/nova/os-console-auth-tokens-v2.99-get-console-connect-info-get-resp.json"
        ))
        .unwrap();
        let info = parse_connect_info(&v).unwrap();
        assert_eq!(info.port, Some(6969));
        assert_eq!(info.tls_port, Some(6970));
        assert_eq!(info.host, "fakespiceconsole.com");
        assert!(info.spice_direct);
    }

    #[test]
    fn other_console_types_have_no_tls_port_key() {
        let v: serde_json::Value = serde_json::from_str(include_str!(
            "../../tests/fixtures/nova/os-console-auth-tokens-v2.31-get-console-connect-info-get-resp.json"
        ))
        .unwrap();
        let info = parse_connect_info(&v).unwrap();
        assert!(!info.spice_direct);
        assert_eq!(info.tls_port, None);
        let null_tls = serde_json::json!({"console": {"instance_uuid": "A", "host": "h",
            "port": 5900, "internal_access_path": null, "tls_port": null}});
        let info = parse_connect_info(&null_tls).unwrap();
        assert!(info.spice_direct);
        assert_eq!((info.port, info.tls_port), (Some(5900), None));
        assert_eq!(info.instance_uuid, "a");
    }

    #[test]
    fn extracts_token_from_remote_console_sample() {
        let token = remote_console_token(include_str!(
            "../../tests/fixtures/nova/os-remote-consoles-v2.99-create-spice-direct-console-resp.json"
        ))
        .unwrap();
        assert_eq!(token, "aeabd4ec-3acb-4898-9130-10521ccbe5f3");
        assert!(matches!(
            remote_console_token(include_str!(
                "../../tests/fixtures/nova/os-remote-consoles-get-spice-console-post-resp.json"
            )),
            Err(NovaError::NotSpiceDirect | NovaError::Unexpected(_))
        ));
    }

    #[test]
    fn fault_messages() {
        assert_eq!(
            fault_message(r#"{"itemNotFound": {"code": 404, "message": "Token not found"}}"#),
            "Token not found"
        );
    }
}
