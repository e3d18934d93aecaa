//! Counters of one Redisse instance: the gem's JSON stats and the Prometheus `/metrics` text.
//!
//! Plain atomics owned by the instance, so the library installs no global recorder and two
//! instances in one process (as in the tests) never mix their figures. No metric is labelled by
//! channel name, which would make the series count unbounded.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Why a request was refused, the label of `redisse_refused_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// The connection limit was reached.
    MaxConnections,
    /// More channels than allowed on one connection.
    MaxChannels,
    /// The process-wide bound on channel subscriptions was reached.
    MaxSubscriptions,
    /// A channel name longer than allowed.
    ChannelNameTooLong,
    /// A malformed query string.
    BadQuery,
    /// A publish body over the limit.
    PublishTooLarge,
    /// A publish request that was malformed (type, UTF-8, channel).
    BadPublish,
    /// A publish request on the public listener without a valid credential (401), or with one
    /// that does not cover the channel (403).
    PublishUnauthorized,
    /// A request from a page whose origin is not among the CORS origins (403).
    CorsOrigin,
    /// The channel function rejected the request.
    Policy,
    /// The request was not acceptable (406) or had no channel (404).
    NotAcceptable,
    /// A request head over the size limit (431).
    HeaderTooLarge,
    /// A request head not received within the header read timeout (slow loris).
    HeaderTimeout,
    /// A request head that is not HTTP (400).
    BadRequest,
    /// A publish whose idempotency key was used within the window for another event (422).
    IdempotencyConflict,
}

impl Refusal {
    const ALL: [Refusal; 15] = [
        Refusal::MaxConnections,
        Refusal::MaxChannels,
        Refusal::MaxSubscriptions,
        Refusal::ChannelNameTooLong,
        Refusal::BadQuery,
        Refusal::PublishTooLarge,
        Refusal::BadPublish,
        Refusal::PublishUnauthorized,
        Refusal::CorsOrigin,
        Refusal::Policy,
        Refusal::NotAcceptable,
        Refusal::HeaderTooLarge,
        Refusal::HeaderTimeout,
        Refusal::BadRequest,
        Refusal::IdempotencyConflict,
    ];

    fn label(self) -> &'static str {
        match self {
            Refusal::MaxConnections => "max_connections",
            Refusal::MaxChannels => "max_channels",
            Refusal::MaxSubscriptions => "max_subscriptions",
            Refusal::ChannelNameTooLong => "channel_name_too_long",
            Refusal::BadQuery => "bad_query",
            Refusal::PublishTooLarge => "publish_too_large",
            Refusal::BadPublish => "bad_publish",
            Refusal::PublishUnauthorized => "publish_unauthorized",
            Refusal::CorsOrigin => "cors_origin",
            Refusal::Policy => "policy",
            Refusal::NotAcceptable => "not_acceptable",
            Refusal::HeaderTooLarge => "header_too_large",
            Refusal::HeaderTimeout => "header_timeout",
            Refusal::BadRequest => "bad_request",
            Refusal::IdempotencyConflict => "idempotency_conflict",
        }
    }
}

/// The gem's stats object, served as JSON to `Accept: application/json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Stats {
    /// Streams open now.
    pub connected: u64,
    /// Events sent, `lastEventId` and `missedevents` included (heartbeats excluded).
    pub events: u64,
    /// Streams that have ended.
    pub served: u64,
    /// `missedevents` events sent.
    pub missing: u64,
}

/// All counters of one instance.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) connected: AtomicU64,
    pub(crate) served: AtomicU64,
    pub(crate) events_sent: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) missed_sent: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) publish_replays: AtomicU64,
    pub(crate) idempotency_evictions: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) malformed: AtomicU64,
    pub(crate) oversized: AtomicU64,
    pub(crate) slow_disconnects: AtomicU64,
    pub(crate) broker_up: AtomicU64,
    pub(crate) broker_reconnects: AtomicU64,
    pub(crate) subscriptions: AtomicU64,
    pub(crate) stream_subscriptions: AtomicU64,
    pub(crate) streams_starting: AtomicU64,
    pub(crate) shared_history_reads: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
}

impl Metrics {
    /// A snapshot of the gem's four counters.
    pub fn stats(&self) -> Stats {
        Stats {
            connected: self.connected.load(Relaxed),
            events: self.events_sent.load(Relaxed),
            served: self.served.load(Relaxed),
            missing: self.missed_sent.load(Relaxed),
        }
    }

