//! Data-stage messages: the 6-byte mini and 18-byte full headers (parse and
//! encode), whole-message encoding, a 1:1 replacement no-op message, and the
//! main-channel helpers the firewall's rules use (MAIN_INIT session id,
//! migration message classes). Message bodies are otherwise opaque here.
//!
//! [`Framer`] finds message boundaries in a buffer that holds whole messages;
//! the tests and the `framer` fuzz target use it. The proxy's relay does not:
//! it frames each direction as a stream, in pieces, with
//! `firewall::StreamFramer` inside `firewall::DirectionFilter`, and
//! `firewall::rules` holds the per-message policy. This module owns no policy
//! and keeps no state.

use super::caps::Caps;
use super::consts::{
    COMMON_CAP_MINI_HEADER, ChannelType, LinkError, MAIN_INIT_LEN, MSG_LIST,
    MSG_MAIN_MIGRATE_BEGIN, MSG_MAIN_MIGRATE_BEGIN_SEAMLESS, MSG_MAIN_MIGRATE_CANCEL,
    MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK, MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK, MSG_MAIN_MIGRATE_END,
    MSG_MAIN_MIGRATE_SWITCH_HOST,
};
use super::error::SpiceError;
use super::wire::{Reader, len_u32};

/// Which data header a channel connection uses (same in both directions).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeaderKind {
    /// `SpiceMiniDataHeader`: u16 type, u32 size. Serials are implicit.
    Mini,
    /// `SpiceDataHeader`: u64 serial, u16 type, u32 size, u32 sub_list.
    Full,
}

impl HeaderKind {
    /// Header length in bytes: 6 or 18.
    #[expect(
        clippy::len_without_is_empty,
        reason = "a header length is never empty"
    )]
    pub fn len(self) -> usize {
        match self {
            Self::Mini => 6,
            Self::Full => 18,
        }
    }

    /// The header a side uses when talking to a peer with `peer_caps`: mini
    /// iff the peer advertised COMMON_CAP_MINI_HEADER (every implementation
    /// supports it; each side decides from the other's link caps).
    pub fn for_peer(peer_caps: &Caps) -> Self {
        if peer_caps.has_common(COMMON_CAP_MINI_HEADER) {
            Self::Mini
        } else {
            Self::Full
        }
    }
}

/// A decoded data header. Mini headers have no serial or sub_list: they
/// decode as 0 and are not encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MessageHeader {
    /// Message serial (full header only; 0 for mini).
    pub serial: u64,
    /// Message type (channel specific above 100).
    pub msg_type: u16,
    /// Body length in bytes, excluding the header.
    pub size: u32,
    /// Offset in the body of a `SpiceSubMessageList`, or 0 (full header only).
    pub sub_list: u32,
}

impl MessageHeader {
    /// Total wire length of the message (header + body).
    pub fn message_len(&self, kind: HeaderKind) -> usize {
        kind.len()
            .saturating_add(usize::try_from(self.size).unwrap_or(usize::MAX))
    }
}

/// Parse a data header from the start of `buf`.
///
/// # Errors
/// `Incomplete` if `buf` is shorter than the header.
pub fn parse_header(kind: HeaderKind, buf: &[u8]) -> Result<MessageHeader, SpiceError> {
    let mut r = Reader::new(buf);
    // Check the whole header is present first so `needed` is exact.
    r.bytes(kind.len())?;
    let mut r = Reader::new(buf);
    Ok(match kind {
        HeaderKind::Mini => MessageHeader {
            serial: 0,
            msg_type: r.u16()?,
            size: r.u32()?,
            sub_list: 0,
        },
        HeaderKind::Full => MessageHeader {
            serial: r.u64()?,
            msg_type: r.u16()?,
            size: r.u32()?,
            sub_list: r.u32()?,
        },
    })
}

