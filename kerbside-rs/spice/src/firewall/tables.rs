//! Per-channel SPICE message tables for both directions: which message
//! types each channel type defines, their names (for debug logs and verdict
//! reports), and the client->server size caps the firewall enforces. Caps are
//! never looser than spice-server's own receive limits; each entry names the
//! spice-server source it comes from (freedesktop/spice ee6c01a2). Numbers
//! come from spice-protocol `spice/enums.h` (969baca9).
//!
//! This module owns numbers and names only: it does not decide verdicts
//! (see `rules`) or parse headers (see `framer`).

use crate::consts::ChannelType;

use super::Direction;

/// spice-server's main channel receive buffer: `MAIN_CHANNEL_RECEIVE_BUF_SIZE`
/// = 4096 + (REDS_AGENT_WINDOW_SIZE 10 + REDS_NUM_INTERNAL_AGENT_MESSAGES 1)
/// * SPICE_AGENT_MAX_DATA_SIZE 2048 (server/main-channel-client.cpp).
pub const MAIN_RECEIVE_LIMIT: u32 = 4096 + (10 + 1) * 2048;
/// Largest AGENT_DATA body in either direction: `VD_AGENT_MAX_DATA_SIZE`.
/// spice-server's agent filter treats a longer chunk as a protocol error
/// and shuts the main channel down (server/agent-msg-filter.c
/// agent_msg_filter_process_data); spice-gtk chunks at this size
/// (src/channel-main.c agent_msg_queue_many).
pub const AGENT_CHUNK_LIMIT: u32 = 2048;
/// `CHANNEL_RECEIVE_BUF_SIZE` of display and cursor channels
/// (server/common-graphics-channel.h, alloc_recv_buf refuses larger).
pub const GRAPHICS_RECEIVE_LIMIT: u32 = 1024;
/// `RECEIVE_BUF_SIZE` of the inputs channel (server/inputs-channel-client.h).
pub const INPUTS_RECEIVE_LIMIT: u32 = 2048;
/// Sound channels' `receive_buf[SND_CODEC_MAX_FRAME_BYTES + 64]`
/// (server/sound.cpp; SND_CODEC_MAX_FRAME_BYTES = 480 * 2 * 2 = 1920 in
/// spice-common snd_codec.h). Larger messages are g_malloc'ed "should never
/// happen"; spice-gtk sends at most 4 + 1920 (src/channel-record.c).
pub const SOUND_RECEIVE_LIMIT: u32 = 1920 + 64;
/// Smartcard: spice-server g_mallocs any size (server/smartcard-channel-client.cpp);
/// the proxy's own bound is a VSCMsgHeader (12) plus the largest extended
/// APDU (65536 + a few bytes of framing), rounded up.
pub const SMARTCARD_LIMIT: u32 = 12 + 65_536 + 1024;
/// USB redirection DATA: spice-server takes a char-device write buffer of
/// whatever size is asked (server/spicevmc.cpp alloc_recv_buf); spice-gtk
/// sends one usbredir packet per message (src/channel-usbredir.c
/// spice_usbredir_write). The proxy's own bound; bodies are streamed, never
/// buffered, so it costs no memory.
pub const USBREDIR_LIMIT: u32 = 1 << 20;
/// PORT DATA: unbounded in spice-server (server/spicevmc.cpp); spice-gtk
/// writes what the application gives it (src/vmcstream.c, channel-base.c
/// spice_vmc_write_async). The proxy's own bound, streamed.
pub const PORT_LIMIT: u32 = 1 << 20;
/// WEBDAV DATA: spice-gtk muxes at most `MAX_MUX_SIZE` = 65535 bytes plus a
/// u64 client id and a u16 size per message (src/channel-webdav.c).
pub const WEBDAV_LIMIT: u32 = 65_535 + 8 + 2;
/// PORT_EVENT is exactly one byte: spice-server rejects any other size
/// (server/spicevmc.cpp handle_message "bad port event message size").
pub const PORT_EVENT_LEN: u32 = 1;

/// One message type of one channel and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageSpec {
    /// The type number.
    pub msg_type: u16,
    /// Upper-case name without the SPICE_MSG(C)_ prefix, e.g. "MAIN_AGENT_DATA".
    pub name: &'static str,
    /// Largest body accepted (client->server); `u32::MAX` server->client.
    pub max_size: u32,
    /// Where the cap comes from (spice-server or spice-gtk source file).
    pub limit_source: &'static str,
    /// Whether the receiving peer handles the type. Client->server types that
    /// spice-protocol defines but spice-server does not handle (MAIN
    /// CLIENT_INFO 101, QUALITY_INDICATOR 112) make the server drop the
    /// channel, so the firewall treats them like unknown types.
    pub handled: bool,
}

