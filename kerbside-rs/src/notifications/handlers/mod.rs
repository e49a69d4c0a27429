//! Notification handlers and the dispatcher that picks one for each notification.
//!
//! A handler declares the event types it acts on and turns a notification into a [`Plan`]
//! (pure: no broker, no database). The dispatcher ignores unversioned payloads and event
//! types nobody declared; the consumer carries out plans ([`super::effects`]).

pub mod nova;

use std::collections::HashMap;

use super::envelope::Notification;
use super::error::NotifyError;

/// What to do about one notification.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// End console access to an instance: terminate its live sessions, revoke its tokens,
    /// mark its consoles stale, and audit why.
    EndInstanceAccess(InstanceEvent),
}

impl Plan {
    /// The event type the plan answers (a `'static` string from a handler's table).
    #[must_use]
    pub fn event_type(&self) -> &'static str {
        match self {
            Plan::EndInstanceAccess(e) => e.event_type,
        }
    }
}

/// A Nova instance event kerbside acts on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceEvent {
    /// E.g. `instance.delete.end`.
    pub event_type: &'static str,
    /// What happened, in words, e.g. `the instance was deleted`.
    pub what: &'static str,
    /// The instance uuid (lower case, hyphenated).
    pub instance_uuid: String,
    /// The compute host in the payload, if any (informational: sessions are matched by uuid).
    pub host: Option<String>,
    /// Who published it, e.g. `nova-compute:compute1`.
    pub publisher_id: Option<String>,
}

/// Why a notification needs nothing done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// A legacy (unversioned) payload.
    Unversioned,
    /// No handler declared the event type.
    NotSubscribed,
}

/// The dispatcher's decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// Carry out this plan.
    Act(Plan),
    /// Acknowledge and move on.
    Ignore(Ignored),
}

/// A source of plans for a set of event types.
pub trait Handler: Send + Sync {
    /// A short name for logs.
    fn name(&self) -> &'static str;

    /// The event types this handler acts on.
    fn event_types(&self) -> Vec<&'static str>;

    /// The plan for a notification of one of [`Handler::event_types`] (given as the
    /// handler's own `'static` string).
    ///
    /// # Errors
    /// [`NotifyError::Malformed`] when the payload lacks what the plan needs.
    fn plan(
        &self,
        event_type: &'static str,
        notification: &Notification,
    ) -> Result<Plan, NotifyError>;
}

/// Routes notifications to the handler that declared their event type.
pub struct Dispatcher {
    /// Event type to handler.
    routes: HashMap<&'static str, std::sync::Arc<dyn Handler>>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut types: Vec<&&str> = self.routes.keys().collect();
        types.sort();
        f.debug_struct("Dispatcher")
            .field("event_types", &types)
            .finish()
    }
}

impl Dispatcher {
    /// A dispatcher over `handlers`; a later handler declaring the same event type wins.
    #[must_use]
    pub fn new(handlers: Vec<std::sync::Arc<dyn Handler>>) -> Self {
        let mut routes = HashMap::new();
        for handler in handlers {
            for event_type in handler.event_types() {
                routes.insert(event_type, handler.clone());
            }
        }
        Dispatcher { routes }
    }

    /// The dispatcher kerbside runs: Nova's instance events.
    #[must_use]
    pub fn nova() -> Self {
        Self::new(vec![std::sync::Arc::new(nova::InstanceHandler)])
    }

    /// The event types some handler acts on, sorted.
    #[must_use]
    pub fn event_types(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.routes.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Decides what to do about `notification`.
    ///
    /// # Errors
    /// [`NotifyError::Malformed`] when a subscribed event's payload is unusable.
    pub fn route(&self, notification: &Notification) -> Result<Route, NotifyError> {
        if notification.versioned().is_none() {
            return Ok(Route::Ignore(Ignored::Unversioned));
        }
        match self.routes.get_key_value(notification.event_type.as_str()) {
            Some((event_type, handler)) => handler.plan(event_type, notification).map(Route::Act),
            None => Ok(Route::Ignore(Ignored::NotSubscribed)),
        }
    }
}
