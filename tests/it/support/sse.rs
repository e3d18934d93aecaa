//! An SSE client for tests: keeps the status, headers and every raw byte received, and parses
//! events the way the WHATWG EventSource algorithm does (lines end with CRLF, LF or CR; a blank
//! line dispatches; comments are counted).

use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::PATIENCE;

/// One dispatched block of fields.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    /// The `event:` field, `message` when absent.
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
}

/// What waiting for the next event gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Event(SseEvent),
    Closed,
    Timeout,
}

pub struct SseStream {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// Every byte received so far.
    pub raw: Vec<u8>,
    /// Comment lines seen (heartbeats).
    pub comments: Vec<String>,
    /// The body's chunks; an error ends the stream.
    body: Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>,
    pending: Vec<u8>,
    fields: Option<SseEvent>,
    data_lines: Vec<String>,
    ready: std::collections::VecDeque<SseEvent>,
    closed: bool,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().build().expect("reqwest client")
}

impl SseStream {
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Self {
        let mut req = client().get(url).header("accept", "text/event-stream");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let res = tokio::time::timeout(PATIENCE, req.send())
            .await
            .expect("response headers in time")
            .expect("request");
        let (status, headers) = (res.status(), res.headers().clone());
        let body = res
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        SseStream::from_parts(status, headers, body)
    }

    /// A stream whose response came some other way (an HTTP/2 client's, say): its status, its
    /// headers and its body's chunks.
    pub fn from_parts(
        status: StatusCode,
        headers: HeaderMap,
        body: impl Stream<Item = Result<Bytes, String>> + Send + 'static,
    ) -> Self {
        SseStream {
            status,
            headers,
            raw: Vec::new(),
            comments: Vec::new(),
            body: Box::pin(body),
            pending: Vec::new(),
            fields: None,
            data_lines: Vec::new(),
            ready: Default::default(),
            closed: false,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The next event, or `Closed`/`Timeout`.
    pub async fn next_within(&mut self, wait: Duration) -> Next {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Next::Event(e);
            }
            if self.closed {
                return Next::Closed;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Next::Timeout,
                Ok(None) | Ok(Some(Err(_))) => {
                    self.closed = true;
                }
                Ok(Some(Ok(chunk))) => {
                    self.raw.extend_from_slice(&chunk);
                    self.pending.extend_from_slice(&chunk);
                    self.parse();
                }
            }
        }
    }

    /// The next event; fails the test when none comes in time.
    pub async fn next(&mut self) -> SseEvent {
        match self.next_within(PATIENCE).await {
            Next::Event(e) => e,
            other => panic!(
                "expected an event, got {other:?}; raw so far: {:?}",
                String::from_utf8_lossy(&self.raw)
            ),
        }
    }

    /// The next `n` events.
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next().await);
        }
        out
    }

    /// Fails the test if an event arrives within `wait`.
    pub async fn expect_silence(&mut self, wait: Duration) {
        match self.next_within(wait).await {
            Next::Timeout => {}
            other => panic!("expected nothing, got {other:?}"),
        }
    }

    /// Waits for the server to end the stream (events before the end are returned).
    pub async fn until_closed(&mut self, wait: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        loop {
            match self.next_within(wait).await {
                Next::Event(e) => events.push(e),
                Next::Closed => return events,
                Next::Timeout => panic!("the stream did not close within {wait:?}"),
            }
        }
    }

    fn parse(&mut self) {
        loop {
            let Some(pos) = self.pending.iter().position(|&b| b == b'\n' || b == b'\r') else {
                return;
            };
            // A CR at the very end may be the first half of a CRLF: wait for more.
            if self.pending[pos] == b'\r' && pos + 1 == self.pending.len() {
                return;
            }
            let line = String::from_utf8_lossy(&self.pending[..pos]).into_owned();
            let skip = if self.pending[pos] == b'\r' && self.pending.get(pos + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            self.pending.drain(..pos + skip);
            self.line(line);
        }
    }

    fn line(&mut self, line: String) {
        if line.is_empty() {
            if let Some(mut e) = self.fields.take() {
                e.data = self.data_lines.join("\n");
                if e.event.is_empty() {
                    e.event = "message".into();
                }
                self.ready.push_back(e);
            }
            self.data_lines.clear();
            return;
        }
        if let Some(comment) = line.strip_prefix(':') {
            self.comments.push(comment.trim_start().to_owned());
            return;
        }
        let (name, value) = match line.split_once(':') {
            Some((n, v)) => (n.to_owned(), v.strip_prefix(' ').unwrap_or(v).to_owned()),
            None => (line.clone(), String::new()),
        };
        let e = self.fields.get_or_insert_with(SseEvent::default);
        match name.as_str() {
            "id" => e.id = Some(value),
            "event" => e.event = value,
            "data" => self.data_lines.push(value),
            "retry" => e.retry = value.parse().ok(),
            _ => {}
        }
    }
}