const BASE_S2C: &[(u16, &str)] = &[
    (1, "MIGRATE"),
    (2, "MIGRATE_DATA"),
    (3, "SET_ACK"),
    (4, "PING"),
    (5, "WAIT_FOR_CHANNELS"),
    (6, "DISCONNECTING"),
    (7, "NOTIFY"),
    (8, "LIST"),
];

const BASE_C2S: &[(u16, &str)] = &[
    (1, "ACK_SYNC"),
    (2, "ACK"),
    (3, "PONG"),
    (4, "MIGRATE_FLUSH_MARK"),
    (5, "MIGRATE_DATA"),
    (6, "DISCONNECTING"),
];

const MAIN_S2C: &[(u16, &str)] = &[
    (101, "MAIN_MIGRATE_BEGIN"),
    (102, "MAIN_MIGRATE_CANCEL"),
    (103, "MAIN_INIT"),
    (104, "MAIN_CHANNELS_LIST"),
    (105, "MAIN_MOUSE_MODE"),
    (106, "MAIN_MULTI_MEDIA_TIME"),
    (107, "MAIN_AGENT_CONNECTED"),
    (108, "MAIN_AGENT_DISCONNECTED"),
    (109, "MAIN_AGENT_DATA"),
    (110, "MAIN_AGENT_TOKEN"),
    (111, "MAIN_MIGRATE_SWITCH_HOST"),
    (112, "MAIN_MIGRATE_END"),
    (113, "MAIN_NAME"),
    (114, "MAIN_UUID"),
    (115, "MAIN_AGENT_CONNECTED_TOKENS"),
    (116, "MAIN_MIGRATE_BEGIN_SEAMLESS"),
    (117, "MAIN_MIGRATE_DST_SEAMLESS_ACK"),
    (118, "MAIN_MIGRATE_DST_SEAMLESS_NACK"),
];

const MAIN_C2S: &[(u16, &str)] = &[
    (101, "MAIN_CLIENT_INFO"),
    (102, "MAIN_MIGRATE_CONNECTED"),
    (103, "MAIN_MIGRATE_CONNECT_ERROR"),
    (104, "MAIN_ATTACH_CHANNELS"),
    (105, "MAIN_MOUSE_MODE_REQUEST"),
    (106, "MAIN_AGENT_START"),
    (107, "MAIN_AGENT_DATA"),
    (108, "MAIN_AGENT_TOKEN"),
    (109, "MAIN_MIGRATE_END"),
    (110, "MAIN_MIGRATE_DST_DO_SEAMLESS"),
    (111, "MAIN_MIGRATE_CONNECTED_SEAMLESS"),
    (112, "MAIN_QUALITY_INDICATOR"),
];

const DISPLAY_S2C: &[(u16, &str)] = &[
    (101, "DISPLAY_MODE"),
    (102, "DISPLAY_MARK"),
    (103, "DISPLAY_RESET"),
    (104, "DISPLAY_COPY_BITS"),
    (105, "DISPLAY_INVAL_LIST"),
    (106, "DISPLAY_INVAL_ALL_PIXMAPS"),
    (107, "DISPLAY_INVAL_PALETTE"),
    (108, "DISPLAY_INVAL_ALL_PALETTES"),
    (122, "DISPLAY_STREAM_CREATE"),
    (123, "DISPLAY_STREAM_DATA"),
    (124, "DISPLAY_STREAM_CLIP"),
    (125, "DISPLAY_STREAM_DESTROY"),
    (126, "DISPLAY_STREAM_DESTROY_ALL"),
    (302, "DISPLAY_DRAW_FILL"),
    (303, "DISPLAY_DRAW_OPAQUE"),
    (304, "DISPLAY_DRAW_COPY"),
    (305, "DISPLAY_DRAW_BLEND"),
    (306, "DISPLAY_DRAW_BLACKNESS"),
    (307, "DISPLAY_DRAW_WHITENESS"),
    (308, "DISPLAY_DRAW_INVERS"),
    (309, "DISPLAY_DRAW_ROP3"),
    (310, "DISPLAY_DRAW_STROKE"),
    (311, "DISPLAY_DRAW_TEXT"),
    (312, "DISPLAY_DRAW_TRANSPARENT"),
    (313, "DISPLAY_DRAW_ALPHA_BLEND"),
    (314, "DISPLAY_SURFACE_CREATE"),
    (315, "DISPLAY_SURFACE_DESTROY"),
    (316, "DISPLAY_STREAM_DATA_SIZED"),
    (317, "DISPLAY_MONITORS_CONFIG"),
    (318, "DISPLAY_DRAW_COMPOSITE"),
    (319, "DISPLAY_STREAM_ACTIVATE_REPORT"),
    (320, "DISPLAY_GL_SCANOUT_UNIX"),
    (321, "DISPLAY_GL_DRAW"),
    (322, "DISPLAY_QUALITY_INDICATOR"),
];

