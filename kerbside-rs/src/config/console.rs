//! The `[console]` section: kerbside tokens and static console sources.

use std::path::PathBuf;

use super::section::{Section, section};
use super::validation::Validator;

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

impl ConsoleSection {
    /// Checks that tokens live at least a second and that sources_file can be opened (its
    /// contents are checked when it is loaded, and by `kerbside-manage config check`).
    pub fn validate(&self, validator: &mut Validator<'_>) {
        let mut check = validator.section(Self::NAME);
        check.at_least_one_second("token_ttl", self.token_ttl);
        check.readable("sources_file", self.sources_file.as_deref());
    }
}
