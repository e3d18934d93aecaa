//! Events, event ids, their Server-Sent Events encoding, and the encoded [`Frame`]s that travel
//! from a broker to the sockets.
//!
//! An event is encoded exactly once, when it enters the process, into shared [`Bytes`]; every
//! subscriber then receives a reference-counted clone of the same frame (see `hub`). The encoding
//! is the Redisse gem's: `id:`, `event:`, then one `data:` line per line of data,
//! and an empty line. Unlike the gem, data is split on `\r\n`, `\r` and `\n`, so a bare carriage
//! return can never end a field early on the client side.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};

/// The type an event gets when the publisher gives none, as in the gem.
pub const DEFAULT_EVENT_TYPE: &str = "message";

/// The longest `id:` line: `id: ` and 19 digits (the largest id, [`MAX_EVENT_ID`]) and `\n`.
const ID_LINE_MAX: usize = 4 + 19 + 1;

/// The comment line sent to keep idle connections alive.
pub(crate) const HEARTBEAT_FRAME: &[u8] = b": hb\n";

/// An event to publish: a type (`message` by default) and UTF-8 data.
///
/// The id is given by the broker when the event is published.
///
/// ```
/// use redisse::Event;
/// let plain = Event::message("hello");
/// assert_eq!(plain.event_type(), "message");
/// let typed = Event::new("greeting", "hi");
/// assert_eq!(typed.data(), "hi");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    event_type: String,
    data: String,
}

impl Event {
    /// An event of type `event_type`. An empty type means `message`.
    pub fn new(event_type: impl Into<String>, data: impl Into<String>) -> Self {
        let mut event_type = event_type.into();
        if event_type.is_empty() {
            event_type.push_str(DEFAULT_EVENT_TYPE);
        }
        Event {
            event_type,
            data: data.into(),
        }
    }

    /// An event of the default type, `message`.
    pub fn message(data: impl Into<String>) -> Self {
        Event::new(DEFAULT_EVENT_TYPE, data)
    }

    /// The event's type (the SSE `event:` field).
    pub fn event_type(&self) -> &str {
        &self.event_type
    }

    /// The event's data.
    pub fn data(&self) -> &str {
        &self.data
    }

    /// Checks what the SSE format forbids: a CR or LF in the type would inject fields.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        check_type(&self.event_type)
    }

    /// The event's SSE text after its `id:` line: `event: T\ndata: ...\n\n`.
    ///
    /// The Redis publisher prepends the id inside its Lua script, where the id is known.
    pub(crate) fn encode_tail(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.data.len() + self.event_type.len() + 16);
        push_field(&mut out, b"event: ", self.event_type.as_bytes());
        push_data(&mut out, &self.data);
        out.push(b'\n');
        out
    }

    /// The most bytes this event takes once encoded with any id (its `id:` line at the longest,
    /// 19 digits), computed without encoding it: what a subscriber's queue must hold.
    pub(crate) fn max_encoded_len(&self) -> usize {
        const FIELD: usize = "data: \n".len();
        let bytes = self.data.as_bytes();
        let mut len = "event: \n".len() + self.event_type.len() + 1 + ID_LINE_MAX;
        let (mut lines, mut separators, mut i) = (1, 0, 0);
        while i < bytes.len() {
            match bytes[i] {
                b'\r' if bytes.get(i + 1) == Some(&b'\n') => {
                    lines += 1;
                    separators += 2;
                    i += 1;
                }
                b'\r' | b'\n' => {
                    lines += 1;
                    separators += 1;
                }
                _ => {}
            }
            i += 1;
        }
        len += bytes.len() - separators + lines * FIELD;
        len
    }

    /// The complete SSE text of this event with the given id.
    pub fn encode(&self, id: u64) -> Bytes {
        let tail = self.encode_tail();
        let mut out = BytesMut::with_capacity(tail.len() + 24);
        out.put_slice(b"id: ");
        out.put_slice(itoa_u64(id).as_bytes());
        out.put_u8(b'\n');
        out.put_slice(&tail);
        out.freeze()
    }
}

impl From<&str> for Event {
    fn from(data: &str) -> Self {
        Event::message(data)
    }
}

impl From<String> for Event {
    fn from(data: String) -> Self {
        Event::message(data)
    }
}

