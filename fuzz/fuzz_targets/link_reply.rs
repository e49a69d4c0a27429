//! parse_link_reply on arbitrary bytes: never panics, never claims more
//! bytes than it was given, and whatever parses re-encodes to bytes that
//! parse back to the same reply.
#![no_main]

use kerbside_spice::{SpiceError, parse_link_reply, parse_link_result};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_link_reply(data) {
        Ok((reply, used)) => {
            assert!(used <= data.len());
            let bytes = reply.encode();
            let (again, again_used) = parse_link_reply(&bytes).expect("re-encoded reply parses");
            assert_eq!(again, reply);
            assert_eq!(again_used, bytes.len());
        }
        Err(SpiceError::Incomplete { needed }) => assert!(needed > 0),
        Err(_) => {}
    }
    let _ = parse_link_result(data);
});
