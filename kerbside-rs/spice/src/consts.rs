//! SPICE wire constants: link-stage sizes and limits, channel types, link
//! error codes, capability bit numbers and the message type numbers the proxy
//! needs. Values come from spice-protocol (`spice/protocol.h`, `spice/enums.h`)
//! and spice-server's link checks. This module owns numbers only; parsing
//! lives in `link`, `msg` and `ticket`.

use std::fmt;

/// Link header magic, "REDQ" (u32 LE 0x51444552).
pub const SPICE_MAGIC: [u8; 4] = *b"REDQ";
/// Protocol major version. spice-server rejects any other major.
pub const VERSION_MAJOR: u32 = 2;
/// Protocol minor version. Peers do not check it; we send it.
pub const VERSION_MINOR: u32 = 2;
/// Longest ticket (password) spice-server and spice-gtk accept, in bytes.
pub const MAX_PASSWORD_LEN: usize = 60;
/// DER SubjectPublicKeyInfo of an RSA-1024 key (`SPICE_TICKET_PUBKEY_BYTES`).
pub const PUBKEY_LEN: usize = 162;
/// RSA-1024 ciphertext of the ticket (`SpiceLinkEncryptedTicket`).
pub const TICKET_LEN: usize = 128;
/// `SpiceLinkHeader`: magic, major, minor, size.
pub const LINK_HEADER_LEN: usize = 16;
/// `SpiceLinkMess` without capability words.
pub const LINK_MESS_LEN: usize = 18;
/// `SpiceLinkReply` without capability words.
pub const LINK_REPLY_LEN: usize = 178;
/// Largest `SpiceLinkHeader.size` spice-server accepts for a `SpiceLinkMess`.
pub const MAX_LINK_SIZE: usize = 4096;
/// Most common (or channel) capability words spice-server accepts.
pub const MAX_CAP_WORDS: usize = 1024;
/// Largest `SpiceLinkHeader.size` we accept for a `SpiceLinkReply`: the
/// fixed reply plus the same 4096-byte budget the server gives a link message.
pub const MAX_LINK_REPLY_SIZE: usize = LINK_REPLY_LEN + MAX_LINK_SIZE;
/// Link result and auth mechanism words are one u32 each.
pub const LINK_RESULT_LEN: usize = 4;
/// `SpiceLinkAuthMechanism`: one u32.
pub const AUTH_MECHANISM_LEN: usize = 4;

/// Common capability: the client sends a `SpiceLinkAuthMechanism` word.
pub const COMMON_CAP_AUTH_SELECTION: u32 = 0;
/// Common capability: RSA ticket authentication.
pub const COMMON_CAP_AUTH_SPICE: u32 = 1;
/// Common capability: SASL authentication.
pub const COMMON_CAP_AUTH_SASL: u32 = 2;
/// Common capability: the 6-byte mini data header.
pub const COMMON_CAP_MINI_HEADER: u32 = 3;

/// Main channel capability: semi-seamless migration (MIGRATE_BEGIN).
pub const MAIN_CAP_SEMI_SEAMLESS_MIGRATE: u32 = 0;
/// Main channel capability: NAME and UUID messages after MAIN_INIT.
pub const MAIN_CAP_NAME_AND_UUID: u32 = 1;
/// Main channel capability: AGENT_CONNECTED_TOKENS.
pub const MAIN_CAP_AGENT_CONNECTED_TOKENS: u32 = 2;
/// Main channel capability: seamless migration (MIGRATE_BEGIN_SEAMLESS).
pub const MAIN_CAP_SEAMLESS_MIGRATE: u32 = 3;
/// Display channel capability: GL scanout (passes a unix fd; unix sockets only).
pub const DISPLAY_CAP_GL_SCANOUT: u32 = 7;

/// Auth mechanism word value for RSA ticket auth (= `COMMON_CAP_AUTH_SPICE`).
pub const AUTH_SPICE: u32 = 1;
/// Auth mechanism word value for SASL (= `COMMON_CAP_AUTH_SASL`).
pub const AUTH_SASL: u32 = 2;

/// Server->client, every channel: MIGRATE {u32 flags}.
pub const MSG_MIGRATE: u16 = 1;
/// Server->client, every channel: MIGRATE_DATA (opaque).
pub const MSG_MIGRATE_DATA: u16 = 2;
/// Server->client, every channel: SET_ACK {u32 generation, u32 window}.
pub const MSG_SET_ACK: u16 = 3;
/// Server->client, every channel: PING {u32 id, u64 timestamp, data}.
pub const MSG_PING: u16 = 4;
/// Server->client, every channel: WAIT_FOR_CHANNELS.
pub const MSG_WAIT_FOR_CHANNELS: u16 = 5;
/// Server->client, every channel: DISCONNECTING {u64 time, u32 reason}.
pub const MSG_DISCONNECTING: u16 = 6;
/// Server->client, every channel: NOTIFY.
pub const MSG_NOTIFY: u16 = 7;
/// Server->client, every channel: LIST (a `SpiceSubMessageList` body).
pub const MSG_LIST: u16 = 8;

