//! Any data and any type without CR or LF encode to exactly one SSE event whose `data:` lines
//! give back the data (with `\r\n` and `\r` as `\n`) and whose fields cannot be injected.
#![no_main]

use libfuzzer_sys::fuzz_target;
use redisse::Event;

fuzz_target!(|input: (u64, &str, &str)| {
    let (id, event_type, data) = input;
    let event = Event::new(event_type, data);
    if event.validate().is_err() {
        assert!(event_type.contains(['\r', '\n']));
        return;
    }
    let bytes = event.encode(id);
    let text = std::str::from_utf8(&bytes).expect("frames are UTF-8");
    assert!(text.ends_with("\n\n"));
    let body = &text[..text.len() - 1];
    let mut lines = body.split('\n');
    assert_eq!(lines.next(), Some(format!("id: {id}").as_str()));
    let expected_type = if event_type.is_empty() { "message" } else { event_type };
    assert_eq!(lines.next(), Some(format!("event: {expected_type}").as_str()));
    let mut got = Vec::new();
    for line in lines.take_while(|l| !l.is_empty()) {
        assert!(!line.contains('\r'), "a CR inside a line: {line:?}");
        got.push(line.strip_prefix("data: ").expect("only data lines follow"));
    }
    assert_eq!(got.join("\n"), data.replace("\r\n", "\n").replace('\r', "\n"));
    assert_eq!(text.matches("\n\n").count(), 1, "exactly one event");
});
