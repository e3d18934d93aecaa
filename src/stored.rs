//! Payloads read from Redis (pub/sub messages and history entries): each must be exactly one
//! SSE event in the gem's layout, or it is refused.
//!
//! Anyone who can write to Redis can publish, and a subscriber receives a payload's bytes as
//! they are. So a payload is read the way a browser will read it (lines end with CRLF, LF or
//! CR; a blank line ends an event) and is taken only when it is one event: an `id: N` line
//! first (the id the stream orders and deduplicates by), then `event:` and `data:` lines, and
//! the blank line that ends it, last. Refused, whatever would change a subscriber's state
//! beyond that one event: a blank line before the end (the rest would be more events, with ids
//! and types of the writer's choosing), a second `id:`, and `retry:` (no publisher in the gem's
//! layout writes it, and one reconnection delay of a day would reach every client); also text
//! that is not UTF-8 and a payload without its blank line. Comments and unknown fields, which
//! a browser ignores, are dropped. A payload in the gem's exact form (LF only, nothing dropped)
//! is kept as it is; another, with CR or CRLF line breaks for instance, is written again in
//! that form, with the same meaning to a browser.

use bytes::Bytes;

use crate::event::MAX_EVENT_ID;

/// Why a payload is not one SSE event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Malformed {
    #[error("not UTF-8")]
    NotUtf8,
    #[error("no `id: N` line first")]
    NoId,
    #[error("a blank line before its end: several events")]
    SeveralEvents,
    #[error("a second `id:` field")]
    SecondId,
    #[error("a `retry:` field")]
    Retry,
    #[error("no blank line at its end")]
    NoEnd,
}

/// The id of a stored payload and the bytes to send for it (the payload itself when it is in
/// the gem's exact form), or why it is refused, with the payload (to log it).
pub(crate) fn parse_stored(payload: Vec<u8>) -> Result<(u64, Bytes), (Malformed, Vec<u8>)> {
    match read(&payload) {
        Ok((id, None)) => Ok((id, Bytes::from(payload))),
        Ok((id, Some(written))) => Ok((id, Bytes::from(written))),
        Err(why) => Err((why, payload)),
    }
}

/// The payload's id, and its bytes written again unless it is in the gem's exact form.
fn read(payload: &[u8]) -> Result<(u64, Option<Vec<u8>>), Malformed> {
    let text = std::str::from_utf8(payload).map_err(|_| Malformed::NotUtf8)?;
    let mut lines = Lines { rest: text };
    let id = lines
        .next()
        .and_then(|(line, _)| line.strip_prefix("id: "))
        .and_then(parse_id)
        .ok_or(Malformed::NoId)?;
    // As given: LF line breaks only, nothing dropped.
    let mut exact = !text.contains('\r');
    let mut event = None;
    let mut data = Vec::new();
    loop {
        let Some((line, ended)) = lines.next() else {
            return Err(Malformed::NoEnd);
        };
        if !ended {
            return Err(Malformed::NoEnd);
        }
        if line.is_empty() {
            if !lines.rest.is_empty() {
                return Err(Malformed::SeveralEvents);
            }
            break;
        }
        if line.starts_with(':') {
            exact = false;
            continue;
        }
        let (name, value) = match line.split_once(':') {
            Some((name, value)) => (name, value.strip_prefix(' ').unwrap_or(value)),
            None => (line, ""),
        };
        match name {
            "event" => event = Some(value),
            "data" => data.push(value),
            "id" => return Err(Malformed::SecondId),
            "retry" => return Err(Malformed::Retry),
            _ => exact = false,
        }
    }
    if exact {
        return Ok((id, None));
    }
    let mut out = Vec::with_capacity(payload.len() + 8);
    out.extend_from_slice(b"id: ");
    out.extend_from_slice(id.to_string().as_bytes());
    out.push(b'\n');
    if let Some(event) = event {
        push_field(&mut out, "event", event);
    }
    for value in data {
        push_field(&mut out, "data", value);
    }
    out.push(b'\n');
    Ok((id, Some(out)))
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.push(b'\n');
}

