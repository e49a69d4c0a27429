//! Rule evaluation: one `DirectionFilter` per direction of one channel
//! connection turns the bytes the relay reads into what it must write
//! (`Output`): input ranges to forward untouched, bytes the firewall made
//! (rewritten headers, buffered small messages, 1:1 no-op replacements),
//! compensating messages for the other direction, verdict reports and a
//! channel close. It applies the L0/L1 rules (message types the channel
//! defines, spice-server's size caps, an optional rate ceiling) to
//! client->server traffic, and the content rules of a `Profile` (PORT names,
//! clipboard per direction, file transfer, view-only) in both directions,
//! in `Mode::Enforce` or `Mode::Warn` (`Mode::Off` applies only the fixed
//! rules below).
//!
//! Protocol correctness of drops (docs: spice-protocol.md pitfalls 16-21):
//! - a dropped client AGENT_DATA is answered with MAIN_AGENT_TOKEN(1) to the
//!   client, or spice-gtk runs out of agent tokens;
//! - every 4 dropped MOUSE_MOTION/POSITION are answered with one synthesized
//!   INPUTS_MOUSE_MOTION_ACK, or spice-gtk stops sending motion after 8;
//! - a dropped server->client message is replaced 1:1 by an empty
//!   SPICE_MSG_LIST, which spice-gtk counts like any message (ACK window,
//!   implicit serials) and ignores; on DISPLAY and CURSOR, where the ACK
//!   window counts, no rule drops: a rule that would is turned into a
//!   channel close;
//! - full-header serials stay continuous: client->server messages are
//!   renumbered past drops, server->client messages shifted past injections;
//! - server->client LIST messages (and full-header sub_lists) are opened on
//!   channels whose content rules apply to server messages (MAIN, PORT,
//!   WEBDAV); spice-server only sends them on DISPLAY. A list cannot be
//!   partly dropped, so a sub-message that needs dropping closes the channel.
//!
//! With file transfer denied, or clipboard denied both ways, the guest
//! agent's ANNOUNCE_CAPABILITIES is rewritten on its way to the client (as
//! spice-server does for its own switches) so spice-gtk does not offer what
//! would be dropped (enforce mode only).
//!
//! MAIN also gets the proxy's fixed rules, in every mode: migration
//! messages never reach the client (replaced 1:1; the hypervisor is told
//! MIGRATE_CONNECT_ERROR for MIGRATE_BEGIN and BEGIN_SEAMLESS so it does not
//! wait), and MAIN_INIT's session id is replaced when `set_main_session_id`
//! was called.
//!
//! Not here: sockets, metrics, logging and link-stage routing (the link
//! stage calls `allows_channel`).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use crate::consts::{
    ChannelType, MSG_LIST, MSG_MAIN_INIT, MSG_MAIN_MIGRATE_BEGIN, MSG_MAIN_MIGRATE_BEGIN_SEAMLESS,
    MSGC_MAIN_MIGRATE_CONNECT_ERROR,
};
use crate::msg::{
    HeaderKind, MessageHeader, encode_header, encode_message, main_init_session_id, migration_kind,
    noop_message, set_main_init_session_id,
};

use super::agent::{AgentClass, AgentStream};
use super::framer::{FrameEvent, FramingError, StreamFramer};
use super::profile::{Profile, is_monitor_port};
use super::tables::{self, AGENT_CHUNK_LIMIT, MessageSpec};
use super::{Direction, Mode};

/// MAIN client->server AGENT_DATA.
const MSGC_MAIN_AGENT_DATA: u16 = 107;
/// MAIN server->client AGENT_CONNECTED / AGENT_DISCONNECTED / AGENT_DATA /
/// AGENT_TOKEN / AGENT_CONNECTED_TOKENS.
const MSG_MAIN_AGENT_CONNECTED: u16 = 107;
const MSG_MAIN_AGENT_DISCONNECTED: u16 = 108;
const MSG_MAIN_AGENT_DATA: u16 = 109;
/// MAIN server->client AGENT_TOKEN {u32 num_tokens}.
pub const MSG_MAIN_AGENT_TOKEN: u16 = 110;
const MSG_MAIN_AGENT_CONNECTED_TOKENS: u16 = 115;
/// INPUTS server->client MOUSE_MOTION_ACK (empty body).
pub const MSG_INPUTS_MOUSE_MOTION_ACK: u16 = 111;
const MSGC_INPUTS_MOUSE_MOTION: u16 = 111;
const MSGC_INPUTS_MOUSE_POSITION: u16 = 112;
/// spice-server acks every SPICE_INPUT_MOTION_ACK_BUNCH motions
/// (server/inputs-channel-client.cpp); spice-gtk stops at 2 bunches unacked.
pub const MOTION_ACK_BUNCH: u32 = 4;
/// PORT server->client PORT_INIT {u32 name_size, ptr32 name, u8 opened}.
const MSG_PORT_INIT: u16 = 201;
/// PORT client->server PORT_EVENT {u8}.
const MSGC_PORT_EVENT: u16 = 201;
/// Largest PORT_INIT the firewall buffers: the 9 fixed bytes plus a name.
/// spice-server sends strlen(name)+1 bytes of name (server/spicevmc.cpp).
pub const PORT_INIT_LIMIT: u32 = 9 + 4096;
/// Largest MAIN_INIT the firewall buffers (it is 32 bytes).
pub const MAIN_INIT_LIMIT: u32 = 4096;
/// Largest server->client LIST the firewall opens on MAIN/PORT/WEBDAV.
pub const LIST_LIMIT: u32 = 64 * 1024;
/// Largest message the firewall ever buffers whole (every per-type cap
/// above is at most this); anything larger that a rule would buffer closes
/// the channel as malformed.
pub const CAPTURE_LIMIT: u32 = LIST_LIMIT;
/// What a buffered message reserves before its body arrives.
const CAPTURE_RESERVE: usize = 4096;

