//! The test harness: real peers and services, and kerbside itself, for the integration tests.
//!
//! - [`require`]: fail loudly when a peer or service is missing.
//! - [`ports`]: free loopback ports.
//! - [`pki`]: a throwaway CA.
//! - [`qemu`]: QEMU as the SPICE server, with QMP.
//! - [`clients`]: spicy-screenshot, the SpiceClientGLib probe, remote-viewer.
//! - [`spice_client`]: a scripted SPICE client and server.
//! - [`db`]: `TestDatabase`, a throwaway migrated database on SQLite or MariaDB.
//! - [`rabbit`]: RabbitMQ with per-test names, publishing Nova notification fixtures.
//! - [`chaos`]: a TCP relay a test can sever and restore.
//! - [`openstack`]: real Keystone and Nova API from PyPI, on loopback.
//! - [`app`]: kerbside itself, in-process.

pub mod app;
pub mod chaos;
pub mod clients;
pub mod db;
pub mod openstack;
pub mod pki;
pub mod ports;
mod proc_util;
pub mod qemu;
pub mod rabbit;
pub mod require;
pub mod spice_client;
