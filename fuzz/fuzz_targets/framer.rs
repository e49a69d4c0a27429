//! Framer over arbitrary bytes with both header kinds: walk every complete
//! message; messages tile the consumed prefix exactly, respect max_body,
//! and the iterator agrees with repeated next_message calls.
#![no_main]

use kerbside_spice::{Framer, HeaderKind, main_init_session_id};
use libfuzzer_sys::fuzz_target;

fn walk(framer: Framer, data: &[u8]) {
    let mut pos = 0;
    let mut lens = Vec::new();
    while let Some(rest) = data.get(pos..) {
        match framer.next_message(rest) {
            Ok(Some((header, len))) => {
                assert!(header.size <= framer.max_body);
                assert_eq!(len, framer.kind.len() + header.size as usize);
                assert!(len <= rest.len());
                let _ = main_init_session_id(&rest[framer.kind.len()..len]);
                lens.push(len);
                pos += len;
            }
            Ok(None) | Err(_) => break,
        }
    }
    let mut frames = framer.frames(data);
    let seen: Vec<usize> = frames
        .by_ref()
        .map_while(Result::ok)
        .map(|f| {
            assert_eq!(f.body().len(), f.header.size as usize);
            f.bytes.len()
        })
        .collect();
    assert_eq!(seen, lens);
    assert_eq!(frames.consumed(), pos);
}

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick a small body limit, so the oversize path is
    // exercised as well as the unlimited one.
    let small = data
        .get(..2)
        .map_or(0, |b| u32::from(u16::from_le_bytes([b[0], b[1]])));
    for kind in [HeaderKind::Mini, HeaderKind::Full] {
        walk(Framer::new(kind, u32::MAX), data);
        walk(Framer::new(kind, small), data);
    }
});
