//! kerbside: a SPICE-native VDI console proxy for OpenStack.
//!
//! Modules in data-flow order:
//! - [`config`]: oslo-style INI configuration, typed and validated.
//! - [`tlsutil`]: PEM files, host subjects, generated TLS material.

pub mod config;
pub mod tlsutil;
