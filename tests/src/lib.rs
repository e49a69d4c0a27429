//! harness
//!
//! - [`db`]: `TestDatabase`, a throwaway migrated database on SQLite or MariaDB.

pub mod db;
