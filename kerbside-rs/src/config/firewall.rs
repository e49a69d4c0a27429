//! The `[firewall]` section: where the SPICE firewall's profiles come from and whether their
//! verdicts are enforced. The profiles themselves live in a YAML file (see `crate::firewall`).

use std::path::PathBuf;

use super::section::section;
use super::value::choice_value;

choice_value! {
    /// Whether firewall verdicts are acted on.
    FirewallMode {
        /// Drop messages and close channels as the profile says.
        Enforce = "enforce",
        /// Log and count what enforce would do; forward everything (QEMU monitor ports stay
        /// refused).
        Warn = "warn",
        /// No firewall: profiles are not applied and most channels are copied unframed; only
        /// QEMU monitor ports stay refused and migration stays hidden.
        Off = "off",
    }
}

section! {
    /// The SPICE application firewall.
    pub struct FirewallSection("firewall") {
        /// YAML file of named firewall profiles (see firewall-profiles.yaml.sample). Unset:
        /// only the built-in profiles, "default" (lets a normal session through untouched) and
        /// "most-restrictive" (used when a console names an unknown profile). Re-read when it
        /// changes.
        profiles_file: Option<PathBuf>,
        /// enforce: drop messages and close channels as the profiles say. warn: only log and
        /// count what enforce would do. off: no firewall (for diagnosing a client the
        /// firewall is suspected of breaking, and for measuring its cost): profiles are not
        /// applied (sessions still record the one their console names), display, inputs,
        /// cursor, sound, smartcard and USB channels are copied as opaque bytes, so any
        /// message of the client reaches the hypervisor; only the fixed rules remain (QEMU
        /// monitor ports refused, migration hidden, main channel session ids rewritten).
        mode: FirewallMode = "enforce",
    }
}
