//! Link stage framing: `SpiceLinkHeader` + `SpiceLinkMess` (client -> server),
//! `SpiceLinkHeader` + `SpiceLinkReply` (server -> client), the auth mechanism
//! word and the 4-byte link result. Parsers take any prefix of a stream and
//! answer `Incomplete` until they can decide, enforcing the same limits as
//! spice-server. Ticket crypto lives in `ticket`.

use super::caps::Caps;
use super::consts::{
    ChannelType, LINK_HEADER_LEN, LINK_MESS_LEN, LINK_REPLY_LEN, LINK_RESULT_LEN, LinkError,
    MAX_CAP_WORDS, MAX_LINK_REPLY_SIZE, MAX_LINK_SIZE, PUBKEY_LEN, SPICE_MAGIC, VERSION_MAJOR,
    VERSION_MINOR,
};
use super::error::SpiceError;
use super::wire::{Reader, len_u32, put_u32_words};

/// A client's link request (`SpiceLinkHeader` + `SpiceLinkMess` + caps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMessage {
    /// Header major version (always 2 once parsed).
    pub major: u32,
    /// Header minor version (not checked, as in spice-server).
    pub minor: u32,
    /// 0 for a new MAIN link; otherwise the session id from MAIN_INIT.
    pub connection_id: u32,
    /// Requested channel type.
    pub channel_type: ChannelType,
    /// Channel instance (display head, usbredir slot, ...).
    pub channel_id: u8,
    /// The client's capabilities.
    pub caps: Caps,
}

/// A server's link reply (`SpiceLinkHeader` + `SpiceLinkReply` + caps).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkReply {
    /// `Ok`, or why the link was refused.
    pub error: LinkError,
    /// DER SubjectPublicKeyInfo of the per-link RSA-1024 ticket key (all
    /// zeroes in error replies and with SASL).
    pub pub_key: [u8; PUBKEY_LEN],
    /// The server channel's capabilities.
    pub caps: Caps,
}

/// Fixed header fields after validation.
struct LinkHeader {
    major: u32,
    minor: u32,
    size: usize,
}

/// Check magic, major and size as soon as enough bytes are present, in
/// spice-server's order.
fn parse_link_header(
    buf: &[u8],
    min_size: usize,
    max_size: usize,
) -> Result<LinkHeader, SpiceError> {
    // Decide the magic on the first differing byte: a TLS ClientHello or an
    // HTTP request on the SPICE port fails at once instead of waiting.
    let seen = buf.len().min(SPICE_MAGIC.len());
    if buf.get(..seen) != SPICE_MAGIC.get(..seen) {
        return Err(SpiceError::invalid(
            LinkError::InvalidMagic,
            "link header does not start with REDQ",
        ));
    }
    let mut r = Reader::new(buf);
    r.bytes(SPICE_MAGIC.len())?;
    let major = r.u32()?;
    if major != VERSION_MAJOR {
        // spice-server closes without a reply when major is 0; the caller
        // may choose to do the same.
        return Err(SpiceError::invalid(
            LinkError::VersionMismatch,
            "unsupported SPICE major version",
        ));
    }
    // Nothing more to decide until the whole header is here.
    Reader::new(buf).bytes(LINK_HEADER_LEN)?;
    let minor = r.u32()?;
    let size = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    if size < min_size || size > max_size {
        return Err(SpiceError::invalid(
            LinkError::InvalidData,
            "link header size out of range",
        ));
    }
    Ok(LinkHeader { major, minor, size })
}

/// The body after the header, or `Incomplete` with the shortfall.
fn link_body(buf: &[u8], size: usize) -> Result<&[u8], SpiceError> {
    Reader::at(buf, LINK_HEADER_LEN).bytes(size)
}

