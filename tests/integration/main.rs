//! The integration tests: one binary, one module per area. Every test drives real parts
//! (MariaDB, RabbitMQ, QEMU, spice-gtk clients); a missing one fails the test.

// Lets helper functions use the test-only lint allowances (unwrap, indexing) too.
#![cfg(test)]

mod api;
mod browser;
mod cli;
mod db;
mod firewall;
mod hardening;
mod html5;
mod lifecycle;
mod notifications;
mod nova_real;
mod openapi;
mod outages;
mod peers;
mod proxy;
mod readiness;
mod ryll;
mod webui;
