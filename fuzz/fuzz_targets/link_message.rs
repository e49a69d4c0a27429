//! parse_link_message on arbitrary bytes: never panics, never claims more
//! bytes than it was given, and whatever parses re-encodes to bytes that
//! parse back to the same message.
#![no_main]

use kerbside_spice::{SpiceError, parse_link_message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_link_message(data) {
        Ok((msg, used)) => {
            assert!(used <= data.len());
            let bytes = msg.encode();
            let (again, again_used) =
                parse_link_message(&bytes).expect("re-encoded message parses");
            assert_eq!(again, msg);
            assert_eq!(again_used, bytes.len());
        }
        Err(SpiceError::Incomplete { needed }) => assert!(needed > 0),
        Err(_) => {}
    }
});