/// Append the wire form of `header` to `out`.
pub fn encode_header(kind: HeaderKind, header: &MessageHeader, out: &mut Vec<u8>) {
    if kind == HeaderKind::Full {
        out.extend_from_slice(&header.serial.to_le_bytes());
    }
    out.extend_from_slice(&header.msg_type.to_le_bytes());
    out.extend_from_slice(&header.size.to_le_bytes());
    if kind == HeaderKind::Full {
        out.extend_from_slice(&header.sub_list.to_le_bytes());
    }
}

/// Finds message boundaries in a buffer of one channel direction's bytes.
///
/// The caller keeps what it has read in one buffer, calls `next_message` (or
/// walks `frames`), and for each complete message takes exactly `len` bytes
/// off the front; bodies are never copied by the framer. Every message must
/// be whole in the buffer before it is found, so the buffer grows to the
/// largest message: for a stream read in pieces, `firewall::StreamFramer`
/// needs only a header's worth of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framer {
    /// Header format of this connection.
    pub kind: HeaderKind,
    /// Largest body accepted; larger messages are an error, so a caller never
    /// buffers more than `kind.len() + max_body` bytes for one message.
    pub max_body: u32,
}

/// One complete message borrowed from a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Its header.
    pub header: MessageHeader,
    /// The whole message, header included.
    pub bytes: &'a [u8],
    /// Header length, where the body starts in `bytes`.
    pub header_len: usize,
}

impl<'a> Frame<'a> {
    /// The message body.
    pub fn body(&self) -> &'a [u8] {
        self.bytes.get(self.header_len..).unwrap_or_default()
    }
}

impl Framer {
    /// A framer for `kind` headers and bodies up to `max_body` bytes.
    pub fn new(kind: HeaderKind, max_body: u32) -> Self {
        Self { kind, max_body }
    }

    /// The first complete message in `buf`: its header and total length
    /// (header + body). `Ok(None)` means read more.
    ///
    /// # Errors
    /// `Invalid{InvalidData}` as soon as a header announces a body larger
    /// than `max_body`, before the body arrives.
    pub fn next_message(&self, buf: &[u8]) -> Result<Option<(MessageHeader, usize)>, SpiceError> {
        let header = match parse_header(self.kind, buf) {
            Ok(header) => header,
            Err(SpiceError::Incomplete { .. }) => return Ok(None),
            Err(other) => return Err(other),
        };
        if header.size > self.max_body {
            return Err(SpiceError::invalid(
                LinkError::InvalidData,
                "message body larger than the channel limit",
            ));
        }
        let len = header.message_len(self.kind);
        Ok((buf.len() >= len).then_some((header, len)))
    }

    /// Iterate over the complete messages at the front of `buf`.
    pub fn frames<'a>(&self, buf: &'a [u8]) -> Frames<'a> {
        Frames {
            framer: *self,
            buf,
            pos: 0,
            done: false,
        }
    }
}

/// Iterator over complete messages; see `Framer::frames`. Stops at the first
/// incomplete message, or after yielding an error once.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    framer: Framer,
    buf: &'a [u8],
    pos: usize,
    done: bool,
}

impl Frames<'_> {
    /// Bytes covered by the messages yielded so far; the rest of the buffer
    /// starts with an incomplete message (or is empty).
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, SpiceError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let rest = self.buf.get(self.pos..).unwrap_or_default();
        match self.framer.next_message(rest) {
            Ok(Some((header, len))) => {
                let bytes = rest.get(..len).unwrap_or_default();
                self.pos = self.pos.saturating_add(len);
                Some(Ok(Frame {
                    header,
                    bytes,
                    header_len: self.framer.kind.len(),
                }))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(err) => {
                self.done = true;
                Some(Err(err))
            }
        }
    }
}

impl std::iter::FusedIterator for Frames<'_> {}

