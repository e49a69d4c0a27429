//! VDAgent reassembly over arbitrary AGENT_DATA chunks. The input is a
//! sequence of records: a u16 LE length then that many chunk bytes (a
//! length of 0xFFFF resets the stream). Invariants: no panic; the stream
//! agrees with a simple reference model of spice-server's agent filter;
//! after an error every chunk is refused until a reset.
#![no_main]

use kerbside_spice::firewall::agent::{AgentError, AgentStream, classify};
use libfuzzer_sys::fuzz_target;

/// spice-server's agent-msg-filter.c, restated: (remaining, type) of the
/// message in progress, or None between messages; Err once broken.
struct Model {
    inside: Option<(u32, u32)>,
    broken: bool,
}

impl Model {
    fn push(&mut self, chunk: &[u8]) -> Result<(u32, bool, bool), ()> {
        if self.broken || chunk.len() > 2048 {
            self.broken = true;
            return Err(());
        }
        let (agent_type, remaining, data) = match self.inside {
            Some((remaining, agent_type)) => (agent_type, remaining, chunk.len()),
            None => {
                if chunk.len() < 20 || u32::from_le_bytes(chunk[0..4].try_into().unwrap()) != 1 {
                    self.broken = true;
                    return Err(());
                }
                let t = u32::from_le_bytes(chunk[4..8].try_into().unwrap());
                let size = u32::from_le_bytes(chunk[16..20].try_into().unwrap());
                (t, size, chunk.len() - 20)
            }
        };
        if data as u64 > u64::from(remaining) {
            self.broken = true;
            return Err(());
        }
        let left = remaining - data as u32;
        let starts = self.inside.is_none();
        self.inside = (left > 0).then_some((left, agent_type));
        Ok((agent_type, starts, left == 0))
    }
}

fuzz_target!(|data: &[u8]| {
    let mut stream = AgentStream::new();
    let mut model = Model {
        inside: None,
        broken: false,
    };
    let mut pos = 0;
    while let Some(len) = data.get(pos..pos + 2) {
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        pos += 2;
        if len == 0xFFFF {
            stream.reset();
            model = Model {
                inside: None,
                broken: false,
            };
            continue;
        }
        let end = (pos + len).min(data.len());
        let chunk = &data[pos..end];
        pos = end;
        let got = stream.push(chunk);
        match (got, model.push(chunk)) {
            (Ok(info), Ok((agent_type, starts, ends))) => {
                assert_eq!(info.agent_type, agent_type);
                assert_eq!(info.class, classify(agent_type));
                assert_eq!((info.starts_message, info.ends_message), (starts, ends));
                assert_eq!(stream.at_message_start(), ends);
            }
            (Err(e), Err(())) => {
                // Once broken, always Broken until a reset.
                assert_eq!(stream.push(&[]), Err(AgentError::Broken));
                let _ = e.to_string();
            }
            (got, want) => panic!("stream {got:?} model {want:?}"),
        }
    }
});
