//! Pure SPICE protocol code: link-stage parsing and encoding, capability
//! filtering, ticket crypto and data-stage message framing. No I/O, async
//! runtime, database or configuration: callers feed byte buffers and get
//! values, `Incomplete` (read more) or `Invalid` (reject) back. The
//! `firewall` module frames every channel as a stream and evaluates the
//! SPICE firewall's rules on it. Sockets,
//! TLS, routing and policy live in the proxy.

pub mod caps;
pub mod consts;
pub mod error;
pub mod firewall;
pub mod link;
pub mod msg;
pub mod ticket;
mod wire;

#[cfg(test)]
mod golden;

pub use caps::Caps;
pub use consts::{ChannelType, LinkError};
pub use error::SpiceError;
pub use firewall::{
    ChannelFilters, Direction, DirectionFilter, Injection, Mode, Output, Profile, Report, Rule,
    Verdict, allows_channel,
};
pub use link::{
    LinkMessage, LinkReply, encode_auth_mechanism, encode_link_error, encode_link_result,
    parse_auth_mechanism, parse_link_message, parse_link_reply, parse_link_result,
};
pub use msg::{
    Frame, Framer, Frames, HeaderKind, MessageHeader, MigrationKind, encode_header, encode_message,
    main_init_session_id, migration_kind, noop_message, parse_header, set_main_init_session_id,
};
pub use ticket::{Ticket, TicketKey, encrypt_ticket};
