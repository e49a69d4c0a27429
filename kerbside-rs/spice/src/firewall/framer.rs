//! A streaming data-stage framer for one direction of one channel. Feed it
//! byte slices as they arrive, cut anywhere; it yields events (header
//! parsed, body bytes in pieces, message end) that borrow from the input.
//! It keeps only the bytes of a header split across reads (at most 18), so
//! memory is O(header) whatever the body sizes.
//!
//! It owns framing only: which messages to buffer, forward or drop is the
//! rules engine's business (`rules`). Unlike `msg::Framer` it never needs a
//! whole message in one buffer.

use crate::msg::{HeaderKind, MessageHeader, parse_header};

/// Why a byte stream is not valid SPICE framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    /// A full header whose sub_list offset does not leave room for the
    /// `SpiceSubMessageList` count inside the body.
    #[error("sub_list offset {sub_list} outside a {size}-byte body")]
    SubListOutOfBody {
        /// The header's sub_list.
        sub_list: u32,
        /// The header's size.
        size: u32,
    },
    /// A body larger than the framer's hard limit.
    #[error("message body of {size} bytes exceeds the {limit}-byte limit")]
    TooLarge {
        /// The header's size.
        size: u32,
        /// The limit.
        limit: u32,
    },
    /// The stream ended inside a message.
    #[error("stream ended inside a message")]
    Truncated,
}

/// One framing event. Body pieces borrow from the slice given to `next`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameEvent<'a> {
    /// A complete header; its bytes are available from `StreamFramer::header_bytes`.
    Header(MessageHeader),
    /// The next piece of the current body (never empty).
    Body(&'a [u8]),
    /// The current message is complete.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Collecting header bytes.
    Header,
    /// Inside a body with `remaining` bytes to come.
    Body { remaining: u32 },
    /// The body is complete; `End` is next.
    End,
}

/// Streaming framer; see the module docs.
#[derive(Debug, Clone)]
pub struct StreamFramer {
    kind: HeaderKind,
    /// Hard body limit; larger is a framing error (u32::MAX = none).
    limit: u32,
    /// The current (or last) header's bytes.
    header: [u8; 18],
    /// How many header bytes are collected.
    filled: usize,
    state: State,
}

impl StreamFramer {
    /// A framer for `kind` headers with no body limit beyond u32.
    pub fn new(kind: HeaderKind) -> Self {
        Self::with_limit(kind, u32::MAX)
    }

    /// A framer whose bodies above `limit` bytes are a framing error.
    pub fn with_limit(kind: HeaderKind, limit: u32) -> Self {
        Self {
            kind,
            limit,
            header: [0; 18],
            filled: 0,
            state: State::Header,
        }
    }

    /// The header format.
    pub fn kind(&self) -> HeaderKind {
        self.kind
    }

    /// Whether the stream is between messages (no partial header or body).
    pub fn at_boundary(&self) -> bool {
        self.state == State::Header && self.filled == 0
    }

    /// The wire bytes of the current header (valid from its `Header` event
    /// until the next header starts).
    pub fn header_bytes(&self) -> &[u8] {
        self.header.get(..self.kind.len()).unwrap_or_default()
    }

    /// Check that the stream may end here.
    ///
    /// # Errors
    /// `Truncated` inside a message.
    pub fn finish(&self) -> Result<(), FramingError> {
        if self.at_boundary() {
            Ok(())
        } else {
            Err(FramingError::Truncated)
        }
    }