const DISPLAY_C2S: &[(u16, &str)] = &[
    (101, "DISPLAY_INIT"),
    (102, "DISPLAY_STREAM_REPORT"),
    (103, "DISPLAY_PREFERRED_COMPRESSION"),
    (104, "DISPLAY_GL_DRAW_DONE"),
    (105, "DISPLAY_PREFERRED_VIDEO_CODEC_TYPE"),
];

const INPUTS_S2C: &[(u16, &str)] = &[
    (101, "INPUTS_INIT"),
    (102, "INPUTS_KEY_MODIFIERS"),
    (111, "INPUTS_MOUSE_MOTION_ACK"),
];

const INPUTS_C2S: &[(u16, &str)] = &[
    (101, "INPUTS_KEY_DOWN"),
    (102, "INPUTS_KEY_UP"),
    (103, "INPUTS_KEY_MODIFIERS"),
    (104, "INPUTS_KEY_SCANCODE"),
    (111, "INPUTS_MOUSE_MOTION"),
    (112, "INPUTS_MOUSE_POSITION"),
    (113, "INPUTS_MOUSE_PRESS"),
    (114, "INPUTS_MOUSE_RELEASE"),
];

const CURSOR_S2C: &[(u16, &str)] = &[
    (101, "CURSOR_INIT"),
    (102, "CURSOR_RESET"),
    (103, "CURSOR_SET"),
    (104, "CURSOR_MOVE"),
    (105, "CURSOR_HIDE"),
    (106, "CURSOR_TRAIL"),
    (107, "CURSOR_INVAL_ONE"),
    (108, "CURSOR_INVAL_ALL"),
];

const PLAYBACK_S2C: &[(u16, &str)] = &[
    (101, "PLAYBACK_DATA"),
    (102, "PLAYBACK_MODE"),
    (103, "PLAYBACK_START"),
    (104, "PLAYBACK_STOP"),
    (105, "PLAYBACK_VOLUME"),
    (106, "PLAYBACK_MUTE"),
    (107, "PLAYBACK_LATENCY"),
];

const RECORD_S2C: &[(u16, &str)] = &[
    (101, "RECORD_START"),
    (102, "RECORD_STOP"),
    (103, "RECORD_VOLUME"),
    (104, "RECORD_MUTE"),
];

const RECORD_C2S: &[(u16, &str)] = &[
    (101, "RECORD_DATA"),
    (102, "RECORD_MODE"),
    (103, "RECORD_START_MARK"),
];

const SMARTCARD_S2C: &[(u16, &str)] = &[(101, "SMARTCARD_DATA")];
// spice-protocol also lists HEADER/ERROR/ATR/READER_ADD, all = 101.
const SMARTCARD_C2S: &[(u16, &str)] = &[(101, "SMARTCARD_DATA")];

const VMC_S2C: &[(u16, &str)] = &[(101, "SPICEVMC_DATA"), (102, "SPICEVMC_COMPRESSED_DATA")];
const VMC_C2S: &[(u16, &str)] = &[(101, "SPICEVMC_DATA"), (102, "SPICEVMC_COMPRESSED_DATA")];
const PORT_S2C: &[(u16, &str)] = &[
    (101, "SPICEVMC_DATA"),
    (102, "SPICEVMC_COMPRESSED_DATA"),
    (201, "PORT_INIT"),
    (202, "PORT_EVENT"),
];
const PORT_C2S: &[(u16, &str)] = &[
    (101, "SPICEVMC_DATA"),
    (102, "SPICEVMC_COMPRESSED_DATA"),
    (201, "PORT_EVENT"),
];