/// Read the caps words of a link body whose fixed part is `fixed_len` bytes.
/// `body` is exactly `header.size` bytes.
fn parse_caps(
    body: &[u8],
    fixed_len: usize,
    num_common: u32,
    num_channel: u32,
    caps_offset: u32,
) -> Result<Caps, SpiceError> {
    let max = len_u32(MAX_CAP_WORDS);
    if num_common > max || num_channel > max {
        return Err(SpiceError::invalid(
            LinkError::InvalidData,
            "too many capability words",
        ));
    }
    if num_common == 0 && num_channel == 0 {
        // spice-server ignores caps_offset when there are no caps.
        return Ok(Caps::default());
    }
    let words = u64::from(num_common) + u64::from(num_channel);
    let end = u64::from(caps_offset) + 4 * words;
    if u64::from(caps_offset) < fixed_len as u64 || end > body.len() as u64 {
        return Err(SpiceError::invalid(
            LinkError::InvalidData,
            "capability words outside the link message",
        ));
    }
    // Bounded: both counts <= 1024 and the words lie inside `body`.
    let mut r = Reader::at(body, usize::try_from(caps_offset).unwrap_or(usize::MAX));
    let common = r.u32_words(usize::try_from(num_common).unwrap_or(usize::MAX))?;
    let channel = r.u32_words(usize::try_from(num_channel).unwrap_or(usize::MAX))?;
    Ok(Caps { common, channel })
}

fn put_link_header(out: &mut Vec<u8>, major: u32, minor: u32, size: usize) {
    out.extend_from_slice(&SPICE_MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&minor.to_le_bytes());
    out.extend_from_slice(&len_u32(size).to_le_bytes());
}

/// Parse a client's link request from the start of `buf`.
///
/// Returns the message and the number of bytes it occupied (16 + header
/// size; any padding or trailing bytes inside `size` are skipped, as
/// spice-server does). Bytes after that belong to the next stage.
///
/// # Errors
/// `Incomplete` while `buf` is a valid prefix; `Invalid` with
/// `InvalidMagic`, `VersionMismatch` (major != 2) or `InvalidData`
/// (size not in 18..=4096, more than 1024 words of either caps kind,
/// caps outside the message).
pub fn parse_link_message(buf: &[u8]) -> Result<(LinkMessage, usize), SpiceError> {
    let header = parse_link_header(buf, LINK_MESS_LEN, MAX_LINK_SIZE)?;
    let body = link_body(buf, header.size)?;
    let mut r = Reader::new(body);
    let connection_id = r.u32()?;
    let channel_type = ChannelType::from_u8(r.u8()?);
    let channel_id = r.u8()?;
    let num_common = r.u32()?;
    let num_channel = r.u32()?;
    let caps_offset = r.u32()?;
    let caps = parse_caps(body, LINK_MESS_LEN, num_common, num_channel, caps_offset)?;
    let message = LinkMessage {
        major: header.major,
        minor: header.minor,
        connection_id,
        channel_type,
        channel_id,
        caps,
    };
    Ok((message, LINK_HEADER_LEN + header.size))
}

impl LinkMessage {
    /// A link request with our protocol version.
    pub fn new(connection_id: u32, channel_type: ChannelType, channel_id: u8, caps: Caps) -> Self {
        Self {
            major: VERSION_MAJOR,
            minor: VERSION_MINOR,
            connection_id,
            channel_type,
            channel_id,
            caps,
        }
    }

