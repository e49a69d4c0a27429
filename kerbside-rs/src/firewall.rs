//! Firewall profiles for the service: loads the `[firewall] profiles_file` YAML into named
//! `kerbside_spice::firewall::Profile`s, validates it at load with `file:line: message`
//! errors, merges every profile over the file's `default` (itself merged over the built-in
//! default), resolves the profile a console names (unknown names fail closed to
//! `most-restrictive`), and re-reads the file when it changes.
//!
//! It does not evaluate messages (the pure rules live in `kerbside_spice::firewall`), pick a
//! console's profile (sources and the Nova flavor do) or touch the relay.
//!
//! File format: a map of profile name to settings; every setting is optional.
//! ```yaml
//! default:                      # optional; overrides the built-in default
//!   channels: {usbredir: allow} # playback, record, smartcard, usbredir, port, webdav
//!   ports: {default: allow, allow: ["org.qemu.console.*"], deny: []}
//!   clipboard_to_guest: allow   # allow | deny
//!   clipboard_to_client: allow
//!   file_transfer: allow
//!   view_only: false
//!   rate_limits: {inputs: {per_second: 1000, burst: 2000}}
//! no-usb-no-clipboard:
//!   channels: {usbredir: deny}
//!   clipboard_to_guest: deny
//!   clipboard_to_client: deny
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use serde::Deserialize;

use crate::config::{FirewallMode, FirewallSection};
use crate::spice::ChannelType;
use crate::spice::firewall::{
    DEFAULT_PROFILE, MOST_RESTRICTIVE_PROFILE, Mode, NamePattern, Profile, RateLimit,
};

/// The profiles file could not be used; the message starts with `file:line:` when the problem
/// is at a place in the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProfileError(pub String);

/// `allow` or `deny`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Permission {
    Allow,
    Deny,
}

impl Permission {
    fn allowed(self) -> bool {
        self == Permission::Allow
    }
}

/// What is wrong with one value of the profiles file (the YAML parser adds where it is).
#[derive(Debug, thiserror::Error)]
enum FieldError {
    /// A name that cannot name a profile.
    #[error("invalid profile name '{0}': use 1 to 64 letters, digits, '.', '_' or '-'")]
    ProfileName(String),
    /// The built-in fail-closed profile's name.
    #[error("profile name '{0}' is reserved for the built-in fail-closed profile")]
    ReservedName(String),
    /// A PORT name pattern with a `*` elsewhere than at its end, or spaces.
    #[error("invalid port name pattern '{0}': a name, or a prefix followed by one '*'")]
    PortPattern(String),
    /// A rate of 0 a second.
    #[error("per_second must be at least 1 (deny the channel instead)")]
    ZeroRate,
    /// A burst of 0.
    #[error("burst must be at least 1")]
    ZeroBurst,
}

/// A profile name: letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "String")]
struct ProfileName(String);

impl TryFrom<String> for ProfileName {
    type Error = FieldError;
    fn try_from(name: String) -> Result<Self, FieldError> {
        if name.is_empty()
            || name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(FieldError::ProfileName(name));
        }
        if name == MOST_RESTRICTIVE_PROFILE {
            return Err(FieldError::ReservedName(name));
        }
        Ok(ProfileName(name))
    }
}

/// A PORT name pattern: an exact name or a prefix ending in `*`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
struct PatternText(String);

impl TryFrom<String> for PatternText {
    type Error = FieldError;
    fn try_from(text: String) -> Result<Self, FieldError> {
        let stem = text.strip_suffix('*').unwrap_or(&text);
        if stem.contains('*') || text.chars().any(char::is_whitespace) {
            return Err(FieldError::PortPattern(text));
        }
        Ok(PatternText(text))
    }
}

/// Channel types a profile can allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum OptionalChannel {
    Playback,
    Record,
    Smartcard,
    Usbredir,
    Port,
    Webdav,
}

/// Channel types a rate ceiling can apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RateChannel {
    Main,
    Display,
    Inputs,
    Cursor,
    Playback,
    Record,
    Smartcard,
    Usbredir,
    Port,
    Webdav,
}

