//! The publishers: `M` events, paced at `R` per second (or as fast as the server answers), over
//! `K` keep-alive HTTP connections or straight to Redis in the gem's layout. Each event's data
//! is `<seq> <send time in ns since the start> <padding>`; a channel's events always go through
//! the same connection, in order, so subscribers can check the order.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::measure::Histogram;
use crate::subscriber::Target;

/// Where events are published.
#[derive(Clone, Debug)]
pub enum Via {
    /// `POST` to the server under test.
    Http(Target, SocketAddr),
    /// `redisse::Publisher::redis(url)`: the Lua publish script, as an application would.
    Redis(String),
}

/// What to publish.
pub struct Schedule {
    pub via: Via,
    pub events: u64,
    /// Events per second; 0 = as fast as the server answers.
    pub rate: f64,
    pub connections: usize,
    /// Channel names; event `i` goes to channel `i % channels.len()`.
    pub channels: Arc<Vec<String>>,
    /// Subscribers per channel, to know how many deliveries to expect.
    pub subscribers: Arc<Vec<u64>>,
    pub payload_bytes: usize,
    pub start: Instant,
    /// Publishing stops here even if events are left.
    pub deadline: Instant,
    /// Publishing stops when this is set (the storm scenario's end), even if events are left.
    pub stop: Arc<AtomicBool>,
    /// A failed publish is counted and publishing goes on (reconnecting), instead of ending the
    /// connection's share: a server restarted under the load refuses for a while.
    pub keep_going: bool,
}

/// What the publishers did.
pub struct Outcome {
    pub published: AtomicU64,
    pub errors: AtomicU64,
    /// Deliveries the published events should make.
    pub expected: AtomicU64,
    /// Request round trips (or Redis script calls), in ns.
    pub round_trip: Histogram,
    /// When the first and the last event were sent, in ns since the start.
    pub first_ns: AtomicU64,
    pub last_ns: AtomicU64,
    /// Per channel, the sequence numbers whose publish succeeded.
    pub accepted: Vec<Seqs>,
}

impl Outcome {
    /// Nothing published yet, for `channels` channels and at most `events` events.
    pub fn new(channels: usize, events: u64) -> Self {
        let per_channel = events.div_ceil(channels.max(1) as u64);
        Outcome {
            published: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            expected: AtomicU64::new(0),
            round_trip: Histogram::default(),
            first_ns: AtomicU64::new(u64::MAX),
            last_ns: AtomicU64::new(0),
            accepted: (0..channels).map(|_| Seqs::new(per_channel)).collect(),
        }
    }
}

/// A fixed set of sequence numbers `1..=max`, filled from several tasks (one bit each).
pub struct Seqs {
    words: Box<[AtomicU64]>,
}

impl Seqs {
    pub fn new(max: u64) -> Self {
        Seqs {
            words: (0..max.div_ceil(64) + 1)
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    /// Adds `seq`; false when it is out of range (and so not added).
    pub fn insert(&self, seq: u64) -> bool {
        match self.words.get((seq / 64) as usize) {
            Some(w) if seq > 0 => {
                w.fetch_or(1 << (seq % 64), Relaxed);
                true
            }
            _ => false,
        }
    }

    /// The members, in order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, w)| {
            let bits = w.load(Relaxed);
            (0..64)
                .filter(move |b| bits & (1 << b) != 0)
                .map(move |b| i as u64 * 64 + b)
        })
    }
}

/// Publishes on a thread of its own (a current-thread runtime), so that pacing does not depend
/// on how busy the subscribers' runtime is. Returns when done, stopped or at the deadline.
pub fn run(schedule: Schedule, outcome: Arc<Outcome>) -> Arc<Outcome> {
    let out = outcome.clone();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("publisher runtime");
        rt.block_on(publish_all(Arc::new(schedule), out));
    });
    if thread.join().is_err() {
        eprintln!("the publisher thread panicked");
    }
    outcome
}

