//! Property tests: SSE framing, query parsing, id parsing.
//!
//! * Any data and any type without CR or LF, encoded by [`Event::encode`], parse back with a
//!   WHATWG-conforming SSE parser into exactly one event with that id, type and data (the
//!   encoder turns `\r\n` and `\r` into line breaks, so data is compared with them as `\n`).
//! * [`StreamQuery::parse`] on `form_encode`d names returns them in order, without empty or
//!   repeated names or the reserved items; it never panics on arbitrary strings.
//! * [`LastEventId::parse`] never panics, round-trips every decimal in 1..=i64::MAX, and
//!   follows docs/protocol.md for everything else (an independent model decides).

use proptest::prelude::*;
use redisse::fuzzing::{form_decode, form_encode};
use redisse::{Event, LastEventId, MAX_EVENT_ID, StreamQuery};

/// One event as the WHATWG "interpret an event stream" algorithm dispatches it.
#[derive(Debug, PartialEq, Eq)]
struct Dispatched {
    id: String,
    event: String,
    data: String,
}

/// Parses a complete SSE text per the WHATWG algorithm: lines end with CRLF, LF or CR; a
/// blank line dispatches (when the data buffer is not empty); `:` starts a comment; one space
/// after the colon is removed; data lines are joined by `\n`.
fn whatwg_parse(text: &str) -> Vec<Dispatched> {
    let mut out = Vec::new();
    let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rest = text;
    while let Some(end) = rest.find(['\r', '\n']) {
        let line = &rest[..end];
        let skip = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + skip..];
        if line.is_empty() {
            if !data.is_empty() {
                data.pop();
                let event = std::mem::take(&mut event);
                out.push(Dispatched {
                    id: id.clone(),
                    event: if event.is_empty() {
                        "message".into()
                    } else {
                        event
                    },
                    data: std::mem::take(&mut data),
                });
            }
            data.clear();
            event.clear();
            continue;
        }
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => event = value.to_owned(),
            "data" => {
                data.push_str(value);
                data.push('\n');
            }
            "id" if !value.contains('\0') => id = value.to_owned(),
            _ => {}
        }
    }
    assert!(rest.is_empty(), "an incomplete line at the end: {rest:?}");
    out
}

fn normalise_line_breaks(data: &str) -> String {
    data.replace("\r\n", "\n").replace('\r', "\n")
}

/// Strings that stress the framing: line breaks of every kind, colons, spaces, BOMs, NULs.
fn tricky_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just("\r".to_owned()),
                Just("\n".to_owned()),
                Just("\r\n".to_owned()),
                Just(":".to_owned()),
                Just(" ".to_owned()),
                Just("data: ".to_owned()),
                Just("\u{feff}".to_owned()),
                Just("\0".to_owned()),
                "[a-z é]{0,3}",
            ],
            0..12
        )
        .prop_map(|parts| parts.concat()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn encoded_events_parse_back(
        data in tricky_text(),
        event_type in tricky_text().prop_map(|t| t.replace(['\r', '\n'], "")),
        id in 1..=MAX_EVENT_ID,
    ) {
        let event = Event::new(event_type.clone(), data.clone());
        prop_assert!(event.validate().is_ok());
        let bytes = event.encode(id);
        let text = std::str::from_utf8(&bytes).expect("UTF-8 frames");
        prop_assert!(text.ends_with("\n\n"));
        let parsed = whatwg_parse(text);
        let expected_type = if event_type.is_empty() { "message".to_owned() } else { event_type };
        prop_assert_eq!(parsed, vec![Dispatched {
            id: id.to_string(),
            event: expected_type,
            data: normalise_line_breaks(&data),
        }]);
    }

    #[test]
    fn types_with_line_breaks_are_refused(
        before in "[a-z]{0,4}",
        brk in prop_oneof![Just("\r"), Just("\n"), Just("\r\n")],
        after in "[a-z]{0,4}",
    ) {
        let event_type = before + brk + &after;
        prop_assert!(Event::new(event_type, "x").validate().is_err());
    }

    #[test]
    fn form_encoded_names_come_back_in_order_deduplicated(names in proptest::collection::vec(tricky_text(), 0..8)) {
        let query: Vec<String> = names.iter().map(|n| form_encode(n)).collect();
        let parsed = StreamQuery::parse(&query.join("&")).expect("encoded names parse");
        let mut expected: Vec<&str> = Vec::new();
        for n in &names {
            let reserved = n == "polling" || n.starts_with("polling=")
                || n == "lastEventId" || n.starts_with("lastEventId=");
            if !n.is_empty() && !reserved && !expected.contains(&n.as_str()) {
                expected.push(n);
            }
        }
        let got: Vec<&str> = parsed.channels.iter().map(|c| &**c).collect();
        prop_assert_eq!(got, expected);
        for n in &names {
            prop_assert_eq!(&form_decode(&form_encode(n)).unwrap(), n);
        }
    }

    #[test]
    fn query_parsing_never_panics(query in prop_oneof![
        any::<String>(),
        "[a-z%&=+0-9A-Fé]{0,40}",
    ]) {
        if let Ok(q) = StreamQuery::parse(&query) {
            let mut seen = std::collections::HashSet::new();
            for c in &q.channels {
                prop_assert!(!c.is_empty());
                prop_assert!(seen.insert(c.clone()), "repeated {:?}", c);
            }
        }
    }

    #[test]
    fn decimal_ids_round_trip(id in 1..=MAX_EVENT_ID, zeros in 0usize..3) {
        prop_assert_eq!(LastEventId::parse(&id.to_string()), LastEventId::At(id));
        let padded = format!("{}{id}", "0".repeat(zeros));
        prop_assert_eq!(LastEventId::parse(&padded), LastEventId::At(id));
    }

    #[test]
    fn id_parsing_follows_the_spec(value in prop_oneof![
        any::<String>(),
        "[0-9]{0,25}",
        "[-+ 0-9a.]{0,6}",
        (MAX_EVENT_ID..=u64::MAX).prop_map(|n| n.to_string()),
    ]) {
        prop_assert_eq!(LastEventId::parse(&value), model(&value));
    }
}

/// docs/protocol.md ("The position"), independently: empty or zero is no position; a decimal
/// integer in 1..2^63-1 is a position; anything else is unknown.
fn model(value: &str) -> LastEventId {
    if value.is_empty() {
        return LastEventId::None;
    }
    if !value.chars().all(|c| c.is_ascii_digit()) {
        return LastEventId::Unknown;
    }
    let digits = value.trim_start_matches('0');
    if digits.is_empty() {
        return LastEventId::None;
    }
    let max = MAX_EVENT_ID.to_string();
    let fits = digits.len() < max.len() || (digits.len() == max.len() && digits <= max.as_str());
    if fits {
        LastEventId::At(digits.parse().unwrap())
    } else {
        LastEventId::Unknown
    }
}

#[test]
fn the_test_parser_follows_whatwg() {
    let parsed = whatwg_parse("id: 1\r\nevent: e\rdata:a\ndata:  b\n: c\n\ndata\n\n");
    assert_eq!(
        parsed,
        [
            Dispatched {
                id: "1".into(),
                event: "e".into(),
                data: "a\n b".into()
            },
            Dispatched {
                id: "1".into(),
                event: "message".into(),
                data: String::new()
            },
        ]
    );
    assert_eq!(
        model("0009223372036854775807"),
        LastEventId::At(MAX_EVENT_ID)
    );
    assert_eq!(model("9223372036854775808"), LastEventId::Unknown);
}
