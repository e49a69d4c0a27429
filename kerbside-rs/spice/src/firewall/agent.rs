//! Reassembly of the VDAgent message stream carried in MAIN AGENT_DATA
//! chunks, one direction at a time, to classify each chunk by the agent
//! message it belongs to (clipboard, file transfer, other). Bounded state:
//! only the 20-byte `VDAgentMessage` header of the current message is kept
//! (the header must sit whole in the first chunk of a message, as
//! spice-server requires), never message data.
//!
//! Framing rules follow spice-server's `agent_msg_filter_process_data`
//! (server/agent-msg-filter.c): a chunk is at most 2048 bytes; the first
//! chunk of a message holds its whole header; protocol must be 1; and a
//! chunk never runs past the end of the message it continues. spice-gtk
//! (src/channel-main.c agent_msg_queue_many) and the server's agent read path
//! both start every agent message in a fresh chunk, so a chunk that ends one
//! message and starts another is something spice-server itself rejects
//! (it shuts the main channel down); we report it as a protocol error
//! instead of rewriting the chunk, and the caller closes the channel.
//!
//! This module does not decide verdicts or hold profile settings.

use super::tables::AGENT_CHUNK_LIMIT;

/// `VDAgentMessage` header length: u32 protocol, u32 type, u64 opaque, u32 size.
pub const AGENT_HEADER_LEN: usize = 20;
/// `VD_AGENT_PROTOCOL`.
pub const AGENT_PROTOCOL: u32 = 1;

/// VD_AGENT_CLIPBOARD (spice-protocol spice/vd_agent.h).
pub const VD_AGENT_CLIPBOARD: u32 = 4;
/// VD_AGENT_CLIPBOARD_GRAB.
pub const VD_AGENT_CLIPBOARD_GRAB: u32 = 7;
/// VD_AGENT_CLIPBOARD_REQUEST.
pub const VD_AGENT_CLIPBOARD_REQUEST: u32 = 8;
/// VD_AGENT_CLIPBOARD_RELEASE.
pub const VD_AGENT_CLIPBOARD_RELEASE: u32 = 9;
/// VD_AGENT_FILE_XFER_START.
pub const VD_AGENT_FILE_XFER_START: u32 = 10;
/// VD_AGENT_FILE_XFER_STATUS.
pub const VD_AGENT_FILE_XFER_STATUS: u32 = 11;
/// VD_AGENT_FILE_XFER_DATA.
pub const VD_AGENT_FILE_XFER_DATA: u32 = 12;

/// What an agent message is, for the content rules. The sets are the ones
/// spice-server's own copy-paste and file-transfer switches use
/// (server/agent-msg-filter.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentClass {
    /// CLIPBOARD, CLIPBOARD_GRAB, CLIPBOARD_REQUEST, CLIPBOARD_RELEASE.
    Clipboard,
    /// FILE_XFER_START, FILE_XFER_STATUS, FILE_XFER_DATA.
    FileTransfer,
    /// Anything else (monitors config, capabilities, mouse state, ...).
    Other,
}

/// Classify a `VDAgentMessage.type`.
pub fn classify(agent_type: u32) -> AgentClass {
    match agent_type {
        VD_AGENT_CLIPBOARD
        | VD_AGENT_CLIPBOARD_GRAB
        | VD_AGENT_CLIPBOARD_REQUEST
        | VD_AGENT_CLIPBOARD_RELEASE => AgentClass::Clipboard,
        VD_AGENT_FILE_XFER_START | VD_AGENT_FILE_XFER_STATUS | VD_AGENT_FILE_XFER_DATA => {
            AgentClass::FileTransfer
        }
        _ => AgentClass::Other,
    }
}

/// Why an AGENT_DATA chunk does not fit the agent stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    /// A chunk longer than VD_AGENT_MAX_DATA_SIZE (2048).
    #[error("agent chunk larger than 2048 bytes")]
    ChunkTooLarge,
    /// A message's first chunk shorter than the 20-byte header.
    #[error("agent chunk too short for a VDAgentMessage header")]
    IncompleteHeader,
    /// `VDAgentMessage.protocol` is not 1.
    #[error("agent message with protocol {0}, expected 1")]
    BadProtocol(u32),
    /// The chunk continues a message past its announced size (it would end
    /// one agent message and start another).
    #[error("agent chunk runs past the end of its agent message")]
    OverrunsMessage,
    /// An earlier chunk was invalid; the stream position is lost.
    #[error("agent stream already broken by an earlier invalid chunk")]
    Broken,
}