/// A rule that produced a verdict. `name()` is the metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The profile does not allow this channel type (link stage).
    ChannelType,
    /// The profile does not allow this PORT/WEBDAV name.
    PortName,
    /// A QEMU monitor port (org.qemu.monitor.*): refused always.
    PortMonitor,
    /// Client data on a PORT/WEBDAV channel before its name was allowed.
    PortUnnamed,
    /// Clipboard from the client to the guest.
    ClipboardToGuest,
    /// Clipboard from the guest to the client.
    ClipboardToClient,
    /// File transfer.
    FileTransfer,
    /// Keyboard or mouse input in a view-only session.
    ViewOnly,
    /// The channel's client message rate ceiling.
    RateLimit,
    /// A message type the channel does not define (or spice-server does not handle).
    UnknownType,
    /// A body larger than spice-server accepts for this channel/type.
    Oversize,
    /// AGENT_DATA that breaks VDAgent framing (spice-server would shut MAIN down).
    AgentProtocol,
    /// A server message (PORT_INIT, LIST, MAIN_INIT) whose contents do not parse.
    Malformed,
    /// A MAIN migration message: it carries hypervisor addresses or belongs to a
    /// migration the client never sees. Dropped always, in warn mode too.
    Migration,
}

impl Rule {
    /// Every rule, in label order.
    pub const ALL: [Rule; 14] = [
        Rule::ChannelType,
        Rule::PortName,
        Rule::PortMonitor,
        Rule::PortUnnamed,
        Rule::ClipboardToGuest,
        Rule::ClipboardToClient,
        Rule::FileTransfer,
        Rule::ViewOnly,
        Rule::RateLimit,
        Rule::UnknownType,
        Rule::Oversize,
        Rule::AgentProtocol,
        Rule::Malformed,
        Rule::Migration,
    ];

    /// snake_case label for metrics, audit rows and logs.
    pub fn name(self) -> &'static str {
        match self {
            Rule::ChannelType => "channel_type",
            Rule::PortName => "port_name",
            Rule::PortMonitor => "port_monitor",
            Rule::PortUnnamed => "port_unnamed",
            Rule::ClipboardToGuest => "clipboard_to_guest",
            Rule::ClipboardToClient => "clipboard_to_client",
            Rule::FileTransfer => "file_transfer",
            Rule::ViewOnly => "view_only",
            Rule::RateLimit => "rate_limit",
            Rule::UnknownType => "unknown_type",
            Rule::Oversize => "oversize",
            Rule::AgentProtocol => "agent_protocol",
            Rule::Malformed => "malformed",
            Rule::Migration => "migration",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a rule says about one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Let it through.
    Forward,
    /// Drop it (with the compensation the protocol needs).
    Drop {
        /// The rule.
        rule: Rule,
    },
    /// Close this channel (both directions).
    CloseChannel {
        /// The rule.
        rule: Rule,
    },
}

/// What was (or in warn mode, would have been) done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// The message was dropped.
    Drop,
    /// The channel was closed.
    Close,
}

/// One rule hit, for logs, audit summaries and
/// `kerbside_firewall_verdicts_total{channel,direction,rule,action}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The channel type.
    pub channel: ChannelType,
    /// The direction of the message.
    pub direction: Direction,
    /// Its type number.
    pub msg_type: u16,
    /// Its name ("unknown" if the channel does not define it).
    pub msg_name: &'static str,
    /// Its body size.
    pub size: u32,
    /// The rule that hit.
    pub rule: Rule,
    /// What enforce mode does.
    pub action: Action,
    /// Whether the action was taken (false in warn mode: forwarded instead).
    pub enforced: bool,
    /// The PORT name for port rules (a name, never data).
    pub detail: Option<String>,
}

impl Report {
    /// The metrics `action` label: drop, close, warn_drop or warn_close.
    pub fn action_label(&self) -> &'static str {
        match (self.action, self.enforced) {
            (Action::Drop, true) => "drop",
            (Action::Close, true) => "close",
            (Action::Drop, false) => "warn_drop",
            (Action::Close, false) => "warn_close",
        }
    }
}

impl fmt::Display for Report {
    /// One line for logs: rule, action, where, which message; a PORT name
    /// if any, never message contents.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {}: {} {} channel {} {} ({}, {} bytes)",
            self.rule,
            self.action_label(),
            self.channel,
            self.direction,
            self.msg_name,
            self.msg_type,
            self.size
        )?;
        if let Some(detail) = &self.detail {
            write!(f, " port {detail}")?;
        }
        Ok(())
    }
}

/// A message the proxy must write to the OTHER direction of the same
/// channel (today always server->client, to the client): encode it with
/// that direction's `DirectionFilter::encode_injection` at a message
/// boundary of that stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injection {
    /// Message type.
    pub msg_type: u16,
    /// Body.
    pub body: Vec<u8>,
}

impl Injection {
    /// MAIN_AGENT_TOKEN {u32 num_tokens}: returns agent tokens to the client.
    pub fn agent_token(num_tokens: u32) -> Self {
        Self {
            msg_type: MSG_MAIN_AGENT_TOKEN,
            body: num_tokens.to_le_bytes().to_vec(),
        }
    }

    /// INPUTS_MOUSE_MOTION_ACK (empty body).
    pub fn motion_ack() -> Self {
        Self {
            msg_type: MSG_INPUTS_MOUSE_MOTION_ACK,
            body: Vec::new(),
        }
    }

