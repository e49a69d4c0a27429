//! The `[html5]` section: browser consoles. The proxy carries SPICE over WebSocket on
//! `bind_host:bind_port`; the API serves the spice-html5 client from `web_root` at
//! `/spice_auto.html`, wired to that WebSocket.

use std::net::IpAddr;
use std::path::PathBuf;

use super::section::{Section, section};
use super::validation::Validator;

section! {
    /// Browser consoles: SPICE over WebSocket on the proxy, and the spice-html5 client
    /// served by the API at /spice_auto.html (the path nova-spicehtml5proxy serves).
    pub struct Html5Section("html5") {
        /// Serve browser consoles: the proxy opens the WebSocket listener and the API serves
        /// /spice_auto.html and the spice-html5 files.
        enabled: bool = "false",
        /// Addresses the WebSocket listener binds to (IPv4 and IPv6; several may be given).
        bind_host: Vec<IpAddr> = "0.0.0.0",
        /// Port of the WebSocket listener (nova-spicehtml5proxy's port, so it can take its
        /// place).
        bind_port: u16 = "6082",
        /// Serve plain ws:// instead of wss:// (TLS with the proxy's certificate,
        /// `[proxy] cert_file`). Only behind a load balancer that terminates TLS for the
        /// browsers.
        insecure_websocket: bool = "false",
        /// The WebSocket URL browsers connect to (e.g. `wss://console.example.com:6082/`),
        /// written into the page. Defaults to wss:// (ws:// with insecure_websocket) on
        /// `[proxy] public_host` and bind_port. Set it behind a load balancer.
        public_url: Option<url::Url>,
        /// Origins, besides the WebSocket's own host, whose pages may open consoles: host
        /// names (as Nova's `[console] allowed_origins`) or full origins such as
        /// `https://horizon.example.com`. A WebSocket from any other Origin is closed with
        /// "origin not allowed". Connections without an Origin header (not from a browser)
        /// are let through to the link stage, where the token is checked as always.
        allowed_origins: Vec<String>,
        /// Directory holding the spice-html5 client (Debian and Ubuntu's spice-html5
        /// package install it here). Its files are served at the API's root, as
        /// nova-spicehtml5proxy serves them.
        web_root: PathBuf = "/usr/share/spice-html5",
    }
}

impl Html5Section {
    /// Checks, only while browser consoles are enabled, that public_url is a WebSocket URL,
    /// that there is an address to bind, and that each allowed origin is a host or an origin.
    pub fn validate(&self, validator: &mut Validator<'_>) {
        if !self.enabled {
            return;
        }
        let mut check = validator.section(Self::NAME);
        if let Some(url) = &self.public_url
            && !matches!(url.scheme(), "ws" | "wss")
        {
            check.problem(
                "public_url",
                format!("must be a ws:// or wss:// URL, not {}://", url.scheme()),
            );
        }
        if self.bind_host.is_empty() {
            check.problem("bind_host", "at least one address is required");
        }
        for origin in &self.allowed_origins {
            if origin_host(origin).is_none() {
                check.problem(
                    "allowed_origins",
                    format!("'{origin}' is neither a host name nor an origin such as https://host"),
                );
            }
        }
    }
}

/// The host an `[html5] allowed_origins` entry allows, lower-cased: the entry itself when it
/// is a bare host name, the host of an origin (`https://host[:port]`) otherwise; `None` when
/// it is neither.
pub fn origin_host(entry: &str) -> Option<String> {
    let entry = entry.trim();
    if entry.contains("://") {
        let url = url::Url::parse(entry).ok()?;
        if !matches!(url.scheme(), "http" | "https") || url.path() != "/" {
            return None;
        }
        return url.host_str().map(|h| {
            h.trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase()
        });
    }
    let bare = entry.trim_start_matches('[').trim_end_matches(']');
    let valid = !bare.is_empty()
        && bare
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'_'));
    valid.then(|| bare.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::origin_host;

    #[test]
    fn allowed_origins_are_hosts_or_origins() {
        assert_eq!(
            origin_host("Horizon.example.com").as_deref(),
            Some("horizon.example.com")
        );
        assert_eq!(
            origin_host("https://horizon.example.com:8443").as_deref(),
            Some("horizon.example.com")
        );
        assert_eq!(origin_host("http://[::1]:80").as_deref(), Some("::1"));
        assert_eq!(origin_host("::1").as_deref(), Some("::1"));
        assert_eq!(origin_host("ftp://x.example.com"), None);
        assert_eq!(origin_host("https://x.example.com/path"), None);
        assert_eq!(origin_host("bad host"), None);
        assert_eq!(origin_host(""), None);
    }
}
