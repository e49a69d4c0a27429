//! Configuration: oslo-style INI files turned into typed, validated sections.
//!
//! Owns the option declarations (one file per section, each option's type, default and help
//! written once, and the section's cross-option checks in its `validate` if it has any),
//! reading `--config-file`/`--config-dir` in order (`source`), typing the values (`section`,
//! `value`), validation that names file, line and option (`validation`), and the annotated
//! sample (`sample`). The sections are listed once, in the `sections!` call below, which declares
//! [`Config`] and the order sections are loaded in and written to the sample; checks that
//! span sections live in `Config::validate`.
//!
//! Validation only tries to open the files that options name; it does not parse certificates
//! or keys, connect to databases or brokers, or bind sockets: components check what only they
//! can when they start, and `kerbside-manage config check` runs some of those checks too
//! (`crate::checks`).

pub mod api;
pub mod auth;
pub mod console;
pub mod database;
pub mod default;
pub mod firewall;
pub mod html5;
pub mod metrics;
pub mod notifications;
pub mod proxy;
pub mod sample;
pub mod section;
pub mod source;
pub mod validation;
pub mod value;

use std::fmt;
use std::path::{Path, PathBuf};

pub use api::{ApiSection, AuthStrategy};
pub use auth::{AuthType, ConsoleHostMapping, Interface, KeystoneAuthSection, NovaSection};
pub use console::ConsoleSection;
pub use database::DatabaseSection;
pub use default::DefaultSection;
pub use firewall::{FirewallMode, FirewallSection};
pub use html5::Html5Section;
pub use metrics::MetricsSection;
pub use notifications::{NotificationsSection, OsloMessagingNotificationsSection, QueueType};
pub use proxy::{HypervisorTls, ProxySection};
pub use section::{Loader, OptionSpec, Section};
pub use source::{Location, RawConfig};
pub use validation::{SectionValidator, Validator};
pub use value::Secret;

/// The configuration file read when neither `--config-file` nor `--config-dir` is given.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/kerbside/kerbside.conf";

/// One thing wrong (or suspicious) in the configuration, with where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    /// File and line, when the problem is about something written in a file.
    pub location: Option<Location>,
    /// A file the problem is about, when there is no line (e.g. it cannot be read).
    pub file: Option<PathBuf>,
    /// The section.
    pub section: Option<String>,
    /// The option.
    pub option: Option<String>,
    /// What is wrong, never including a secret value.
    pub message: String,
}

impl ConfigProblem {
    /// A problem at a location in a file.
    pub fn at(
        location: Location,
        section: Option<String>,
        option: Option<String>,
        message: String,
    ) -> Self {
        ConfigProblem {
            location: Some(location),
            file: None,
            section,
            option,
            message,
        }
    }

    /// A problem with a whole file.
    pub fn file(path: &Path, message: String) -> Self {
        ConfigProblem {
            location: None,
            file: Some(path.to_path_buf()),
            section: None,
            option: None,
            message,
        }
    }

    /// A problem with an option, at its location if it was written somewhere.
    pub fn option(
        section: &str,
        option: &str,
        location: Option<Location>,
        message: String,
    ) -> Self {
        ConfigProblem {
            location,
            file: None,
            section: Some(section.to_owned()),
            option: Some(option.to_owned()),
            message,
        }
    }
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(location) = &self.location {
            write!(f, "{location}: ")?;
        } else if let Some(file) = &self.file {
            write!(f, "{}: ", file.display())?;
        }
        match (&self.section, &self.option) {
            (Some(s), Some(o)) => write!(f, "[{s}] {o}: ")?,
            (Some(s), None) => write!(f, "[{s}]: ")?,
            (None, Some(o)) => write!(f, "{o}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n  {}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n  "))]
pub struct ConfigError {
    /// Every problem: those found reading the files (in file order) and loading each
    /// section's options (in section order), or, when everything loaded, those found by
    /// validation.
    pub problems: Vec<ConfigProblem>,
    /// Warnings found along the way (unknown options and sections).
    pub warnings: Vec<ConfigProblem>,
}

/// Which files to read.
#[derive(Clone, Debug, Default)]
pub struct ConfigSources {
    /// `--config-file` values, in order.
    pub files: Vec<PathBuf>,
    /// `--config-dir` values: every `*.conf` inside, sorted, after the files.
    pub dirs: Vec<PathBuf>,
}