    /// Client->server MAIN_MIGRATE_CONNECT_ERROR (empty body): tells the
    /// hypervisor the client will not follow a migration, so it does not
    /// wait 10 s for it.
    pub fn migrate_connect_error() -> Self {
        Self {
            msg_type: MSGC_MAIN_MIGRATE_CONNECT_ERROR,
            body: Vec::new(),
        }
    }
}

/// What the relay must do, in order, for the bytes it fed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output<'a> {
    /// Write these bytes of the fed input to the peer unchanged.
    Pass(&'a [u8]),
    /// Write these firewall-made bytes to the peer (a header that was split
    /// across reads or renumbered, a buffered small message, a no-op that
    /// replaces a dropped server message).
    Send(Vec<u8>),
    /// Write this message to the other direction's peer (compensation).
    Inject(Injection),
    /// A message header, only when `set_inspect(true)`: for debug logs
    /// (type, name and size only).
    Message {
        /// Type number.
        msg_type: u16,
        /// Name.
        name: &'static str,
        /// Body size.
        size: u32,
    },
    /// The hypervisor's MAIN_INIT went by carrying `upstream_session_id`;
    /// the `Send` that follows carries it rewritten to the id given to
    /// `set_main_session_id`. The relay may await its session bookkeeping
    /// here before writing on.
    MainInit {
        /// The hypervisor's session id.
        upstream_session_id: u32,
    },
    /// A rule hit (enforced or not).
    Report(Report),
    /// Close the channel, both directions, after writing what came before.
    /// Nothing follows; later `feed` calls produce nothing.
    Close(Rule),
}

/// Framing failure of one direction: the channel must be closed. The
/// direction says who is at fault (client, or the hypervisor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{channel} channel {direction}: {source}")]
pub struct FirewallError {
    /// Channel type.
    pub channel: ChannelType,
    /// Direction whose bytes are malformed.
    pub direction: Direction,
    /// Why.
    pub source: FramingError,
}

/// Per-direction counters for the session summary and audit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Messages seen.
    pub messages: u64,
    /// Body bytes seen.
    pub bytes: u64,
    /// Messages forwarded (including warn-mode hits).
    pub forwarded: u64,
    /// Messages dropped.
    pub dropped: u64,
    /// No-op LISTs written in place of dropped server messages.
    pub noops: u64,
    /// Compensating messages requested (`Output::Inject`).
    pub injected: u64,
    /// Server->client messages of types the channel does not define (forwarded).
    pub unknown_types: u64,
    /// Rule hits by rule, enforced or not.
    pub hits: BTreeMap<Rule, u64>,
    /// The rule that closed the channel, if any.
    pub closed_by: Option<Rule>,
}

impl Summary {
    /// Add another summary's counts (e.g. the other direction).
    pub fn merge(&mut self, other: &Summary) {
        self.messages += other.messages;
        self.bytes += other.bytes;
        self.forwarded += other.forwarded;
        self.dropped += other.dropped;
        self.noops += other.noops;
        self.injected += other.injected;
        self.unknown_types += other.unknown_types;
        for (rule, n) in &other.hits {
            *self.hits.entry(*rule).or_default() += n;
        }
        self.closed_by = self.closed_by.or(other.closed_by);
    }

    /// Whether any rule hit.
    pub fn any_hits(&self) -> bool {
        !self.hits.is_empty()
    }
}

/// The link-stage rule: may a channel of this type link under `profile`?
/// MAIN, DISPLAY, INPUTS and CURSOR always may; TUNNEL and unknown types
/// never (spice-server has no such channels).
///
/// # Errors
/// `Rule::ChannelType` when the profile denies it.
pub fn allows_channel(profile: &Profile, channel: ChannelType) -> Result<(), Rule> {
    let allowed = match channel {
        ChannelType::Main | ChannelType::Display | ChannelType::Inputs | ChannelType::Cursor => {
            true
        }
        ChannelType::Playback => profile.channels.playback,
        ChannelType::Record => profile.channels.record,
        ChannelType::Smartcard => profile.channels.smartcard,
        ChannelType::Usbredir => profile.channels.usbredir,
        ChannelType::Port => profile.channels.port,
        ChannelType::Webdav => profile.channels.webdav,
        ChannelType::Tunnel | ChannelType::Unknown(_) => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(Rule::ChannelType)
    }
}

// 0 (the default) = PORT_INIT not seen yet.
const PORT_ALLOWED: u8 = 1;
const PORT_DENIED: u8 = 2;
const PORT_MONITOR: u8 = 3;

/// State both directions of one channel see.
#[derive(Debug, Default)]
struct Shared {
    /// PORT/WEBDAV: 0 until the server's PORT_INIT, then allowed or denied.
    port: AtomicU8,
}

/// Token bucket for the client message rate ceiling.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Duration>,
}

