//! The `[api]` section: the HTTP API (Nova token exchange and the operator API).

use std::net::IpAddr;
use std::path::PathBuf;

use super::section::section;
use super::value::choice_value;

choice_value! {
    /// How the operator API authenticates requests.
    AuthStrategy {
        /// Validate `X-Auth-Token` with Keystone.
        Keystone = "keystone",
        /// No authentication: only for a single-user test deployment.
        NoAuth = "noauth",
    }
}

section! {
    /// The HTTP API.
    pub struct ApiSection("api") {
        /// Address the API listens on.
        bind_host: IpAddr = "0.0.0.0",
        /// Port the API listens on. Nova's default spice_direct_proxy_base_url points at 13002.
        bind_port: u16 = "13002",
        /// URL clients use to reach the API (e.g. `https://cloud.example.com:13002`), used in
        /// the version document and the Keystone catalog.
        public_url: Option<url::Url>,
        /// Number of HTTP worker threads; 0 means one per CPU.
        workers: u32 = "0",
        /// How the /v1 operator API authenticates requests.
        auth_strategy: AuthStrategy = "keystone",
        /// Policy file (oslo.policy YAML) overriding the default rules of the operator API.
        policy_file: PathBuf = "/etc/kerbside/policy.yaml",
        /// Requests per minute one client address (IPv6: one /64) may make to the
        /// unauthenticated Nova token exchange (`/nova`, `/nova-console.vv`); more are
        /// answered 429 with Retry-After. 0 turns the limit off.
        nova_rate: u32 = "60",
        /// How many Nova token exchanges one client address may make in a burst before
        /// `nova_rate` applies.
        nova_burst: u32 = "20",
        /// Sign-in attempts per minute one client address (IPv6: one /64) may make on the web
        /// console's password and application credential forms; more are answered 429 with
        /// Retry-After, before Keystone is asked. 0 turns the limit off (Keystone's own lockout
        /// settings still apply).
        login_rate: u32 = "10",
        /// How many sign-in attempts one client address may make in a burst before
        /// `login_rate` applies.
        login_burst: u32 = "5",
        /// Addresses of reverse proxies (e.g. HAProxy) in front of the API. For a request
        /// from one of them the client address is taken from X-Forwarded-For (the rightmost
        /// entry that is not itself a trusted proxy); otherwise X-Forwarded-For is ignored.
        trusted_proxies: Vec<IpAddr>,
        /// Serve the web console (sign-in with Keystone, operator pages, "My servers") under
        /// `/ui/` on the API's address.
        web_console: bool = "true",
        /// Send the web console's session cookie without the Secure attribute, so that
        /// browsers keep it over plain HTTP. Only for test set-ups without TLS in front of the
        /// API: over plain HTTP the cookie can be read on the network.
        insecure_cookies: bool = "false",
    }
}