/// What one chunk turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentChunk {
    /// `VDAgentMessage.type` of the message this chunk belongs to.
    pub agent_type: u32,
    /// Its class.
    pub class: AgentClass,
    /// The chunk starts a message (holds its header).
    pub starts_message: bool,
    /// The chunk completes the message.
    pub ends_message: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The next chunk starts a message.
    Start,
    /// Inside a message of `agent_type` with `remaining` data bytes to come.
    Inside { agent_type: u32, remaining: u32 },
    /// Lost: every further chunk is an error until `reset`.
    Broken,
}

/// The agent stream of one direction of one main channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgentStream {
    state: State,
}

impl Default for AgentStream {
    fn default() -> Self {
        Self::new()
    }
}

fn le_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    let mut word = [0u8; 4];
    word.copy_from_slice(bytes);
    Some(u32::from_le_bytes(word))
}

impl AgentStream {
    /// A stream expecting the start of a message.
    pub fn new() -> Self {
        Self {
            state: State::Start,
        }
    }

    /// Forget any message in progress: the next chunk starts a message.
    /// Server->client streams restart when the agent (dis)connects, like
    /// spice-server's read filter (server/reds.cpp reds_reset_vdp).
    pub fn reset(&mut self) {
        self.state = State::Start;
    }

    /// Whether the next chunk must start a new agent message.
    pub fn at_message_start(&self) -> bool {
        self.state == State::Start
    }

    /// Account for one AGENT_DATA body.
    ///
    /// # Errors
    /// An `AgentError` when the chunk breaks the framing spice-server
    /// enforces; the stream is then broken until `reset`.
    pub fn push(&mut self, chunk: &[u8]) -> Result<AgentChunk, AgentError> {
        let result = self.advance(chunk);
        if result.is_err() {
            self.state = State::Broken;
        }
        result
    }

    fn advance(&mut self, chunk: &[u8]) -> Result<AgentChunk, AgentError> {
        let len = u32::try_from(chunk.len()).map_err(|_| AgentError::ChunkTooLarge)?;
        if len > AGENT_CHUNK_LIMIT {
            return Err(AgentError::ChunkTooLarge);
        }
        let (agent_type, remaining, data_len, starts_message) = match self.state {
            State::Broken => return Err(AgentError::Broken),
            State::Inside {
                agent_type,
                remaining,
            } => (agent_type, remaining, len, false),
            State::Start => {
                if chunk.len() < AGENT_HEADER_LEN {
                    return Err(AgentError::IncompleteHeader);
                }
                let protocol = le_u32(chunk, 0).ok_or(AgentError::IncompleteHeader)?;
                if protocol != AGENT_PROTOCOL {
                    return Err(AgentError::BadProtocol(protocol));
                }
                let agent_type = le_u32(chunk, 4).ok_or(AgentError::IncompleteHeader)?;
                let size = le_u32(chunk, 16).ok_or(AgentError::IncompleteHeader)?;
                // len >= 20 was checked above.
                (agent_type, size, len.saturating_sub(20), true)
            }
        };
        if data_len > remaining {
            return Err(AgentError::OverrunsMessage);
        }
        let remaining = remaining.saturating_sub(data_len);
        self.state = if remaining == 0 {
            State::Start
        } else {
            State::Inside {
                agent_type,
                remaining,
            }
        };
        Ok(AgentChunk {
            agent_type,
            class: classify(agent_type),
            starts_message,
            ends_message: remaining == 0,
        })
    }
}

/// Encode a `VDAgentMessage` header (for tests, fuzz seeds and tools).
pub fn encode_agent_header(agent_type: u32, opaque: u64, size: u32) -> [u8; AGENT_HEADER_LEN] {
    let mut out = [0u8; AGENT_HEADER_LEN];
    let fields = AGENT_PROTOCOL
        .to_le_bytes()
        .into_iter()
        .chain(agent_type.to_le_bytes())
        .chain(opaque.to_le_bytes())
        .chain(size.to_le_bytes());
    for (slot, byte) in out.iter_mut().zip(fields) {
        *slot = byte;
    }
    out
}

