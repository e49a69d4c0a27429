//! kerbside: a SPICE-native VDI console proxy for OpenStack.
//!
//! Modules in data-flow order:
//! - [`config`]: oslo-style INI configuration, typed and validated.
//! - [`telemetry`]: logging setup, and [`telemetry::one_line`] for causes logged on one line.
//! - [`shutdown`]: orderly, bounded shutdown shared by every component.
//! - [`tlsutil`]: PEM files, host subjects, generated TLS material.
//! - [`token`]: console tokens (generation, hashing); pure.
//! - [`db`]: the database (MariaDB/MySQL or SQLite via Diesel): pool, migrations, models. The
//!   one source of truth shared by every component and node.
//! - [`sources`]: static consoles from a Kerbside-compatible `sources.yaml`.
//! - [`vv`]: virt-viewer `.vv` files.
//! - [`spice`]: pure SPICE protocol code (link stage, capabilities, tickets, message framing,
//!   the firewall's rules).
//! - [`firewall`]: firewall profiles loaded from the profiles file.
//! - [`metrics`]: Prometheus metrics and their endpoint.
//! - [`keystone`]: the Keystone service session and user token validation.
//! - [`nova`]: the Nova client (console token lookups, spice-direct console creation).
//! - [`api`]: the HTTP API (Nova token exchange, browser console pages, the operator API,
//!   the broker call).
//! - [`proxy`]: the SPICE proxy (SPICE over TLS, and over WebSocket for browsers).
//! - [`notifications`]: the Nova notification consumer (ends console access when instances
//!   are deleted, stopped or moved).
//! - [`checks`]: `kerbside-manage config check`'s checks that need other modules (database
//!   URL, the proxy's TLS identity, the sources file).
//! - [`service`]: the components and their start and stop.
//! - [`manage`]: the `kerbside-manage` commands and the work of those that use the database
//!   (schema, tokens, sessions).
//! - [`cli`]: the command lines of `kerbside` and `kerbside-manage`: parsing and dispatch.

pub mod api;
pub mod checks;
pub mod cli;
pub mod config;
pub mod db;
pub mod firewall;
pub mod keystone;
pub mod manage;
pub mod metrics;
pub mod notifications;
pub mod nova;
pub mod proxy;
pub mod service;
pub mod shutdown;
pub mod sources;
pub mod telemetry;
pub mod tlsutil;
pub mod token;
pub mod vv;

#[cfg(test)]
mod module_cycles;

/// Pure SPICE protocol code: its own crate, so the fuzzers build it alone.
pub use kerbside_spice as spice;
