//! harness
//!
//! SPICE peers for end-to-end tests: [`require`] (fail loudly when a peer is missing),
//! [`ports`] (free loopback ports), [`pki`] (a throwaway CA), [`qemu`] (QEMU as the
//! SPICE server, with QMP) and [`clients`] (spicy-screenshot, the SpiceClientGLib
//! probe, remote-viewer). Services: [`rabbit`] (RabbitMQ with per-test names, publishing
//! Nova notification fixtures) and [`chaos`] (a TCP relay a test can sever and restore).

pub mod chaos;
pub mod clients;
pub mod pki;
pub mod ports;
mod proc_util;
pub mod qemu;
pub mod rabbit;
pub mod require;
