//! The live status page of the internal listener: `GET /status`, an HTML page, and
//! `GET /status/events`, a Server-Sent Events stream served by the instance itself with one
//! JSON snapshot per second (streams, events per second, slow disconnects, the broker's state).
//!
//! Only the internal router serves them: what they show (the broker's address without its
//! password, the load) is for the operator. The stream is not one of the instance's SSE streams
//! (it is in no hub, counted in no metric); at most [`MAX_STATUS_STREAMS`] are open at once (a
//! 503 past it), each holds the instance weakly and ends at the first tick after the instance
//! shuts down or is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;

use crate::headers::stream_headers;
use crate::instance::Shared;

/// Status streams open at once, at most.
pub(crate) const MAX_STATUS_STREAMS: usize = 8;

/// How often a snapshot is sent.
const PERIOD: Duration = Duration::from_secs(1);

/// One snapshot, as sent in each event's data.
#[derive(Debug, serde::Serialize)]
struct Snapshot {
    version: &'static str,
    broker: String,
    broker_up: bool,
    shards_recovering: u64,
    uptime_seconds: u64,
    streams_open: u64,
    streams_starting: u64,
    streams_ended: u64,
    subscribed_channels: u64,
    events_sent: u64,
    events_sent_per_second: f64,
    published: u64,
    published_per_second: f64,
    events_received: u64,
    slow_disconnects: u64,
    broker_reconnects: u64,
}

/// The counters a rate is computed from, and when they were read.
#[derive(Clone, Copy)]
struct Reading {
    at: Instant,
    sent: u64,
    published: u64,
}

/// `GET /status`: the page, which reads `/status/events` with an `EventSource`.
pub(crate) fn page() -> Response {
    let mut res = PAGE.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    res.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// `GET /status/events`: one snapshot now, then one per second.
pub(crate) fn events(shared: &Arc<Shared>) -> Response {
    let open = &shared.status_streams;
    if open.fetch_add(1, Relaxed) >= MAX_STATUS_STREAMS {
        open.fetch_sub(1, Relaxed);
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{MAX_STATUS_STREAMS} status streams are open already\n"),
        )
            .into_response();
    }
    let body = StatusBody {
        shared: Arc::downgrade(shared),
        ticks: tokio::time::interval(PERIOD),
        last: None,
        _slot: Slot(shared.status_streams.clone()),
    };
    let mut res = Response::new(Body::new(body));
    res.headers_mut().extend(stream_headers());
    res
}

/// Frees its place among the status streams when the stream ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

struct StatusBody {
    shared: Weak<Shared>,
    ticks: tokio::time::Interval,
    last: Option<Reading>,
    _slot: Slot,
}

impl http_body::Body for StatusBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.ticks.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        let Some(shared) = self.shared.upgrade() else {
            return Poll::Ready(None);
        };
        if shared.hub.is_closing() {
            return Poll::Ready(None);
        }
        let (snapshot, reading) = snapshot(&shared, self.last);
        self.last = Some(reading);
        let json = serde_json::to_string(&snapshot).unwrap_or_default();
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(format!(
            "event: status\ndata: {json}\n\n"
        ))))))
    }
}

fn snapshot(shared: &Shared, last: Option<Reading>) -> (Snapshot, Reading) {
    let m = &shared.metrics;
    let now = Reading {
        at: Instant::now(),
        sent: m.events_sent.get(),
        published: m.published.get(),
    };
    let rate = |pick: fn(&Reading) -> u64| match last {
        Some(then) => {
            let secs = now.at.duration_since(then.at).as_secs_f64();
            let delta = pick(&now).saturating_sub(pick(&then)) as f64;
            if secs > 0.0 { delta / secs } else { 0.0 }
        }
        None => 0.0,
    };
    let snapshot = Snapshot {
        version: env!("CARGO_PKG_VERSION"),
        broker: shared.config.broker_description(),
        broker_up: shared.broker.is_up(),
        shards_recovering: m.shards_recovering(),
        uptime_seconds: shared.started.elapsed().as_secs(),
        streams_open: m.connected.get(),
        streams_starting: m.streams_starting.get(),
        streams_ended: m.served.get(),
        subscribed_channels: m.subscriptions.get(),
        events_sent: now.sent,
        events_sent_per_second: (rate(|r| r.sent) * 10.0).round() / 10.0,
        published: now.published,
        published_per_second: (rate(|r| r.published) * 10.0).round() / 10.0,
        events_received: m.received.get(),
        slow_disconnects: m.slow_disconnects.get(),
        broker_reconnects: m.broker_reconnects.get(),
    };
    (snapshot, now)
}

/// The page: figures filled in from each snapshot, no resource from elsewhere.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>redisse status</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; }
td { padding: .25em 1em .25em 0; border-bottom: 1px solid #ddd; }
td.v { text-align: right; font-variant-numeric: tabular-nums; font-weight: 600; }
#state.down { color: #b00; }
</style>
</head>
<body>
<h1>redisse <span id="version"></span></h1>
<p id="state">connecting...</p>
<table id="figures"></table>
<script>
const rows = [
  ["broker", "Broker"], ["broker_up", "Broker reachable"], ["shards_recovering", "Cluster shards recovering"], ["uptime_seconds", "Uptime (s)"],
  ["streams_open", "Open streams"], ["streams_starting", "Streams starting"],
  ["streams_ended", "Streams ended"], ["subscribed_channels", "Subscribed channels"],
  ["events_sent_per_second", "Events sent per second"], ["events_sent", "Events sent"],
  ["published_per_second", "Published per second"], ["published", "Published"],
  ["events_received", "Events received from the broker"],
  ["slow_disconnects", "Slow clients disconnected"], ["broker_reconnects", "Broker reconnections"],
];
const table = document.getElementById("figures");
const cells = {};
for (const [key, label] of rows) {
  const tr = table.insertRow();
  tr.insertCell().textContent = label;
  const td = tr.insertCell();
  td.className = "v";
  cells[key] = td;
}
const state = document.getElementById("state");
const source = new EventSource("status/events");
source.addEventListener("status", (e) => {
  const s = JSON.parse(e.data);
  document.getElementById("version").textContent = s.version;
  for (const key in cells) cells[key].textContent = String(s[key]);
  const degraded = s.broker_up && s.shards_recovering > 0;
  state.textContent = !s.broker_up ? "broker unreachable"
    : degraded ? `live, ${s.shards_recovering} Redis Cluster shard(s) recovering` : "live";
  state.className = s.broker_up && !degraded ? "" : "down";
});
source.onerror = () => { state.textContent = "disconnected, retrying..."; state.className = "down"; };
</script>
</body>
</html>
"#;
