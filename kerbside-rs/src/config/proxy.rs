//! The `[proxy]` section: SPICE listeners, TLS material, limits and timeouts.

use std::net::IpAddr;
use std::path::PathBuf;

use super::section::{Section, section};
use super::validation::Validator;
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
        /// Seconds a client has to complete TLS and the SPICE link stage, both together.
        handshake_timeout: u64 = "10",
        /// Seconds a channel may carry no data in either direction before it is closed;
        /// 0 disables. SPICE servers ping idle channels every few minutes.
        idle_timeout: u64 = "900",
        /// Log every relayed SPICE message's channel, direction, name and size at debug level
        /// (never its contents). Costly; for troubleshooting.
        inspect: bool = "false",
        /// Seconds allowed to connect and link to a hypervisor.
        connect_timeout: u64 = "10",
        /// Maximum number of concurrent sessions on this node; further authorized main-channel
        /// links are refused. Only authorized sessions hold a slot.
        max_sessions: u32 = "1000",
        /// Maximum number of connections that have not finished TLS and the link stage yet,
        /// on both listeners together; further connections are closed at once.
        max_handshakes: u32 = "1000",
        /// Maximum number of such connections from one client address (an IPv6 /64 counts as
        /// one address); further connections from it are closed at once. A remote-viewer
        /// session opens up to about 10 channels at once, and several users may share a NAT.
        max_handshakes_per_address: u32 = "64",
        /// Failed links an address may make in a row (denied tokens or tickets, and links
        /// abandoned after the proxy offered a key) before its links are refused with a link
        /// error, without a key or a database lookup. 0 disables the limit.
        failed_link_burst: u32 = "20",
        /// Failed links per minute an address regains after using up failed_link_burst.
        failed_links_per_minute: u32 = "30",
        /// Seconds over which repeated refusals and failures of one kind from one address are
        /// logged as one line with a count.
        refusal_log_interval: u64 = "60",
        /// Maximum number of open client connections per listener (sessions have several).
        max_connections: u32 = "10000",
        /// Seconds to let sessions drain after SIGTERM before closing them.
        shutdown_timeout: u64 = "30",
        /// Number of fresh RSA ticket keys kept ready for the link stage.
        key_pool_size: u32 = "32",
        /// Links one RSA ticket key serves before the next fresh key takes over. 1 gives every
        /// link a key of its own, as spice-server does; see the README's security section for
        /// why a few dozen is safe behind TLS.
        ticket_key_uses: u32 = "32",
        /// Seconds one RSA ticket key serves at most, counted from its first link.
        ticket_key_lifetime: u64 = "60",
        /// Whether to use TLS towards hypervisors.
        hypervisor_tls: HypervisorTls = "auto",
        /// PEM CA used to verify hypervisor certificates when the console's source has none.
        hypervisor_ca_file: Option<PathBuf>,
        /// Seconds between checks for session termination requests from other nodes.
        termination_poll_interval: u64 = "1",
    }
}

impl ProxySection {
    /// Checks that cert_file and key_file are set together, that the PEM files can be opened
    /// (their contents are checked when the proxy starts, and by `kerbside-manage config
    /// check`), that the two ports differ, that there is an address to bind, that the limits
    /// are not 0, and host_subject's syntax.
    pub fn validate(&self, validator: &mut Validator<'_>) {
        let mut check = validator.section(Self::NAME);
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => check.problem_near(
                "key_file",
                "cert_file",
                "cert_file is set, so key_file must be set too",
            ),
            (None, Some(_)) => check.problem_near(
                "cert_file",
                "key_file",
                "key_file is set, so cert_file must be set too",
            ),
            _ => {}
        }
        for (option, path) in [
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
            ("ca_file", &self.ca_file),
            ("hypervisor_ca_file", &self.hypervisor_ca_file),
        ] {
            check.readable(option, path.as_deref());
        }
        if self.tls_port != 0 && self.tls_port == self.insecure_port {
            check.problem(
                "insecure_port",
                format!("must differ from tls_port ({})", self.tls_port),
            );
        }
        if self.bind_host.is_empty() {
            check.problem("bind_host", "at least one address is required");
        }
        check.at_least_one_second("handshake_timeout", self.handshake_timeout);
        check.at_least_one("max_sessions", self.max_sessions);
        check.at_least_one("max_handshakes", self.max_handshakes);
        check.at_least_one(
            "max_handshakes_per_address",
            self.max_handshakes_per_address,
        );
        if self.failed_link_burst > 0 && self.failed_links_per_minute == 0 {
            check.problem(
                "failed_links_per_minute",
                "must be at least 1 while failed_link_burst is set",
            );
        }
        check.at_least_one("key_pool_size", self.key_pool_size);
        check.at_least_one("ticket_key_uses", self.ticket_key_uses);
        check.at_least_one("ticket_key_lifetime", self.ticket_key_lifetime);
        if let Some(subject) = &self.host_subject
            && let Err(e) = crate::tlsutil::parse_host_subject(subject)
        {
            check.problem("host_subject", e.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::Config;
    use crate::config::source::RawConfig;

    fn problems(text: &str) -> Vec<String> {
        let mut problems = Vec::new();
        let mut raw = RawConfig::default();
        raw.add_text(Path::new("k.conf"), 0, text, &mut problems);
        raw.files.push("k.conf".into());
        match Config::from_raw(raw, problems) {
            Ok(_) => Vec::new(),
            Err(e) => e.problems.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn link_limits_have_working_defaults_and_reject_unusable_values() {
        let config = Config::from_raw(RawConfig::default(), Vec::new())
            .unwrap()
            .config;
        let p = &config.proxy;
        assert_eq!(
            (
                p.max_handshakes,
                p.max_handshakes_per_address,
                p.failed_link_burst,
                p.failed_links_per_minute,
                p.refusal_log_interval
            ),
            (1000, 64, 20, 30, 60)
        );
        assert_eq!(
            problems("[proxy]\nmax_handshakes = 0\nmax_handshakes_per_address = 0\n"),
            [
                "k.conf:2: [proxy] max_handshakes: must be at least 1",
                "k.conf:3: [proxy] max_handshakes_per_address: must be at least 1",
            ]
        );
        assert_eq!(
            problems("[proxy]\nfailed_links_per_minute = 0\n"),
            [
                "k.conf:2: [proxy] failed_links_per_minute: must be at least 1 while failed_link_burst is set"
            ]
        );
        assert!(
            problems("[proxy]\nfailed_link_burst = 0\nfailed_links_per_minute = 0\n").is_empty()
        );
    }
}
