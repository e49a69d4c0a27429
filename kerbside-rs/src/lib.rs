//! kerbside: a SPICE-native VDI console proxy for OpenStack.
//!
//! Modules in data-flow order:
//! - [`config`]: oslo-style INI configuration, typed and validated.
//! - [`telemetry`]: logging setup.
//! - [`shutdown`]: orderly, bounded shutdown shared by every component.
//! - [`tlsutil`]: PEM files, host subjects, generated TLS material.
//! - [`token`]: console tokens (generation, hashing); pure.
//! - [`db`]: the database (MariaDB/MySQL or SQLite via Diesel): pool, migrations, models. The
//!   one source of truth shared by every component and node.
//! - [`sources`]: static consoles from a Kerbside-compatible `sources.yaml`.
//! - [`vv`]: virt-viewer `.vv` files.
//! - [`spice`]: pure SPICE protocol code (link stage, capabilities, tickets, message framing).
//! - [`metrics`]: Prometheus metrics and their endpoint.
//! - [`keystone`]: the Keystone service session and user token validation.
//! - [`nova`]: the Nova client (spice-direct console token lookups and creation).
//! - [`api`]: the HTTP API (Nova token exchange, the operator API, the broker call).
//! - [`proxy`]: the SPICE proxy.
//! - [`notifications`]: the Nova notification consumer (ends console access when instances
//!   are deleted, stopped or moved).
//! - [`service`]: starting and stopping the components.
//! - [`cli`]: the command lines of `kerbside` and `kerbside-manage`.

pub mod api;
pub mod checks;
pub mod cli;
pub mod config;
pub mod db;
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

/// Pure SPICE protocol code: its own crate, so the fuzzers build it alone.
pub use kerbside_spice as spice;
