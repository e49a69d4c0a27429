//! Audit events of the proxy that are not a session's or channel's own start and end: the
//! firewall's per-channel verdict counts and the hypervisor connections (made or failed). All
//! are written by the store's batched audit writer, never on the relay's path.
//!
//! It records counts and addresses only, never message contents, tickets or tokens.

use super::ProxyContext;
use super::error::ProxyError;
use super::registry::LocalSession;
use super::store::{self, ConsoleTarget};
use crate::db::models::{AuditKind, SessionId};
use crate::spice::ChannelType;
use crate::spice::firewall::Summary;

impl ProxyContext {
    /// Audits the firewall's counts for a channel that hit a rule (`firewall.verdicts`):
    /// counts only, never message contents.
    pub fn audit_firewall(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        channel_id: u8,
        channel_row: crate::db::models::ChannelId,
        summary: &Summary,
    ) {
        let hits: Vec<String> = summary
            .hits
            .iter()
            .map(|(rule, n)| format!("{} {n}", rule.name()))
            .collect();
        let closed = summary
            .closed_by
            .map(|rule| format!("; closed by rule {}", rule.name()))
            .unwrap_or_default();
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::channel(
                session,
                channel_row,
                AuditKind::FirewallVerdicts,
                format!(
                    "{} channel {channel_id} firewall ({} mode): {} messages, {} dropped, {} compensations; rule hits: {}{closed}",
                    channel.name(),
                    self.firewall_mode.name(),
                    summary.messages,
                    summary.dropped,
                    summary.injected,
                    hits.join(", "),
                ),
            ),
        );
    }
    /// Audits a channel's authenticated hypervisor connection.
    pub fn audit_hypervisor_connected(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        addr: &str,
    ) {
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                session,
                session.console_id,
                AuditKind::HypervisorConnected,
                format!("{} channel connected to hypervisor {addr}", channel.name()),
            ),
        );
    }

    /// Audits a failed hypervisor connection.
    pub fn audit_hypervisor_failure(
        &self,
        console: &ConsoleTarget,
        session: Option<&SessionId>,
        error: &ProxyError,
    ) {
        self.store.audit(
            &self.shutdown,
            store::AuditEvent {
                console_id: Some(console.console_id),
                session_id: session.cloned(),
                channel_id: None,
                event_type: AuditKind::HypervisorFailed,
                message: error.to_string(),
            },
        );
    }
}
