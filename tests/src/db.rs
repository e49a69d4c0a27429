//! `TestDatabase`: a throwaway, migrated kerbside database per test, on SQLite or MariaDB.
//!
//! - SQLite: a file in a fresh temporary directory, removed with it.
//! - MariaDB: `CREATE DATABASE kerbside_test_<unix seconds>_<16 random [a-z0-9]>` on the
//!   server named by `KERBSIDE_TEST_MARIADB_URL` (default `mysql://root@127.0.0.1:3306`),
//!   dropped when the `TestDatabase` is dropped. The first MariaDB database a process creates
//!   also sweeps `kerbside_test_*` databases whose embedded timestamp is more than an hour
//!   old (left by killed runs); younger ones may belong to a test process running right now.
//!
//! MariaDB is required: if it cannot be reached the test fails with a message saying where
//! it looked and why, never skips.
//!
//! It also holds the few model queries only tests need ([`insert_source`],
//! [`live_sessions_on_node`], [`update_session_counters`], [`pending_terminations_for_node`]),
//! built on the public model API.

use std::path::PathBuf;
use std::sync::Once;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, anyhow, bail};
use diesel::prelude::*;
use diesel::sql_types::Text;
use kerbside::db::models::{
    NewSource, Session, SessionId, SessionTermination, Source, get_session, get_source_by_name,
    list_sessions, pending_terminations, update_sessions_counters,
};
use kerbside::db::{Backend, Db, DbConnection, DbError, DbUrl, PoolOptions};
use rand::Rng;
use rand::distributions::Alphanumeric;

/// Environment variable naming the MariaDB server for tests (no database in the path).
pub const MARIADB_URL_ENV: &str = "KERBSIDE_TEST_MARIADB_URL";

/// Server used when [`MARIADB_URL_ENV`] is unset. `127.0.0.1`, not `localhost`: the MySQL
/// client would take `localhost` to mean the Unix socket.
pub const DEFAULT_MARIADB_URL: &str = "mysql://root@127.0.0.1:3306";

/// Prefix of every database a `TestDatabase` creates.
pub const DATABASE_PREFIX: &str = "kerbside_test_";

/// Leftover test databases older than this are dropped by the sweep.
const SWEEP_AGE: Duration = Duration::from_secs(3600);

/// Guards the once-per-process sweep.
static SWEEP: Once = Once::new();

/// A migrated kerbside database that disappears when dropped.
pub struct TestDatabase {
    /// Pool on the test database.
    db: Db,
    /// Its URL.
    url: DbUrl,
    /// Keeps the SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// The MariaDB database to drop, and the admin URL to drop it with.
    mariadb: Option<MariadbScratch>,
}

/// A MariaDB database owned by one `TestDatabase`.
struct MariadbScratch {
    /// Database name (`kerbside_test_...`).
    name: String,
    /// Diesel URL of the server's `information_schema`, used for CREATE/DROP.
    admin_diesel_url: String,
}

