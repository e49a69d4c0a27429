//! integration

mod peers;
mod proxy;
