//! The subscribers: many SSE connections, each from one of several loopback source addresses,
//! each listening to one channel, counting what arrives and how late.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::measure::Histogram;
use crate::parse::{Body, Field, payload};

/// Which server speaks on the other end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// `GET /?<channel>` with `Accept: text/event-stream`, `POST /publish/<channel>`.
    Redisse,
    /// `GET /sub/<channel>`, `POST /pub/<channel>`.
    Nchan,
}

impl Target {
    /// The request line's path for a subscription to `channel`.
    pub fn subscribe_path(self, channel: &str) -> String {
        match self {
            Target::Redisse => format!("/?{channel}"),
            Target::Nchan => format!("/sub/{channel}"),
        }
    }

    /// The path to publish on `channel`.
    pub fn publish_path(self, channel: &str) -> String {
        match self {
            Target::Redisse => format!("/publish/{channel}"),
            Target::Nchan => format!("/pub/{channel}"),
        }
    }
}

/// Counters shared by every subscriber.
#[derive(Default)]
pub struct Tally {
    /// Streams whose response head said 200.
    pub open: AtomicU64,
    /// Connections that failed (connect, status, or closed by the server).
    pub failed: AtomicU64,
    /// Streams the server ended while the run was going on.
    pub closed: AtomicU64,
    /// Events received that carry our payload.
    pub delivered: AtomicU64,
    /// Events whose sequence number was lower than one already seen (duplicate or reordered).
    pub out_of_order: AtomicU64,
    /// Jumps forward in the sequence (an event missing, at least for now).
    pub gaps: AtomicU64,
    /// Event data that did not parse.
    pub bad_data: AtomicU64,
    /// When the last event arrived, in ns since the start.
    pub last_delivery_ns: AtomicU64,
    pub latency: Histogram,
}

/// What every subscriber needs to know.
pub struct Plan {
    pub target: Target,
    pub server: SocketAddr,
    /// Source addresses 127.0.0.2, 127.0.0.3, ... used in turn.
    pub sources: u8,
    pub read_buf: usize,
    pub start: Instant,
    pub tally: Tally,
}

/// One subscriber: connects (holding `permit` meanwhile, which bounds the attempts in flight),
/// subscribes to `channel`, then reads until the server closes or the task is aborted.
pub async fn run(
    plan: Arc<Plan>,
    index: usize,
    channel: String,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let connected = connect(&plan, source(&plan, index), &channel, None).await;
    drop(permit);
    let stream = match connected {
        Ok(s) => s,
        Err(e) => {
            if plan.tally.failed.fetch_add(1, Relaxed) < 5 {
                eprintln!("subscriber {index}: {e}");
            }
            return;
        }
    };
    plan.tally.open.fetch_add(1, Relaxed);
    read(&plan, stream).await;
    plan.tally.open.fetch_sub(1, Relaxed);
    plan.tally.closed.fetch_add(1, Relaxed);
}

/// The source address of subscriber `index`.
pub fn source(plan: &Plan, index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + (index % plan.sources as usize) as u8)
}

/// Connects from `source` and subscribes to `channel`, resuming after `last_id` when given (the
/// caller checked that it is printable ASCII); returns the socket, the body's parser and the
/// bytes read past the response head.
pub async fn connect(
    plan: &Plan,
    source: Ipv4Addr,
    channel: &str,
    last_id: Option<&str>,
) -> std::io::Result<(TcpStream, Body, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.into(), 0))?;
    let mut stream = socket.connect(plan.server).await?;
    stream.set_nodelay(true)?;
    let resume = last_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n{resume}\r\n",
        plan.target.subscribe_path(channel),
        plan.server
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = Vec::with_capacity(1024);
    let end = loop {
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed before the response head"));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = memchr::memmem::find(&head, b"\r\n\r\n") {
            break end + 4;
        }
        if head.len() > 16 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
    };
    let text = String::from_utf8_lossy(&head[..end]).to_ascii_lowercase();
    if !text.starts_with("http/1.1 200") {
        let line = text.lines().next().unwrap_or("").to_owned();
        return Err(std::io::Error::other(format!("status: {line}")));
    }
    let chunked = text.contains("transfer-encoding: chunked");
    let rest = head.split_off(end);
    Ok((stream, Body::new(chunked), rest))
}

/// One connection's view of its channel's sequence.
struct Sequence {
    /// The next sequence number expected (they start at 1).
    next: u64,
    /// Events counted since the last flush into the tally.
    count: u64,
}

impl Sequence {
    fn on_field(&mut self, tally: &Tally, now_ns: u64, field: Field<'_>) {
        if let Field::Data(data) = field {
            self.on_data(tally, now_ns, data);
        }
    }

    fn on_data(&mut self, tally: &Tally, now_ns: u64, data: &[u8]) {
        match payload(data) {
            Some((seq, sent)) => {
                tally.latency.record(now_ns.saturating_sub(sent), 1);
                self.count += 1;
                if seq < self.next {
                    tally.out_of_order.fetch_add(1, Relaxed);
                } else {
                    if seq > self.next {
                        tally.gaps.fetch_add(1, Relaxed);
                    }
                    self.next = seq + 1;
                }
            }
            None if data.is_empty() => {} // redisse's lastEventId event
            None => {
                tally.bad_data.fetch_add(1, Relaxed);
            }
        }
    }

    fn flush(&mut self, tally: &Tally, now_ns: u64) {
        if self.count > 0 {
            tally.delivered.fetch_add(self.count, Relaxed);
            tally.last_delivery_ns.fetch_max(now_ns, Relaxed);
            self.count = 0;
        }
    }
}

async fn read(plan: &Plan, (mut stream, mut body, rest): (TcpStream, Body, Vec<u8>)) {
    let tally = &plan.tally;
    let mut seq = Sequence { next: 1, count: 0 };
    let now = || plan.start.elapsed().as_nanos() as u64;
    let t = now();
    body.feed(&rest, &mut |f| seq.on_field(tally, t, f));
    seq.flush(tally, t);
    let mut buf = vec![0u8; plan.read_buf];
    while !body.is_done() {
        let n = match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let t = now();
        body.feed(&buf[..n], &mut |f| seq.on_field(tally, t, f));
        seq.flush(tally, t);
    }
}