impl std::fmt::Debug for TestDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDatabase")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl TestDatabase {
    /// A migrated database on `backend`.
    ///
    /// # Errors
    /// If the database cannot be created or migrated (for MariaDB: not reachable).
    pub async fn new(backend: Backend) -> anyhow::Result<Self> {
        let test_db = Self::unmigrated(backend).await?;
        test_db
            .db
            .sync()
            .await
            .with_context(|| format!("migrating {}", test_db.url))?;
        Ok(test_db)
    }

    /// A migrated SQLite database.
    ///
    /// # Errors
    /// See [`TestDatabase::new`].
    pub async fn sqlite() -> anyhow::Result<Self> {
        Self::new(Backend::Sqlite).await
    }

    /// A migrated MariaDB database.
    ///
    /// # Errors
    /// See [`TestDatabase::new`].
    pub async fn mariadb() -> anyhow::Result<Self> {
        Self::new(Backend::Mysql).await
    }

    /// An empty database (no migrations applied) on `backend`.
    ///
    /// # Errors
    /// If the database cannot be created (for MariaDB: not reachable).
    pub async fn unmigrated(backend: Backend) -> anyhow::Result<Self> {
        match backend {
            Backend::Sqlite => Self::new_sqlite(),
            Backend::Mysql => Self::new_mariadb().await,
        }
    }

    fn new_sqlite() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir().context("creating a temporary directory")?;
        let path: PathBuf = dir.path().join("kerbside.sqlite");
        let url = DbUrl::Sqlite { path };
        let db = Db::connect(&url, &pool_options())?;
        Ok(Self {
            db,
            url,
            _dir: Some(dir),
            mariadb: None,
        })
    }

    async fn new_mariadb() -> anyhow::Result<Self> {
        let server = mariadb_server_url();
        let name = format!(
            "{DATABASE_PREFIX}{}_{}",
            unix_seconds(SystemTime::now()),
            random_suffix()
        );
        let url = DbUrl::parse(&with_database(&server, &name))?;
        let admin = DbUrl::parse(&with_database(&server, "information_schema"))?;
        let DbUrl::Mysql {
            diesel_url: admin_diesel_url,
            display: admin_display,
        } = admin
        else {
            bail!("{MARIADB_URL_ENV}={server} is not a MySQL/MariaDB URL");
        };

        let create_url = admin_diesel_url.clone();
        let create_name = name.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            let mut conn = MysqlConnection::establish(&create_url).map_err(|e| {
                anyhow!(
                    "MariaDB is required for these tests but is not reachable at {admin_display} \
                     (set {MARIADB_URL_ENV} to point elsewhere): {e}"
                )
            })?;
            SWEEP.call_once(|| sweep_leftovers(&mut conn));
            diesel::sql_query(format!(
                "CREATE DATABASE `{create_name}` CHARACTER SET utf8mb4"
            ))
            .execute(&mut conn)
            .with_context(|| format!("creating database {create_name}"))?;
            Ok(())
        })
        .await??;

        let scratch = MariadbScratch {
            name,
            admin_diesel_url,
        };
        // From here on, dropping `scratch` (on error too) drops the database.
        let db = match Db::connect(&url, &pool_options()) {
            Ok(db) => db,
            Err(e) => {
                drop_database(&scratch);
                return Err(e.into());
            }
        };
        Ok(Self {
            db,
            url,
            _dir: None,
            mariadb: Some(scratch),
        })
    }

    /// The pool on this database.
    #[must_use]
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// This database's URL.
    #[must_use]
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// Which backend this is.
    #[must_use]
    pub fn backend(&self) -> Backend {
        self.db.backend()
    }

    /// The MariaDB database name, if this is MariaDB.
    #[must_use]
    pub fn mariadb_name(&self) -> Option<&str> {
        self.mariadb.as_ref().map(|m| m.name.as_str())
    }

    /// Run `f` on a pooled connection (shorthand for `db().run(f)`).
    ///
    /// # Errors
    /// Whatever `f` or the pool returns.
    pub async fn run<F, T>(&self, f: F) -> Result<T, DbError>
    where
        F: FnOnce(&mut DbConnection) -> Result<T, DbError> + Send + 'static,
        T: Send + 'static,
    {
        self.db.run(f).await
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some(scratch) = &self.mariadb {
            drop_database(scratch);
        }
    }
}

/// Pool settings for tests: small, and quick to give up.
fn pool_options() -> PoolOptions {
    PoolOptions {
        max_size: 4,
        connect_timeout: Duration::from_secs(10),
    }
}

/// The MariaDB server URL for tests.
#[must_use]
pub fn mariadb_server_url() -> String {
    std::env::var(MARIADB_URL_ENV)
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_MARIADB_URL.to_owned())
}

