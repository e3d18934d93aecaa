//! A minimal, allocation-free reader of an SSE response body: HTTP/1.1 chunked framing (or a
//! plain body), then lines; the `data:`, `id:` and `event:` fields are handed on, and the blank
//! line that ends an event. Every event this tool publishes has exactly one `data:` line,
//! holding `<seq> <send time in ns> [padding]`; the reconnecting subscribers of the storm
//! scenario also need the ids (an id counts once its event is complete, as in a browser).
//!
//! Everything else (`retry:`, comments, heartbeats, Nchan's `: hi`) is skipped. A line that
//! spans two reads or two chunks is carried over in a small buffer.

/// One field of an event, or the event's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field<'a> {
    Data(&'a [u8]),
    Id(&'a [u8]),
    Event(&'a [u8]),
    /// The blank line that dispatches the event (comments alone end one too: harmless).
    End,
}

/// Where the reader is in the chunked framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size line (`value` so far; `ext` after a `;`).
    Size { value: usize, ext: bool },
    /// Inside a chunk's data, with this many bytes left.
    Data(usize),
    /// After a chunk's data, before its CRLF.
    DataEnd,
    /// The last chunk was read: the response is over.
    Done,
    /// Not chunked: every byte is body.
    Plain,
}

/// Parser state of one connection.
pub struct Body {
    chunk: Chunk,
    /// A partial line waiting for the rest.
    carry: Vec<u8>,
}

impl Body {
    /// A body in chunked transfer coding (`chunked`) or delimited by the connection's end.
    pub fn new(chunked: bool) -> Self {
        Body {
            chunk: if chunked {
                Chunk::Size {
                    value: 0,
                    ext: false,
                }
            } else {
                Chunk::Plain
            },
            carry: Vec::new(),
        }
    }

    /// Whether the terminating chunk was read.
    pub fn is_done(&self) -> bool {
        self.chunk == Chunk::Done
    }

    /// Feeds raw bytes from the socket; calls `on_field` with each field and each event's end.
    pub fn feed(&mut self, mut raw: &[u8], on_field: &mut impl FnMut(Field<'_>)) {
        while !raw.is_empty() {
            match self.chunk {
                Chunk::Plain => {
                    self.lines(raw, on_field);
                    return;
                }
                Chunk::Done => return,
                Chunk::Data(left) => {
                    let n = left.min(raw.len());
                    self.lines(&raw[..n], on_field);
                    raw = &raw[n..];
                    self.chunk = if n == left {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left - n)
                    };
                }
                Chunk::DataEnd => {
                    let b = raw[0];
                    raw = &raw[1..];
                    if b == b'\n' {
                        self.chunk = Chunk::Size {
                            value: 0,
                            ext: false,
                        };
                    }
                }
                Chunk::Size { value, ext } => {
                    let b = raw[0];
                    raw = &raw[1..];
                    self.chunk = match (b, ext) {
                        (b'\n', _) if value == 0 => Chunk::Done,
                        (b'\n', _) => Chunk::Data(value),
                        (b';', _) | (_, true) => Chunk::Size { value, ext: true },
                        _ => match (b as char).to_digit(16) {
                            Some(d) => Chunk::Size {
                                value: value * 16 + d as usize,
                                ext,
                            },
                            None => Chunk::Size { value, ext },
                        },
                    };
                }
            }
        }
    }

    /// Splits body bytes into lines and hands on the fields.
    fn lines(&mut self, mut bytes: &[u8], on_field: &mut impl FnMut(Field<'_>)) {
        while let Some(pos) = memchr::memchr(b'\n', bytes) {
            let line = &bytes[..pos];
            bytes = &bytes[pos + 1..];
            if self.carry.is_empty() {
                field_line(line, on_field);
            } else {
                self.carry.extend_from_slice(line);
                let carry = std::mem::take(&mut self.carry);
                field_line(&carry, on_field);
                self.carry = carry;
                self.carry.clear();
            }
        }
        self.carry.extend_from_slice(bytes);
    }
}

fn field_line(line: &[u8], on_field: &mut impl FnMut(Field<'_>)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return on_field(Field::End);
    }
    let value = |name: &[u8]| {
        let v = line.strip_prefix(name)?;
        Some(v.strip_prefix(b" ").unwrap_or(v))
    };
    if let Some(v) = value(b"data:") {
        on_field(Field::Data(v));
    } else if let Some(v) = value(b"id:") {
        on_field(Field::Id(v));
    } else if let Some(v) = value(b"event:") {
        on_field(Field::Event(v));
    }
}

/// Parses `<seq> <ns>` at the start of an event's data.
pub fn payload(data: &[u8]) -> Option<(u64, u64)> {
    let mut it = data.split(|&b| b == b' ');
    Some((number(it.next()?)?, number(it.next()?)?))
}

fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then(|| n * 10 + u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(body: &mut Body, pieces: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for p in pieces {
            body.feed(p, &mut |f| {
                if let Field::Data(d) = f {
                    out.push(String::from_utf8_lossy(d).into_owned())
                }
            });
        }
        out
    }

    fn chunked(pieces: &[&str]) -> Vec<u8> {
        let mut wire = String::new();
        for p in pieces {
            wire.push_str(&format!("{:x};ext=1\r\n{p}\r\n", p.len()));
        }
        wire.push_str("0\r\n\r\n");
        wire.into_bytes()
    }

    #[test]
    fn chunked_events_split_anywhere() {
        let wire = chunked(&[
            ": hi\n\n",
            "id: 1\nevent: m\ndata: 1 2 xx\n\n",
            "data: 2 3\n\ndata:",
            " 4\n\n",
        ]);
        for split in 0..wire.len() {
            let mut body = Body::new(true);
            let got = all(&mut body, &[&wire[..split], &wire[split..]]);
            assert_eq!(got, ["1 2 xx", "2 3", "4"], "split at {split}");
            assert!(body.is_done());
        }
    }

    #[test]
    fn ids_and_event_ends_split_anywhere() {
        let wire = chunked(&[
            "id: 12\nevent: lastEventId\ndata: \n\n",
            ": keepalive\n\nid: 1701:0\r\ndata: 1 2\r\n\r\n",
            "event: missedevents\ndata: \n\nid: 13\ndata: 2",
            " 3\n\n",
        ]);
        let expected = [
            "id 12",
            "event lastEventId",
            "data ",
            "end",
            "end",
            "id 1701:0",
            "data 1 2",
            "end",
            "event missedevents",
            "data ",
            "end",
            "id 13",
            "data 2 3",
            "end",
        ];
        for split in 0..wire.len() {
            let mut body = Body::new(true);
            let mut got = Vec::new();
            for piece in [&wire[..split], &wire[split..]] {
                body.feed(piece, &mut |f| {
                    got.push(match f {
                        Field::Data(v) => format!("data {}", String::from_utf8_lossy(v)),
                        Field::Id(v) => format!("id {}", String::from_utf8_lossy(v)),
                        Field::Event(v) => format!("event {}", String::from_utf8_lossy(v)),
                        Field::End => "end".to_owned(),
                    })
                });
            }
            assert_eq!(got, expected, "split at {split}");
        }
    }

    #[test]
    fn plain_body_and_payload() {
        let mut body = Body::new(false);
        let got = all(
            &mut body,
            &[b"data: 7 1234\r\n\r\n", b"data: 8 1", b"235\n\n"],
        );
        assert_eq!(got, ["7 1234", "8 1235"]);
        assert_eq!(payload(b"7 1234 pad"), Some((7, 1234)));
        assert_eq!(payload(b"x 1"), None);
        assert_eq!(payload(b""), None);
    }
}