impl Bucket {
    fn take(&mut self, now: Duration) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_sub(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What happens to the current message's bytes.
#[derive(Debug)]
enum Disposition {
    /// Body pieces pass through.
    Pass,
    /// Body pieces are discarded.
    Skip,
    /// The body is buffered for a content rule (bounded by the caps).
    Capture(Vec<u8>),
}

#[derive(Debug)]
struct Current {
    header: MessageHeader,
    name: &'static str,
    disposition: Disposition,
}

/// Where outputs go while one `feed` runs: coalesces adjacent input ranges
/// into one `Pass`.
struct Emitter<'a, 'o> {
    input: &'a [u8],
    pending: Option<(usize, usize)>,
    out: &'o mut Vec<Output<'a>>,
}

impl<'a> Emitter<'a, '_> {
    fn pass(&mut self, start: usize, end: usize) {
        match &mut self.pending {
            Some((_, e)) if *e == start => *e = end,
            _ => {
                self.flush();
                self.pending = Some((start, end));
            }
        }
    }

    fn flush(&mut self) {
        if let Some((s, e)) = self.pending.take()
            && let Some(bytes) = self.input.get(s..e)
            && !bytes.is_empty()
        {
            self.out.push(Output::Pass(bytes));
        }
    }

    fn push(&mut self, output: Output<'a>) {
        self.flush();
        self.out.push(output);
    }
}

/// The firewall of one direction of one channel connection.
#[derive(Debug)]
pub struct DirectionFilter {
    channel: ChannelType,
    direction: Direction,
    mode: Mode,
    profile: Arc<Profile>,
    framer: StreamFramer,
    shared: Arc<Shared>,
    current: Option<Current>,
    agent: AgentStream,
    /// Dropped client motions not yet acknowledged (mod MOTION_ACK_BUNCH).
    motions_dropped: u32,
    /// Full headers: serial of the last message written (renumbered).
    last_out_serial: u64,
    /// Full headers, server->client: messages injected so far.
    serial_shift: u64,
    bucket: Option<Bucket>,
    inspect: bool,
    /// MAIN server->client: the session id to put in MAIN_INIT.
    main_session_id: Option<u32>,
    closed: bool,
    summary: Summary,
}

/// Both directions of one channel connection, sharing the state they need
/// (the PORT name verdict).
#[derive(Debug)]
pub struct ChannelFilters {
    /// Client -> server.
    pub client_to_server: DirectionFilter,
    /// Server -> client.
    pub server_to_client: DirectionFilter,
}

impl ChannelFilters {
    /// Filters for a channel of `channel` type whose connection uses `kind`
    /// headers (same in both directions), under `profile` and `mode`.
    pub fn new(profile: Arc<Profile>, mode: Mode, channel: ChannelType, kind: HeaderKind) -> Self {
        let shared = Arc::new(Shared::default());
        let make = |direction| DirectionFilter {
            channel,
            direction,
            mode,
            profile: Arc::clone(&profile),
            framer: StreamFramer::new(kind),
            shared: Arc::clone(&shared),
            current: None,
            agent: AgentStream::new(),
            motions_dropped: 0,
            last_out_serial: 0,
            serial_shift: 0,
            bucket: match direction {
                Direction::ClientToServer => profile.rate_limit(channel).map(|r| Bucket {
                    per_second: f64::from(r.per_second),
                    burst: f64::from(r.burst.max(1)),
                    tokens: f64::from(r.burst.max(1)),
                    last: None,
                }),
                Direction::ServerToClient => None,
            },
            inspect: false,
            main_session_id: None,
            closed: false,
            summary: Summary::default(),
        };
        Self {
            client_to_server: make(Direction::ClientToServer),
            server_to_client: make(Direction::ServerToClient),
        }
    }
}

impl FirewallError {
    /// Whether the hypervisor sent the malformed bytes (else the client).
    pub fn blames_hypervisor(&self) -> bool {
        self.direction == Direction::ServerToClient
    }
}

/// VD_AGENT_ANNOUNCE_CAPABILITIES (spice-protocol spice/vd_agent.h).
const VD_AGENT_ANNOUNCE_CAPABILITIES: u32 = 6;
/// Agent capability bits cleared when no clipboard is allowed either way:
/// CLIPBOARD (3), CLIPBOARD_BY_DEMAND (5), CLIPBOARD_SELECTION (6).
const CLIPBOARD_CAPS: [u32; 3] = [3, 5, 6];
/// Agent capability set when file transfer is denied: FILE_XFER_DISABLED (13).
const CAP_FILE_XFER_DISABLED: u32 = 13;

/// Rewrite, in place, the guest agent's ANNOUNCE_CAPABILITIES on its way to
/// the client the way spice-server does for its own switches
/// (server/reds.cpp reds_adjust_agent_capabilities): with file transfer
/// denied, set FILE_XFER_DISABLED so spice-gtk refuses transfers up front
/// instead of waiting for a guest that never answers; with clipboard denied
/// both ways, clear the clipboard capabilities so the client does not offer
/// it. `chunk` must start an agent message; only a whole message in this
/// chunk is changed. Returns whether anything changed.
fn adjust_agent_caps(profile: &Profile, chunk: &mut [u8]) -> bool {
    let (Some(1), Some(VD_AGENT_ANNOUNCE_CAPABILITIES), Some(size)) =
        (le_u32(chunk, 0), le_u32(chunk, 4), le_u32(chunk, 16))
    else {
        return false;
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    // VDAgentAnnounceCapabilities {u32 request; u32 caps[]} after the header.
    let Some(caps) = chunk.get_mut(24..20usize.saturating_add(size)) else {
        return false;
    };
    let mut changed = false;
    let mut set = |bit: u32, on: bool| {
        let at = usize::try_from(bit / 32)
            .unwrap_or(usize::MAX)
            .saturating_mul(4);
        if let Some(word) = caps.get_mut(at..at.saturating_add(4)) {
            let mut w = [0u8; 4];
            w.copy_from_slice(word);
            let old = u32::from_le_bytes(w);
            let new = if on {
                old | (1 << (bit % 32))
            } else {
                old & !(1 << (bit % 32))
            };
            word.copy_from_slice(&new.to_le_bytes());
            changed |= new != old;
        }
    };
    if !profile.file_transfer {
        set(CAP_FILE_XFER_DISABLED, true);
    }
    if !profile.clipboard_to_guest && !profile.clipboard_to_client {
        for bit in CLIPBOARD_CAPS {
            set(bit, false);
        }
    }
    changed
}

fn le_u16(buf: &[u8], at: usize) -> Option<u16> {
    let b = buf.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([
        b.first().copied()?,
        b.get(1).copied()?,
    ]))
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    let mut w = [0u8; 4];
    w.copy_from_slice(b);
    Some(u32::from_le_bytes(w))
}

/// The sub-messages of a `SpiceSubMessageList` at `list_at` in `body`:
/// (type, body) pairs, or `None` if anything is out of bounds.
fn sub_messages(body: &[u8], list_at: usize) -> Option<Vec<(u16, &[u8])>> {
    let count = usize::from(le_u16(body, list_at)?);
    let mut out = Vec::with_capacity(count.min(body.len() / 4));
    for i in 0..count {
        let at = list_at.checked_add(2)?.checked_add(i.checked_mul(4)?)?;
        let offset = usize::try_from(le_u32(body, at)?).ok()?;
        let msg_type = le_u16(body, offset)?;
        let size = usize::try_from(le_u32(body, offset.checked_add(2)?)?).ok()?;
        let start = offset.checked_add(6)?;
        let sub = body.get(start..start.checked_add(size)?)?;
        out.push((msg_type, sub));
    }
    Some(out)
}

/// The port name of a PORT_INIT body, without its NUL.
fn port_init_name(body: &[u8]) -> Option<String> {
    let size = usize::try_from(le_u32(body, 0)?).ok()?;
    let ptr = usize::try_from(le_u32(body, 4)?).ok()?;
    body.get(8)?; // the `opened` byte
    let raw = body.get(ptr..ptr.checked_add(size)?)?;
    let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// The worse of two verdicts (close > drop > forward).
fn worse(a: Verdict, b: Verdict) -> Verdict {
    let rank = |v: &Verdict| match v {
        Verdict::Forward => 0,
        Verdict::Drop { .. } => 1,
        Verdict::CloseChannel { .. } => 2,
    };
    if rank(&b) > rank(&a) { b } else { a }
}

impl DirectionFilter {
    /// The channel type.
    pub fn channel(&self) -> ChannelType {
        self.channel
    }

    /// The direction.
    pub fn direction(&self) -> Direction {
        self.direction
    }

    /// Emit `Output::Message` for every header (for `[proxy] inspect`).
    pub fn set_inspect(&mut self, inspect: bool) {
        self.inspect = inspect;
    }

    /// MAIN server->client: replace the hypervisor's session id in MAIN_INIT
    /// by `id` (the proxy's own; spice-server's ids repeat across
    /// hypervisors). Without it MAIN_INIT passes unchanged.
    pub fn set_main_session_id(&mut self, id: u32) {
        self.main_session_id = Some(id);
    }

    /// Counters so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Whether a rule closed the channel.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Whether the stream is between messages: injections for this
    /// direction may be written now.
    pub fn at_boundary(&self) -> bool {
        self.framer.at_boundary()
    }

    /// Check that this direction may end here (EOF between messages).
    ///
    /// # Errors
    /// `FramingError::Truncated` inside a message.
    pub fn finish(&self) -> Result<(), FirewallError> {
        self.framer.finish().map_err(|source| self.error(source))
    }

    /// Encode a compensating message (from the other direction's
    /// `Output::Inject`) for this direction's stream, keeping full-header
    /// serials continuous. Write it only when `at_boundary()`.
    pub fn encode_injection(&mut self, injection: &Injection) -> Vec<u8> {
        self.serial_shift = self.serial_shift.saturating_add(1);
        self.last_out_serial = self.last_out_serial.saturating_add(1);
        encode_message(
            self.framer.kind(),
            self.last_out_serial,
            injection.msg_type,
            &injection.body,
        )
    }

    fn error(&self, source: FramingError) -> FirewallError {
        FirewallError {
            channel: self.channel,
            direction: self.direction,
            source,
        }
    }

    /// Process bytes read from this direction's sender, appending what to
    /// do to `out` (which the caller clears and reuses). `now` is monotonic
    /// time from any fixed origin (for the rate ceiling).
    ///
    /// # Errors
    /// Malformed framing: close the channel, blaming `direction`'s sender.
    pub fn feed<'a>(
        &mut self,
        input: &'a [u8],
        now: Duration,
        out: &mut Vec<Output<'a>>,
    ) -> Result<(), FirewallError> {
        let mut em = Emitter {
            input,
            pending: None,
            out,
        };
        let mut pos = 0;
        while !self.closed {
            let rest = input.get(pos..).unwrap_or_default();
            let (used, event) = self.framer.next(rest).map_err(|e| self.error(e))?;
            let start = pos;
            pos = pos.saturating_add(used);
            match event {
                None => break,
                Some(FrameEvent::Header(header)) => {
                    self.on_header(header, start, used, now, &mut em);
                }
                Some(FrameEvent::Body(piece)) => self.on_body(piece, start, pos, &mut em),
                Some(FrameEvent::End) => self.on_end(&mut em),
            }
        }
        em.flush();
        Ok(())
    }

    fn on_header(
        &mut self,
        header: MessageHeader,
        start: usize,
        used: usize,
        now: Duration,
        em: &mut Emitter<'_, '_>,
    ) {
        self.summary.messages += 1;
        self.summary.bytes += u64::from(header.size);
        let spec = tables::lookup(self.channel, self.direction, header.msg_type);
        let name = spec.map_or("unknown", |s| s.name);
        if self.inspect {
            em.push(Output::Message {
                msg_type: header.msg_type,
                name,
                size: header.size,
            });
        }
        let mut verdict = match self.direction {
            Direction::ClientToServer => self.client_header_verdict(&header, spec, now),
            Direction::ServerToClient => self.server_header_verdict(&header, spec),
        };
        let mut capture = verdict == Verdict::Forward && self.wants_body(&header);
        if capture && header.size > CAPTURE_LIMIT {
            // Every message a content rule buffers has a smaller cap of its
            // own, checked by the header verdicts; this one is the backstop
            // that keeps a channel's memory bounded whatever they miss.
            capture = false;
            verdict = Verdict::CloseChannel {
                rule: Rule::Malformed,
            };
        }
        let disposition = if capture {
            // Grown as the body arrives: a header alone reserves little.
            let len = usize::try_from(header.size).unwrap_or(0);
            Disposition::Capture(Vec::with_capacity(len.min(CAPTURE_RESERVE)))
        } else {
            match self.apply(verdict, &header, name, None, em) {
                Some(true) => {
                    self.emit_header(&header, start, used, em);
                    Disposition::Pass
                }
                Some(false) => Disposition::Skip,
                None => return,
            }
        };
        self.current = Some(Current {
            header,
            name,
            disposition,
        });
    }

    fn on_body(&mut self, piece: &[u8], start: usize, end: usize, em: &mut Emitter<'_, '_>) {
        if let Some(current) = &mut self.current {
            match &mut current.disposition {
                Disposition::Pass => em.pass(start, end),
                Disposition::Skip => {}
                Disposition::Capture(buf) => buf.extend_from_slice(piece),
            }
        }
    }

    fn on_end(&mut self, em: &mut Emitter<'_, '_>) {
        let Some(current) = self.current.take() else {
            return;
        };
        let Disposition::Capture(mut body) = current.disposition else {
            return;
        };
        let (verdict, detail) = if self.is_main_init(&current.header) {
            self.rewrite_main_init(&mut body, em)
        } else {
            if self.direction == Direction::ServerToClient
                && self.channel == ChannelType::Main
                && current.header.msg_type == MSG_MAIN_AGENT_DATA
                && self.mode == Mode::Enforce
                && self.agent.at_message_start()
            {
                adjust_agent_caps(&self.profile, &mut body);
            }
            self.content_verdict(&current.header, &body)
        };
        if self.apply(verdict, &current.header, current.name, detail, em) == Some(true) {
            let header = self.out_header(&current.header);
            let mut bytes = Vec::with_capacity(body.len().saturating_add(18));
            encode_header(self.framer.kind(), &header, &mut bytes);
            bytes.extend_from_slice(&body);
            em.push(Output::Send(bytes));
        }
    }

    /// L0/L1 and header-level content rules for a client message.
    fn client_header_verdict(
        &mut self,
        header: &MessageHeader,
        spec: Option<MessageSpec>,
        now: Duration,
    ) -> Verdict {
        let Some(spec) = spec.filter(|s| s.handled) else {
            return Verdict::Drop {
                rule: Rule::UnknownType,
            };
        };
        if header.size > spec.max_size {
            return Verdict::Drop {
                rule: Rule::Oversize,
            };
        }
        // Base messages (ACK_SYNC, ACK, PONG, ...) keep flow control and
        // latency checks working: the channel rules below never touch them.
        if header.msg_type <= 100 {
            return Verdict::Forward;
        }
        if matches!(self.channel, ChannelType::Port | ChannelType::Webdav) {
            match self.shared.port.load(Ordering::Acquire) {
                PORT_ALLOWED => {}
                PORT_DENIED => {
                    return Verdict::CloseChannel {
                        rule: Rule::PortName,
                    };
                }
                PORT_MONITOR => {
                    return Verdict::CloseChannel {
                        rule: Rule::PortMonitor,
                    };
                }
                _ => {
                    return Verdict::Drop {
                        rule: Rule::PortUnnamed,
                    };
                }
            }
        }
        if self.channel == ChannelType::Inputs
            && self.profile.view_only
            && matches!(header.msg_type, 101..=104 | 111..=114)
        {
            return Verdict::Drop {
                rule: Rule::ViewOnly,
            };
        }
        if let Some(bucket) = &mut self.bucket
            && !bucket.take(now)
        {
            return Verdict::Drop {
                rule: Rule::RateLimit,
            };
        }
        Verdict::Forward
    }

    /// Header-level checks of a server message: only what must be bounded
    /// before buffering it. Unknown types are forwarded and counted.
    fn server_header_verdict(
        &mut self,
        header: &MessageHeader,
        spec: Option<MessageSpec>,
    ) -> Verdict {
        if spec.is_none() {
            self.summary.unknown_types += 1;
        }
        let content_channel = matches!(
            self.channel,
            ChannelType::Main | ChannelType::Port | ChannelType::Webdav
        );
        if migration_kind(self.channel, header.msg_type).is_some() {
            return Verdict::Drop {
                rule: Rule::Migration,
            };
        }
        // Before the per-type arms: any message type can carry a sub_list.
        if content_channel
            && (header.msg_type == MSG_LIST || header.sub_list != 0)
            && header.size > LIST_LIMIT
        {
            return Verdict::CloseChannel {
                rule: Rule::Malformed,
            };
        }
        match (self.channel, header.msg_type) {
            (ChannelType::Main, MSG_MAIN_INIT)
                if self.main_session_id.is_some() && header.size > MAIN_INIT_LIMIT =>
            {
                Verdict::CloseChannel {
                    rule: Rule::Malformed,
                }
            }
            (ChannelType::Main, MSG_MAIN_AGENT_DATA) if header.size > AGENT_CHUNK_LIMIT => {
                Verdict::CloseChannel {
                    rule: Rule::AgentProtocol,
                }
            }
            (
                ChannelType::Main,
                MSG_MAIN_AGENT_CONNECTED
                | MSG_MAIN_AGENT_DISCONNECTED
                | MSG_MAIN_AGENT_CONNECTED_TOKENS,
            ) => {
                // spice-server restarts the agent->client stream when the
                // agent (dis)connects (server/reds.cpp reds_reset_vdp).
                self.agent.reset();
                Verdict::Forward
            }
            (ChannelType::Port | ChannelType::Webdav, MSG_PORT_INIT)
                if header.size > PORT_INIT_LIMIT =>
            {
                Verdict::CloseChannel {
                    rule: Rule::Malformed,
                }
            }
            _ => Verdict::Forward,
        }
    }

    /// Whether a message forwarded so far must be buffered whole for a
    /// content rule. Sizes are bounded by the header checks.
    fn wants_body(&self, header: &MessageHeader) -> bool {
        match self.direction {
            Direction::ClientToServer => match self.channel {
                // Small by spice-server's caps (2048 and 1024 bytes).
                ChannelType::Inputs | ChannelType::Display => header.msg_type > 100,
                ChannelType::Main => header.msg_type == MSGC_MAIN_AGENT_DATA,
                ChannelType::Port | ChannelType::Webdav => header.msg_type == MSGC_PORT_EVENT,
                _ => false,
            },
            Direction::ServerToClient => match self.channel {
                ChannelType::Main => {
                    header.msg_type == MSG_MAIN_AGENT_DATA
                        || self.is_main_init(header)
                        || header.msg_type == MSG_LIST
                        || header.sub_list != 0
                }
                ChannelType::Port | ChannelType::Webdav => {
                    header.msg_type == MSG_PORT_INIT
                        || header.msg_type == MSG_LIST
                        || header.sub_list != 0
                }
                _ => false,
            },
        }
    }

    fn is_main_init(&self, header: &MessageHeader) -> bool {
        self.direction == Direction::ServerToClient
            && self.channel == ChannelType::Main
            && header.msg_type == MSG_MAIN_INIT
            && self.main_session_id.is_some()
    }

    /// Put the proxy's session id into a buffered MAIN_INIT and tell the
    /// relay the hypervisor's. A short INIT closes the channel rather than
    /// pass a hypervisor session id through.
    fn rewrite_main_init(
        &mut self,
        body: &mut [u8],
        em: &mut Emitter<'_, '_>,
    ) -> (Verdict, Option<String>) {
        let upstream = main_init_session_id(body);
        match (upstream, self.main_session_id) {
            (Some(upstream_session_id), Some(id)) if set_main_init_session_id(body, id) => {
                em.push(Output::MainInit {
                    upstream_session_id,
                });
                (Verdict::Forward, None)
            }
            _ => (
                Verdict::CloseChannel {
                    rule: Rule::Malformed,
                },
                None,
            ),
        }
    }

    /// Content rules on a buffered body; the detail is a PORT name.
    fn content_verdict(
        &mut self,
        header: &MessageHeader,
        body: &[u8],
    ) -> (Verdict, Option<String>) {
        if self.direction == Direction::ServerToClient
            && (header.msg_type == MSG_LIST || header.sub_list != 0)
        {
            let list_at = if header.msg_type == MSG_LIST {
                0
            } else {
                usize::try_from(header.sub_list).unwrap_or(usize::MAX)
            };
            let Some(subs) = sub_messages(body, list_at) else {
                return (
                    Verdict::CloseChannel {
                        rule: Rule::Malformed,
                    },
                    None,
                );
            };
            let mut verdict = Verdict::Forward;
            let mut detail = None;
            for (sub_type, sub_body) in subs {
                let (v, d) = if sub_type == MSG_LIST {
                    (
                        Verdict::CloseChannel {
                            rule: Rule::Malformed,
                        },
                        None,
                    )
                } else {
                    self.message_content_verdict(sub_type, sub_body)
                };
                // A list cannot be partly dropped: a sub-message that needs
                // dropping closes the channel.
                let v = match v {
                    Verdict::Drop { rule } => Verdict::CloseChannel { rule },
                    other => other,
                };
                detail = detail.or(d);
                verdict = worse(verdict, v);
            }
            if header.msg_type == MSG_LIST {
                return (verdict, detail);
            }
            let (v, d) = self.message_content_verdict(header.msg_type, body);
            return (worse(verdict, v), detail.or(d));
        }
        self.message_content_verdict(header.msg_type, body)
    }

    fn message_content_verdict(&mut self, msg_type: u16, body: &[u8]) -> (Verdict, Option<String>) {
        match (self.direction, self.channel, msg_type) {
            (Direction::ClientToServer, ChannelType::Main, MSGC_MAIN_AGENT_DATA) => (
                self.agent_verdict(
                    body,
                    self.profile.clipboard_to_guest,
                    Rule::ClipboardToGuest,
                ),
                None,
            ),
            (Direction::ServerToClient, ChannelType::Main, MSG_MAIN_AGENT_DATA) => (
                self.agent_verdict(
                    body,
                    self.profile.clipboard_to_client,
                    Rule::ClipboardToClient,
                ),
                None,
            ),
            (Direction::ServerToClient, ChannelType::Port | ChannelType::Webdav, MSG_PORT_INIT) => {
                let Some(name) = port_init_name(body) else {
                    self.shared.port.store(PORT_DENIED, Ordering::Release);
                    return (
                        Verdict::CloseChannel {
                            rule: Rule::Malformed,
                        },
                        None,
                    );
                };
                let verdict = if is_monitor_port(&name) {
                    Verdict::CloseChannel {
                        rule: Rule::PortMonitor,
                    }
                } else if self.profile.ports.allows(&name) {
                    Verdict::Forward
                } else {
                    Verdict::CloseChannel {
                        rule: Rule::PortName,
                    }
                };
                let state = match verdict {
                    Verdict::Forward => PORT_ALLOWED,
                    Verdict::CloseChannel {
                        rule: Rule::PortName,
                    } if self.mode != Mode::Enforce => PORT_ALLOWED,
                    Verdict::CloseChannel {
                        rule: Rule::PortMonitor,
                    } => PORT_MONITOR,
                    _ => PORT_DENIED,
                };
                self.shared.port.store(state, Ordering::Release);
                (verdict, Some(name))
            }
            _ => (Verdict::Forward, None),
        }
    }

    fn agent_verdict(
        &mut self,
        body: &[u8],
        clipboard_allowed: bool,
        clipboard_rule: Rule,
    ) -> Verdict {
        match self.agent.push(body) {
            Err(_) => Verdict::CloseChannel {
                rule: Rule::AgentProtocol,
            },
            Ok(chunk) => match chunk.class {
                AgentClass::Clipboard if !clipboard_allowed => Verdict::Drop {
                    rule: clipboard_rule,
                },
                AgentClass::FileTransfer if !self.profile.file_transfer => Verdict::Drop {
                    rule: Rule::FileTransfer,
                },
                _ => Verdict::Forward,
            },
        }
    }

    /// Turn a verdict into action: report hits, close, or drop with its
    /// compensation. `Some(true)` = forward the message, `Some(false)` =
    /// it is dropped, `None` = the channel is closed.
    fn apply(
        &mut self,
        verdict: Verdict,
        header: &MessageHeader,
        name: &'static str,
        detail: Option<String>,
        em: &mut Emitter<'_, '_>,
    ) -> Option<bool> {
        let (rule, mut action) = match verdict {
            Verdict::Forward => {
                self.summary.forwarded += 1;
                return Some(true);
            }
            Verdict::Drop { rule } => (rule, Action::Drop),
            Verdict::CloseChannel { rule } => (rule, Action::Close),
        };
        // Where the client's ACK window counts server messages, never drop
        // (pitfall 16): close instead.
        if action == Action::Drop
            && self.direction == Direction::ServerToClient
            && matches!(self.channel, ChannelType::Display | ChannelType::Cursor)
        {
            action = Action::Close;
        }
        // QEMU's monitor stays shut and hypervisor addresses stay hidden in
        // every mode.
        let fixed = matches!(rule, Rule::PortMonitor | Rule::Migration);
        if self.mode == Mode::Off && !fixed {
            // Off: the other rules are neither applied nor reported.
            self.summary.forwarded += 1;
            return Some(true);
        }
        let enforced = self.mode == Mode::Enforce || fixed;
        *self.summary.hits.entry(rule).or_default() += 1;
        em.push(Output::Report(Report {
            channel: self.channel,
            direction: self.direction,
            msg_type: header.msg_type,
            msg_name: name,
            size: header.size,
            rule,
            action,
            enforced,
            detail,
        }));
        if !enforced {
            self.summary.forwarded += 1;
            return Some(true);
        }
        match action {
            Action::Close => {
                self.closed = true;
                self.summary.closed_by = Some(rule);
                em.push(Output::Close(rule));
                None
            }
            Action::Drop => {
                self.summary.dropped += 1;
                self.compensate(header, em);
                Some(false)
            }
        }
    }

    /// The messages that keep the session correct after a drop.
    fn compensate(&mut self, header: &MessageHeader, em: &mut Emitter<'_, '_>) {
        match self.direction {
            Direction::ServerToClient => {
                // 1:1 replacement the client counts but ignores.
                let serial = self.out_header(header).serial;
                em.push(Output::Send(noop_message(self.framer.kind(), serial)));
                self.summary.noops += 1;
                if self.channel == ChannelType::Main
                    && matches!(
                        header.msg_type,
                        MSG_MAIN_MIGRATE_BEGIN | MSG_MAIN_MIGRATE_BEGIN_SEAMLESS
                    )
                {
                    // spice-server waits up to 10 s for the client's answer.
                    self.summary.injected += 1;
                    em.push(Output::Inject(Injection::migrate_connect_error()));
                }
            }
            Direction::ClientToServer => match (self.channel, header.msg_type) {
                (ChannelType::Main, MSGC_MAIN_AGENT_DATA) => {
                    self.summary.injected += 1;
                    em.push(Output::Inject(Injection::agent_token(1)));
                }
                (ChannelType::Inputs, MSGC_INPUTS_MOUSE_MOTION | MSGC_INPUTS_MOUSE_POSITION) => {
                    self.motions_dropped += 1;
                    if self.motions_dropped >= MOTION_ACK_BUNCH {
                        self.motions_dropped = 0;
                        self.summary.injected += 1;
                        em.push(Output::Inject(Injection::motion_ack()));
                    }
                }
                _ => {}
            },
        }
    }

    /// The header to write for a message that goes out (forwarded or
    /// replaced): full-header serials renumbered (client->server, past
    /// drops) or shifted (server->client, past injections).
    fn out_header(&mut self, header: &MessageHeader) -> MessageHeader {
        let mut out = *header;
        if self.framer.kind() == HeaderKind::Full {
            out.serial = match self.direction {
                Direction::ClientToServer => self.last_out_serial.saturating_add(1),
                Direction::ServerToClient => header.serial.saturating_add(self.serial_shift),
            };
            self.last_out_serial = out.serial;
        }
        out
    }

    fn emit_header(
        &mut self,
        header: &MessageHeader,
        start: usize,
        used: usize,
        em: &mut Emitter<'_, '_>,
    ) {
        let out = self.out_header(header);
        if out == *header && used == self.framer.kind().len() {
            em.pass(start, start.saturating_add(used));
        } else {
            let mut bytes = Vec::with_capacity(18);
            encode_header(self.framer.kind(), &out, &mut bytes);
            em.push(Output::Send(bytes));
        }
    }
}