/// The channel-specific (type > 100) message table of a channel and direction.
/// TUNNEL (7) and unknown channel types define none.
fn channel_table(channel: ChannelType, direction: Direction) -> &'static [(u16, &'static str)] {
    use ChannelType as C;
    use Direction::{ClientToServer as Up, ServerToClient as Down};
    match (channel, direction) {
        (C::Main, Down) => MAIN_S2C,
        (C::Main, Up) => MAIN_C2S,
        (C::Display, Down) => DISPLAY_S2C,
        (C::Display, Up) => DISPLAY_C2S,
        (C::Inputs, Down) => INPUTS_S2C,
        (C::Inputs, Up) => INPUTS_C2S,
        (C::Cursor, Down) => CURSOR_S2C,
        (C::Playback, Down) => PLAYBACK_S2C,
        (C::Record, Down) => RECORD_S2C,
        (C::Record, Up) => RECORD_C2S,
        (C::Smartcard, Down) => SMARTCARD_S2C,
        (C::Smartcard, Up) => SMARTCARD_C2S,
        (C::Usbredir, Down) => VMC_S2C,
        (C::Usbredir, Up) => VMC_C2S,
        (C::Port | C::Webdav, Down) => PORT_S2C,
        (C::Port | C::Webdav, Up) => PORT_C2S,
        (C::Cursor | C::Playback, Up) | (C::Tunnel | C::Unknown(_), _) => &[],
    }
}

/// The client->server receive limit of a channel type and its source.
pub fn channel_limit(channel: ChannelType) -> (u32, &'static str) {
    use ChannelType as C;
    match channel {
        C::Main => (
            MAIN_RECEIVE_LIMIT,
            "spice server/main-channel-client.cpp MAIN_CHANNEL_RECEIVE_BUF_SIZE",
        ),
        C::Display | C::Cursor => (
            GRAPHICS_RECEIVE_LIMIT,
            "spice server/common-graphics-channel.h CHANNEL_RECEIVE_BUF_SIZE",
        ),
        C::Inputs => (
            INPUTS_RECEIVE_LIMIT,
            "spice server/inputs-channel-client.h RECEIVE_BUF_SIZE",
        ),
        C::Playback | C::Record => (
            SOUND_RECEIVE_LIMIT,
            "spice server/sound.cpp receive_buf[SND_CODEC_MAX_FRAME_BYTES + 64]",
        ),
        C::Smartcard => (
            SMARTCARD_LIMIT,
            "kerbside bound (spice server/smartcard-channel-client.cpp has none)",
        ),
        C::Usbredir => (
            USBREDIR_LIMIT,
            "kerbside bound (spice server/spicevmc.cpp has none)",
        ),
        C::Port => (
            PORT_LIMIT,
            "kerbside bound (spice server/spicevmc.cpp has none)",
        ),
        C::Webdav => (
            WEBDAV_LIMIT,
            "spice-gtk src/channel-webdav.c MAX_MUX_SIZE + mux header",
        ),
        // TUNNEL has no messages beyond base; unknown channels never link.
        C::Tunnel | C::Unknown(_) => (0, "no such channel in spice-server"),
    }
}

/// Per-type client->server overrides of the channel limit.
fn c2s_override(channel: ChannelType, msg_type: u16) -> Option<(u32, &'static str)> {
    use ChannelType as C;
    match (channel, msg_type) {
        (C::Main, 107) => Some((
            AGENT_CHUNK_LIMIT,
            "spice server/agent-msg-filter.c VD_AGENT_MAX_DATA_SIZE",
        )),
        (C::Port | C::Webdav, 201) => Some((
            PORT_EVENT_LEN,
            "spice server/spicevmc.cpp PORT_EVENT size check",
        )),
        _ => None,
    }
}

/// Whether spice-server handles a client->server type it defines. MAIN
/// CLIENT_INFO (101) and QUALITY_INDICATOR (112) fall through to "invalid
/// message type" in server/main-channel.cpp handle_message.
fn c2s_handled(channel: ChannelType, msg_type: u16) -> bool {
    !matches!((channel, msg_type), (ChannelType::Main, 101 | 112))
}

/// The spec of `msg_type` on `channel` in `direction`, or `None` when that
/// channel and direction define no such type.
pub fn lookup(channel: ChannelType, direction: Direction, msg_type: u16) -> Option<MessageSpec> {
    let base = match direction {
        Direction::ClientToServer => BASE_C2S,
        Direction::ServerToClient => BASE_S2C,
    };
    // TUNNEL and unknown channels never reach the data stage in spice-server.
    if matches!(channel, ChannelType::Tunnel | ChannelType::Unknown(_)) {
        return None;
    }
    // Both tables are sorted by type (a unit test checks it).
    let table = if msg_type <= 100 {
        base
    } else {
        channel_table(channel, direction)
    };
    let index = table.binary_search_by_key(&msg_type, |(t, _)| *t).ok()?;
    let (_, name) = table.get(index)?;
    Some(match direction {
        Direction::ServerToClient => MessageSpec {
            msg_type,
            name,
            max_size: u32::MAX,
            limit_source: "server->client: no limit (spice-gtk allocates what the header says)",
            handled: true,
        },
        Direction::ClientToServer => {
            let (max_size, limit_source) =
                c2s_override(channel, msg_type).unwrap_or_else(|| channel_limit(channel));
            MessageSpec {
                msg_type,
                name,
                max_size,
                limit_source,
                handled: c2s_handled(channel, msg_type),
            }
        }
    })
}

