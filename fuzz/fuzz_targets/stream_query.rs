//! `StreamQuery::parse` never panics; what it accepts has no empty or repeated channel, and
//! form-encoding its channels back gives the same channels.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::StreamQuery;
use redisse::fuzzing::form_encode;

fuzz_target!(|query: &str| {
    let Ok(parsed) = StreamQuery::parse(query) else {
        return;
    };
    let mut seen = std::collections::HashSet::new();
    for channel in &parsed.channels {
        assert!(!channel.is_empty());
        assert!(seen.insert(channel.clone()), "repeated channel {channel:?}");
    }
    let again: Vec<String> = parsed.channels.iter().map(|c| form_encode(c)).collect();
    let reparsed = StreamQuery::parse(&again.join("&")).expect("encoded channels parse");
    assert_eq!(reparsed.channels, parsed.channels);
});