    /// Consume some bytes of `input` and report at most one event. Returns
    /// how many bytes were consumed; call again with the rest. `(0, None)`
    /// means `input` is exhausted (or empty).
    ///
    /// # Errors
    /// A `FramingError` on an impossible header; the framer must not be
    /// used afterwards.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<FrameEvent<'a>>), FramingError> {
        match self.state {
            State::End => {
                self.state = State::Header;
                Ok((0, Some(FrameEvent::End)))
            }
            State::Body { remaining } => {
                let take = input
                    .len()
                    .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                if take == 0 {
                    return Ok((0, None));
                }
                let piece = input.get(..take).unwrap_or_default();
                let left = remaining.saturating_sub(u32::try_from(take).unwrap_or(u32::MAX));
                self.state = if left == 0 {
                    State::End
                } else {
                    State::Body { remaining: left }
                };
                Ok((take, Some(FrameEvent::Body(piece))))
            }
            State::Header => {
                let len = self.kind.len();
                let take = len.saturating_sub(self.filled).min(input.len());
                if take == 0 {
                    return Ok((0, None));
                }
                let dst = self
                    .header
                    .get_mut(self.filled..self.filled.saturating_add(take))
                    .unwrap_or_default();
                dst.copy_from_slice(input.get(..take).unwrap_or_default());
                self.filled = self.filled.saturating_add(take);
                if self.filled < len {
                    return Ok((take, None));
                }
                self.filled = 0;
                let header = parse_header(self.kind, self.header_bytes())
                    .map_err(|_| FramingError::Truncated)?;
                if header.size > self.limit {
                    return Err(FramingError::TooLarge {
                        size: header.size,
                        limit: self.limit,
                    });
                }
                if header.sub_list != 0 && u64::from(header.sub_list) + 2 > u64::from(header.size) {
                    return Err(FramingError::SubListOutOfBody {
                        sub_list: header.sub_list,
                        size: header.size,
                    });
                }
                self.state = if header.size == 0 {
                    State::End
                } else {
                    State::Body {
                        remaining: header.size,
                    }
                };
                Ok((take, Some(FrameEvent::Header(header))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::encode_message;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    /// A flattened event log: headers, total body bytes per message, ends.
    #[derive(Debug, PartialEq, Eq)]
    enum Ev {
        Header(MessageHeader),
        Body(Vec<u8>),
        End,
    }

    fn run(framer: &mut StreamFramer, cuts: &[&[u8]]) -> Result<Vec<Ev>, FramingError> {
        let mut out: Vec<Ev> = Vec::new();
        for cut in cuts {
            let mut pos = 0;
            loop {
                let (used, event) = framer.next(&cut[pos..])?;
                pos += used;
                match event {
                    None => break,
                    Some(FrameEvent::Header(h)) => out.push(Ev::Header(h)),
                    Some(FrameEvent::Body(b)) => {
                        assert!(!b.is_empty());
                        // Merge pieces so any segmentation compares equal.
                        if let Some(Ev::Body(prev)) = out.last_mut() {
                            prev.extend_from_slice(b);
                        } else {
                            out.push(Ev::Body(b.to_vec()));
                        }
                    }
                    Some(FrameEvent::End) => out.push(Ev::End),
                }
            }
            assert_eq!(pos, cut.len());
        }
        Ok(out)
    }

    fn stream(kind: HeaderKind, rng: &mut StdRng) -> Vec<u8> {
        let mut buf = Vec::new();
        for serial in 1..40u64 {
            let len = if rng.gen_bool(0.1) {
                rng.gen_range(0..5000)
            } else {
                rng.gen_range(0..64)
            };
            let body: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            buf.extend(encode_message(kind, serial, rng.gen_range(1..400), &body));
        }
        buf
    }

    #[test]
    fn random_segmentation_equals_whole_stream() {
        let mut rng = StdRng::seed_from_u64(0x6677_7263);
        for kind in [HeaderKind::Mini, HeaderKind::Full] {
            for _ in 0..50 {
                let data = stream(kind, &mut rng);
                let whole = run(&mut StreamFramer::new(kind), &[&data]).unwrap();
                let mut cuts = Vec::new();
                let mut pos = 0;
                while pos < data.len() {
                    let n = rng.gen_range(1..=40.min(data.len() - pos));
                    cuts.push(&data[pos..pos + n]);
                    pos += n;
                }
                let mut framer = StreamFramer::new(kind);
                assert_eq!(run(&mut framer, &cuts).unwrap(), whole);
                assert!(framer.at_boundary());
                assert_eq!(framer.finish(), Ok(()));
                // One byte at a time.
                let bytes: Vec<&[u8]> = data.chunks(1).collect();
                assert_eq!(run(&mut StreamFramer::new(kind), &bytes).unwrap(), whole);
            }
        }
    }

    #[test]
    fn frames_the_real_display_capture() {
        let data = crate::golden::display_s2c_result_data()[4..].to_vec();
        let events = run(&mut StreamFramer::new(HeaderKind::Mini), &[&data]).unwrap();
        let types: Vec<u16> = events
            .iter()
            .filter_map(|e| match e {
                Ev::Header(h) => Some(h.msg_type),
                _ => None,
            })
            .collect();
        // SET_ACK, INVAL_ALL_PALETTES, SURFACE_CREATE, then DRAW_COPY whose
        // 7172-byte body is cut off in the capture.
        assert_eq!(types, [3, 108, 314, 304]);
    }

    #[test]
    fn a_100_mb_body_streams_with_header_sized_state() {
        let kind = HeaderKind::Mini;
        let size: u32 = 100 * 1024 * 1024;
        let mut framer = StreamFramer::new(kind);
        let mut header = Vec::new();
        crate::msg::encode_header(
            kind,
            &MessageHeader {
                msg_type: 123,
                size,
                ..MessageHeader::default()
            },
            &mut header,
        );
        let (used, ev) = framer.next(&header).unwrap();
        assert_eq!(used, 6);
        assert!(matches!(ev, Some(FrameEvent::Header(h)) if h.size == size));
        let chunk = vec![7u8; 64 * 1024];
        let mut seen: u64 = 0;
        while seen < u64::from(size) {
            let (used, ev) = framer.next(&chunk).unwrap();
            assert!(matches!(ev, Some(FrameEvent::Body(b)) if b.len() == used));
            seen += used as u64;
        }
        assert_eq!(seen, u64::from(size));
        assert_eq!(framer.next(&chunk).unwrap(), (0, Some(FrameEvent::End)));
        assert!(framer.at_boundary());
        // The framer's whole state is a fixed-size struct.
        assert!(std::mem::size_of::<StreamFramer>() <= 64);
    }

    #[test]
    fn malformed_framing_names_the_reason() {
        let mut framer = StreamFramer::with_limit(HeaderKind::Mini, 10);
        let msg = encode_message(HeaderKind::Mini, 0, 101, &[0; 11]);
        assert_eq!(
            framer.next(&msg),
            Err(FramingError::TooLarge {
                size: 11,
                limit: 10
            })
        );
        let mut full = StreamFramer::new(HeaderKind::Full);
        let mut bad = encode_message(HeaderKind::Full, 1, 8, &[0; 4]);
        bad[14] = 3; // sub_list = 3 in a 4-byte body
        assert_eq!(
            full.next(&bad),
            Err(FramingError::SubListOutOfBody {
                sub_list: 3,
                size: 4
            })
        );
        assert_eq!(
            FramingError::TooLarge {
                size: 11,
                limit: 10
            }
            .to_string(),
            "message body of 11 bytes exceeds the 10-byte limit"
        );
        let mut partial = StreamFramer::new(HeaderKind::Mini);
        assert_eq!(partial.next(&msg[..3]).unwrap(), (3, None));
        assert_eq!(partial.finish(), Err(FramingError::Truncated));
    }
}
