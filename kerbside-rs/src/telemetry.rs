//! Logging setup with tracing: human-readable or JSON lines, to standard error or a file, at
//! info or debug level (`RUST_LOG` refines it).
//!
//! Secrets never reach this module: callers log identifiers, never tokens or tickets.

use std::path::PathBuf;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

use crate::config::DefaultSection;

/// Where and how to log.
#[derive(Clone, Debug)]
pub struct LogSettings {
    /// Debug level instead of info.
    pub debug: bool,
    /// JSON lines instead of text.
    pub json: bool,
    /// A file to append to; standard error when `None`.
    pub file: Option<PathBuf>,
}

impl LogSettings {
    /// Settings from `[DEFAULT]`: `log_file` (relative to `log_dir`), or `<log_dir>/<program>.log`.
    pub fn from_config(section: &DefaultSection, program: &str) -> Self {
        let file = match (&section.log_dir, &section.log_file) {
            (Some(dir), Some(file)) => Some(dir.join(file)),
            (None, Some(file)) => Some(file.clone()),
            (Some(dir), None) => Some(dir.join(format!("{program}.log"))),
            (None, None) => None,
        };
        LogSettings {
            debug: section.debug,
            json: section.use_json,
            file,
        }
    }
}

/// Installs the global subscriber. Call once, from `main`.
///
/// # Errors
/// When the log file cannot be opened.
pub fn init(settings: &LogSettings) -> Result<(), String> {
    let level = if settings.debug { "debug" } else { "info" };
    // Our own crate at the chosen level; noisy dependencies one step quieter.
    let default =
        format!("{level},kerbside={level},rustls=warn,h2=warn,hyper=warn,actix_server=warn");
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (&settings.file, settings.json) {
        (Some(path), json) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| {
                    format!("cannot create log directory {}: {e}", parent.display())
                })?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            let builder = builder.with_ansi(false).with_writer(Mutex::new(file));
            if json {
                builder.json().flatten_event(true).try_init()
            } else {
                builder.try_init()
            }
        }
        (None, true) => builder
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .try_init(),
        (None, false) => {
            use std::io::IsTerminal;
            builder
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr)
                .try_init()
        }
    };
    result.map_err(|e| format!("cannot install the logger: {e}"))
}

/// A subscriber for tests: debug level, captured by the test harness. Safe to call repeatedly.
pub fn init_for_test() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new("debug"))
        .with_test_writer()
        .try_init();
}
