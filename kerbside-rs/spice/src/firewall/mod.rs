//! The SPICE application firewall core: pure, synchronous code the relay
//! calls for every byte it copies. It owns
//! - `tables`: the message types of every channel type in both directions,
//!   their names, and client->server size caps taken from spice-server;
//! - `framer`: a streaming framer (any segmentation, mini or full headers,
//!   O(header) memory);
//! - `agent`: VDAgent message reassembly over MAIN AGENT_DATA chunks;
//! - `profile`: profiles as values (built-in `default` and `most-restrictive`);
//! - `rules`: per-direction filters that turn input bytes into outputs
//!   (forward, firewall-made bytes, compensations, reports, close) and the
//!   link-stage `allows_channel` check.
//!
//! It does not do I/O, time keeping (callers pass `now`), configuration
//! files, logging or metrics: the service loads profiles and the relay
//! writes what the filters say.
//!
//! # How the relay uses it
//! 1. Link stage, before linking upstream: `allows_channel(&profile,
//!    channel_type)`; `Err(rule)` means refuse the link (metrics action
//!    "close", direction client_to_server).
//! 2. After both link results: `ChannelFilters::new(profile, mode,
//!    channel_type, header_kind)` with the connection's header kind (both
//!    legs must use the same one), and move `client_to_server` into the task
//!    reading the client and `server_to_client` into the task reading the
//!    hypervisor.
//! 3. For every read: `filter.feed(&buf[..n], now, &mut outputs)` and then, in
//!    order: `Pass(bytes)`/`Send(vec)` are written to the peer;
//!    `Inject(inj)` goes to the OTHER direction's task, which writes
//!    `its_filter.encode_injection(&inj)` to its peer as soon as
//!    `its_filter.at_boundary()` (never in the middle of a message);
//!    `Report(r)` is counted as
//!    `kerbside_firewall_verdicts_total{channel=r.channel.name(),
//!    direction=r.direction.name(), rule=r.rule.name(),
//!    action=r.action_label()}` and logged; `Close(rule)` ends both
//!    directions of the channel after writing what came before it.
//!    `Message{..}` appears only after `set_inspect(true)`.
//! 4. `Err(FirewallError)` from `feed`: malformed framing by
//!    `err.direction`'s sender (the client, or the hypervisor); close the
//!    channel. At EOF, `finish()` says whether the stream ended inside a
//!    message.
//! 5. At channel end, `summary()` of both filters (`Summary::merge`) gives
//!    the counts for the audit event.

pub mod agent;
pub mod framer;
pub mod profile;
pub mod rules;
pub mod tables;

#[cfg(test)]
mod tests;

use std::fmt;

pub use agent::{AgentClass, AgentError, AgentStream};
pub use framer::{FrameEvent, FramingError, StreamFramer};
pub use profile::{
    ChannelAllow, DEFAULT_PROFILE, MOST_RESTRICTIVE_PROFILE, NamePattern, PortPolicy, Profile,
    RateLimit, is_monitor_port,
};
pub use rules::{
    Action, ChannelFilters, DirectionFilter, FirewallError, Injection, Output, Report, Rule,
    Summary, Verdict, allows_channel,
};
pub use tables::{MessageSpec, message_name};

/// Which way a message travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    /// From the SPICE client to the hypervisor.
    ClientToServer,
    /// From the hypervisor to the SPICE client.
    ServerToClient,
}

impl Direction {
    /// Metrics label: "client_to_server" or "server_to_client".
    pub fn name(self) -> &'static str {
        match self {
            Direction::ClientToServer => "client_to_server",
            Direction::ServerToClient => "server_to_client",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether verdicts are acted on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Mode {
    /// Drop and close as the rules say.
    #[default]
    Enforce,
    /// Report what enforce would do, forward everything (QEMU monitor
    /// ports are still refused).
    Warn,
    /// No rules but the proxy's fixed ones (QEMU monitor ports refused,
    /// migration hidden, MAIN_INIT rewritten), and no reports of the
    /// others: for a relay that copies the channels these rules do not
    /// concern without framing them.
    Off,
}

impl Mode {
    /// "enforce", "warn" or "off".
    pub fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Warn => "warn",
            Mode::Off => "off",
        }
    }
}
