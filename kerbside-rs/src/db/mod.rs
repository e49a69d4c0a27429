//! The database layer: one source of truth shared by every component on every node.
//!
//! Owns the connection pool ([`Db`]), the backend choice (MySQL/MariaDB or SQLite, see
//! [`conn`]), URL parsing ([`url`]), the schema and its migrations ([`schema`], [`migrate`])
//! and the queries the product runs ([`models`]). It does not own configuration parsing,
//! HTTP, SPICE or notification handling: those build on this module.
//!
//! Model functions are synchronous and take `&mut DbConnection`; async code (the services
//! and `kerbside-manage` alike) runs them on the blocking pool with [`Db::run`], and
//! synchronous code such as a test takes a pooled connection with [`Db::get`].
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

use crate::telemetry::one_line;

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
            cause: cause.0,
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
                last: std::sync::Mutex::new(None),
                suppressed: std::sync::atomic::AtomicU64::new(0),
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
                cause: one_line(&e.to_string()),
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

    /// [`Db::run`], but waiting at most `checkout` for a connection (instead of the pool's
    /// `connect_timeout`). For paths with their own deadline, such as the proxy's link stage,
    /// which must report a database outage before its client gives up. Once a connection is
    /// had, `f` runs to completion as with [`Db::run`].
    ///
    /// # Errors
    /// As [`Db::run`].
    ///
    /// # Cancel safety
    /// As [`Db::run`].
    pub async fn run_within<F, T>(&self, checkout: Duration, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        let db = self.clone();
        let checkout = checkout.min(self.checkout_timeout);
        tokio::task::spawn_blocking(move || {
            let mut conn = db
                .pool
                .get_timeout(checkout)
                .map_err(|e| DbError::Unavailable {
                    url: db.url.redacted(),
                    cause: one_line(&e.to_string()),
                })?;
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
                cause: one_line(&q.to_string()),
            },
            other => other,
        }
    }
}

/// Makes an SQLite database file private before it is opened: its directory is created
/// (mode 0700) when missing, the file is created with mode 0600, and an existing file, `-wal`
/// or `-shm` readable by others is tightened to 0600 (logged). The file holds static sources'
/// hypervisor tickets; SQLite gives its journal files the database file's mode.
///
/// # Errors
/// [`DbError::PrivateFile`] naming the file or directory that could not be created or changed.
pub fn secure_sqlite_file(path: &std::path::Path) -> Result<(), DbError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty())
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| DbError::PrivateFile {
                action: "create",
                path: parent.to_path_buf(),
                source,
            })?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| DbError::PrivateFile {
            action: "create",
            path: path.to_path_buf(),
            source,
        })?;
    let mut files = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        files.push(name.into());
    }
    for file in files {
        if file.exists() {
            tighten_mode(&file, 0o600)?;
        }
    }
    Ok(())
}

/// Removes the permission bits of `path` beyond `mode` (logged when it changes anything).
///
/// # Errors
/// [`DbError::PrivateFile`] naming the path when it cannot be read or changed.
pub fn tighten_mode(path: &std::path::Path, mode: u32) -> Result<(), DbError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| DbError::PrivateFile {
        action: "read",
        path: path.to_path_buf(),
        source,
    })?;
    let current = meta.permissions().mode() & 0o7777;
    if current & !mode == 0 {
        return Ok(());
    }
    let tightened = current & mode;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(tightened)).map_err(
        |source| DbError::PrivateFile {
            action: "change the mode of",
            path: path.to_path_buf(),
            source,
        },
    )?;
    tracing::info!(
        path = %path.display(),
        from = format!("{current:04o}"),
        to = format!("{tightened:04o}"),
        "tightened the permissions of a private file"
    );
    Ok(())
}

/// Open one connection with a deadline, returning the driver's reason on failure.
///
/// libmysqlclient has no connect timeout set by Diesel, and a black-holed host can take
/// minutes to fail, so the attempt runs on its own thread and is abandoned after `timeout`.
fn probe(manager: &DbConnectionManager, timeout: Duration) -> Result<(), ConnectError> {
    let (tx, rx) = std::sync::mpsc::channel();
    let manager = manager.clone();
    std::thread::Builder::new()
        .name("kerbside-db-probe".to_owned())
        .spawn(move || {
            let result = diesel::r2d2::ManageConnection::connect(&manager).map(drop);
            // The receiver may have given up already; nothing to do then.
            let _ = tx.send(result);
        })
        .map_err(|e| ConnectError(format!("cannot start the connection thread: {e}")))?;
    match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => Err(ConnectError(format!(
            "no answer within {} ms",
            timeout.as_millis()
        ))),
    }
}

/// r2d2 error handler: a warning for a failed connect, without the password. During an
/// outage every checkout retries many times a second, so at most one warning per
/// [`CONNECT_ERROR_LOG_INTERVAL`] is logged, with the count of those not logged.
#[derive(Debug)]
struct LogConnectError {
    /// Redacted URL for the log line.
    url: String,
    /// When the last warning was logged.
    last: std::sync::Mutex<Option<std::time::Instant>>,
    /// Failures since then.
    suppressed: std::sync::atomic::AtomicU64,
}

/// Least time between two "database connection failed" warnings.
const CONNECT_ERROR_LOG_INTERVAL: Duration = Duration::from_secs(30);

impl HandleError<ConnectError> for LogConnectError {
    fn handle_error(&self, error: ConnectError) {
        use std::sync::atomic::Ordering;
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < CONNECT_ERROR_LOG_INTERVAL) {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        *last = Some(std::time::Instant::now());
        let suppressed = self.suppressed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            db.url = %self.url,
            error = %error,
            failures_not_logged = suppressed,
            "database connection failed"
        );
    }
}
