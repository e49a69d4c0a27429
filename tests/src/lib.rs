//! The test harness: real peers and services, and kerbside itself, for the integration tests.
//!
//! - [`require`]: fail loudly when a peer or service is missing.
//! - [`ports`]: free loopback ports.
//! - [`pki`]: a throwaway CA.
//! - [`qemu`]: QEMU as the SPICE server, with QMP.
//! - [`guests`]: guests QEMU boots, assembled at test time (the key-echo boot sector).
//! - [`clients`]: spicy-screenshot, the SpiceClientGLib probe, remote-viewer.
//! - [`browser`]: headless Chromium under chromedriver, for what a web page shows.
//! - [`ryll`]: ryll, an independent (non-spice-gtk) SPICE client, headless.
//! - [`screens`]: comparing screenshots of a VM screen.
//! - [`spice_client`]: a scripted SPICE client and server.
//! - [`db`]: `TestDatabase`, a throwaway migrated database on SQLite or MariaDB.
//! - [`rabbit`]: RabbitMQ with per-test names, publishing Nova notification fixtures.
//! - [`chaos`]: a TCP relay a test can sever and restore.
//! - [`openstack`]: real Keystone and Nova API from PyPI, on loopback.
//! - [`openstack_full`]: a complete small OpenStack (Nova with two fake compute hosts,
//!   Placement, Glance, Neutron) for the Nova tests.
//! - [`app`]: kerbside itself, in-process.
//! - [`logs`]: the log events of one test, to assert what was logged.

pub mod app;
pub mod browser;
pub mod chaos;
pub mod clients;
pub mod db;
pub mod guests;
pub mod logs;
pub mod openstack;
pub mod openstack_full;
pub mod pki;
pub mod ports;
mod proc_util;
pub mod qemu;
pub mod rabbit;
pub mod require;
pub mod ryll;
pub mod screens;
pub mod spice_client;
pub mod wait;