/// Client->server, every channel: ACK_SYNC {u32 generation}.
pub const MSGC_ACK_SYNC: u16 = 1;
/// Client->server, every channel: ACK (empty).
pub const MSGC_ACK: u16 = 2;
/// Client->server, every channel: PONG {u32 id, u64 timestamp}.
pub const MSGC_PONG: u16 = 3;

/// Main, server->client: MIGRATE_BEGIN (carries the destination host).
pub const MSG_MAIN_MIGRATE_BEGIN: u16 = 101;
/// Main, server->client: MIGRATE_CANCEL (no address).
pub const MSG_MAIN_MIGRATE_CANCEL: u16 = 102;
/// Main, server->client: INIT (32 bytes, starts with the session id).
pub const MSG_MAIN_INIT: u16 = 103;
/// Main, server->client: CHANNELS_LIST.
pub const MSG_MAIN_CHANNELS_LIST: u16 = 104;
/// Main, server->client: NAME.
pub const MSG_MAIN_NAME: u16 = 113;
/// Main, server->client: UUID.
pub const MSG_MAIN_UUID: u16 = 114;
/// Main, server->client: MIGRATE_SWITCH_HOST (carries the destination host).
pub const MSG_MAIN_MIGRATE_SWITCH_HOST: u16 = 111;
/// Main, server->client: MIGRATE_END (no address).
pub const MSG_MAIN_MIGRATE_END: u16 = 112;
/// Main, server->client: MIGRATE_BEGIN_SEAMLESS (carries the destination host).
pub const MSG_MAIN_MIGRATE_BEGIN_SEAMLESS: u16 = 116;
/// Main, server->client: MIGRATE_DST_SEAMLESS_ACK (no address).
pub const MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK: u16 = 117;
/// Main, server->client: MIGRATE_DST_SEAMLESS_NACK (no address).
pub const MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK: u16 = 118;

/// Main, client->server: MIGRATE_CONNECTED.
pub const MSGC_MAIN_MIGRATE_CONNECTED: u16 = 102;
/// Main, client->server: MIGRATE_CONNECT_ERROR (tells the server to stop
/// waiting for the client to reach the migration target).
pub const MSGC_MAIN_MIGRATE_CONNECT_ERROR: u16 = 103;
/// Main, client->server: ATTACH_CHANNELS.
pub const MSGC_MAIN_ATTACH_CHANNELS: u16 = 104;
/// Main, client->server: MIGRATE_END.
pub const MSGC_MAIN_MIGRATE_END: u16 = 109;

/// Length of the MAIN_INIT body.
pub const MAIN_INIT_LEN: usize = 32;

/// A SPICE channel type (`SpiceLinkMess.channel_type`).
///
/// Unknown values are kept, not rejected: the proxy must not fail on a
/// channel type it does not know (one added by a later protocol version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChannelType {
    /// 1: session control, agent, migration.
    Main,
    /// 2: graphics.
    Display,
    /// 3: keyboard and mouse.
    Inputs,
    /// 4: cursor shape and position.
    Cursor,
    /// 5: audio out.
    Playback,
    /// 6: audio in.
    Record,
    /// 7: obsolete, no messages.
    Tunnel,
    /// 8: smartcard passthrough.
    Smartcard,
    /// 9: USB redirection.
    Usbredir,
    /// 10: named port (serial console, QEMU monitor, ...).
    Port,
    /// 11: folder sharing.
    Webdav,
    /// Any other value, kept as sent.
    Unknown(u8),
}

impl ChannelType {
    /// Map a wire value; values without a name become `Unknown`.
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Main,
            2 => Self::Display,
            3 => Self::Inputs,
            4 => Self::Cursor,
            5 => Self::Playback,
            6 => Self::Record,
            7 => Self::Tunnel,
            8 => Self::Smartcard,
            9 => Self::Usbredir,
            10 => Self::Port,
            11 => Self::Webdav,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub fn as_u8(self) -> u8 {
        match self {
            Self::Main => 1,
            Self::Display => 2,
            Self::Inputs => 3,
            Self::Cursor => 4,
            Self::Playback => 5,
            Self::Record => 6,
            Self::Tunnel => 7,
            Self::Smartcard => 8,
            Self::Usbredir => 9,
            Self::Port => 10,
            Self::Webdav => 11,
            Self::Unknown(other) => other,
        }
    }