    /// Wire form, laid out like spice-gtk: caps_offset 18, common words then
    /// channel words.
    pub fn encode(&self) -> Vec<u8> {
        let size = LINK_MESS_LEN.saturating_add(self.caps.word_count().saturating_mul(4));
        let mut out = Vec::with_capacity(LINK_HEADER_LEN.saturating_add(size));
        put_link_header(&mut out, self.major, self.minor, size);
        out.extend_from_slice(&self.connection_id.to_le_bytes());
        out.push(self.channel_type.as_u8());
        out.push(self.channel_id);
        out.extend_from_slice(&len_u32(self.caps.common.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(self.caps.channel.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(LINK_MESS_LEN).to_le_bytes());
        put_u32_words(&mut out, &self.caps.common);
        put_u32_words(&mut out, &self.caps.channel);
        out
    }
}

/// Parse a server's link reply from the start of `buf` (hypervisor leg).
///
/// Error replies (size 178, no caps) parse too: check `error` first.
/// `caps_offset` counts from the byte after the 16-byte header.
///
/// # Errors
/// `Incomplete` while `buf` is a valid prefix; `Invalid` for bad magic,
/// major != 2, size not in 178..=4274, too many caps words or caps outside
/// the reply.
pub fn parse_link_reply(buf: &[u8]) -> Result<(LinkReply, usize), SpiceError> {
    let header = parse_link_header(buf, LINK_REPLY_LEN, MAX_LINK_REPLY_SIZE)?;
    let body = link_body(buf, header.size)?;
    let mut r = Reader::new(body);
    let error = LinkError::from_u32(r.u32()?);
    let pub_key = r.array::<PUBKEY_LEN>()?;
    let num_common = r.u32()?;
    let num_channel = r.u32()?;
    let caps_offset = r.u32()?;
    let caps = parse_caps(body, LINK_REPLY_LEN, num_common, num_channel, caps_offset)?;
    let reply = LinkReply {
        error,
        pub_key,
        caps,
    };
    Ok((reply, LINK_HEADER_LEN + header.size))
}

impl LinkReply {
    /// Wire form, laid out like spice-server: caps_offset 178, common words
    /// then channel words.
    pub fn encode(&self) -> Vec<u8> {
        let size = LINK_REPLY_LEN.saturating_add(self.caps.word_count().saturating_mul(4));
        let mut out = Vec::with_capacity(LINK_HEADER_LEN.saturating_add(size));
        put_link_header(&mut out, VERSION_MAJOR, VERSION_MINOR, size);
        out.extend_from_slice(&self.error.as_u32().to_le_bytes());
        out.extend_from_slice(&self.pub_key);
        out.extend_from_slice(&len_u32(self.caps.common.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(self.caps.channel.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(LINK_REPLY_LEN).to_le_bytes());
        put_u32_words(&mut out, &self.caps.common);
        put_u32_words(&mut out, &self.caps.channel);
        out
    }
}

/// A link error reply exactly like spice-server's `reds_send_link_error`:
/// header with size 178, then a reply that is all zeroes except `error`
/// (no key, no caps, caps_offset 0). 194 bytes.
pub fn encode_link_error(code: LinkError) -> Vec<u8> {
    let mut out = Vec::with_capacity(LINK_HEADER_LEN + LINK_REPLY_LEN);
    put_link_header(&mut out, VERSION_MAJOR, VERSION_MINOR, LINK_REPLY_LEN);
    out.extend_from_slice(&code.as_u32().to_le_bytes());
    out.resize(LINK_HEADER_LEN + LINK_REPLY_LEN, 0);
    out
}

/// The 4-byte link result sent after the ticket.
pub fn encode_link_result(code: LinkError) -> [u8; LINK_RESULT_LEN] {
    code.as_u32().to_le_bytes()
}

/// Parse a 4-byte link result from the start of `buf`.
///
/// # Errors
/// `Incomplete` if fewer than 4 bytes are present.
pub fn parse_link_result(buf: &[u8]) -> Result<LinkError, SpiceError> {
    Ok(LinkError::from_u32(Reader::new(buf).u32()?))
}

/// The 4-byte `SpiceLinkAuthMechanism` word (`AUTH_SPICE` or `AUTH_SASL`).
pub fn encode_auth_mechanism(mechanism: u32) -> [u8; 4] {
    mechanism.to_le_bytes()
}

/// Parse a `SpiceLinkAuthMechanism` word from the start of `buf`. The value is
/// returned as sent; spice-server answers anything but `AUTH_SPICE` (without
/// SASL) with `InvalidData`.
///
/// # Errors
/// `Incomplete` if fewer than 4 bytes are present.
pub fn parse_auth_mechanism(buf: &[u8]) -> Result<u32, SpiceError> {
    Reader::new(buf).u32()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consts::{AUTH_SPICE, COMMON_CAP_AUTH_SELECTION, COMMON_CAP_MINI_HEADER};
    use crate::golden;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn invalid_code(result: Result<impl std::fmt::Debug, SpiceError>) -> LinkError {
        match result {
            Err(SpiceError::Invalid { code, .. }) => code,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn needed(result: Result<impl std::fmt::Debug, SpiceError>) -> usize {
        match result {
            Err(SpiceError::Incomplete { needed }) => needed,
            other => panic!("expected Incomplete, got {other:?}"),
        }
    }

    /// A link message with arbitrary header fields and caps
    /// `(num_common, num_channel, caps_offset)`, cut or zero-padded to
    /// `body_len` bytes after the header.
    fn raw_link(
        major: u32,
        minor: u32,
        size: u32,
        caps: (u32, u32, u32),
        body_len: usize,
    ) -> Vec<u8> {
        let mut out = SPICE_MAGIC.to_vec();
        for word in [major, minor, size, 0] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&[1, 0]);
        for word in [caps.0, caps.1, caps.2] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.resize(LINK_HEADER_LEN + body_len, 0);
        out
    }

    fn link(size: u32, ncommon: u32, nchannel: u32, offset: u32) -> Vec<u8> {
        raw_link(2, 2, size, (ncommon, nchannel, offset), size as usize)
    }

    #[test]
    fn parses_real_main_link() {
        let bytes = golden::main_c2s_link();
        let (msg, used) = parse_link_message(&bytes).unwrap();
        assert_eq!(used, 42);
        assert_eq!(
            msg,
            LinkMessage::new(0, ChannelType::Main, 0, Caps::new(vec![0x0d], vec![0x0f]))
        );
        assert!(msg.caps.has_common(COMMON_CAP_AUTH_SELECTION));
        assert!(msg.caps.has_common(COMMON_CAP_MINI_HEADER));
        assert_eq!(msg.encode(), bytes);
        assert_eq!(
            parse_link_message(&golden::need_secured_c2s_link())
                .unwrap()
                .0,
            msg
        );
    }

    #[test]
    fn parses_real_display_link() {
        let bytes = golden::display_c2s_link();
        let (msg, used) = parse_link_message(&bytes).unwrap();
        assert_eq!(used, 42);
        assert_eq!(msg.connection_id, 0xb977_9e0f);
        assert_eq!(msg.channel_type, ChannelType::Display);
        assert_eq!(msg.channel_id, 0);
        assert_eq!(msg.caps, Caps::new(vec![0x0d], vec![0x3bf]));
        assert_eq!(msg.encode(), bytes);
    }

    #[test]
    fn parses_real_replies() {
        for (bytes, channel_caps) in [
            (golden::main_s2c_reply(), 0x0f),
            (golden::display_s2c_reply(), 0x1052),
            (golden::badpw_s2c_reply(), 0x0f),
        ] {
            let (reply, used) = parse_link_reply(&bytes).unwrap();
            assert_eq!(used, 202);
            assert_eq!(reply.error, LinkError::Ok);
            assert_eq!(reply.caps, Caps::new(vec![0x0b], vec![channel_caps]));
            assert_eq!(reply.pub_key[..3], [0x30, 0x81, 0x9f]);
            assert_eq!(reply.encode(), bytes);
        }
    }

    #[test]
    fn need_secured_error_matches_spice_server() {
        let bytes = golden::need_secured_s2c_error();
        assert_eq!(encode_link_error(LinkError::NeedSecured), bytes);
        let (reply, used) = parse_link_reply(&bytes).unwrap();
        assert_eq!(used, 194);
        assert_eq!(reply.error, LinkError::NeedSecured);
        assert_eq!(reply.pub_key, [0; PUBKEY_LEN]);
        assert_eq!(reply.caps, Caps::default());
    }

    #[test]
    fn link_results_and_mechanism() {
        assert_eq!(
            parse_link_result(&golden::badpw_s2c_result()),
            Ok(LinkError::PermissionDenied)
        );
        assert_eq!(
            parse_link_result(&golden::main_s2c_result_data()),
            Ok(LinkError::Ok)
        );
        assert_eq!(needed(parse_link_result(&[0, 0])), 2);
        assert_eq!(encode_link_result(LinkError::BadConnectionId), [8, 0, 0, 0]);
        assert_eq!(
            parse_auth_mechanism(&golden::main_c2s_ticket()),
            Ok(AUTH_SPICE)
        );
        assert_eq!(encode_auth_mechanism(AUTH_SPICE), [1, 0, 0, 0]);
        assert_eq!(needed(parse_auth_mechanism(&[1])), 3);
    }

    #[test]
    fn prefixes_are_incomplete_with_exact_shortfall() {
        let bytes = golden::main_c2s_link();
        assert_eq!(needed(parse_link_message(&bytes[..3])), 1);
        assert_eq!(needed(parse_link_message(&bytes[..10])), 6);
        assert_eq!(needed(parse_link_message(&bytes[..16])), 26);
        assert_eq!(needed(parse_link_message(&bytes[..41])), 1);
        let reply = golden::display_s2c_reply();
        assert_eq!(needed(parse_link_reply(&reply[..100])), 102);
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let mut bytes = golden::main_c2s_link();
        bytes.extend_from_slice(&golden::main_c2s_ticket());
        let (_, used) = parse_link_message(&bytes).unwrap();
        assert_eq!(used, 42);
        assert_eq!(parse_auth_mechanism(&bytes[used..]), Ok(AUTH_SPICE));
    }

    #[test]
    fn magic_is_decided_on_the_first_wrong_byte() {
        assert_eq!(
            invalid_code(parse_link_message(b"\x16\x03\x01")),
            LinkError::InvalidMagic
        );
        assert_eq!(
            invalid_code(parse_link_message(b"GET / HTTP/1.1")),
            LinkError::InvalidMagic
        );
        assert_eq!(
            invalid_code(parse_link_message(b"REDX")),
            LinkError::InvalidMagic
        );
        assert_eq!(needed(parse_link_message(b"RED")), 1);
        assert_eq!(needed(parse_link_message(b"")), 4);
    }

    #[test]
    fn only_major_version_is_checked() {
        let bad_major = raw_link(1, 2, 18, (0, 0, 18), 18);
        assert_eq!(
            invalid_code(parse_link_message(&bad_major[..8])),
            LinkError::VersionMismatch
        );
        assert_eq!(
            invalid_code(parse_link_reply(&bad_major)),
            LinkError::VersionMismatch
        );
        let odd_minor = raw_link(2, 77, 18, (0, 0, 18), 18);
        let (msg, used) = parse_link_message(&odd_minor).unwrap();
        assert_eq!((msg.minor, used), (77, 34));
        assert_eq!(msg.encode(), odd_minor);
    }

    #[test]
    fn size_limits_are_enforced_from_the_header_alone() {
        for size in [0, 17, 4097, u32::MAX] {
            // Only the header: the size alone must decide.
            let bytes = raw_link(2, 2, size, (0, 0, 0), 0);
            assert_eq!(bytes.len(), 16);
            assert_eq!(
                invalid_code(parse_link_message(&bytes)),
                LinkError::InvalidData,
                "size {size}"
            );
        }
        assert!(parse_link_message(&link(18, 0, 0, 0)).is_ok());
        assert!(parse_link_message(&link(4096, 0, 0, 0)).is_ok());
        // A reply must be at least 178 bytes.
        let mut short_reply = encode_link_error(LinkError::Error);
        short_reply[12] = 177;
        assert_eq!(
            invalid_code(parse_link_reply(&short_reply)),
            LinkError::InvalidData
        );
    }

    #[test]
    fn caps_limits_are_enforced() {
        // Counts above 1024 are refused even if the size would fit.
        assert_eq!(
            invalid_code(parse_link_message(&link(4096, 1025, 0, 18))),
            LinkError::InvalidData
        );
        assert_eq!(
            invalid_code(parse_link_message(&link(4096, 0, 1025, 18))),
            LinkError::InvalidData
        );
        // Offset inside the fixed part.
        assert_eq!(
            invalid_code(parse_link_message(&link(26, 1, 1, 17))),
            LinkError::InvalidData
        );
        // Words run past the declared size.
        assert_eq!(
            invalid_code(parse_link_message(&link(26, 1, 1, 19))),
            LinkError::InvalidData
        );
        // Overflowing offsets do not wrap.
        assert_eq!(
            invalid_code(parse_link_message(&link(26, 1, 1, u32::MAX))),
            LinkError::InvalidData
        );
        // No caps: the offset is ignored, like spice-server.
        assert!(parse_link_message(&link(18, 0, 0, 0)).is_ok());
        // Caps after a gap are found through caps_offset.
        let mut gap = link(30, 1, 1, 22);
        gap[16 + 22..16 + 26].copy_from_slice(&9u32.to_le_bytes());
        gap[16 + 26..16 + 30].copy_from_slice(&7u32.to_le_bytes());
        let (msg, used) = parse_link_message(&gap).unwrap();
        assert_eq!((msg.caps, used), (Caps::new(vec![9], vec![7]), 46));
        // Maximum counts that fit in 4096 bytes parse.
        let max = link(4096, 1019, 0, 18);
        assert_eq!(parse_link_message(&max).unwrap().0.caps.common.len(), 1019);
    }

    #[test]
    fn reply_round_trip_with_many_words() {
        let mut caps = Caps::new(vec![0x0b, 0, 5], vec![0x1052]);
        caps.set_channel(70);
        let reply = LinkReply {
            error: LinkError::Ok,
            pub_key: [7; PUBKEY_LEN],
            caps,
        };
        let bytes = reply.encode();
        assert_eq!(bytes.len(), 16 + 178 + 4 * 6);
        assert_eq!(parse_link_reply(&bytes).unwrap(), (reply, bytes.len()));
    }

    /// Thousands of seeded random inputs and mutations of the golden
    /// vectors: the parsers never panic, and whatever parses re-encodes to
    /// something that parses back equal.
    #[test]
    fn random_inputs_never_panic() {
        let mut rng = StdRng::seed_from_u64(0x5350_4943);
        let seeds: Vec<Vec<u8>> = golden::all().into_iter().map(|(_, b)| b).collect();
        for round in 0..20_000 {
            let mut input = if round % 2 == 0 {
                let len = rng.gen_range(0..300);
                let mut v = vec![0u8; len];
                rng.fill(&mut v[..]);
                // Often start with a valid magic and version to get deeper.
                if rng.gen_bool(0.7) && len >= 8 {
                    v[..8].copy_from_slice(b"REDQ\x02\x00\x00\x00");
                }
                v
            } else {
                seeds[rng.gen_range(0..seeds.len())].clone()
            };
            for _ in 0..rng.gen_range(0..4) {
                if !input.is_empty() {
                    let at = rng.gen_range(0..input.len());
                    input[at] = rng.r#gen();
                }
            }
            if let Ok((msg, used)) = parse_link_message(&input) {
                assert!(used <= input.len());
                let again = msg.encode();
                assert_eq!(parse_link_message(&again).unwrap().0, msg);
            }
            if let Ok((reply, used)) = parse_link_reply(&input) {
                assert!(used <= input.len());
                assert_eq!(parse_link_reply(&reply.encode()).unwrap().0, reply);
            }
            let _ = parse_link_result(&input);
        }
    }

    #[test]
    fn every_golden_prefix_is_incomplete() {
        for (name, bytes) in golden::all() {
            let parse: fn(&[u8]) -> Result<usize, SpiceError> = if name.ends_with("c2s_link") {
                |b| parse_link_message(b).map(|(_, used)| used)
            } else if name.ends_with("s2c_reply") || name.ends_with("s2c_error") {
                |b| parse_link_reply(b).map(|(_, used)| used)
            } else {
                continue;
            };
            assert_eq!(parse(&bytes).unwrap(), bytes.len(), "{name}");
            for len in 0..bytes.len() {
                let n = needed(parse(&bytes[..len]));
                assert!(
                    n >= 1 && len + n <= bytes.len(),
                    "{name} len {len} needed {n}"
                );
            }
        }
    }
}
