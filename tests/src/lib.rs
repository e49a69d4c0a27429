//! harness
//!
//! SPICE peers for end-to-end tests: [`require`] (fail loudly when a peer is missing),
//! [`ports`] (free loopback ports), [`pki`] (a throwaway CA), [`qemu`] (QEMU as the
//! SPICE server, with QMP) and [`clients`] (spicy-screenshot, the SpiceClientGLib
//! probe, remote-viewer), [`spice_client`] (a scripted SPICE client and server) and [`app`]
//! (kerbside itself, in-process).

pub mod app;
pub mod clients;
pub mod pki;
pub mod ports;
mod proc_util;
pub mod qemu;
pub mod require;
pub mod spice_client;
