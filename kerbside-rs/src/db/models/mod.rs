//! Rows, inserts and changesets for every table, and the operations the product runs on
//! them.
//!
//! Conventions: a row is `Console`, an insert `NewConsole`, a changeset `ConsoleChanges`, and
//! ids are newtypes such as [`ConsoleId`], all in [`ids`]. Operations are plain
//! synchronous functions taking `&mut DbConnection`; async callers wrap them in
//! [`crate::db::Db::run`]. `get_*` returns [`crate::db::DbError::NotFound`] when the row is
//! absent, `find_*` returns `Option`.
//!
//! Upserts are written "update, else insert, retry on a unique violation" rather than with
//! `INSERT ... ON DUPLICATE KEY` / `ON CONFLICT`: Diesel's multi-backend connection cannot
//! build either, and the pattern needs no transaction, which avoids SQLite's
//! read-then-write `SQLITE_BUSY` and holds under concurrent writers on both backends.

pub mod audit_event;
pub mod channel;
pub mod console;
pub mod console_token;
#[cfg(test)]
pub mod fixtures;
pub mod ids;
pub mod session;
pub mod session_termination;
pub mod source;
pub mod web_session;

pub use self::audit_event::*;
pub use self::channel::*;
pub use self::console::*;
pub use self::console_token::*;
pub use self::ids::*;
pub use self::session::*;
pub use self::session_termination::*;
pub use self::source::*;
pub use self::web_session::*;

use diesel::backend::Backend as DieselBackend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;
use secrecy::{ExposeSecret, SecretString};

/// Largest page any list operation returns.
pub const MAX_PAGE_SIZE: i64 = 1000;

/// How many times an upsert retries after losing an insert race.
pub(crate) const UPSERT_ATTEMPTS: usize = 3;

/// A hypervisor's SPICE password, as stored in `consoles.ticket`.
///
/// Needed to link upstream; never returned by the API and never logged (`Debug` prints
/// `[REDACTED]`). Use [`ExposeSecret::expose_secret`] at the one place it is sent.
#[derive(Clone, AsExpression, FromSqlRow)]
#[diesel(sql_type = Text)]
pub struct Ticket(SecretString);

impl Ticket {
    /// Wrap a ticket.
    #[must_use]
    pub fn new(ticket: impl Into<String>) -> Self {
        Self(SecretString::from(ticket.into()))
    }
}

impl ExposeSecret<str> for Ticket {
    fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ticket([REDACTED])")
    }
}

impl From<SecretString> for Ticket {
    fn from(secret: SecretString) -> Self {
        Self(secret)
    }
}

impl<DB> ToSql<Text, DB> for Ticket
where
    DB: DieselBackend,
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        <str as ToSql<Text, DB>>::to_sql(self.0.expose_secret(), out)
    }
}

impl<DB> FromSql<Text, DB> for Ticket
where
    DB: DieselBackend,
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        <String as FromSql<Text, DB>>::from_sql(bytes).map(|s| Self(SecretString::from(s)))
    }
}

/// Clamp a caller's page size to `1..=MAX_PAGE_SIZE`.
pub(crate) fn page_size(limit: i64) -> i64 {
    limit.clamp(1, MAX_PAGE_SIZE)
}

/// Store a byte counter in a signed `BIGINT`, saturating (2^63 bytes will not happen).
pub(crate) fn counter(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}
