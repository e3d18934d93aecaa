//! Payloads read from Redis (pub/sub messages and history members, possibly written by someone
//! else) never panic the parser, and what it sends for one it accepts is exactly one UTF-8 SSE
//! event: its id line first, LF line breaks only, one blank line, at the end, and no `retry:`
//! or second `id:`; accepted again, it comes back as it is.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::MAX_EVENT_ID;
use redisse::fuzzing::parse_stored;

fuzz_target!(|payload: &[u8]| {
    if let Some((id, bytes)) = parse_stored(payload) {
        assert!((1..=MAX_EVENT_ID).contains(&id));
        let text = std::str::from_utf8(&bytes).expect("accepted payloads are UTF-8");
        assert!(!text.contains('\r'), "{text:?}");
        let body = text.strip_suffix("\n\n").expect("one blank line at the end");
        let mut lines = body.split('\n');
        let first = lines.next().and_then(|l| l.strip_prefix("id: "));
        assert_eq!(first.and_then(|d| d.parse::<u64>().ok()), Some(id));
        for line in lines {
            assert!(!line.is_empty(), "a blank line inside: {text:?}");
            let name = line.split(':').next().unwrap_or(line);
            assert!(!matches!(name, "id" | "retry"), "{text:?}");
        }
        assert_eq!(
            parse_stored(&bytes).map(|(again, b)| (again, b.to_vec())),
            Some((id, bytes.to_vec())),
            "what is sent is accepted as it is"
        );
    }
});
