//! The `[metrics]` section: the Prometheus endpoint.

use std::net::IpAddr;

use super::section::section;

section! {
    /// Prometheus metrics.
    pub struct MetricsSection("metrics") {
        /// Serve Prometheus metrics at /metrics.
        enabled: bool = "true",
        /// Address of the metrics endpoint (loopback by default: metrics are not public).
        bind_host: IpAddr = "127.0.0.1",
        /// Port of the metrics endpoint.
        bind_port: u16 = "13003",
    }
}