/// Why an event cannot be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidEvent {
    /// A CR or LF in the event type.
    #[error("the event type must not contain CR or LF")]
    TypeHasLineBreak,
}

/// The one check of an event type: no CR or LF (they would inject fields). For a publish path
/// that wants to refuse a bad type before reading the data.
pub(crate) fn check_type(event_type: &str) -> Result<(), InvalidEvent> {
    if event_type.contains(['\r', '\n']) {
        return Err(InvalidEvent::TypeHasLineBreak);
    }
    Ok(())
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// Writes one `data:` line per line of `data`, splitting on `\r\n`, `\r` and `\n`.
fn push_data(out: &mut Vec<u8>, data: &str) {
    let bytes = data.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\n' => {
                push_field(out, b"data: ", &bytes[start..i]);
                start = i + 1;
            }
            b'\r' => {
                push_field(out, b"data: ", &bytes[start..i]);
                if bytes.get(i + 1) == Some(&b'\n') {
                    i += 1;
                }
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    push_field(out, b"data: ", &bytes[start..]);
}

fn itoa_u64(n: u64) -> String {
    n.to_string()
}

/// What a frame is, for counting and for long polling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameKind {
    /// A published event (replayed or live).
    Event,
    /// The `lastEventId` event: counted, but does not start the long-polling delay.
    LastEventId,
    /// The `missedevents` event.
    MissedEvents,
}

/// An encoded frame; `id` is 0 for frames without an id, which are never deduplicated.
#[derive(Clone, Debug)]
pub(crate) struct Frame {
    pub id: u64,
    pub bytes: Bytes,
    pub kind: FrameKind,
    /// When a live event arrived in the process (published here, or received from Redis), for
    /// the delivery histogram; `None` for what was read from history and for control frames.
    pub arrived: Option<Instant>,
}

impl Frame {
    /// A published event, encoded, as read from history.
    pub fn event(id: u64, bytes: Bytes) -> Self {
        Frame {
            id,
            bytes,
            kind: FrameKind::Event,
            arrived: None,
        }
    }

    /// A live event, encoded, arrived now.
    pub fn live(id: u64, bytes: Bytes) -> Self {
        Frame {
            arrived: Some(Instant::now()),
            ..Frame::event(id, bytes)
        }
    }

    /// The same event without its `id:` line (a late event, see `seen`): the browser's last
    /// event id stays where it is. Shares the bytes.
    pub fn without_id(&self) -> Frame {
        let bytes = match self.bytes.strip_prefix(b"id: ") {
            Some(rest) => match rest.iter().position(|&b| b == b'\n') {
                Some(end) => self.bytes.slice(4 + end + 1..),
                None => self.bytes.clone(),
            },
            None => self.bytes.clone(),
        };
        Frame {
            id: self.id,
            bytes,
            kind: self.kind,
            arrived: self.arrived,
        }
    }

    /// The `missedevents` frame.
    pub fn missed_events() -> Self {
        Frame {
            id: 0,
            bytes: missed_events_frame(),
            kind: FrameKind::MissedEvents,
            arrived: None,
        }
    }

    /// The `lastEventId` frame that gives a client the counter as its position.
    pub fn last_event_id(counter: u64) -> Self {
        Frame {
            id: 0,
            bytes: last_event_id_frame(counter),
            kind: FrameKind::LastEventId,
            arrived: None,
        }
    }
}

/// `event: missedevents` with empty data and no id: some events may have been lost.
fn missed_events_frame() -> Bytes {
    Bytes::from_static(b"event: missedevents\ndata: \n\n")
}

/// The `lastEventId` event that gives a client a position to resume from.
fn last_event_id_frame(counter: u64) -> Bytes {
    Bytes::from(format!("id: {counter}\nevent: lastEventId\ndata: \n\n"))
}

/// A `retry:` frame telling the browser when to reconnect, in milliseconds.
pub(crate) fn retry_frame(millis: u64) -> Bytes {
    Bytes::from(retry_text(millis))
}

/// The `retry:` frame as text, for an answer built as a string.
pub(crate) fn retry_text(millis: u64) -> String {
    format!("retry: {millis}\n\n")
}

/// The largest id a client may send: ids are positive 63-bit integers, as Redis INCR gives.
pub const MAX_EVENT_ID: u64 = i64::MAX as u64;