/// Encode a complete message, in either direction (the firewall's injected
/// messages, such as an empty client->server `MSGC_MAIN_MIGRATE_CONNECT_ERROR`,
/// are built with it too). `serial` is ignored for mini headers; use the next
/// serial of that direction for full headers. Bodies are bounded by the
/// caller far below 4 GiB.
pub fn encode_message(kind: HeaderKind, serial: u64, msg_type: u16, body: &[u8]) -> Vec<u8> {
    let header = MessageHeader {
        serial,
        msg_type,
        size: len_u32(body.len()),
        sub_list: 0,
    };
    let mut out = Vec::with_capacity(kind.len().saturating_add(body.len()));
    encode_header(kind, &header, &mut out);
    out.extend_from_slice(body);
    out
}

/// An empty `SPICE_MSG_LIST` (type 8, body = u16 count 0). spice-gtk counts it
/// as one received message (ACK window, implicit serial) and processes
/// nothing, so it can replace a dropped server->client message 1:1: the
/// client's ACK count (server flow control) and implicit mini-header serials
/// (WAIT_FOR_CHANNELS) stay in step. For full headers pass the dropped
/// message's serial.
pub fn noop_message(kind: HeaderKind, serial: u64) -> Vec<u8> {
    encode_message(kind, serial, MSG_LIST, &0u16.to_le_bytes())
}

/// The session id (first u32) of a MAIN_INIT body, if the body is the full
/// 32 bytes.
pub fn main_init_session_id(body: &[u8]) -> Option<u32> {
    if body.len() < MAIN_INIT_LEN {
        return None;
    }
    Reader::new(body).u32().ok()
}

/// Overwrite the session id of a MAIN_INIT body in place. Returns false (and
/// changes nothing) if the body is shorter than 32 bytes.
pub fn set_main_init_session_id(body: &mut [u8], id: u32) -> bool {
    if body.len() < MAIN_INIT_LEN {
        return false;
    }
    match body.get_mut(..4) {
        Some(field) => {
            field.copy_from_slice(&id.to_le_bytes());
            true
        }
        None => false,
    }
}

/// How a server->client migration message matters to a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationKind {
    /// Carries a hypervisor host, ports and certificate subject
    /// (MIGRATE_BEGIN, MIGRATE_SWITCH_HOST, MIGRATE_BEGIN_SEAMLESS): must be
    /// blocked or rewritten.
    CarriesAddress,
    /// Part of a migration but carries no address (MIGRATE_CANCEL,
    /// MIGRATE_END, MIGRATE_DST_SEAMLESS_ACK/NACK).
    AddressFree,
}

