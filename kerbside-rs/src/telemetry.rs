//! Logging setup with tracing: human-readable or JSON lines, to standard error or a file, at
//! info or debug level (`RUST_LOG` refines it).
//!
//! It also owns [`one_line`], the text helper every component uses to keep a multi-line
//! cause on one log line. It does not decide what is logged: each component logs its own
//! events.
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

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The log file or its directory.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// "create log directory" or "open log file".
        action: &'static str,
        /// The path.
        path: std::path::PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A global subscriber is already installed.
    #[error("cannot install the logger: {0}")]
    Install(String),
}

/// Installs the global subscriber. Call once, from `main`.
///
/// # Errors
/// When the log file cannot be opened.
pub fn init(settings: &LogSettings) -> Result<(), LogError> {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    let filter = EnvFilter::new(filter_directives(settings.debug, env.as_deref()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(true);
    let result = match (&settings.file, settings.json) {
        (Some(path), json) => {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|source| LogError::File {
                    action: "create log directory",
                    path: parent.to_path_buf(),
                    source,
                })?;
            }
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| LogError::File {
                    action: "open log file",
                    path: path.clone(),
                    source,
                })?;
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
    // The subscriber's error type is boxed and not Send; its words are all it has.
    result.map_err(|e| LogError::Install(e.to_string()))
}

/// The filter: `RUST_LOG` when it says something, else our own crate at info (debug with
/// `[DEFAULT] debug`) and noisy dependencies one step quieter. A set but empty (or blank)
/// `RUST_LOG` counts as unset: it would otherwise silence every message.
fn filter_directives(debug: bool, rust_log: Option<&str>) -> String {
    match rust_log.map(str::trim) {
        Some(directives) if !directives.is_empty() => directives.to_owned(),
        _ => {
            let level = if debug { "debug" } else { "info" };
            format!("{level},kerbside={level},rustls=warn,h2=warn,hyper=warn,actix_server=warn")
        }
    }
}

/// `text` on one line: every run of whitespace (line breaks included) becomes one space, so a
/// driver's or broker's multi-line message stays one log line and one line of an error.
#[must_use]
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// What tests log: everything of ours at debug, the transport and broker libraries' chatter
/// (one line per connection, channel or certificate load) only from info up, so a failing test's
/// output shows kerbside's own story and its panic message, not pages of connection setup.
pub const TEST_FILTER: &str = "debug,rustls=info,rustls_platform_verifier=info,hyper=info,\
    hyper_util=info,reqwest=info,h2=info,lapin=info,amq_protocol=info,actix_server=info,\
    actix_web=info,mio=info,tokio_util=info";

/// A subscriber for tests: [`TEST_FILTER`], no colour codes, captured by the test harness.
/// Safe to call repeatedly.
pub fn init_for_test() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(TEST_FILTER))
        .with_ansi(false)
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn an_empty_rust_log_keeps_the_default_filter() {
        for empty in [Some(""), Some("  "), None] {
            let directives = filter_directives(false, empty);
            assert!(directives.starts_with("info,kerbside=info"), "{directives}");
            assert_eq!(
                EnvFilter::new(&directives).max_level_hint(),
                Some(LevelFilter::INFO)
            );
        }
        assert!(filter_directives(true, Some("")).starts_with("debug,"));
        assert_eq!(
            filter_directives(false, Some("kerbside=trace")),
            "kerbside=trace"
        );
    }

    #[test]
    fn one_line_joins_lines_and_collapses_whitespace() {
        assert_eq!(
            one_line("  Access denied\n\tfor user 'k'@'h'\r\n  (using password: YES) "),
            "Access denied for user 'k'@'h' (using password: YES)"
        );
        assert_eq!(one_line("\n \n"), "");
    }
}