impl RateChannel {
    fn channel_type(self) -> ChannelType {
        match self {
            RateChannel::Main => ChannelType::Main,
            RateChannel::Display => ChannelType::Display,
            RateChannel::Inputs => ChannelType::Inputs,
            RateChannel::Cursor => ChannelType::Cursor,
            RateChannel::Playback => ChannelType::Playback,
            RateChannel::Record => ChannelType::Record,
            RateChannel::Smartcard => ChannelType::Smartcard,
            RateChannel::Usbredir => ChannelType::Usbredir,
            RateChannel::Port => ChannelType::Port,
            RateChannel::Webdav => ChannelType::Webdav,
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, try_from = "RawRateFields")]
struct RawRate {
    per_second: u32,
    burst: u32,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRateFields {
    per_second: u32,
    #[serde(default)]
    burst: Option<u32>,
}

impl TryFrom<RawRateFields> for RawRate {
    type Error = FieldError;
    fn try_from(raw: RawRateFields) -> Result<Self, FieldError> {
        if raw.per_second == 0 {
            return Err(FieldError::ZeroRate);
        }
        let burst = raw.burst.unwrap_or(raw.per_second);
        if burst == 0 {
            return Err(FieldError::ZeroBurst);
        }
        Ok(RawRate {
            per_second: raw.per_second,
            burst,
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    #[serde(default)]
    default: Option<Permission>,
    #[serde(default)]
    allow: Option<Vec<PatternText>>,
    #[serde(default)]
    deny: Option<Vec<PatternText>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    channels: BTreeMap<OptionalChannel, Permission>,
    #[serde(default)]
    ports: Option<RawPorts>,
    #[serde(default)]
    clipboard_to_guest: Option<Permission>,
    #[serde(default)]
    clipboard_to_client: Option<Permission>,
    #[serde(default)]
    file_transfer: Option<Permission>,
    #[serde(default)]
    view_only: Option<bool>,
    #[serde(default)]
    rate_limits: Option<BTreeMap<RateChannel, RawRate>>,
}

impl RawProfile {
    /// `base` with this entry's settings on top.
    fn merge_over(&self, name: &str, base: &Profile) -> Profile {
        let mut p = base.clone();
        p.name = name.to_owned();
        for (channel, permission) in &self.channels {
            let slot = match channel {
                OptionalChannel::Playback => &mut p.channels.playback,
                OptionalChannel::Record => &mut p.channels.record,
                OptionalChannel::Smartcard => &mut p.channels.smartcard,
                OptionalChannel::Usbredir => &mut p.channels.usbredir,
                OptionalChannel::Port => &mut p.channels.port,
                OptionalChannel::Webdav => &mut p.channels.webdav,
            };
            *slot = permission.allowed();
        }
        if let Some(ports) = &self.ports {
            if let Some(default) = ports.default {
                p.ports.default_allow = default.allowed();
            }
            let patterns =
                |list: &[PatternText]| list.iter().map(|t| NamePattern::new(&t.0)).collect();
            if let Some(allow) = &ports.allow {
                p.ports.allow = patterns(allow);
            }
            if let Some(deny) = &ports.deny {
                p.ports.deny = patterns(deny);
            }
        }
        if let Some(v) = self.clipboard_to_guest {
            p.clipboard_to_guest = v.allowed();
        }
        if let Some(v) = self.clipboard_to_client {
            p.clipboard_to_client = v.allowed();
        }
        if let Some(v) = self.file_transfer {
            p.file_transfer = v.allowed();
        }
        if let Some(v) = self.view_only {
            p.view_only = v;
        }
        if let Some(limits) = &self.rate_limits {
            p.rate_limits = limits
                .iter()
                .map(|(c, r)| {
                    (
                        c.channel_type(),
                        RateLimit {
                            per_second: r.per_second,
                            burst: r.burst,
                        },
                    )
                })
                .collect();
        }
        p
    }
}

/// The profiles in force: the file's (merged) plus the built-in fail-closed one.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    profiles: BTreeMap<String, Arc<Profile>>,
    default: Arc<Profile>,
    most_restrictive: Arc<Profile>,
}

/// The profile a console gets, and whether it named one that does not exist.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The profile in force.
    pub profile: Arc<Profile>,
    /// The console named a profile that does not exist; `profile` is `most-restrictive`.
    /// The caller logs this once.
    pub unknown: Option<String>,
}

impl Default for ProfileSet {
    fn default() -> Self {
        Self::builtin()
    }
}

impl ProfileSet {
    /// Only the built-in profiles.
    pub fn builtin() -> Self {
        let default = Arc::new(Profile::default_profile());
        let mut profiles = BTreeMap::new();
        profiles.insert(DEFAULT_PROFILE.to_owned(), Arc::clone(&default));
        ProfileSet {
            profiles,
            default,
            most_restrictive: Arc::new(Profile::most_restrictive()),
        }
    }