/// Where a client says it is, from `Last-Event-ID` or `lastEventId`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LastEventId {
    /// No position: absent, empty or `0` (the gem's rule).
    None,
    /// The id of the last event the client received.
    At(u64),
    /// A value that is not a decimal integer in 1..2^63-1: the client's position is unknown.
    Unknown,
}

impl LastEventId {
    /// Parses a header or query value. Never fails: an unusable value is [`LastEventId::Unknown`].
    ///
    /// ```
    /// use redisse::LastEventId;
    /// assert_eq!(LastEventId::parse(""), LastEventId::None);
    /// assert_eq!(LastEventId::parse("0"), LastEventId::None);
    /// assert_eq!(LastEventId::parse("42"), LastEventId::At(42));
    /// assert_eq!(LastEventId::parse("-3"), LastEventId::Unknown);
    /// assert_eq!(LastEventId::parse("99999999999999999999"), LastEventId::Unknown);
    /// ```
    pub fn parse(value: &str) -> Self {
        if value.is_empty() {
            return LastEventId::None;
        }
        if !value.bytes().all(|b| b.is_ascii_digit()) {
            return LastEventId::Unknown;
        }
        match value.parse::<u64>() {
            Ok(0) => LastEventId::None,
            Ok(id) if id <= MAX_EVENT_ID => LastEventId::At(id),
            _ => LastEventId::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_like_the_gem() {
        assert_eq!(
            &Event::new("foo", "bar").encode(42)[..],
            b"id: 42\nevent: foo\ndata: bar\n\n"
        );
        assert_eq!(
            &Event::message("Hello").encode(43)[..],
            b"id: 43\nevent: message\ndata: Hello\n\n"
        );
        assert_eq!(
            &Event::message("hello\nworld\n!").encode(1)[..],
            b"id: 1\nevent: message\ndata: hello\ndata: world\ndata: !\n\n"
        );
        assert_eq!(
            &Event::message("a\n").encode(1)[..],
            b"id: 1\nevent: message\ndata: a\ndata: \n\n"
        );
        assert_eq!(
            &Event::message("").encode(7)[..],
            b"id: 7\nevent: message\ndata: \n\n"
        );
    }

    #[test]
    fn the_encoded_length_is_known_without_encoding() {
        for (t, data) in [
            ("m", ""),
            ("message", "hello"),
            ("x", "a\rb\r\nc\n\rd"),
            ("x", "\n\n\n"),
            ("type", "\r\n\r\n"),
            ("é", "ünïcode\nline"),
        ] {
            let e = Event::new(t, data);
            let with_longest_id = e.encode(MAX_EVENT_ID).len();
            assert_eq!(e.max_encoded_len(), with_longest_id, "{t:?} {data:?}");
            assert!(e.encode(1).len() <= e.max_encoded_len());
        }
    }

    #[test]
    fn splits_data_on_every_line_break() {
        assert_eq!(
            &Event::message("a\rb\r\nc\n\rd").encode(1)[..],
            b"id: 1\nevent: message\ndata: a\ndata: b\ndata: c\ndata: \ndata: d\n\n"
        );
    }

    #[test]
    fn empty_type_is_message_and_line_breaks_are_refused() {
        assert_eq!(Event::new("", "x").event_type(), "message");
        assert_eq!(
            Event::new("a\nb", "x").validate(),
            Err(InvalidEvent::TypeHasLineBreak)
        );
        assert_eq!(
            Event::new("a\rb", "x").validate(),
            Err(InvalidEvent::TypeHasLineBreak)
        );
    }

    #[test]
    fn last_event_id_rules() {
        assert_eq!(
            LastEventId::parse("9223372036854775807"),
            LastEventId::At(MAX_EVENT_ID)
        );
        assert_eq!(
            LastEventId::parse("9223372036854775808"),
            LastEventId::Unknown
        );
        assert_eq!(LastEventId::parse("abc"), LastEventId::Unknown);
        assert_eq!(LastEventId::parse(" 1"), LastEventId::Unknown);
        assert_eq!(LastEventId::parse("+1"), LastEventId::Unknown);
        assert_eq!(LastEventId::parse("007"), LastEventId::At(7));
    }
}