/// Classify a server->client message. Only main-channel messages are
/// migration messages here; the per-channel base MIGRATE/MIGRATE_DATA (1, 2)
/// carry no addresses and are not reported.
pub fn migration_kind(channel: ChannelType, msg_type: u16) -> Option<MigrationKind> {
    if channel != ChannelType::Main {
        return None;
    }
    match msg_type {
        MSG_MAIN_MIGRATE_BEGIN | MSG_MAIN_MIGRATE_SWITCH_HOST | MSG_MAIN_MIGRATE_BEGIN_SEAMLESS => {
            Some(MigrationKind::CarriesAddress)
        }
        MSG_MAIN_MIGRATE_CANCEL
        | MSG_MAIN_MIGRATE_END
        | MSG_MAIN_MIGRATE_DST_SEAMLESS_ACK
        | MSG_MAIN_MIGRATE_DST_SEAMLESS_NACK => Some(MigrationKind::AddressFree),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{
        MSG_MAIN_INIT, MSG_MAIN_NAME, MSG_SET_ACK, MSGC_MAIN_MIGRATE_CONNECT_ERROR,
    };
    use crate::golden;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// Server->client data after the 4-byte link result.
    fn main_data() -> Vec<u8> {
        golden::main_s2c_result_data()[4..].to_vec()
    }

    fn display_data() -> Vec<u8> {
        golden::display_s2c_result_data()[4..].to_vec()
    }

    fn walk(framer: &Framer, buf: &[u8]) -> (Vec<(u16, usize)>, usize) {
        let mut frames = framer.frames(buf);
        let out = frames
            .by_ref()
            .map(|f| {
                let f = f.unwrap();
                (f.header.msg_type, f.bytes.len())
            })
            .collect();
        (out, frames.consumed())
    }

    #[test]
    fn frames_real_main_channel_start() {
        let data = main_data();
        let framer = Framer::new(HeaderKind::Mini, 26_624);
        let frames: Vec<Frame<'_>> = framer.frames(&data).map(Result::unwrap).collect();
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[0].header.msg_type, MSG_MAIN_INIT);
        assert_eq!(frames[0].header.size, 32);
        assert_eq!(main_init_session_id(frames[0].body()), Some(0xb977_9e0f));
        assert_eq!(frames[1].header.msg_type, MSG_MAIN_NAME);
        assert_eq!(&frames[1].body()[4..], b"QEMU 10.0.2\0");
        // The UUID message header is cut off in the capture.
        assert_eq!(framer.next_message(&data[60..]), Ok(None));
    }

    #[test]
    fn frames_real_display_channel_start() {
        let data = display_data();
        let (frames, consumed) = walk(&Framer::new(HeaderKind::Mini, 1 << 20), &data);
        assert_eq!(frames, vec![(MSG_SET_ACK, 14), (108, 6), (314, 26)]);
        assert_eq!(consumed, 46);
        // DRAW_COPY (304) announces 7172 bytes: over a 4 KiB limit that is
        // an error as soon as its header is visible.
        let mut small = Framer::new(HeaderKind::Mini, 4096).frames(&data);
        assert_eq!(small.by_ref().take(3).count(), 3);
        assert!(matches!(
            small.next(),
            Some(Err(SpiceError::Invalid {
                code: LinkError::InvalidData,
                ..
            }))
        ));
        assert_eq!(small.next(), None);
    }

    #[test]
    fn rewrites_main_init_session_id_in_place() {
        let mut data = main_data();
        let framer = Framer::new(HeaderKind::Mini, 26_624);
        let (header, len) = framer.next_message(&data).unwrap().unwrap();
        assert_eq!((header.msg_type, len), (MSG_MAIN_INIT, 38));
        let body = &mut data[6..len];
        assert!(set_main_init_session_id(body, 0x0102_0304));
        assert_eq!(main_init_session_id(body), Some(0x0102_0304));
        assert_eq!(data[6..10], [4, 3, 2, 1]);
        // The rest of INIT is untouched.
        assert_eq!(data[10..38], main_data()[10..38]);
        let mut short = [0u8; 31];
        assert!(!set_main_init_session_id(&mut short, 1));
        assert_eq!(short, [0; 31]);
        assert_eq!(main_init_session_id(&short), None);
    }

    #[test]
    fn headers_round_trip() {
        for (kind, header) in [
            (
                HeaderKind::Mini,
                MessageHeader {
                    serial: 0,
                    msg_type: 304,
                    size: 7172,
                    sub_list: 0,
                },
            ),
            (
                HeaderKind::Full,
                MessageHeader {
                    serial: u64::MAX - 1,
                    msg_type: 105,
                    size: 40,
                    sub_list: 12,
                },
            ),
        ] {
            let mut out = Vec::new();
            encode_header(kind, &header, &mut out);
            assert_eq!(out.len(), kind.len());
            assert_eq!(parse_header(kind, &out), Ok(header));
            assert_eq!(
                parse_header(kind, &out[..kind.len() - 1]),
                Err(SpiceError::Incomplete { needed: 1 })
            );
        }
        assert_eq!(
            parse_header(HeaderKind::Full, &[]),
            Err(SpiceError::Incomplete { needed: 18 })
        );
    }

    #[test]
    fn noop_is_an_empty_list() {
        assert_eq!(noop_message(HeaderKind::Mini, 99), [8, 0, 2, 0, 0, 0, 0, 0]);
        let full = noop_message(HeaderKind::Full, 7);
        assert_eq!(full.len(), 20);
        let header = parse_header(HeaderKind::Full, &full).unwrap();
        assert_eq!(
            header,
            MessageHeader {
                serial: 7,
                msg_type: MSG_LIST,
                size: 2,
                sub_list: 0
            }
        );
        assert_eq!(full[18..], [0, 0]);
    }

    #[test]
    fn client_message_for_connect_error() {
        assert_eq!(
            encode_message(HeaderKind::Mini, 0, MSGC_MAIN_MIGRATE_CONNECT_ERROR, &[]),
            [103, 0, 0, 0, 0, 0]
        );
        let full = encode_message(HeaderKind::Full, 5, 103, &[1, 2]);
        assert_eq!(
            full,
            [5, 0, 0, 0, 0, 0, 0, 0, 103, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1, 2]
        );
    }

    #[test]
    fn migration_classes() {
        for t in [101, 111, 116] {
            assert_eq!(
                migration_kind(ChannelType::Main, t),
                Some(MigrationKind::CarriesAddress)
            );
        }
        for t in [102, 112, 117, 118] {
            assert_eq!(
                migration_kind(ChannelType::Main, t),
                Some(MigrationKind::AddressFree)
            );
        }
        for t in [1, 2, 103, 104, 109, 113] {
            assert_eq!(migration_kind(ChannelType::Main, t), None);
        }
        assert_eq!(migration_kind(ChannelType::Display, 101), None);
        assert_eq!(migration_kind(ChannelType::Unknown(1), 111), None);
    }

    #[test]
    fn header_kind_follows_peer_caps() {
        assert_eq!(
            HeaderKind::for_peer(&Caps::new(vec![0x0b], vec![])),
            HeaderKind::Mini
        );
        assert_eq!(
            HeaderKind::for_peer(&Caps::new(vec![0x03], vec![])),
            HeaderKind::Full
        );
        assert_eq!(HeaderKind::for_peer(&Caps::default()), HeaderKind::Full);
    }

    #[test]
    fn every_golden_prefix_frames_cleanly() {
        let framer = Framer::new(HeaderKind::Mini, u32::MAX);
        for data in [main_data(), display_data()] {
            let (all, consumed_all) = walk(&framer, &data);
            for len in 0..=data.len() {
                let (frames, consumed) = walk(&framer, &data[..len]);
                // A prefix yields a prefix of the messages, never an error.
                assert!(consumed <= len);
                assert_eq!(frames[..], all[..frames.len()]);
                if len >= consumed_all {
                    assert_eq!(frames, all);
                }
            }
        }
    }

    /// Seeded random streams with both header kinds: no panics, messages
    /// tile the consumed prefix exactly, and the oversize limit holds.
    #[test]
    fn random_streams_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x6d73_6773);
        for round in 0..5_000 {
            let kind = if round % 2 == 0 {
                HeaderKind::Mini
            } else {
                HeaderKind::Full
            };
            let max_body = rng.gen_range(0..512);
            let framer = Framer::new(kind, max_body);
            let mut buf = Vec::new();
            // Mostly well-formed messages with small sizes, plus noise.
            for _ in 0..rng.gen_range(0..8) {
                if rng.gen_bool(0.8) {
                    let body_len = rng.gen_range(0..600);
                    let body = vec![rng.r#gen::<u8>(); body_len];
                    buf.extend(encode_message(kind, rng.r#gen(), rng.r#gen(), &body));
                } else {
                    let mut noise = vec![0u8; rng.gen_range(0..40)];
                    rng.fill(&mut noise[..]);
                    buf.extend(noise);
                }
            }
            let cut = rng.gen_range(0..=buf.len());
            let buf = &buf[..cut];
            let mut frames = framer.frames(buf);
            let mut pos = 0;
            for frame in frames.by_ref() {
                match frame {
                    Ok(frame) => {
                        assert!(frame.header.size <= max_body);
                        assert_eq!(frame.bytes, &buf[pos..pos + frame.bytes.len()]);
                        assert_eq!(frame.body().len(), frame.header.size as usize);
                        pos += frame.bytes.len();
                    }
                    Err(err) => assert!(!matches!(err, SpiceError::Incomplete { .. })),
                }
            }
            assert_eq!(frames.consumed(), pos);
        }
    }
}