/// `server` (any path dropped) with `/database` as its path, keeping its query string.
#[must_use]
pub fn with_database(server: &str, database: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let base = match base.get(authority_start..).and_then(|rest| rest.find('/')) {
        Some(slash) => base.get(..authority_start + slash).unwrap_or(base),
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// Drop a scratch database, reporting (not panicking) on failure: the sweep catches leftovers.
fn drop_database(scratch: &MariadbScratch) {
    let result = MysqlConnection::establish(&scratch.admin_diesel_url)
        .map_err(|e| e.to_string())
        .and_then(|mut conn| {
            diesel::sql_query(format!("DROP DATABASE IF EXISTS `{}`", scratch.name))
                .execute(&mut conn)
                .map_err(|e| e.to_string())
        });
    if let Err(e) = result {
        eprintln!(
            "warning: could not drop test database {}: {e}",
            scratch.name
        );
    }
}

#[derive(QueryableByName)]
struct SchemaName {
    #[diesel(sql_type = Text)]
    name: String,
}

/// Drop `kerbside_test_<secs>_...` databases created more than [`SWEEP_AGE`] ago.
fn sweep_leftovers(conn: &mut MysqlConnection) {
    let names: Vec<SchemaName> = match diesel::sql_query(
        "SELECT SCHEMA_NAME AS name FROM information_schema.SCHEMATA \
         WHERE SCHEMA_NAME LIKE 'kerbside\\_test\\_%'",
    )
    .load(conn)
    {
        Ok(names) => names,
        Err(e) => {
            eprintln!("warning: cannot list leftover test databases: {e}");
            return;
        }
    };
    let cutoff = unix_seconds(SystemTime::now()).saturating_sub(SWEEP_AGE.as_secs());
    for SchemaName { name } in names {
        let Some(created) = created_at_of(&name) else {
            continue; // not ours to judge
        };
        if created >= cutoff {
            continue; // may belong to a test process running right now
        }
        if let Err(e) = diesel::sql_query(format!("DROP DATABASE IF EXISTS `{name}`")).execute(conn)
        {
            eprintln!("warning: cannot drop leftover test database {name}: {e}");
        }
    }
}

/// The creation time embedded in a test database name, if it has our shape.
#[must_use]
pub fn created_at_of(name: &str) -> Option<u64> {
    let rest = name.strip_prefix(DATABASE_PREFIX)?;
    let (secs, suffix) = rest.split_once('_')?;
    let valid_suffix = suffix.len() == 16
        && suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !valid_suffix {
        return None;
    }
    secs.parse().ok()
}

fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// 16 random characters of `[a-z0-9]`.
fn random_suffix() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .map(|b| char::from(b).to_ascii_lowercase())
        .take(16)
        .collect()
}

// Queries only the tests need, written on the public model API (and, for a raw insert, the
// public schema), so that `kerbside::db::models` holds only what the product runs.

/// Inserts a source row as given, without `upsert_source`'s update-or-insert: a name that
/// exists is [`DbError::Conflict`] (the unique index refused the row).
///
/// # Errors
/// [`DbError::Conflict`] when the name is taken; [`DbError::Query`] otherwise.
pub fn insert_source(conn: &mut DbConnection, new: &NewSource) -> Result<Source, DbError> {
    use kerbside::db::schema::sources;
    let at = kerbside::db::now();
    let inserted = diesel::insert_into(sources::table)
        .values((
            new,
            sources::errored.eq(false),
            sources::created_at.eq(at),
            sources::updated_at.eq(at),
        ))
        .execute(conn)
        .map_err(DbError::from);
    match inserted {
        Ok(_) => get_source_by_name(conn, &new.name),
        Err(e) if e.is_unique_violation() => Err(DbError::Conflict {
            what: "source",
            id: new.name.clone(),
            reason: "a source with this name exists".to_owned(),
        }),
        Err(e) => Err(e),
    }
}

/// Live sessions run by proxy node `node`, oldest first.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn live_sessions_on_node(conn: &mut DbConnection, node: &str) -> Result<Vec<Session>, DbError> {
    let mut live: Vec<Session> = list_sessions(conn, true)?
        .into_iter()
        .filter(|s| s.node == node)
        .collect();
    live.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
    Ok(live)
}

/// Sets the running byte counts of one live session, through the proxy's batch write
/// (`update_sessions_counters`); an ended session keeps its final counts.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn update_session_counters(
    conn: &mut DbConnection,
    id: &SessionId,
    bytes_to_client: u64,
    bytes_to_server: u64,
) -> Result<(), DbError> {
    update_sessions_counters(conn, &[(id.clone(), bytes_to_client, bytes_to_server)])
}

/// Unhandled termination requests for live sessions run by `node`, oldest first: what the
/// proxy reads ([`pending_terminations`], every node's) narrowed to one node.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn pending_terminations_for_node(
    conn: &mut DbConnection,
    node: &str,
) -> Result<Vec<SessionTermination>, DbError> {
    let mut mine = Vec::new();
    for request in pending_terminations(conn)? {
        if get_session(conn, &request.session_id)?.node == node {
            mine.push(request);
        }
    }
    Ok(mine)
}
