//! The integration tests: one binary, one module per area. Every test drives real parts
//! (MariaDB, QEMU, spice-gtk clients); a missing one fails the test.

mod cli;
mod db;
mod peers;
mod proxy;
