//! The `[database]` section.

use super::section::{Section, section};
use super::validation::Validator;
use super::value::Secret;

section! {
    /// The database every node shares.
    pub struct DatabaseSection("database") {
        /// Database URL: mysql+pymysql://user:password@host/kerbside (or mysql://...) for
        /// MariaDB/MySQL, or sqlite:////absolute/path.sqlite for a single node.
        connection: Secret = "sqlite:///$state_path/kerbside.sqlite",
        /// Maximum number of open connections per process.
        max_pool_size: u32 = "10",
        /// Seconds to wait for a connection (to open one, or for one to be free) before the
        /// database counts as unavailable. The proxy's link stage waits at most this long, and
        /// at most half of `[proxy] handshake_timeout`, so that during a database outage a
        /// client is refused with a server error (reason `database`) instead of timing out.
        pool_timeout: u64 = "5",
        /// How many times to retry the first connection at start-up (the database may start
        /// after kerbside); 0 means do not retry.
        max_retries: u32 = "10",
        /// Seconds between start-up connection attempts.
        retry_interval: u64 = "3",
        /// Most records (channel and session ends, audit events) the proxy keeps in memory
        /// while the database is unreachable; they are written, in order and with the time
        /// they happened, once it is back. When full, audit events are dropped first (counted
        /// in kerbside_db_write_queue_dropped_total); sessions left open are ended when the
        /// node restarts.
        write_queue_size: u32 = "10000",
        /// Seconds between writes of the byte counts of this node's live sessions (one
        /// transaction per interval for all of them), so session lists show them growing;
        /// 0 writes them only when a session ends.
        session_counters_interval: u64 = "5",
    }
}

impl DatabaseSection {
    /// Checks that the pool, its timeout and the write queue are not 0. The connection URL
    /// is checked when the database is opened (and by `kerbside-manage config check`).
    pub fn validate(&self, validator: &mut Validator<'_>) {
        let mut check = validator.section(Self::NAME);
        check.at_least_one("max_pool_size", self.max_pool_size);
        check.at_least_one_second("pool_timeout", self.pool_timeout);
        check.at_least_one("write_queue_size", self.write_queue_size);
    }
}
