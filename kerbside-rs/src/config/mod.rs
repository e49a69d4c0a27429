//! Configuration: oslo-style INI files turned into typed, validated sections.
//!
//! Owns the option declarations (one file per section, each option's type, default and help
//! written once), loading `--config-file`/`--config-dir` in order, validation that names file,
//! line and option, and the annotated sample. It does not open databases, sockets or
//! certificates: components validate what only they can check when they start.

pub mod api;
pub mod auth;
pub mod console;
pub mod database;
pub mod default;
pub mod metrics;
pub mod notifications;
pub mod proxy;
pub mod sample;
pub mod section;
pub mod source;
pub mod value;

use std::fmt;
use std::path::{Path, PathBuf};

pub use api::{ApiSection, AuthStrategy};
pub use auth::{AuthType, Interface, KeystoneAuthSection, NovaSection};
pub use console::ConsoleSection;
pub use database::DatabaseSection;
pub use default::DefaultSection;
pub use metrics::MetricsSection;
pub use notifications::{NotificationsSection, OsloMessagingNotificationsSection, QueueType};
pub use proxy::{HypervisorTls, ProxySection};
pub use section::{Loader, OptionSpec, Section};
pub use source::{Location, RawConfig};
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
    /// Every problem, in file order.
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

/// The whole configuration, typed and validated.
#[derive(Clone, Debug)]
pub struct Config {
    /// `[DEFAULT]`
    pub default: DefaultSection,
    /// `[api]`
    pub api: ApiSection,
    /// `[proxy]`
    pub proxy: ProxySection,
    /// `[database]`
    pub database: DatabaseSection,
    /// `[keystone_authtoken]`
    pub keystone_authtoken: KeystoneAuthSection,
    /// `[nova]`
    pub nova: NovaSection,
    /// `[console]`
    pub console: ConsoleSection,
    /// `[oslo_messaging_notifications]`
    pub oslo_messaging_notifications: OsloMessagingNotificationsSection,
    /// `[notifications]`
    pub notifications: NotificationsSection,
    /// `[metrics]`
    pub metrics: MetricsSection,
    /// The files it was read from, in order.
    pub files: Vec<PathBuf>,
}

/// A configuration that loaded, with the warnings found (unknown options and sections).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: Config,
    /// Things worth telling the operator that do not stop kerbside.
    pub warnings: Vec<ConfigProblem>,
}