/// The name of a message type for logs: the table name, or "unknown".
pub fn message_name(channel: ChannelType, direction: Direction, msg_type: u16) -> &'static str {
    lookup(channel, direction, msg_type).map_or("unknown", |s| s.name)
}

/// Every message type a channel and direction define, base types first.
pub fn messages(channel: ChannelType, direction: Direction) -> Vec<MessageSpec> {
    let base = match direction {
        Direction::ClientToServer => BASE_C2S,
        Direction::ServerToClient => BASE_S2C,
    };
    base.iter()
        .chain(channel_table(channel, direction))
        .filter_map(|(t, _)| lookup(channel, direction, *t))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [ChannelType; 11] = [
        ChannelType::Main,
        ChannelType::Display,
        ChannelType::Inputs,
        ChannelType::Cursor,
        ChannelType::Playback,
        ChannelType::Record,
        ChannelType::Tunnel,
        ChannelType::Smartcard,
        ChannelType::Usbredir,
        ChannelType::Port,
        ChannelType::Webdav,
    ];

    #[test]
    fn tables_are_sorted_unique_and_named() {
        for channel in ALL {
            for direction in [Direction::ClientToServer, Direction::ServerToClient] {
                let specs = messages(channel, direction);
                let types: Vec<u16> = specs.iter().map(|s| s.msg_type).collect();
                let mut sorted = types.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(types, sorted, "{channel} {direction:?}");
                for spec in specs {
                    assert!(!spec.name.is_empty());
                    assert!(
                        spec.name
                            .chars()
                            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                    );
                    assert!(!spec.limit_source.is_empty());
                }
            }
        }
        assert!(messages(ChannelType::Tunnel, Direction::ClientToServer).is_empty());
    }

    #[test]
    fn caps_match_spice_server_limits() {
        let up = Direction::ClientToServer;
        let cap = |c, t| lookup(c, up, t).map(|s| s.max_size);
        assert_eq!(cap(ChannelType::Main, 104), Some(26_624));
        assert_eq!(cap(ChannelType::Main, 107), Some(2048));
        assert_eq!(cap(ChannelType::Display, 101), Some(1024));
        assert_eq!(cap(ChannelType::Cursor, 2), Some(1024));
        assert_eq!(cap(ChannelType::Inputs, 111), Some(2048));
        assert_eq!(cap(ChannelType::Record, 101), Some(1984));
        assert_eq!(cap(ChannelType::Port, 201), Some(1));
        assert_eq!(cap(ChannelType::Webdav, 101), Some(65_545));
        // Cursor and playback clients send base messages only.
        assert_eq!(cap(ChannelType::Cursor, 101), None);
        assert_eq!(cap(ChannelType::Playback, 101), None);
        // Defined but not handled by spice-server.
        assert!(!lookup(ChannelType::Main, up, 101).unwrap().handled);
        assert!(!lookup(ChannelType::Main, up, 112).unwrap().handled);
        assert!(lookup(ChannelType::Main, up, 111).unwrap().handled);
        // Server->client: named, uncapped.
        let down = lookup(ChannelType::Display, Direction::ServerToClient, 304).unwrap();
        assert_eq!((down.name, down.max_size), ("DISPLAY_DRAW_COPY", u32::MAX));
    }

    #[test]
    fn names_for_logs() {
        assert_eq!(
            message_name(ChannelType::Port, Direction::ServerToClient, 201),
            "PORT_INIT"
        );
        assert_eq!(
            message_name(ChannelType::Inputs, Direction::ClientToServer, 112),
            "INPUTS_MOUSE_POSITION"
        );
        assert_eq!(
            message_name(ChannelType::Main, Direction::ClientToServer, 3),
            "PONG"
        );
        assert_eq!(
            message_name(ChannelType::Unknown(40), Direction::ClientToServer, 3),
            "unknown"
        );
        assert_eq!(
            message_name(ChannelType::Inputs, Direction::ClientToServer, 105),
            "unknown"
        );
    }
}