    /// Parses a profiles file's text; `origin` (the path) prefixes error messages.
    ///
    /// # Errors
    /// The first problem, as `origin:line: message`.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ProfileError> {
        let raw: BTreeMap<ProfileName, Option<RawProfile>> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_norway::from_str::<Option<BTreeMap<ProfileName, Option<RawProfile>>>>(text)
                .map_err(|e| located(origin, &e))?
                .unwrap_or_default()
        };
        let base = Profile::default_profile();
        let default = match raw.get(&ProfileName(DEFAULT_PROFILE.to_owned())) {
            Some(Some(entry)) => entry.merge_over(DEFAULT_PROFILE, &base),
            _ => base,
        };
        let mut profiles = BTreeMap::new();
        for (name, entry) in &raw {
            let profile = match entry {
                Some(entry) if name.0 != DEFAULT_PROFILE => entry.merge_over(&name.0, &default),
                _ => Profile {
                    name: name.0.clone(),
                    ..default.clone()
                },
            };
            profiles.insert(name.0.clone(), Arc::new(profile));
        }
        let default = Arc::new(default);
        profiles.insert(DEFAULT_PROFILE.to_owned(), Arc::clone(&default));
        Ok(ProfileSet {
            profiles,
            default,
            most_restrictive: Arc::new(Profile::most_restrictive()),
        })
    }