/// Split one agent message into AGENT_DATA bodies the way spice-gtk does
/// (src/channel-main.c agent_msg_queue_many): the first chunk holds the
/// header and up to 2028 data bytes, the rest at most 2048 each.
pub fn chunk_agent_message(agent_type: u32, data: &[u8]) -> Vec<Vec<u8>> {
    let size = u32::try_from(data.len()).unwrap_or(u32::MAX);
    let mut stream = encode_agent_header(agent_type, 0, size).to_vec();
    stream.extend_from_slice(data);
    stream
        .chunks(AGENT_CHUNK_LIMIT as usize)
        .map(<[u8]>::to_vec)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_like_spice_server() {
        for t in [4, 7, 8, 9] {
            assert_eq!(classify(t), AgentClass::Clipboard);
        }
        for t in [10, 11, 12] {
            assert_eq!(classify(t), AgentClass::FileTransfer);
        }
        for t in [0, 1, 2, 3, 5, 6, 13, 14, 15, 16, 17, u32::MAX] {
            assert_eq!(classify(t), AgentClass::Other);
        }
    }

    #[test]
    fn reassembles_a_multi_chunk_message() {
        let data = vec![0x55u8; 5000];
        let chunks = chunk_agent_message(VD_AGENT_CLIPBOARD, &data);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [2048, 2048, 924]
        );
        let mut stream = AgentStream::new();
        let infos: Vec<AgentChunk> = chunks.iter().map(|c| stream.push(c).unwrap()).collect();
        assert!(infos.iter().all(|i| i.class == AgentClass::Clipboard));
        assert_eq!(
            infos
                .iter()
                .map(|i| (i.starts_message, i.ends_message))
                .collect::<Vec<_>>(),
            [(true, false), (false, false), (false, true)]
        );
        assert!(stream.at_message_start());
        // An empty message is one 20-byte chunk.
        let empty = chunk_agent_message(13, &[]);
        assert_eq!(empty.len(), 1);
        let info = stream.push(&empty[0]).unwrap();
        assert!(info.starts_message && info.ends_message);
        assert_eq!(info.class, AgentClass::Other);
    }

    #[test]
    fn rejects_what_spice_server_rejects() {
        let mut stream = AgentStream::new();
        assert_eq!(stream.push(&[1, 0, 0]), Err(AgentError::IncompleteHeader));
        assert_eq!(stream.push(&[0; 40]), Err(AgentError::Broken));
        stream.reset();
        let mut bad = encode_agent_header(4, 0, 0).to_vec();
        bad[0] = 2;
        assert_eq!(stream.push(&bad), Err(AgentError::BadProtocol(2)));
        stream.reset();
        assert_eq!(stream.push(&[0; 2049]), Err(AgentError::ChunkTooLarge));
        stream.reset();
        // One chunk holding two messages: the first ends after 4 bytes.
        let mut two = encode_agent_header(6, 0, 4).to_vec();
        two.extend_from_slice(&[0; 4]);
        two.extend_from_slice(&encode_agent_header(4, 0, 0));
        assert_eq!(stream.push(&two), Err(AgentError::OverrunsMessage));
        stream.reset();
        // A continuation longer than what remains.
        let mut first = encode_agent_header(12, 0, 10).to_vec();
        first.extend_from_slice(&[0; 5]);
        assert!(stream.push(&first).is_ok());
        assert_eq!(stream.push(&[0; 6]), Err(AgentError::OverrunsMessage));
    }

    /// spice-server's agent filter restated (as the agent_reassembly fuzz
    /// target does), checked against `AgentStream` on seeded random chunks.
    #[test]
    fn agrees_with_a_model_of_spice_servers_filter() {
        use rand::{Rng, SeedableRng, rngs::StdRng};
        let mut rng = StdRng::seed_from_u64(0x6167_656e);
        for _ in 0..3000 {
            let mut stream = AgentStream::new();
            // (remaining, type) inside a message; broken flag.
            let mut inside: Option<(u32, u32)> = None;
            let mut broken = false;
            for _ in 0..rng.gen_range(1..12) {
                let chunk: Vec<u8> = if rng.gen_bool(0.6) && inside.is_none() {
                    let size = rng.gen_range(0..3000u32);
                    let mut c = encode_agent_header(rng.gen_range(1..14), 0, size).to_vec();
                    if rng.gen_bool(0.1) {
                        c[0] = 2;
                    }
                    c.extend(vec![
                        0;
                        rng.gen_range(0..=(size as usize + 3).min(2048 - 20))
                    ]);
                    c
                } else {
                    vec![0; rng.gen_range(0..2100)]
                };
                let expected = if broken || chunk.len() > 2048 {
                    None
                } else {
                    match inside {
                        Some((remaining, t)) => (chunk.len() as u32 <= remaining)
                            .then(|| (t, false, remaining - chunk.len() as u32)),
                        None if chunk.len() >= 20 && chunk[0..4] == [1, 0, 0, 0] => {
                            let t = u32::from_le_bytes(chunk[4..8].try_into().unwrap());
                            let size = u32::from_le_bytes(chunk[16..20].try_into().unwrap());
                            let data = chunk.len() as u32 - 20;
                            (data <= size).then(|| (t, true, size - data))
                        }
                        None => None,
                    }
                };
                match (stream.push(&chunk), expected) {
                    (Ok(info), Some((t, starts, left))) => {
                        assert_eq!(info.agent_type, t);
                        assert_eq!(
                            (info.starts_message, info.ends_message),
                            (starts, left == 0)
                        );
                        inside = (left > 0).then_some((left, t));
                    }
                    (Err(_), None) => broken = true,
                    (got, want) => panic!("{got:?} vs {want:?}"),
                }
            }
        }
    }
}
