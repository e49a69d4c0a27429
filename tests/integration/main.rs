//! integration

mod notifications;
mod peers;
