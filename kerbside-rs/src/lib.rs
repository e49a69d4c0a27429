//! kerbside: a SPICE-native VDI console proxy for OpenStack.
//!
//! Modules in data-flow order:
//! - [`config`]: oslo-style INI configuration, typed and validated.
//! - [`tlsutil`]: PEM files, host subjects, generated TLS material.
//! - [`spice`]: pure SPICE protocol code (link stage, capabilities, tickets, message framing).

pub mod config;
pub mod spice;
pub mod tlsutil;
