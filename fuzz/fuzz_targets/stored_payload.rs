//! Payloads read from Redis (pub/sub messages and history members, possibly written by someone
//! else) never panic the parser, and a payload it accepts is a complete UTF-8 SSE event that
//! starts with its id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::MAX_EVENT_ID;
use redisse::fuzzing::parse_stored_id;

fuzz_target!(|payload: &[u8]| {
    if let Some(id) = parse_stored_id(payload) {
        assert!((1..=MAX_EVENT_ID).contains(&id));
        let text = std::str::from_utf8(payload).expect("accepted payloads are UTF-8");
        let digits = text
            .strip_prefix("id: ")
            .and_then(|rest| rest.split('\n').next())
            .expect("accepted payloads start with their id line");
        assert_eq!(digits.parse::<u64>().ok(), Some(id));
        assert!(text.ends_with("\n\n"));
    }
});