    /// Lower-case name as spice-gtk spells it, for logs and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Main => "main",
            Self::Display => "display",
            Self::Inputs => "inputs",
            Self::Cursor => "cursor",
            Self::Playback => "playback",
            Self::Record => "record",
            Self::Tunnel => "tunnel",
            Self::Smartcard => "smartcard",
            Self::Usbredir => "usbredir",
            Self::Port => "port",
            Self::Webdav => "webdav",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for ChannelType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(value) => write!(f, "unknown({value})"),
            known => f.write_str(known.name()),
        }
    }
}

/// `SpiceLinkErr`: the error word of a link reply and the link result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkError {
    /// 0
    Ok,
    /// 1: generic failure.
    Error,
    /// 2: the link header did not start with "REDQ".
    InvalidMagic,
    /// 3: malformed link message or unsupported auth mechanism.
    InvalidData,
    /// 4: unsupported major version (or SASL required).
    VersionMismatch,
    /// 5: this channel requires TLS; spice-gtk retries on the TLS port.
    NeedSecured,
    /// 6: this channel must not use TLS.
    NeedUnsecured,
    /// 7: bad, expired or missing ticket.
    PermissionDenied,
    /// 8: no session with this connection id.
    BadConnectionId,
    /// 9: no such channel in this session.
    ChannelNotAvailable,
    /// Any other value, kept as sent.
    Unknown(u32),
}

impl LinkError {
    /// Map a wire value; values without a name become `Unknown`.
    pub fn from_u32(value: u32) -> Self {
        match value {
            0 => Self::Ok,
            1 => Self::Error,
            2 => Self::InvalidMagic,
            3 => Self::InvalidData,
            4 => Self::VersionMismatch,
            5 => Self::NeedSecured,
            6 => Self::NeedUnsecured,
            7 => Self::PermissionDenied,
            8 => Self::BadConnectionId,
            9 => Self::ChannelNotAvailable,
            other => Self::Unknown(other),
        }
    }

    /// The wire value.
    pub fn as_u32(self) -> u32 {
        match self {
            Self::Ok => 0,
            Self::Error => 1,
            Self::InvalidMagic => 2,
            Self::InvalidData => 3,
            Self::VersionMismatch => 4,
            Self::NeedSecured => 5,
            Self::NeedUnsecured => 6,
            Self::PermissionDenied => 7,
            Self::BadConnectionId => 8,
            Self::ChannelNotAvailable => 9,
            Self::Unknown(other) => other,
        }
    }

    /// snake_case name, for logs, audit rows and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::InvalidMagic => "invalid_magic",
            Self::InvalidData => "invalid_data",
            Self::VersionMismatch => "version_mismatch",
            Self::NeedSecured => "need_secured",
            Self::NeedUnsecured => "need_unsecured",
            Self::PermissionDenied => "permission_denied",
            Self::BadConnectionId => "bad_connection_id",
            Self::ChannelNotAvailable => "channel_not_available",
            Self::Unknown(_) => "unknown",
        }
    }
}

impl fmt::Display for LinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unknown(value) => write!(f, "unknown({value})"),
            known => f.write_str(known.name()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_type_round_trips_every_byte() {
        for value in 0..=u8::MAX {
            assert_eq!(ChannelType::from_u8(value).as_u8(), value);
        }
        assert_eq!(ChannelType::from_u8(8), ChannelType::Smartcard);
        assert_eq!(ChannelType::from_u8(11).name(), "webdav");
        assert_eq!(ChannelType::from_u8(12), ChannelType::Unknown(12));
        assert_eq!(ChannelType::Unknown(0).name(), "unknown");
        assert_eq!(ChannelType::Unknown(42).to_string(), "unknown(42)");
        assert_eq!(ChannelType::Usbredir.to_string(), "usbredir");
    }

    #[test]
    fn link_error_round_trips() {
        for value in 0..20 {
            assert_eq!(LinkError::from_u32(value).as_u32(), value);
        }
        assert_eq!(LinkError::from_u32(5), LinkError::NeedSecured);
        assert_eq!(LinkError::from_u32(9).name(), "channel_not_available");
        assert_eq!(LinkError::from_u32(10), LinkError::Unknown(10));
        assert_eq!(LinkError::PermissionDenied.to_string(), "permission_denied");
    }

    #[test]
    fn sizes_match_the_protocol_headers() {
        assert_eq!(u32::from_le_bytes(SPICE_MAGIC), 0x5144_4552);
        assert_eq!(PUBKEY_LEN, 1024 / 8 + 34);
        assert_eq!(LINK_REPLY_LEN, 4 + PUBKEY_LEN + 12);
        assert_eq!(LINK_MESS_LEN, 4 + 1 + 1 + 12);
    }
}
