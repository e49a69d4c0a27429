//! `DbError`: the one error type of the database layer.
//!
//! Owns the mapping from Diesel, r2d2 and migration failures to the kinds callers act on
//! (not found, conflict, unavailable, schema out of date). It does not decide HTTP status
//! codes or retry policy: the API maps `NotFound` to 404 in one place, and callers ask
//! [`DbError::is_transient`] before retrying.
//!
//! No variant ever carries a password, token or SPICE ticket: URLs are always the
//! password-less display form produced by [`crate::db::DbUrl`].

use diesel::result::{DatabaseErrorKind, Error as DieselError};

/// Everything that can go wrong in `kerbside::db`.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A row that the caller named does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// What was looked for, e.g. `"console"`.
        what: &'static str,
        /// The identifier that was looked for (never a secret: tokens are looked up by hash).
        id: String,
    },

    /// The change would violate a uniqueness or state rule.
    #[error("{what} {id} conflicts: {reason}")]
    Conflict {
        /// The kind of row, e.g. `"session"`.
        what: &'static str,
        /// Its identifier.
        id: String,
        /// Why the change was refused.
        reason: String,
    },

    /// The caller passed a value the database layer refuses to store.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which value, e.g. `"token hash"`.
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// The database cannot be reached (connect failure, pool timeout, server gone away).
    #[error("cannot reach the database at {url}: {cause}")]
    Unavailable {
        /// The database URL with its password replaced by `***`.
        url: String,
        /// The underlying cause, on one line.
        cause: String,
    },

    /// `[database] connection` is not a URL this service can use.
    #[error(transparent)]
    InvalidUrl(#[from] super::url::InvalidUrl),

    /// The schema is older than this release: run `kerbside-manage db sync`.
    #[error(
        "the database schema is out of date ({} pending migration(s): {}); run `kerbside-manage db sync`",
        pending.len(),
        pending.join(", ")
    )]
    PendingMigrations {
        /// Names of the migrations that have not been applied, oldest first.
        pending: Vec<String>,
    },

    /// The private database file or its directory could not be created or made private.
    #[error("cannot {action} {}: {source}", path.display())]
    PrivateFile {
        /// What was being done, e.g. `"create"`.
        action: &'static str,
        /// The file or directory.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },

    /// A query failed.
    #[error("database query failed: {0}")]
    Query(#[from] DieselError),

    /// Applying or inspecting migrations failed.
    #[error("database migration failed: {0}")]
    Migration(String),

    /// The blocking task that ran the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

/// Convenience alias used throughout `kerbside::db`.
pub type DbResult<T> = Result<T, DbError>;

impl DbError {
    /// Whether retrying the same operation later may succeed.
    ///
    /// True for an unreachable server, a lost connection, a deadlock or serialization
    /// failure, a lock-wait timeout, a busy SQLite file and a Galera node that is not yet
    /// ready. False for everything that would fail the same way again (not found,
    /// conflicts, constraint violations, bad SQL, bad URL, pending migrations).
    #[must_use]
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unavailable { .. } => true,
            Self::Query(err) => is_transient_diesel(err),
            Self::NotFound { .. }
            | Self::Conflict { .. }
            | Self::Invalid { .. }
            | Self::InvalidUrl(_)
            | Self::PrivateFile { .. }
            | Self::PendingMigrations { .. }
            | Self::Migration(_)
            | Self::Task(_) => false,
        }
    }

    /// Whether this is a unique-constraint violation reported by the database.
    #[must_use]
    pub fn is_unique_violation(&self) -> bool {
        matches!(
            self,
            Self::Query(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _
            ))
        )
    }

    /// Whether this is a foreign-key violation reported by the database.
    #[must_use]
    pub fn is_foreign_key_violation(&self) -> bool {
        matches!(
            self,
            Self::Query(DieselError::DatabaseError(
                DatabaseErrorKind::ForeignKeyViolation,
                _
            ))
        )
    }
}

/// Messages (lower-cased) that mean the connection or server is gone, not the query.
///
/// MySQL client errors 2002/2003/2006/2013/4031 and Galera's "WSREP has not yet prepared node"
/// all reach Diesel as `DatabaseErrorKind::Unknown`, so the text is all there is to go on.
const CONNECTION_LOST_MARKERS: &[&str] = &[
    "server has gone away",
    "lost connection",
    "can't connect",
    "connection refused",
    "connection was killed",
    "disconnected by the server",
    "wsrep has not yet prepared node",
    "unknown mysql server host",
];

/// Messages (lower-cased) for contention that clears up on its own.
const CONTENTION_MARKERS: &[&str] = &[
    "lock wait timeout",
    "deadlock found",
    "database is locked",
    "database table is locked",
];

/// Whether a Diesel error means the connection (not the statement) failed.
pub(crate) fn is_connection_lost(err: &DieselError) -> bool {
    match err {
        DieselError::BrokenTransactionManager => true,
        DieselError::DatabaseError(DatabaseErrorKind::ClosedConnection, _) => true,
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let msg = info.message().to_ascii_lowercase();
            CONNECTION_LOST_MARKERS.iter().any(|m| msg.contains(m))
        }
        _ => false,
    }
}

fn is_transient_diesel(err: &DieselError) -> bool {
    match err {
        DieselError::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => true,
        DieselError::DatabaseError(DatabaseErrorKind::Unknown, info) => {
            let msg = info.message().to_ascii_lowercase();
            CONTENTION_MARKERS.iter().any(|m| msg.contains(m)) || is_connection_lost(err)
        }
        other => is_connection_lost(other),
    }
}