async fn publish_all(schedule: Arc<Schedule>, outcome: Arc<Outcome>) {
    let redis = match &schedule.via {
        Via::Redis(url) => match redisse::Publisher::redis(url) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("cannot publish to {url}: {e}");
                return;
            }
        },
        Via::Http(..) => None,
    };
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..schedule.connections {
        let (schedule, outcome, redis) = (schedule.clone(), outcome.clone(), redis.clone());
        tasks.spawn(async move {
            if let Err(e) = lane_loop(&schedule, &outcome, (lane, t0), redis).await {
                eprintln!("publisher {lane}: {e}");
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One connection's share: the events whose channel maps to `lane`, in order.
async fn lane_loop(
    s: &Schedule,
    outcome: &Outcome,
    (lane, t0): (usize, Instant),
    redis: Option<redisse::Publisher>,
) -> Result<(), BoxError> {
    let mut http = match &s.via {
        Via::Http(target, addr) => Some((*target, *addr, http_connect(*addr).await?)),
        Via::Redis(_) => None,
    };
    let channels = s.channels.len() as u64;
    let pad = "x".repeat(s.payload_bytes);
    for i in 0..s.events {
        let channel = (i % channels) as usize;
        if channel % s.connections != lane {
            continue;
        }
        if s.rate > 0.0 {
            let at = t0 + Duration::from_secs_f64(i as f64 / s.rate);
            tokio::time::sleep_until(at.into()).await;
        }
        if Instant::now() >= s.deadline || s.stop.load(Relaxed) {
            break;
        }
        let seq = i / channels + 1;
        let sent = s.start.elapsed().as_nanos() as u64;
        let mut data = format!("{seq} {sent} ");
        data.push_str(&pad[..s.payload_bytes.saturating_sub(data.len())]);
        let name = &s.channels[channel];
        let ok = match (&mut http, &redis) {
            (Some((target, addr, sender)), _) => {
                let first = http_publish(sender, *target, *addr, name, data.clone()).await;
                // The server closed the keep-alive connection (nginx does after
                // `keepalive_requests`, 1,000 by default): reconnect and send it again.
                let again = match first {
                    Ok(ok) => Ok(ok),
                    Err(_) => match http_connect(*addr).await {
                        Ok(fresh) => {
                            *sender = fresh;
                            http_publish(sender, *target, *addr, name, data).await
                        }
                        Err(e) => Err(e),
                    },
                };
                match again {
                    Ok(ok) => ok,
                    // Counted as an error below; the next event tries the connection again.
                    Err(_) if s.keep_going => false,
                    Err(e) => return Err(e),
                }
            }
            (None, Some(p)) => p.publish(name, redisse::Event::message(data)).await.is_ok(),
            (None, None) => false,
        };
        let done = s.start.elapsed().as_nanos() as u64;
        outcome.round_trip.record(done - sent, 1);
        outcome.first_ns.fetch_min(sent, Relaxed);
        outcome.last_ns.fetch_max(sent, Relaxed);
        if ok {
            outcome.accepted[channel].insert(seq);
            outcome.published.fetch_add(1, Relaxed);
            outcome.expected.fetch_add(s.subscribers[channel], Relaxed);
        } else {
            outcome.errors.fetch_add(1, Relaxed);
        }
    }
    Ok(())
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn http_connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// One `POST`; `Ok(false)` for an answer that is not 2xx.
async fn http_publish(
    sender: &mut Sender,
    target: Target,
    addr: SocketAddr,
    channel: &str,
    data: String,
) -> Result<bool, BoxError> {
    sender.ready().await?;
    let req = http::Request::post(target.publish_path(channel))
        .header(http::header::HOST, addr.to_string())
        .header(http::header::CONTENT_TYPE, "text/plain")
        .body(Full::new(Bytes::from(data)))?;
    let res = sender.send_request(req).await?;
    let ok = res.status().is_success();
    res.into_body().collect().await?;
    Ok(ok)
}
