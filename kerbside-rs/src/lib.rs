//! kerbside
//!
//! Module map, in data-flow order:
//! - [`token`]: console access tokens (generation, hashing); pure.
//! - [`db`]: the database layer (MariaDB/MySQL or SQLite via Diesel): pool, migrations,
//!   models. The one source of truth shared by every component and node.

pub mod db;
pub mod token;
