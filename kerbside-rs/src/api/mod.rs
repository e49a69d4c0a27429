//! The HTTP API on `[api] bind_host:bind_port` (actix-web):
//!
//! - `GET /`, `GET /healthcheck`, `GET /openapi.json`;
//! - `GET /nova?token=T` and `GET /nova-console.vv?token=T`: Nova spice-direct console token
//!   exchange (the Nova token is the credential);
//! - `GET /spice_auto.html?token=T` and the spice-html5 client's files: browser consoles
//!   (`[html5]`);
//! - `/v1/...`: the operator API (Keystone `X-Auth-Token`, oslo.policy-style rules) and the
//!   broker call for dashboards, `POST /v1/servers/{instance_uuid}/console`;
//! - `/ui/...`: the web console (HTML pages for operators and users; not part of the REST
//!   API and not in the OpenAPI document), see [`ui`].
//!
//! Owns HTTP: routing, authentication, authorization, error bodies and the OpenAPI
//! document. Keystone and Nova calls live in [`crate::keystone`] and [`crate::nova`], data in
//! [`crate::db`]. It never imports the proxy or the notification consumer.

pub mod access;
pub mod auth;
pub mod error;
pub mod exchange;
pub mod html5;
pub mod openapi;
pub mod policy;
pub mod ratelimit;
pub mod routes;
pub mod server;
pub mod state;
pub mod ui;
pub mod v1;
pub mod versions;

pub use error::ApiError;
pub use routes::openapi;
pub use server::start;
pub use state::{ApiState, StartError};
