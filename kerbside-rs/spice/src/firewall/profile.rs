//! Firewall profiles as plain values: which optional channel types may link,
//! which PORT/WEBDAV names may open, clipboard per direction, file transfer,
//! view-only, and per-channel client message rate ceilings. Two profiles
//! are built in: `default` (passes a normal session untouched) and
//! `most-restrictive` (what a console gets when it names a profile that
//! does not exist: fail closed).
//!
//! This module does not read files (the service's `firewall` module loads
//! YAML into these types) and does not evaluate messages (`rules`).

use crate::consts::ChannelType;

/// Name of the built-in profile that passes everything a normal session uses.
pub const DEFAULT_PROFILE: &str = "default";
/// Name of the built-in fail-closed profile.
pub const MOST_RESTRICTIVE_PROFILE: &str = "most-restrictive";

/// PORT names that reach QEMU's monitor. They are refused whatever the
/// profile and whatever the mode (a monitor is full control of the VM).
pub const MONITOR_PORT_PREFIX: &str = "org.qemu.monitor.";

/// Which optional channel types may link. MAIN, DISPLAY, INPUTS and CURSOR
/// are always allowed (a session needs them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChannelAllow {
    /// Audio out (5).
    pub playback: bool,
    /// Audio in (6).
    pub record: bool,
    /// Smartcard passthrough (8).
    pub smartcard: bool,
    /// USB redirection (9).
    pub usbredir: bool,
    /// Named ports: serial consoles, guest agents other than vdagent (10).
    pub port: bool,
    /// Folder sharing (11).
    pub webdav: bool,
}

impl ChannelAllow {
    /// Every optional channel allowed.
    pub const ALL: Self = Self {
        playback: true,
        record: true,
        smartcard: true,
        usbredir: true,
        port: true,
        webdav: true,
    };
    /// Every optional channel denied.
    pub const NONE: Self = Self {
        playback: false,
        record: false,
        smartcard: false,
        usbredir: false,
        port: false,
        webdav: false,
    };
}

/// A PORT name pattern: an exact name, or a prefix followed by `*`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NamePattern(String);

impl NamePattern {
    /// A pattern from its text.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => self.0 == name,
        }
    }
}

/// Which PORT/WEBDAV names (from PORT_INIT) may open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortPolicy {
    /// Names not matched by `allow` or `deny` are allowed iff this is true.
    pub default_allow: bool,
    /// Names allowed (unless also matched by `deny`).
    pub allow: Vec<NamePattern>,
    /// Names denied; deny wins over allow.
    pub deny: Vec<NamePattern>,
}

impl PortPolicy {
    /// Whether a port name may open. QEMU monitor names never may.
    pub fn allows(&self, name: &str) -> bool {
        if is_monitor_port(name) || self.deny.iter().any(|p| p.matches(name)) {
            return false;
        }
        self.default_allow || self.allow.iter().any(|p| p.matches(name))
    }
}

/// Whether a PORT name is one of QEMU's monitors (org.qemu.monitor.*).
pub fn is_monitor_port(name: &str) -> bool {
    name.starts_with(MONITOR_PORT_PREFIX)
}

/// A token-bucket ceiling on client->server messages of one channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimit {
    /// Sustained messages per second.
    pub per_second: u32,
    /// Messages allowed in a burst above the sustained rate.
    pub burst: u32,
}

/// One named firewall profile.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Profile {
    /// Its name (key in the profiles file).
    pub name: String,
    /// Optional channel types allowed to link.
    pub channels: ChannelAllow,
    /// PORT/WEBDAV names allowed to open.
    pub ports: PortPolicy,
    /// Clipboard from the client to the guest (client CLIPBOARD* agent messages).
    pub clipboard_to_guest: bool,
    /// Clipboard from the guest to the client.
    pub clipboard_to_client: bool,
    /// File transfer (drag and drop to the guest; FILE_XFER_* agent messages).
    pub file_transfer: bool,
    /// No keyboard or mouse input reaches the guest; the display still updates.
    pub view_only: bool,
    /// Client->server message ceilings per channel type.
    pub rate_limits: Vec<(ChannelType, RateLimit)>,
}

impl Profile {
    /// The built-in `default`: everything a normal session uses is allowed
    /// (QEMU monitor ports stay refused), no rate ceilings.
    pub fn default_profile() -> Self {
        Self {
            name: DEFAULT_PROFILE.to_owned(),
            channels: ChannelAllow::ALL,
            ports: PortPolicy {
                default_allow: true,
                allow: Vec::new(),
                deny: Vec::new(),
            },
            clipboard_to_guest: true,
            clipboard_to_client: true,
            file_transfer: true,
            view_only: false,
            rate_limits: Vec::new(),
        }
    }

    /// The built-in `most-restrictive`: view-only, no optional channel, no
    /// port, no clipboard, no file transfer. Used when a console names a
    /// profile that does not exist.
    pub fn most_restrictive() -> Self {
        Self {
            name: MOST_RESTRICTIVE_PROFILE.to_owned(),
            channels: ChannelAllow::NONE,
            ports: PortPolicy {
                default_allow: false,
                allow: Vec::new(),
                deny: Vec::new(),
            },
            clipboard_to_guest: false,
            clipboard_to_client: false,
            file_transfer: false,
            view_only: true,
            rate_limits: Vec::new(),
        }
    }

    /// The rate ceiling for a channel type, if any.
    pub fn rate_limit(&self, channel: ChannelType) -> Option<RateLimit> {
        self.rate_limits
            .iter()
            .find(|(c, _)| *c == channel)
            .map(|(_, r)| *r)
    }
}

impl Default for Profile {
    fn default() -> Self {
        Self::default_profile()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_patterns() {
        let exact = NamePattern::new("org.qemu.console.serial.0");
        assert!(exact.matches("org.qemu.console.serial.0"));
        assert!(!exact.matches("org.qemu.console.serial.01"));
        let prefix = NamePattern::new("org.qemu.console.*");
        assert!(prefix.matches("org.qemu.console.debug.0"));
        assert!(!prefix.matches("org.qemu.monitor.qmp.0"));
        assert_eq!(prefix.as_str(), "org.qemu.console.*");
    }

    #[test]
    fn monitors_are_never_allowed() {
        let open = PortPolicy {
            default_allow: true,
            allow: vec![NamePattern::new("*")],
            deny: Vec::new(),
        };
        assert!(open.allows("org.qemu.console.serial.0"));
        assert!(!open.allows("org.qemu.monitor.qmp.0"));
        assert!(!open.allows("org.qemu.monitor.hmp.0"));
        let closed = PortPolicy {
            default_allow: false,
            allow: vec![NamePattern::new("org.spice-space.webdav.0")],
            deny: vec![NamePattern::new("org.spice-space.webdav.0")],
        };
        // deny wins
        assert!(!closed.allows("org.spice-space.webdav.0"));
        assert!(!closed.allows("com.example.other"));
    }

    #[test]
    fn built_in_profiles() {
        let d = Profile::default();
        assert_eq!(d.name, "default");
        assert_eq!(d.channels, ChannelAllow::ALL);
        assert!(d.clipboard_to_guest && d.clipboard_to_client && d.file_transfer);
        assert!(!d.view_only);
        assert_eq!(d.rate_limit(ChannelType::Inputs), None);
        let r = Profile::most_restrictive();
        assert_eq!(r.channels, ChannelAllow::NONE);
        assert!(r.view_only && !r.clipboard_to_guest && !r.file_transfer);
        assert!(!r.ports.allows("org.qemu.console.serial.0"));
    }
}
