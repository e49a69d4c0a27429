//! integration

mod peers;