/// Every section's name, help and options, in sample order.
pub fn all_sections() -> Vec<(&'static str, &'static str, Vec<OptionSpec>)> {
    fn entry<S: Section>() -> (&'static str, &'static str, Vec<OptionSpec>) {
        (S::NAME, S::HELP, S::specs())
    }
    vec![
        entry::<DefaultSection>(),
        entry::<ApiSection>(),
        entry::<ProxySection>(),
        entry::<DatabaseSection>(),
        entry::<KeystoneAuthSection>(),
        entry::<NovaSection>(),
        entry::<ConsoleSection>(),
        entry::<OsloMessagingNotificationsSection>(),
        entry::<NotificationsSection>(),
        entry::<MetricsSection>(),
    ]
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
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_raw(
        raw: RawConfig,
        mut problems: Vec<ConfigProblem>,
    ) -> Result<Loaded, ConfigError> {
        let mut loader = Loader::new(&raw);
        let default = DefaultSection::load(&mut loader);
        let api = ApiSection::load(&mut loader);
        let proxy = ProxySection::load(&mut loader);
        let database = DatabaseSection::load(&mut loader);
        let keystone_authtoken = KeystoneAuthSection::load(&mut loader);
        let nova = NovaSection::load(&mut loader);
        let console = ConsoleSection::load(&mut loader);
        let oslo_messaging_notifications = OsloMessagingNotificationsSection::load(&mut loader);
        let notifications = NotificationsSection::load(&mut loader);
        let metrics = MetricsSection::load(&mut loader);

        let mut warnings = Vec::new();
        for (section, location) in raw.sections() {
            if !loader.is_known_section(section) {
                warnings.push(ConfigProblem::at(
                    location.clone(),
                    Some(section.to_owned()),
                    None,
                    "unknown section (ignored)".to_owned(),
                ));
            }
        }
        for (section, option, location) in raw.all_keys() {
            if loader.is_known_section(section) && !loader.is_known(section, option) {
                warnings.push(ConfigProblem::at(
                    location.clone(),
                    Some(section.to_owned()),
                    Some(option.to_owned()),
                    "unknown option (ignored)".to_owned(),
                ));
            }
        }
        problems.append(&mut loader.problems);

        let config = match (
            default,
            api,
            proxy,
            database,
            keystone_authtoken,
            nova,
            console,
            oslo_messaging_notifications,
            notifications,
            metrics,
        ) {
            (
                Some(default),
                Some(api),
                Some(proxy),
                Some(database),
                Some(keystone_authtoken),
                Some(nova),
                Some(console),
                Some(oslo_messaging_notifications),
                Some(notifications),
                Some(metrics),
            ) if problems.is_empty() => Config {
                default,
                api,
                proxy,
                database,
                keystone_authtoken,
                nova,
                console,
                oslo_messaging_notifications,
                notifications,
                metrics,
                files: raw.files.clone(),
            },
            _ => return Err(ConfigError { problems, warnings }),
        };
        let validation = config.validate(&raw);
        if validation.is_empty() {
            Ok(Loaded { config, warnings })
        } else {
            Err(ConfigError {
                problems: validation,
                warnings,
            })
        }
    }

    /// Checks that values fit together; single options were checked by their types.
    fn validate(&self, raw: &RawConfig) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        let at = |section: &str, option: &str| {
            raw.values(section, option)
                .last()
                .map(|v| v.location.clone())
        };
        let p = &self.proxy;
        // A missing partner option has no line of its own: point at the one that is set.
        match (&p.cert_file, &p.key_file) {
            (Some(_), None) => problems.push(ConfigProblem::option(
                "proxy",
                "key_file",
                at("proxy", "cert_file"),
                "cert_file is set, so key_file must be set too".to_owned(),
            )),
            (None, Some(_)) => problems.push(ConfigProblem::option(
                "proxy",
                "cert_file",
                at("proxy", "key_file"),
                "key_file is set, so cert_file must be set too".to_owned(),
            )),
            _ => {}
        }
        let mut problem = |section: &str, option: &str, message: String| {
            problems.push(ConfigProblem::option(
                section,
                option,
                at(section, option),
                message,
            ));
        };
        for (option, path) in [
            ("cert_file", &p.cert_file),
            ("key_file", &p.key_file),
            ("ca_file", &p.ca_file),
            ("hypervisor_ca_file", &p.hypervisor_ca_file),
        ] {
            if let Some(path) = path
                && let Err(e) = std::fs::File::open(path)
            {
                problem(
                    "proxy",
                    option,
                    format!("cannot read {}: {e}", path.display()),
                );
            }
        }
        if p.tls_port != 0 && p.tls_port == p.insecure_port {
            problem(
                "proxy",
                "insecure_port",
                format!("must differ from tls_port ({})", p.tls_port),
            );
        }
        if p.bind_host.is_empty() {
            problem(
                "proxy",
                "bind_host",
                "at least one address is required".to_owned(),
            );
        }
        if p.handshake_timeout == 0 {
            problem(
                "proxy",
                "handshake_timeout",
                "must be at least 1 second".to_owned(),
            );
        }
        if p.max_sessions == 0 {
            problem("proxy", "max_sessions", "must be at least 1".to_owned());
        }
        if p.key_pool_size == 0 {
            problem("proxy", "key_pool_size", "must be at least 1".to_owned());
        }
        if let Some(subject) = &p.host_subject
            && let Err(e) = crate::tlsutil::parse_host_subject(subject)
        {
            problem("proxy", "host_subject", e);
        }
        if self.console.token_ttl == 0 {
            problem(
                "console",
                "token_ttl",
                "must be at least 1 second".to_owned(),
            );
        }
        if let Some(path) = &self.console.sources_file
            && let Err(e) = std::fs::File::open(path)
        {
            problem(
                "console",
                "sources_file",
                format!("cannot read {}: {e}", path.display()),
            );
        }
        if self.database.max_pool_size == 0 {
            problem("database", "max_pool_size", "must be at least 1".to_owned());
        }
        if let Some(url) = self.notification_transport_url() {
            match url::Url::parse(url.expose()) {
                Ok(u) if matches!(u.scheme(), "rabbit" | "amqp" | "amqps") => {}
                Ok(u) => {
                    let section = if self.oslo_messaging_notifications.transport_url.is_some() {
                        "oslo_messaging_notifications"
                    } else {
                        "DEFAULT"
                    };
                    problem(
                        section,
                        "transport_url",
                        format!("unsupported scheme '{}': expected rabbit://", u.scheme()),
                    );
                }
                Err(e) => {
                    let section = if self.oslo_messaging_notifications.transport_url.is_some() {
                        "oslo_messaging_notifications"
                    } else {
                        "DEFAULT"
                    };
                    problem(section, "transport_url", format!("invalid URL: {e}"));
                }
            }
        }
        if self.api.auth_strategy == AuthStrategy::Keystone {
            let k = &self.keystone_authtoken;
            if k.auth_url.is_some() && (k.username.is_none() || k.password.is_none()) {
                problem(
                    "keystone_authtoken",
                    "username",
                    "auth_url is set, so username and password must be set too".to_owned(),
                );
            }
        }
        problems
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

    /// The messaging URL for notifications, if any.
    pub fn notification_transport_url(&self) -> Option<&Secret> {
        self.oslo_messaging_notifications
            .transport_url
            .as_ref()
            .or(self.default.transport_url.as_ref())
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
