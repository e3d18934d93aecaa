//! `LastEventId::parse` never panics and follows docs/protocol.md: empty or zero is no position, a
//! decimal integer in 1..2^63-1 a position, anything else unknown.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::{LastEventId, MAX_EVENT_ID};

fuzz_target!(|value: &str| {
    let parsed = LastEventId::parse(value);
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match parsed {
        LastEventId::None => assert!(value.is_empty() || value.bytes().all(|b| b == b'0')),
        LastEventId::At(id) => {
            assert!(digits && (1..=MAX_EVENT_ID).contains(&id));
            assert_eq!(value.trim_start_matches('0'), id.to_string());
        }
        LastEventId::Unknown => {
            let fits = value.parse::<u64>().is_ok_and(|n| n <= MAX_EVENT_ID);
            assert!(!digits || !fits, "{value:?} should be a position");
        }
    }
});