    /// Records whether the broker is reachable: the gauge is the broker's one up flag.
    pub(crate) fn set_broker_up(&self, up: bool) {
        self.broker_up.store(u64::from(up), Relaxed);
    }

    /// Whether the broker is reachable.
    #[cfg(feature = "redis")]
    pub(crate) fn broker_up(&self) -> bool {
        self.broker_up.load(Relaxed) == 1
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].fetch_add(1, Relaxed);
    }

    /// The count of refusals for one reason.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].load(Relaxed)
    }

    /// Events from the broker skipped because no subscriber's queue could hold them.
    pub fn oversized_events(&self) -> u64 {
        self.oversized.load(Relaxed)
    }

    /// Streams disconnected because they fell behind.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.load(Relaxed)
    }

    /// The Prometheus text exposition of every counter.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(2048);
        let gauges = [
            ("redisse_connections", "Open SSE streams.", &self.connected),
            (
                "redisse_broker_up",
                "1 when the broker is reachable (always 1 in memory).",
                &self.broker_up,
            ),
            (
                "redisse_subscriptions",
                "Channels this process is subscribed to on the broker.",
                &self.subscriptions,
            ),
            (
                "redisse_stream_subscriptions",
                "Channel subscriptions of all open streams (a stream on 3 channels counts 3).",
                &self.stream_subscriptions,
            ),
            (
                "redisse_streams_starting",
                "Streams accepted but not live yet: waiting for the broker or reading history.",
                &self.streams_starting,
            ),
        ];
        for (name, help, value) in gauges {
            metric(&mut out, name, help, "gauge", value.load(Relaxed));
        }
        let counters = [
            (
                "redisse_connections_total",
                "SSE streams that have ended.",
                &self.served,
            ),
            (
                "redisse_events_sent_total",
                "Events sent to clients (lastEventId and missedevents included).",
                &self.events_sent,
            ),
            (
                "redisse_bytes_sent_total",
                "Bytes of SSE frames sent to clients.",
                &self.bytes_sent,
            ),
            (
                "redisse_missedevents_total",
                "missedevents events sent.",
                &self.missed_sent,
            ),
            (
                "redisse_replayed_events_total",
                "Events replayed from history after Last-Event-ID.",
                &self.replayed,
            ),
            (
                "redisse_published_total",
                "Events published through this process.",
                &self.published,
            ),
            (
                "redisse_publish_replays_total",
                "Publishes through this process answered with the id of an earlier one with the same idempotency key, publishing nothing.",
                &self.publish_replays,
            ),
            (
                "redisse_idempotency_keys_evicted_total",
                "Idempotency keys the in-memory broker forgot before their window ended, to stay within its bound.",
                &self.idempotency_evictions,
            ),
            (
                "redisse_events_received_total",
                "Events received from the broker for local subscribers.",
                &self.received,
            ),
            (
                "redisse_malformed_payloads_total",
                "Broker payloads skipped because they were not SSE events.",
                &self.malformed,
            ),
            (
                "redisse_oversized_events_total",
                "Broker events skipped because they are larger than a subscriber's queue.",
                &self.oversized,
            ),
            (
                "redisse_shared_history_reads_total",
                "Streams' history reads answered by an identical read another stream made at the same time.",
                &self.shared_history_reads,
            ),
            (
                "redisse_slow_disconnects_total",
                "Streams closed because the client fell behind its queue.",
                &self.slow_disconnects,
            ),
            (
                "redisse_broker_reconnects_total",
                "Reconnections of the broker subscriber.",
                &self.broker_reconnects,
            ),
        ];
        for (name, help, value) in counters {
            metric(&mut out, name, help, "counter", value.load(Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP redisse_refused_total Requests refused, by reason."
        );
        let _ = writeln!(out, "# TYPE redisse_refused_total counter");
        for reason in Refusal::ALL {
            let value = self.refusals(reason);
            let _ = writeln!(
                out,
                "redisse_refused_total{{reason=\"{}\"}} {value}",
                reason.label()
            );
        }
        out
    }
}

fn metric(out: &mut String, name: &str, help: &str, kind: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    let _ = writeln!(out, "{name} {value}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason_and_moves() {
        let m = Metrics::default();
        m.refused(Refusal::MaxChannels);
        m.events_sent.fetch_add(3, Relaxed);
        let text = m.render_prometheus();
        assert!(text.contains("redisse_refused_total{reason=\"max_channels\"} 1\n"));
        assert!(text.contains("redisse_refused_total{reason=\"bad_query\"} 0\n"));
        assert!(text.contains("redisse_events_sent_total 3\n"));
        assert_eq!(m.stats().events, 3);
    }
}
