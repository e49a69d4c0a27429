//! Schema migrations, embedded in the binary: one tree per backend with the same
//! directory names (`migrations/mysql/<name>` and `migrations/sqlite/<name>`).
//!
//! Owns applying migrations (`kerbside-manage db sync`), reporting the schema version
//! (`db version`) and the start-up check that refuses to run on an out-of-date schema.
//! It does not decide *when* to migrate: the CLI and services do (an embedded SQLite
//! database may migrate itself at start-up, see [`Db::ensure_schema`]).
//!
//! MySQL commits every DDL statement implicitly, so a migration that fails half-way leaves
//! part of its tables behind. The MySQL migrations are therefore written to be re-runnable
//! (`CREATE TABLE IF NOT EXISTS`, indexes declared inside `CREATE TABLE`).

use diesel::migration::{Migration, MigrationSource};
use diesel::mysql::Mysql;
use diesel::sqlite::Sqlite;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::error::DbError;
use super::{Db, DbConnection};

/// The MySQL/MariaDB migrations.
pub const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/mysql");

/// The SQLite migrations (same names as [`MYSQL_MIGRATIONS`]).
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Names of the embedded MySQL migrations, oldest first (e.g. `2026-11-22-000001_initial`).
///
/// # Errors
/// [`DbError::Migration`] if the embedded set cannot be listed (not expected).
pub fn mysql_migration_names() -> Result<Vec<String>, DbError> {
    names(MigrationSource::<Mysql>::migrations(&MYSQL_MIGRATIONS))
}

/// Names of the embedded SQLite migrations, oldest first.
///
/// # Errors
/// [`DbError::Migration`] if the embedded set cannot be listed (not expected).
pub fn sqlite_migration_names() -> Result<Vec<String>, DbError> {
    names(MigrationSource::<Sqlite>::migrations(&SQLITE_MIGRATIONS))
}

fn names<DB: diesel::backend::Backend>(
    list: diesel::migration::Result<Vec<Box<dyn Migration<DB>>>>,
) -> Result<Vec<String>, DbError> {
    let mut names: Vec<String> = list
        .map_err(migration_error)?
        .iter()
        .map(|m| m.name().to_string())
        .collect();
    names.sort();
    Ok(names)
}

fn migration_error(e: Box<dyn std::error::Error + Send + Sync>) -> DbError {
    DbError::Migration(crate::telemetry::one_line(&e.to_string()))
}

impl DbConnection {
    /// Names of the migrations not yet applied to this database, oldest first.
    ///
    /// # Errors
    /// [`DbError::Migration`] if the migration table cannot be read or created.
    pub fn pending_migrations(&mut self) -> Result<Vec<String>, DbError> {
        let mut names: Vec<String> = match self {
            Self::Mysql(conn) => conn
                .pending_migrations(MYSQL_MIGRATIONS)
                .map_err(migration_error)?
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
            Self::Sqlite(conn) => conn
                .pending_migrations(SQLITE_MIGRATIONS)
                .map_err(migration_error)?
                .iter()
                .map(|m| m.name().to_string())
                .collect(),
        };
        names.sort();
        Ok(names)
    }

    /// Apply every pending migration; returns the names applied, oldest first.
    ///
    /// # Errors
    /// [`DbError::Migration`] naming the cause. On MySQL the failed migration may have left
    /// tables behind (DDL is not transactional there); fix the cause and run it again.
    pub fn run_pending_migrations(&mut self) -> Result<Vec<String>, DbError> {
        let pending = self.pending_migrations()?;
        let versions = match self {
            Self::Mysql(conn) => conn
                .run_pending_migrations(MYSQL_MIGRATIONS)
                .map_err(migration_error)?
                .len(),
            Self::Sqlite(conn) => conn
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map_err(migration_error)?
                .len(),
        };
        // Diesel reports versions only; the names are nicer to print.
        Ok(pending.into_iter().take(versions).collect())
    }

    /// The newest applied migration: its name when this binary knows it, otherwise the bare
    /// version (a database migrated by a newer release). `None` on an empty database.
    ///
    /// # Errors
    /// [`DbError::Migration`] if the migration table cannot be read or created.
    pub fn schema_version(&mut self) -> Result<Option<String>, DbError> {
        let (applied, known) = match self {
            Self::Mysql(conn) => (
                conn.applied_migrations().map_err(migration_error)?,
                mysql_migration_names()?,
            ),
            Self::Sqlite(conn) => (
                conn.applied_migrations().map_err(migration_error)?,
                sqlite_migration_names()?,
            ),
        };
        let Some(newest) = applied.iter().map(ToString::to_string).max() else {
            return Ok(None);
        };
        let name = known
            .into_iter()
            .find(|name| version_of(name) == newest)
            .unwrap_or(newest);
        Ok(Some(name))
    }
}

/// Diesel's version for a migration directory name: the part before the first `_`,
/// without dashes (`2026-11-22-000001_initial` → `20261122000001`).
fn version_of(name: &str) -> String {
    name.split('_').next().unwrap_or_default().replace('-', "")
}

impl Db {
    /// Apply pending migrations (`kerbside-manage db sync`); returns the names applied.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] or [`DbError::Migration`].
    ///
    /// # Cancel safety
    /// Not cancel safe in effect: a dropped future does not stop the migration.
    pub async fn sync(&self) -> Result<Vec<String>, DbError> {
        self.run(|conn| conn.run_pending_migrations()).await
    }

    /// The schema version (`kerbside-manage db version`); `None` on an empty database.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] or [`DbError::Migration`].
    ///
    /// # Cancel safety
    /// Cancel safe (read only).
    pub async fn version(&self) -> Result<Option<String>, DbError> {
        self.run(|conn| conn.schema_version()).await
    }

    /// Refuse to run on an out-of-date schema.
    ///
    /// # Errors
    /// [`DbError::PendingMigrations`] naming what `db sync` would apply, or
    /// [`DbError::Unavailable`] / [`DbError::Migration`].
    ///
    /// # Cancel safety
    /// Cancel safe (read only, apart from Diesel creating its bookkeeping table).
    pub async fn check_current(&self) -> Result<(), DbError> {
        let pending = self.run(|conn| conn.pending_migrations()).await?;
        if pending.is_empty() {
            Ok(())
        } else {
            Err(DbError::PendingMigrations { pending })
        }
    }

    /// What a service does at start-up: an embedded SQLite database migrates itself (and
    /// returns what it applied); MySQL/MariaDB must already be current (`db sync` is an
    /// explicit deployment step there, so several nodes never race to migrate).
    ///
    /// # Errors
    /// As [`Db::sync`] for SQLite and [`Db::check_current`] for MySQL.
    ///
    /// # Cancel safety
    /// As [`Db::sync`].
    pub async fn ensure_schema(&self) -> Result<Vec<String>, DbError> {
        match self.backend() {
            super::Backend::Sqlite => self.sync().await,
            super::Backend::Mysql => self.check_current().await.map(|()| Vec::new()),
        }
    }
}