/// An id as the gem's counter gives it: 1 to 19 digits, in 1..=2^63-1.
fn parse_id(digits: &str) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let id: u64 = digits.parse().ok()?;
    (1..=MAX_EVENT_ID).contains(&id).then_some(id)
}

/// The lines of an SSE text, each with whether a line break ended it (CRLF, LF or CR).
struct Lines<'a> {
    rest: &'a str,
}

impl<'a> Iterator for Lines<'a> {
    type Item = (&'a str, bool);

    fn next(&mut self) -> Option<(&'a str, bool)> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(end) = self.rest.find(['\r', '\n']) else {
            let line = self.rest;
            self.rest = "";
            return Some((line, false));
        };
        let line = &self.rest[..end];
        let skip = if self.rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        self.rest = &self.rest[end + skip..];
        Some((line, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(payload: &[u8]) -> Result<(u64, String), Malformed> {
        parse_stored(payload.to_vec())
            .map(|(id, bytes)| (id, String::from_utf8(bytes.to_vec()).unwrap()))
            .map_err(|(why, back)| {
                assert_eq!(back, payload, "a refused payload is given back as it was");
                why
            })
    }

    #[test]
    fn the_gems_payloads_are_kept_as_they_are() {
        for payload in [
            "id: 42\nevent: m\ndata: x\n\n",
            "id: 1\nevent: baz\ndata: hello\ndata: world\ndata: !\n\n",
            "id: 7\nevent: t\ndata: \n\n",
            "id: 9\ndata: no type\n\n",
            "id: 9223372036854775807\nevent: m\ndata: x\n\n",
        ] {
            let (id, bytes) = parse_stored(payload.as_bytes().to_vec()).unwrap();
            assert_eq!(&bytes[..], payload.as_bytes());
            assert_eq!(id.to_string(), payload[4..payload.find('\n').unwrap()]);
        }
    }

    #[test]
    fn other_line_breaks_are_written_again_with_lf() {
        assert_eq!(
            parsed(b"id: 5\r\nevent: m\r\ndata: a\r\ndata: b\rdata: c\n\r\n"),
            Ok((5, "id: 5\nevent: m\ndata: a\ndata: b\ndata: c\n\n".into()))
        );
        // Comments and unknown fields are dropped, as a browser ignores them.
        assert_eq!(
            parsed(b"id: 5\n: note\nevent: m\nfoo: bar\ndata:x\ndata\n\n"),
            Ok((5, "id: 5\nevent: m\ndata: x\ndata: \n\n".into()))
        );
    }

    #[test]
    fn what_is_not_one_event_is_refused() {
        use Malformed::*;
        for (payload, why) in [
            (&b"id: 1\ndata: \xff\n\n"[..], NotUtf8),
            (b"hello", NoId),
            (b"data: x\n\n", NoId),
            (b"id: \ndata: x\n\n", NoId),
            (b"id: 0\ndata: x\n\n", NoId),
            (b"id: 99999999999999999999\ndata: x\n\n", NoId),
            (b"id: 9223372036854775808\ndata: x\n\n", NoId),
            (b"id:1\ndata: x\n\n", NoId),
            (b"id: 1\r", NoEnd),
            (b"id: 42\nevent: m\ndata: x\n", NoEnd),
            (b"id: 42\nevent: m\ndata: x", NoEnd),
            (b"id: 1\ndata: a\n\nid: 2\ndata: b\n\n", SeveralEvents),
            (b"id: 1\ndata: a\r\rid: 2\rdata: b\n\n", SeveralEvents),
            (b"id: 1\ndata: a\r\n\r\ndata: b\n\n", SeveralEvents),
            (b"id: 1\ndata: a\n\n\n", SeveralEvents),
            (b"id: 1\nid: 2\ndata: a\n\n", SecondId),
            (b"id: 1\ndata: a\rid: 2\n\n", SecondId),
            (b"id: 1\nretry: 86400000\ndata: a\n\n", Retry),
            (b"id: 1\ndata: a\rretry: 1\n\n", Retry),
        ] {
            assert_eq!(
                parsed(payload),
                Err(why),
                "{:?}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
