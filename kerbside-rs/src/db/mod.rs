//! The database layer: one source of truth shared by every component on every node.
//!
//! Owns the connection pool ([`Db`]), the backend choice (MySQL/MariaDB or SQLite, see
//! [`conn`]), URL parsing ([`url`]), the schema and its migrations ([`schema`], [`migrate`])
//! and the queries the product runs ([`models`]). It does not own configuration parsing,
//! HTTP, SPICE or notification handling: those build on this module.
//!
//! Model functions are synchronous and take `&mut DbConnection`; async code runs them on the
//! blocking pool with [`Db::run`], the CLI with [`Db::get`].
//!
//! All times are UTC `NaiveDateTime`s with microsecond precision, taken from [`now`].

pub mod conn;
pub mod error;
pub mod migrate;
pub mod models;
pub mod schema;
pub mod url;

use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDateTime, SubsecRound, Utc};
use diesel::r2d2::{HandleError, Pool, PooledConnection};

pub use self::conn::{ConnectError, DbConnection, DbConnectionManager};
pub use self::error::{DbError, DbResult};
pub use self::url::DbUrl;

/// Which database engine a [`Db`] or [`DbConnection`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// MySQL or MariaDB (including Galera clusters).
    Mysql,
    /// A local SQLite file.
    Sqlite,
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Mysql => "mysql",
            Self::Sqlite => "sqlite",
        })
    }
}

/// Pool settings (from `[database]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolOptions {
    /// Most connections open at once.
    pub max_size: u32,
    /// How long to wait for a connection (to open one, or for one to be free) before the
    /// database counts as unavailable.
    pub connect_timeout: Duration,
}

impl Default for PoolOptions {
    fn default() -> Self {
        Self {
            max_size: 10,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A connection checked out of the pool; derefs to [`DbConnection`].
pub type PooledDbConnection = PooledConnection<DbConnectionManager>;

/// Handle to the database: a connection pool. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct Db {
    /// The r2d2 pool (itself an `Arc`).
    pool: Pool<DbConnectionManager>,
    /// What we connect to, for errors and logs (never contains the password in output).
    url: Arc<DbUrl>,
    /// How long a checkout may wait.
    checkout_timeout: Duration,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("url", &self.url.redacted())
            .field("state", &self.pool.state())
            .finish()
    }
}

/// The current time, UTC, truncated to microseconds (what `DATETIME(6)` keeps), so a value
/// read back compares equal to the value written on both backends.
#[must_use]
pub fn now() -> NaiveDateTime {
    Utc::now().naive_utc().trunc_subsecs(6)
}

impl Db {
    /// Open a pool for `url`, checking once that the database can be reached.
    ///
    /// The check opens one connection directly (bounded by `connect_timeout`) so that an
    /// unreachable server fails fast with the driver's reason, e.g.
    /// `cannot reach the database at mysql://kerbside:***@db:3306/kerbside: Can't connect to
    /// server on 'db' (111)`. Later outages do not break the pool: each checkout retries.
    ///
    /// This blocks the calling thread for up to `connect_timeout`.
    ///
    /// # Errors
    /// [`DbError::Unavailable`] when the first connection cannot be opened.
    pub fn connect(url: &DbUrl, opts: &PoolOptions) -> Result<Self, DbError> {
        let manager = DbConnectionManager::new(url.clone());
        probe(&manager, opts.connect_timeout).map_err(|cause| DbError::Unavailable {
            url: url.redacted(),
            cause,
        })?;
        Ok(Self::connect_lazy(url, opts))
    }

    /// Build the pool without touching the database; connections open on first use.
    #[must_use]
    pub fn connect_lazy(url: &DbUrl, opts: &PoolOptions) -> Self {
        let manager = DbConnectionManager::new(url.clone());
        let pool = Pool::builder()
            .max_size(opts.max_size.max(1))
            // Open connections on demand only: a down server must not make the pool spin.
            .min_idle(Some(0))
            .connection_timeout(opts.connect_timeout)
            .error_handler(Box::new(LogConnectError {
                url: url.redacted(),
            }))
            .build_unchecked(manager);
        Self {
            pool,
            url: Arc::new(url.clone()),
            checkout_timeout: opts.connect_timeout,
        }
    }

    /// Which backend this pool talks to.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.url.backend()
    }

    /// The database URL without its password.
    #[must_use]
    pub fn redacted_url(&self) -> String {
        self.url.redacted()
    }

    /// Check out a connection, blocking up to `connect_timeout`. For the CLI and for code
    /// already on a blocking thread; async code uses [`Db::run`].
    ///
    /// # Errors
    /// [`DbError::Unavailable`] when no connection could be had in time.
    pub fn get(&self) -> Result<PooledDbConnection, DbError> {
        self.pool
            .get_timeout(self.checkout_timeout)
            .map_err(|e| DbError::Unavailable {
                url: self.url.redacted(),
                cause: error::one_line(&e.to_string()),
            })
    }

    /// Run `f` with a pooled connection on tokio's blocking pool.
    ///
    /// A lost connection or server surfaces as [`DbError::Unavailable`] naming the
    /// (password-less) URL; every other error is returned as `f` produced it.
    ///
    /// # Errors
    /// Whatever `f` returns, [`DbError::Unavailable`] when no connection could be had or it
    /// broke, [`DbError::Task`] if `f` panicked.
    ///
    /// # Panics
    /// Never; a panic inside `f` becomes [`DbError::Task`].
    ///
    /// # Cancel safety
    /// Dropping the future does not stop `f`: it runs to completion on the blocking thread
    /// and its result is discarded. Transactions inside `f` therefore commit or roll back
    /// as a whole.
    pub async fn run<F, T>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = db.get()?;
            f(&mut conn).map_err(|e| db.classify(e))
        })
        .await
        .map_err(|e| DbError::Task(e.to_string()))?
    }

    /// Turn errors that mean "the connection is gone" into [`DbError::Unavailable`].
    fn classify(&self, err: DbError) -> DbError {
        match err {
            DbError::Query(ref q) if error::is_connection_lost(q) => DbError::Unavailable {
                url: self.url.redacted(),
                cause: error::one_line(&q.to_string()),
            },
            other => other,
        }
    }
}

/// Open one connection with a deadline, returning the driver's reason on failure.
///
/// libmysqlclient has no connect timeout set by Diesel, and a black-holed host can take
/// minutes to fail, so the attempt runs on its own thread and is abandoned after `timeout`.
fn probe(manager: &DbConnectionManager, timeout: Duration) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let manager = manager.clone();
    std::thread::Builder::new()
        .name("kerbside-db-probe".to_owned())
        .spawn(move || {
            let result = diesel::r2d2::ManageConnection::connect(&manager).map(drop);
            // The receiver may have given up already; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| format!("cannot start the connection thread: {e}"))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.0),
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// r2d2 error handler: one warning per failed background connect, without the password.
#[derive(Debug)]
struct LogConnectError {
    /// Redacted URL for the log line.
    url: String,
}

impl HandleError<ConnectError> for LogConnectError {
    fn handle_error(&self, error: ConnectError) {
        tracing::warn!(db.url = %self.url, error = %error, "database connection failed");
    }
}
