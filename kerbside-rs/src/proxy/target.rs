//! [`ConsoleTarget`]: where a console's hypervisor is and how to authenticate to it, as the
//! database said when a client was authorized. Read by the link stage (`session.rs`),
//! cached on a session (`registry.rs`) and built by `store.rs`; it holds no connection.

/// Where a console is and how to authenticate to it.
#[derive(Clone)]
pub struct ConsoleTarget {
    /// Console row id.
    pub console_id: crate::db::models::ConsoleId,
    /// Instance uuid.
    pub uuid: String,
    /// Address to connect to (the console's `hypervisor_ip`).
    pub host: String,
    /// The hypervisor's name (the console's `hypervisor`): the name its TLS certificate must
    /// carry when no host subject is set. For Nova consoles, the host Nova returned.
    pub name: String,
    /// Plain port.
    pub plain_port: Option<u16>,
    /// TLS port.
    pub tls_port: Option<u16>,
    /// The hypervisor ticket (empty when none).
    pub ticket: Vec<u8>,
    /// Expected certificate subject.
    pub host_subject: Option<String>,
    /// CA of the console's source, PEM.
    pub ca_pem: Option<String>,
    /// Marked stale by a notification.
    pub stale: bool,
    /// The firewall profile the console names (its source's or its flavor's), if any.
    pub firewall_profile: Option<String>,
}

impl std::fmt::Debug for ConsoleTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleTarget")
            .field("uuid", &self.uuid)
            .field("host", &self.host)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}
