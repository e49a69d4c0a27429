//! The `[proxy]` section: SPICE listeners, TLS material, limits and timeouts.

use std::net::IpAddr;
use std::path::PathBuf;

use super::section::section;
use super::value::choice_value;

choice_value! {
    /// Whether the proxy uses TLS to reach hypervisors.
    HypervisorTls {
        /// TLS when the console has a TLS port, plain otherwise.
        Auto = "auto",
        /// Only TLS: consoles without a TLS port are refused.
        Require = "require",
        /// Only plain connections.
        Never = "never",
    }
}

section! {
    /// The SPICE proxy.
    pub struct ProxySection("proxy") {
        /// Addresses the SPICE listeners bind to (IPv4 and IPv6; several may be given).
        bind_host: Vec<IpAddr> = "0.0.0.0",
        /// Port of the TLS SPICE listener.
        tls_port: u16 = "5900",
        /// Port of the plain SPICE listener. It never carries a session: every link is answered
        /// with NEED_SECURED so clients retry on the TLS port.
        insecure_port: u16 = "5901",
        /// Host name or address that clients use to reach the proxy, written into .vv files.
        /// Defaults to node_name.
        public_host: Option<String>,
        /// TLS port clients use, when a load balancer maps it. Defaults to tls_port.
        public_tls_port: Option<u16>,
        /// Plain port clients use, when a load balancer maps it. Defaults to insecure_port.
        public_insecure_port: Option<u16>,
        /// PEM certificate chain the TLS listener presents.
        cert_file: Option<PathBuf>,
        /// PEM private key of cert_file.
        key_file: Option<PathBuf>,
        /// PEM CA certificate that signed cert_file, given to clients in .vv files.
        ca_file: Option<PathBuf>,
        /// Subject of cert_file as clients should verify it (e.g. "C=AU,O=Example,CN=proxy").
        /// Defaults to the subject read from cert_file.
        host_subject: Option<String>,
        /// Seconds a client has to complete TLS and the SPICE link stage.
        handshake_timeout: u64 = "10",
        /// Seconds a channel may carry no data in either direction before it is closed;
        /// 0 disables. SPICE servers ping idle channels every few minutes.
        idle_timeout: u64 = "900",
        /// Seconds allowed to connect and link to a hypervisor.
        connect_timeout: u64 = "10",
        /// Maximum number of concurrent sessions on this node; further main-channel links are
        /// refused.
        max_sessions: u32 = "1000",
        /// Maximum number of open client connections per listener (sessions have several).
        max_connections: u32 = "10000",
        /// Seconds to let sessions drain after SIGTERM before closing them.
        shutdown_timeout: u64 = "30",
        /// Number of pre-generated one-time RSA keys for the link stage.
        key_pool_size: u32 = "32",
        /// Whether to use TLS towards hypervisors.
        hypervisor_tls: HypervisorTls = "auto",
        /// PEM CA used to verify hypervisor certificates when the console's source has none.
        hypervisor_ca_file: Option<PathBuf>,
        /// Seconds between checks for session termination requests from other nodes.
        termination_poll_interval: u64 = "1",
    }
}
