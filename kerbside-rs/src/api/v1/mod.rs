//! The operator API, version 1: sources, consoles (with their audit events and `.vv`
//! issuing), sessions (with termination) and the broker call for dashboards.
//!
//! Every handler takes an [`Identity`](super::auth::Identity) and checks one policy rule
//! before touching the database. Tickets, source passwords and tokens are never returned.

pub mod consoles;
pub mod servers;
pub mod sessions;
pub mod sources;

use std::collections::HashMap;

use chrono::{NaiveDateTime, TimeZone, Utc};

/// A policy target with no attributes.
pub(crate) fn no_target() -> HashMap<String, String> {
    HashMap::new()
}

/// A database time (UTC) in RFC 3339.
pub(crate) fn rfc3339(t: NaiveDateTime) -> String {
    Utc.from_utc_datetime(&t)
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}
