//! kerbside
//!
//! - `spice`: pure SPICE protocol code (link stage, caps, tickets, message framing)

pub mod spice;
