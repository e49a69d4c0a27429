//! The `[database]` section.

use super::section::section;
use super::value::Secret;

section! {
    /// The database every node shares.
    pub struct DatabaseSection("database") {
        /// Database URL: mysql+pymysql://user:password@host/kerbside (or mysql://...) for
        /// MariaDB/MySQL, or sqlite:////absolute/path.sqlite for a single node.
        connection: Secret = "sqlite:///$state_path/kerbside.sqlite",
        /// Maximum number of open connections per process.
        max_pool_size: u32 = "10",
        /// Seconds to wait for a free connection.
        pool_timeout: u64 = "30",
        /// How many times to retry the first connection at start-up (the database may start
        /// after kerbside); 0 means do not retry.
        max_retries: u32 = "10",
        /// Seconds between start-up connection attempts.
        retry_interval: u64 = "3",
    }
}