impl ConfigSources {
    /// The files to read, in order (later files win). With no file and no directory, the
    /// default file if it exists, else nothing (all defaults).
    ///
    /// # Errors
    /// A directory that cannot be listed.
    pub fn resolve(&self) -> Result<Vec<PathBuf>, ConfigError> {
        let mut files = self.files.clone();
        let mut problems = Vec::new();
        for dir in &self.dirs {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    let mut confs: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.extension().is_some_and(|e| e == "conf") && p.is_file())
                        .collect();
                    confs.sort();
                    files.extend(confs);
                }
                Err(e) => problems.push(ConfigProblem::file(
                    dir,
                    format!("cannot list config directory: {e}"),
                )),
            }
        }
        if !problems.is_empty() {
            return Err(ConfigError {
                problems,
                warnings: Vec::new(),
            });
        }
        if self.files.is_empty() && self.dirs.is_empty() {
            let default = PathBuf::from(DEFAULT_CONFIG_FILE);
            if default.is_file() {
                files.push(default);
            }
        }
        Ok(files)
    }
}

/// Declares [`Config`] with one field per section, and the functions that go through every
/// section: [`all_sections`] and `Config::load_sections`. The sections are listed once, in the
/// order they are loaded and written to the sample.
macro_rules! sections {
    ($( $(#[doc = $doc:literal])* $field:ident: $ty:ty, )*) => {
        /// The whole configuration, typed and validated.
        #[derive(Clone, Debug)]
        pub struct Config {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            /// The files it was read from, in order.
            pub files: Vec<PathBuf>,
        }

        /// Every section's name, help and options, in sample order.
        pub fn all_sections() -> Vec<(&'static str, &'static str, Vec<OptionSpec>)> {
            vec![$( (<$ty>::NAME, <$ty>::HELP, <$ty>::specs()), )*]
        }

        impl Config {
            /// Loads every section, in order, even after one failed, so that the loader
            /// records every problem and knows every option. `None` when any option failed.
            fn load_sections(loader: &mut Loader<'_>, files: Vec<PathBuf>) -> Option<Config> {
                $( let $field = <$ty>::load(loader); )*
                Some(Config { $( $field: $field?, )* files })
            }
        }
    };
}

sections! {
    /// `[DEFAULT]`
    default: DefaultSection,
    /// `[api]`
    api: ApiSection,
    /// `[proxy]`
    proxy: ProxySection,
    /// `[database]`
    database: DatabaseSection,
    /// `[keystone_authtoken]`
    keystone_authtoken: KeystoneAuthSection,
    /// `[nova]`
    nova: NovaSection,
    /// `[console]`
    console: ConsoleSection,
    /// `[oslo_messaging_notifications]`
    oslo_messaging_notifications: OsloMessagingNotificationsSection,
    /// `[notifications]`
    notifications: NotificationsSection,
    /// `[metrics]`
    metrics: MetricsSection,
    /// `[firewall]`
    firewall: FirewallSection,
    /// `[html5]`
    html5: Html5Section,
}

/// A configuration that loaded, with the warnings found (unknown options and sections).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth telling the operator that do not stop kerbside.
    pub warnings: Vec<ConfigProblem>,
}

/// Warnings for what no section declares: unknown sections, then unknown options of known
/// sections. `loader` must have loaded every section.
fn unknown_names(raw: &RawConfig, loader: &Loader<'_>) -> Vec<ConfigProblem> {
    let sections = raw
        .sections()
        .filter(|(section, _)| !loader.is_known_section(section))
        .map(|(section, location)| {
            ConfigProblem::at(
                location.clone(),
                Some(section.to_owned()),
                None,
                "unknown section (ignored)".to_owned(),
            )
        });
    let options = raw
        .all_keys()
        .filter(|(section, option, _)| {
            loader.is_known_section(section) && !loader.is_known(section, option)
        })
        .map(|(section, option, location)| {
            ConfigProblem::at(
                location.clone(),
                Some(section.to_owned()),
                Some(option.to_owned()),
                "unknown option (ignored)".to_owned(),
            )
        });
    sections.chain(options).collect()
}

impl Config {
    /// Reads and validates the configuration.
    ///
    /// # Errors
    /// Every problem found: unreadable files, syntax errors, wrong types, values that do not
    /// fit together.
    pub fn load(sources: &ConfigSources) -> Result<Loaded, ConfigError> {
        let files = sources.resolve()?;
        let mut problems = Vec::new();
        let raw = RawConfig::load(&files, &mut problems);
        Self::from_raw(raw, problems)
    }

    /// Builds the configuration from already-read text (used by tests and `load`).
    /// `problems` are those found while reading it; they are reported first.
    ///
    /// # Errors
    /// As [`Config::load`]. Values are only checked against one another once every option
    /// has loaded and there were no reading problems, so an error holds either reading and
    /// loading problems or validation problems, never both.
    pub fn from_raw(
        raw: RawConfig,
        mut problems: Vec<ConfigProblem>,
    ) -> Result<Loaded, ConfigError> {
        let mut loader = Loader::new(&raw, DefaultSection::specs());
        let config = Self::load_sections(&mut loader, raw.files.clone());
        let warnings = unknown_names(&raw, &loader);
        problems.append(&mut loader.problems);
        let config = match config {
            Some(config) if problems.is_empty() => config,
            _ => return Err(ConfigError { problems, warnings }),
        };
        let problems = config.validate(&raw);
        if problems.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(ConfigError { problems, warnings })
        }
    }

    /// Checks that values fit together; single options were checked by their types. Each
    /// section checks its own options (its `validate`); the checks that span sections are
    /// here. The order of the calls is the order problems are reported in.
    fn validate(&self, raw: &RawConfig) -> Vec<ConfigProblem> {
        let mut validator = Validator::new(raw);
        self.proxy.validate(&mut validator);
        self.html5.validate(&mut validator);
        self.console.validate(&mut validator);
        self.database.validate(&mut validator);
        if let Some((section, url)) = self.notification_transport() {
            let message = match url::Url::parse(url.expose()) {
                Ok(u) if matches!(u.scheme(), "rabbit" | "amqp" | "amqps") => None,
                Ok(u) => Some(format!(
                    "unsupported scheme '{}': expected rabbit://",
                    u.scheme()
                )),
                Err(e) => Some(format!("invalid URL: {e}")),
            };
            if let Some(message) = message {
                validator.section(section).problem("transport_url", message);
            }
        }
        self.keystone_authtoken.validate(&mut validator);
        self.nova.validate(&mut validator);
        // The service user is only needed to validate users' tokens.
        let k = &self.keystone_authtoken;
        if self.api.auth_strategy == AuthStrategy::Keystone
            && k.auth_url.is_some()
            && (k.username.is_none() || k.password.is_none())
        {
            validator.section(KeystoneAuthSection::NAME).problem(
                "username",
                "auth_url is set, so username and password must be set too",
            );
        }
        validator.into_problems()
    }

    /// This node's name: `[DEFAULT] node_name`, else the host name.
    pub fn node_name(&self) -> String {
        self.default.node_name.clone().unwrap_or_else(host_name)
    }

    /// The host clients use to reach the proxy.
    pub fn public_host(&self) -> String {
        self.proxy
            .public_host
            .clone()
            .unwrap_or_else(|| self.node_name())
    }

    /// The TLS port clients use.
    pub fn public_tls_port(&self) -> u16 {
        self.proxy.public_tls_port.unwrap_or(self.proxy.tls_port)
    }

    /// The plain port clients use.
    pub fn public_insecure_port(&self) -> u16 {
        self.proxy
            .public_insecure_port
            .unwrap_or(self.proxy.insecure_port)
    }

    /// The WebSocket URL browsers connect to: `[html5] public_url`, else `wss://` (`ws://`
    /// with `insecure_websocket`) on the proxy's public host and `[html5] bind_port`.
    pub fn html5_websocket_url(&self) -> String {
        match &self.html5.public_url {
            Some(url) => url.to_string(),
            None => {
                let scheme = if self.html5.insecure_websocket {
                    "ws"
                } else {
                    "wss"
                };
                let host = self.public_host();
                let host = if host.contains(':') && !host.starts_with('[') {
                    format!("[{host}]")
                } else {
                    host
                };
                format!("{scheme}://{host}:{}/", self.html5.bind_port)
            }
        }
    }

    /// The messaging URL for notifications, if any.
    pub fn notification_transport_url(&self) -> Option<&Secret> {
        self.notification_transport().map(|(_, url)| url)
    }

    /// The messaging URL for notifications and the section it is set in:
    /// `[oslo_messaging_notifications] transport_url`, else `[DEFAULT] transport_url`.
    fn notification_transport(&self) -> Option<(&'static str, &Secret)> {
        match (
            &self.oslo_messaging_notifications.transport_url,
            &self.default.transport_url,
        ) {
            (Some(url), _) => Some((OsloMessagingNotificationsSection::NAME, url)),
            (None, Some(url)) => Some((DefaultSection::NAME, url)),
            (None, None) => None,
        }
    }
}

/// The machine's host name, as the kernel reports it.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

#[cfg(test)]
mod tests;
