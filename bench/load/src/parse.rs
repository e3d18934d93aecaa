//! A minimal, allocation-free reader of an SSE response body: HTTP/1.1 chunked framing (or a
//! plain body), then lines; only `data:` lines are handed on, because every event this tool
//! publishes has exactly one, holding `<seq> <send time in ns> [padding]`.
//!
//! Everything else (`id:`, `event:`, comments, heartbeats, Nchan's `: hi`) is skipped. A line that
//! spans two reads or two chunks is carried over in a small buffer.

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

    /// Feeds raw bytes from the socket; calls `on_data` with the value of each `data:` line.
    pub fn feed(&mut self, mut raw: &[u8], on_data: &mut impl FnMut(&[u8])) {
        while !raw.is_empty() {
            match self.chunk {
                Chunk::Plain => {
                    self.lines(raw, on_data);
                    return;
                }
                Chunk::Done => return,
                Chunk::Data(left) => {
                    let n = left.min(raw.len());
                    self.lines(&raw[..n], on_data);
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

    /// Splits body bytes into lines and hands on the `data:` values.
    fn lines(&mut self, mut bytes: &[u8], on_data: &mut impl FnMut(&[u8])) {
        while let Some(pos) = memchr::memchr(b'\n', bytes) {
            let line = &bytes[..pos];
            bytes = &bytes[pos + 1..];
            if self.carry.is_empty() {
                data_line(line, on_data);
            } else {
                self.carry.extend_from_slice(line);
                let carry = std::mem::take(&mut self.carry);
                data_line(&carry, on_data);
                self.carry = carry;
                self.carry.clear();
            }
        }
        self.carry.extend_from_slice(bytes);
    }
}

fn data_line(line: &[u8], on_data: &mut impl FnMut(&[u8])) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(value) = line.strip_prefix(b"data:") {
        on_data(value.strip_prefix(b" ").unwrap_or(value));
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
            body.feed(p, &mut |d| {
                out.push(String::from_utf8_lossy(d).into_owned())
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
