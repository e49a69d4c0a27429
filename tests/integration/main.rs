//! The integration tests: one binary, one module per area. Every test drives real parts
//! (MariaDB, RabbitMQ, QEMU, spice-gtk clients); a missing one fails the test.

// Lets helper functions use the test-only lint allowances (unwrap, indexing) too.
#![cfg(test)]

mod api;
mod cli;
mod db;
mod notifications;
mod peers;
mod proxy;
mod readiness;
