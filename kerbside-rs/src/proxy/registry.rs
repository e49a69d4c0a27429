//! Sessions that have channels in this process: how to reach them to end them, their live
//! byte meters, and the route from a client's connection id to the session.
//!
//! The database is the shared truth across nodes; this registry only holds what this process
//! must act on (cancel tokens, meters) and caches routes so a channel link does not need a
//! database round trip when its main channel is on the same node.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::end::EndReason;
use super::relay::Meter;
use super::target::ConsoleTarget;
use crate::db::models::{ConsoleId, ConsoleTokenId, SessionId};

/// A session as this process sees it.
#[derive(Debug)]
pub struct LocalSession {
    /// Session id (uuid).
    pub id: SessionId,
    /// The console row.
    pub console_id: ConsoleId,
    /// The token that opened the session.
    pub token_id: Option<ConsoleTokenId>,
    /// The connection id the client was given in MAIN_INIT.
    pub proxy_connection_id: u32,
    /// Whether this process relays the session's main channel.
    pub holds_main: bool,
    /// Cancelled to close every channel of the session in this process.
    pub cancel: CancellationToken,
    /// The hypervisor's session id (0 until MAIN_INIT arrives).
    upstream_session_id: AtomicU32,
    reason: Mutex<Option<EndReason>>,
    meters: Mutex<Vec<Arc<Meter>>>,
    channels: AtomicUsize,
    /// Where the session's console is, as read when the session started or was first seen on
    /// this node: the session's other channels link there without asking the database again.
    /// (A console that moves or stops has its sessions ended by the notification consumer.)
    target: Mutex<Option<Arc<ConsoleTarget>>>,
    /// The firewall profile the session started with: set by the node holding its main
    /// channel when it starts, and read from the session's row by the other nodes.
    firewall: std::sync::OnceLock<Arc<crate::spice::firewall::Profile>>,
    /// Holds a `[proxy] max_sessions` slot while the main channel lives.
    _slot: Option<OwnedSemaphorePermit>,
}

impl LocalSession {
    /// A session record; `cancel` should be a child of the process's stop token so that the end
    /// of the drain period closes the session.
    pub fn new(
        id: SessionId,
        console_id: ConsoleId,
        token_id: Option<ConsoleTokenId>,
        proxy_connection_id: u32,
        upstream_session_id: Option<u32>,
        slot: Option<OwnedSemaphorePermit>,
        cancel: CancellationToken,
    ) -> Self {
        LocalSession {
            id,
            console_id,
            token_id,
            proxy_connection_id,
            holds_main: slot.is_some(),
            cancel,
            upstream_session_id: AtomicU32::new(upstream_session_id.unwrap_or(0)),
            reason: Mutex::new(None),
            meters: Mutex::new(Vec::new()),
            channels: AtomicUsize::new(0),
            target: Mutex::new(None),
            firewall: std::sync::OnceLock::new(),
            _slot: slot,
        }
    }

    /// Remembers where the session's console is.
    pub fn set_target(&self, target: ConsoleTarget) -> Arc<ConsoleTarget> {
        let target = Arc::new(target);
        if let Ok(mut slot) = self.target.lock() {
            *slot = Some(target.clone());
        }
        target
    }

    /// Where the session's console is, if known here.
    pub fn target(&self) -> Option<Arc<ConsoleTarget>> {
        self.target.lock().ok().and_then(|t| t.clone())
    }

    /// Records the firewall profile the session started with (first call wins).
    pub fn set_firewall_profile(&self, profile: Arc<crate::spice::firewall::Profile>) {
        let _ = self.firewall.set(profile);
    }

    /// The firewall profile the session started with, when known here.
    pub fn firewall_profile(&self) -> Option<Arc<crate::spice::firewall::Profile>> {
        self.firewall.get().cloned()
    }

    /// The hypervisor's session id, once known.
    pub fn upstream_session_id(&self) -> Option<u32> {
        match self.upstream_session_id.load(Ordering::Acquire) {
            0 => None,
            id => Some(id),
        }
    }

    /// Records the hypervisor's session id.
    pub fn set_upstream_session_id(&self, id: u32) {
        self.upstream_session_id.store(id, Ordering::Release);
    }

    /// Adds a channel's meter to the session's totals.
    pub fn add_meter(&self, meter: Arc<Meter>) {
        if let Ok(mut meters) = self.meters.lock() {
            meters.push(meter);
        }
        self.channels.fetch_add(1, Ordering::AcqRel);
    }

    /// Marks one channel as ended; returns how many remain.
    pub fn channel_ended(&self) -> usize {
        self.channels
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1)
    }

    /// (to client, to hypervisor) bytes of every channel this process relayed.
    pub fn totals(&self) -> (u64, u64) {
        self.meters.lock().map_or((0, 0), |meters| {
            meters.iter().fold((0, 0), |(c, s), m| {
                let (mc, ms) = m.totals();
                (c + mc, s + ms)
            })
        })
    }

    /// Ends the session in this process with a reason (the first reason given wins).
    pub fn end(&self, reason: EndReason) {
        if let Ok(mut slot) = self.reason.lock()
            && slot.is_none()
        {
            *slot = Some(reason);
        }
        self.cancel.cancel();
    }

    /// Why the session was ended, if it was.
    pub fn end_reason(&self) -> Option<EndReason> {
        self.reason.lock().ok().and_then(|r| r.clone())
    }
}

/// Every session with channels in this process.
#[derive(Debug, Default)]
pub struct Registry {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    by_id: HashMap<SessionId, Arc<LocalSession>>,
    by_connection: HashMap<u32, SessionId>,
}

impl Registry {
    /// Adds a session, or returns the one already registered under its id.
    pub fn insert(&self, session: LocalSession) -> Arc<LocalSession> {
        let Ok(mut inner) = self.inner.lock() else {
            return Arc::new(session);
        };
        if let Some(existing) = inner.by_id.get(&session.id) {
            return existing.clone();
        }
        let session = Arc::new(session);
        inner
            .by_connection
            .insert(session.proxy_connection_id, session.id.clone());
        inner.by_id.insert(session.id.clone(), session.clone());
        session
    }

    /// The session a client's connection id names, if this process knows it.
    pub fn by_connection_id(&self, connection_id: u32) -> Option<Arc<LocalSession>> {
        let inner = self.inner.lock().ok()?;
        let id = inner.by_connection.get(&connection_id)?;
        inner.by_id.get(id).cloned()
    }

    /// The session with this id, if it has channels here.
    pub fn get(&self, id: &str) -> Option<Arc<LocalSession>> {
        self.inner.lock().ok()?.by_id.get(id).cloned()
    }

    /// Forgets a session.
    pub fn remove(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock()
            && let Some(session) = inner.by_id.remove(id)
        {
            inner.by_connection.remove(&session.proxy_connection_id);
        }
    }

    /// Sessions whose main channel is relayed by another node.
    pub fn remote(&self) -> Vec<Arc<LocalSession>> {
        self.inner
            .lock()
            .map(|i| {
                i.by_id
                    .values()
                    .filter(|s| !s.holds_main)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every session, for shutdown and termination checks.
    pub fn all(&self) -> Vec<Arc<LocalSession>> {
        self.inner
            .lock()
            .map(|i| i.by_id.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|i| i.by_id.len()).unwrap_or(0)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