    /// Reads and parses a profiles file.
    ///
    /// # Errors
    /// An unreadable or invalid file, naming the file (and line).
    pub fn load(path: &Path) -> Result<Self, ProfileError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ProfileError(format!("{}: cannot read: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A profile by name (`most-restrictive` included).
    pub fn get(&self, name: &str) -> Option<Arc<Profile>> {
        if name == MOST_RESTRICTIVE_PROFILE {
            return Some(Arc::clone(&self.most_restrictive));
        }
        self.profiles.get(name).cloned()
    }

    /// The `default` profile.
    pub fn default_profile(&self) -> Arc<Profile> {
        Arc::clone(&self.default)
    }

    /// The fail-closed profile.
    pub fn most_restrictive(&self) -> Arc<Profile> {
        Arc::clone(&self.most_restrictive)
    }

    /// The profile for a console that names `requested` (a source entry or the Nova flavor's
    /// `kerbside:firewall_profile`): `default` when it names none, `most-restrictive` when
    /// it names one that does not exist.
    pub fn resolve(&self, requested: Option<&str>) -> Resolved {
        match requested {
            None => Resolved {
                profile: self.default_profile(),
                unknown: None,
            },
            Some(name) => match self.get(name) {
                Some(profile) => Resolved {
                    profile,
                    unknown: None,
                },
                None => Resolved {
                    profile: self.most_restrictive(),
                    unknown: Some(name.to_owned()),
                },
            },
        }
    }

    /// Every profile name, sorted (`most-restrictive` included).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.profiles.keys().cloned().collect();
        names.push(MOST_RESTRICTIVE_PROFILE.to_owned());
        names.sort();
        names
    }
}

/// `origin:line: message` from a serde_norway error (which carries a location for syntax,
/// type, unknown-field and validation errors).
fn located(origin: &str, error: &serde_norway::Error) -> ProfileError {
    let message = error.to_string();
    match error.location() {
        Some(location) => {
            // The error's text ends with " at line L column C"; say it once, up front.
            let suffix = format!(" at line {} column {}", location.line(), location.column());
            let message = message.strip_suffix(&suffix).unwrap_or(&message);
            ProfileError(format!("{origin}:{}: {message}", location.line()))
        }
        None => ProfileError(format!("{origin}: {message}")),
    }
}

/// The firewall mode for the pure rules.
pub fn mode(section: &FirewallSection) -> Mode {
    match section.mode {
        FirewallMode::Enforce => Mode::Enforce,
        FirewallMode::Warn => Mode::Warn,
        FirewallMode::Off => Mode::Off,
    }
}

/// The profiles file and what was last loaded from it; `reload_if_changed` re-reads it when
/// its modification time or size changes, keeping the previous profiles if the new text is
/// invalid.
#[derive(Debug)]
pub struct ProfileStore {
    path: Option<PathBuf>,
    stamp: Option<(SystemTime, u64)>,
    current: Arc<ProfileSet>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl ProfileStore {
    /// Loads the configured file (or the built-in profiles when none is configured). Called at
    /// start: an invalid file stops the service.
    ///
    /// # Errors
    /// An unreadable or invalid profiles file.
    pub fn open(section: &FirewallSection) -> Result<Self, ProfileError> {
        match &section.profiles_file {
            None => Ok(ProfileStore {
                path: None,
                stamp: None,
                current: Arc::new(ProfileSet::builtin()),
            }),
            Some(path) => {
                let stamp = stamp(path);
                let current = Arc::new(ProfileSet::load(path)?);
                Ok(ProfileStore {
                    path: Some(path.clone()),
                    stamp,
                    current,
                })
            }
        }
    }

    /// The profiles in force.
    pub fn current(&self) -> Arc<ProfileSet> {
        Arc::clone(&self.current)
    }

    /// Re-reads the file if it changed since the last load. `Ok(true)` when new profiles are
    /// in force. Sessions already running keep the profile they started with.
    ///
    /// # Errors
    /// The changed file is unreadable or invalid; the previous profiles stay in force (the
    /// caller logs the error once; the same broken file is not reported again).
    pub fn reload_if_changed(&mut self) -> Result<bool, ProfileError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let now = stamp(path);
        if now == self.stamp {
            return Ok(false);
        }
        self.stamp = now;
        let set = ProfileSet::load(path)?;
        self.current = Arc::new(set);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../etc/kerbside/firewall-profiles.yaml.sample");

    #[test]
    fn the_sample_file_loads() {
        let set = ProfileSet::parse(SAMPLE, "sample").unwrap();
        let p = set.get("no-usb-no-clipboard").unwrap();
        assert!(!p.channels.usbredir);
        assert!(p.channels.playback);
        assert!(!p.clipboard_to_guest && !p.clipboard_to_client);
        assert!(p.file_transfer);
        assert!(!p.view_only);
        let d = set.default_profile();
        assert_eq!(d.name, "default");
        assert_eq!(*d, Profile::default_profile());
        assert!(set.get("view-only").unwrap().view_only);
        assert!(set.names().contains(&"most-restrictive".to_owned()));
    }

    #[test]
    fn profiles_merge_over_the_files_default() {
        let text = "default:\n  clipboard_to_client: deny\n  rate_limits:\n    inputs: {per_second: 100}\nkiosk:\n  view_only: true\nempty:\n";
        let set = ProfileSet::parse(text, "p.yaml").unwrap();
        let d = set.default_profile();
        assert!(!d.clipboard_to_client);
        assert_eq!(
            d.rate_limit(ChannelType::Inputs),
            Some(RateLimit {
                per_second: 100,
                burst: 100
            })
        );
        let kiosk = set.get("kiosk").unwrap();
        assert!(kiosk.view_only && !kiosk.clipboard_to_client);
        assert_eq!(kiosk.name, "kiosk");
        let empty = set.get("empty").unwrap();
        assert_eq!(
            Profile {
                name: "default".to_owned(),
                ..(*empty).clone()
            },
            *d
        );
        // Without a default entry the built-in one is used.
        let set = ProfileSet::parse("strict:\n  file_transfer: deny\n", "p").unwrap();
        assert_eq!(*set.default_profile(), Profile::default_profile());
        assert!(!set.get("strict").unwrap().file_transfer);
        assert_eq!(
            ProfileSet::parse("", "p").unwrap().names(),
            ["default", "most-restrictive"]
        );
    }

    #[test]
    fn unknown_names_fail_closed() {
        let set = ProfileSet::parse(SAMPLE, "sample").unwrap();
        let r = set.resolve(Some("no-such-profile"));
        assert_eq!(r.profile.name, "most-restrictive");
        assert_eq!(r.unknown.as_deref(), Some("no-such-profile"));
        let r = set.resolve(None);
        assert_eq!((r.profile.name.as_str(), r.unknown), ("default", None));
        let r = set.resolve(Some("no-usb-no-clipboard"));
        assert_eq!(r.profile.name, "no-usb-no-clipboard");
        assert!(r.unknown.is_none());
    }

    #[test]
    fn errors_name_file_and_line() {
        let cases = [
            ("a:\n  view_only: true\n  clipbord: deny\n", "p.yaml:3: "),
            ("a:\n  channels:\n    usb: deny\n", "p.yaml:3: "),
            ("a:\n  file_transfer: maybe\n", "p.yaml:2: "),
            ("a:\n  ports:\n    allow: ['org.*.x']\n", "p.yaml:3: "),
            (
                "a:\n  rate_limits:\n    inputs: {per_second: 0}\n",
                "p.yaml:3: ",
            ),
            ("most-restrictive:\n  view_only: false\n", "p.yaml:1: "),
            ("'bad name':\n  view_only: false\n", "p.yaml:1: "),
            ("a: [1, 2\n", "p.yaml:"),
        ];
        for (text, prefix) in cases {
            let err = ProfileSet::parse(text, "p.yaml").unwrap_err().to_string();
            assert!(err.starts_with(prefix), "{text:?} -> {err}");
            assert!(!err.contains(" at line "), "{err}");
        }
        let err = ProfileSet::parse("a:\n  clipbord: deny\n", "p.yaml").unwrap_err();
        assert!(err.0.contains("unknown field `clipbord`"), "{err}");
    }

    #[test]
    fn store_reloads_on_change_and_keeps_profiles_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.yaml");
        std::fs::write(&path, "a:\n  view_only: true\n").unwrap();
        let section = FirewallSection {
            profiles_file: Some(path.clone()),
            mode: FirewallMode::Warn,
        };
        assert_eq!(mode(&section), Mode::Warn);
        let mut store = ProfileStore::open(&section).unwrap();
        assert!(store.current().get("a").unwrap().view_only);
        assert_eq!(store.reload_if_changed(), Ok(false));
        // A different size changes the stamp even within one mtime tick.
        std::fs::write(&path, "a:\n  view_only: false\nb: {}\n").unwrap();
        assert_eq!(store.reload_if_changed(), Ok(true));
        assert!(!store.current().get("a").unwrap().view_only);
        assert!(store.current().get("b").is_some());
        std::fs::write(&path, "a:\n  view_only: nope\n").unwrap();
        let err = store.reload_if_changed().unwrap_err();
        assert!(
            err.0.starts_with(&format!("{}:2: ", path.display())),
            "{err}"
        );
        assert!(store.current().get("b").is_some());
        // Not configured: built-in profiles only, never reloads.
        let none = FirewallSection {
            profiles_file: None,
            mode: FirewallMode::Enforce,
        };
        let mut store = ProfileStore::open(&none).unwrap();
        assert_eq!(store.reload_if_changed(), Ok(false));
        assert_eq!(store.current().names(), ["default", "most-restrictive"]);
        // A configured file that is missing stops the start.
        let missing = FirewallSection {
            profiles_file: Some(dir.path().join("nope.yaml")),
            mode: FirewallMode::Enforce,
        };
        assert!(
            ProfileStore::open(&missing)
                .unwrap_err()
                .0
                .contains("cannot read")
        );
    }
}
