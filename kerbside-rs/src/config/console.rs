//! The `[console]` section: kerbside tokens and static console sources.

use std::path::PathBuf;

use super::section::section;

section! {
    /// Console tokens and sources.
    pub struct ConsoleSection("console") {
        /// Seconds a kerbside console token stays valid for new channel links. A session
        /// keeps running after its token expires; new channels need a valid token.
        token_ttl: u64 = "600",
        /// Kerbside-compatible sources.yaml listing static consoles.
        sources_file: Option<PathBuf>,
        /// Seconds between checks of sources_file for changes.
        sources_refresh_interval: u64 = "5",
    }
}
