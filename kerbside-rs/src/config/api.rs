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
    }
}
