//! Session and channel bookkeeping of the proxy: a session is recorded and registered when
//! its main channel is authorized, found again (here or through the database) when another
//! channel names its connection id, and each channel's link and end are recorded with their
//! audit events. Writes that the relay must not wait for go through the store's background
//! writers.
//!
//! It does not decide who may link (`session` authorizes) and does not end sessions on request
//! (`termination` does, by ending them in the registry).

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use super::end::EndReason;
use super::error::{DenyReason, ProxyError};
use super::registry::LocalSession;
use super::store::{self, Authorized};
use super::{ProxyContext, session};
use crate::db::models::AuditKind;
use crate::spice::ChannelType;

impl ProxyContext {
    /// Records a new session for an authorized main channel and registers it here.
    ///
    /// # Errors
    /// Database failures, or a token bound to another client in the meantime.
    pub async fn start_session(
        &self,
        authorized: &Authorized,
        client_ip: &str,
        slot: OwnedSemaphorePermit,
        firewall_profile: &str,
        transport: session::Transport,
    ) -> Result<Arc<LocalSession>, ProxyError> {
        let row = self
            .store
            .start_session(authorized, client_ip, firewall_profile, transport.as_str())
            .await?;
        self.metrics.proxy.auth_ok();
        self.metrics.proxy.sessions_active.inc();
        let session = self.registry.insert(LocalSession::new(
            row.id,
            authorized.console.console_id,
            Some(authorized.token_id),
            row.proxy_connection_id,
            None,
            Some(slot),
            self.shutdown.stop_token().child_token(),
        ));
        session.set_target(authorized.console.clone());
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                &session,
                authorized.console.console_id,
                AuditKind::SessionCreated,
                format!(
                    "session created for client {client_ip} over {}",
                    transport.as_str()
                ),
            ),
        );
        Ok(session)
    }

    /// The session a non-main channel's connection id names, from this process or the database.
    ///
    /// # Errors
    /// `Denied(UnknownSession)` when no live session has that id.
    pub async fn find_session(&self, connection_id: u32) -> Result<Arc<LocalSession>, ProxyError> {
        if let Some(session) = self.registry.by_connection_id(connection_id) {
            return Ok(session);
        }
        let info = self
            .store
            .find_live_session(connection_id)
            .await?
            .ok_or(ProxyError::Denied(DenyReason::UnknownSession))?;
        let session = self.registry.insert(LocalSession::new(
            info.id,
            info.console_id,
            info.token_id,
            connection_id,
            info.upstream_session_id,
            None,
            self.shutdown.stop_token().child_token(),
        ));
        if session.target().is_none() {
            session.set_target(info.target);
        }
        // Its channels here get the profile the session started with (recorded by the node
        // holding its main channel), not whatever its console names now.
        if session.firewall_profile().is_none()
            && let Some(name) = info.firewall_profile.as_deref()
        {
            session.set_firewall_profile(self.firewall_profile(Some(name)).1);
        }
        Ok(session)
    }

    /// Records a linked channel and audits it, both in the background; returns the channel's
    /// row id.
    pub fn start_channel(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        channel_id: u8,
        client_ip: &str,
    ) -> crate::db::models::ChannelId {
        let id = self
            .store
            .start_channel(session.id.as_str(), channel, channel_id, client_ip);
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::session(
                session,
                session.console_id,
                AuditKind::ChannelCreated,
                format!("{} channel {channel_id} linked", channel.name()),
            ),
        );
        id
    }

    /// Stores the hypervisor's session id before the client learns the proxy's.
    ///
    /// # Errors
    /// Database failures: the channel then ends, since other channels could not be routed.
    pub async fn record_upstream_session(
        &self,
        session: &LocalSession,
        upstream_id: u32,
    ) -> Result<(), ProxyError> {
        session.set_upstream_session_id(upstream_id);
        self.store
            .set_upstream_session(session.id.as_str(), upstream_id)
            .await
    }
    /// Records a channel's end, and audits it with its reason (`channel.ended`); both are
    /// written in the background (see [`Store::end_channel`](super::store::Store::end_channel)).
    pub fn end_channel(
        &self,
        session: &LocalSession,
        channel: ChannelType,
        channel_id: u8,
        channel_row: crate::db::models::ChannelId,
        reason: &EndReason,
        (to_client, to_server): (u64, u64),
    ) {
        self.store.audit(
            &self.shutdown,
            store::AuditEvent::channel(
                session,
                channel_row,
                AuditKind::ChannelEnded,
                format!(
                    "{} channel {channel_id} ended: {reason}; {to_client} bytes to client, {to_server} bytes to hypervisor",
                    channel.name()
                ),
            ),
        );
        self.store.end_channel(channel_row, to_client, to_server);
        if session.channel_ended() == 0 && !session.holds_main {
            self.registry.remove(session.id.as_str());
        }
    }
    /// Records a session's end (its main channel ended here; written in the background, see
    /// [`Store::end_session`](super::store::Store::end_session)).
    pub fn end_session(&self, session: &LocalSession, reason: &EndReason) {
        let (to_client, to_server) = session.totals();
        self.metrics.proxy.sessions_active.dec();
        self.registry.remove(session.id.as_str());
        self.store
            .end_session(&session.id, reason, to_client, to_server);
        self.store.audit(&self.shutdown, store::AuditEvent::session(session, session.console_id, AuditKind::SessionEnded, format!("session ended: {reason}; {to_client} bytes to client, {to_server} bytes to hypervisor")));
        tracing::info!(
            bytes_to_client = to_client,
            bytes_to_server = to_server,
            reason = %reason,
            side = reason.side().map(super::error::Side::as_str),
            "session ended"
        );
    }
}
