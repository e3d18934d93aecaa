//! Counters of one Redisse instance: the gem's JSON stats and the Prometheus `/metrics` text.
//!
//! Metrics are `prometheus-client` counters, gauges and histograms registered in a `Registry`
//! owned by the instance, so the library installs no global recorder and two instances in one
//! process (as in the tests) never mix their figures. No metric is labelled by channel name,
//! which would make the series count unbounded. The text is the Prometheus format 0.0.4, which
//! every scraper reads; docs/operations.md lists every metric.
//!
//! The delivery histogram is observed for a sample of the writes to streams (a write is a batch
//! of frames, timed from the oldest live frame in it): each stream's first, then one in eight
//! (`sse`), since a lock and a clock read on every write cost more than the rest of an
//! in-process delivery (`cargo bench --bench fanout`, `deliver_to_every_stream`).

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

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

/// A gauge of a count (never negative).
pub(crate) type Count = Gauge<u64, std::sync::atomic::AtomicU64>;

/// Upper bounds of the delivery histogram, in seconds: 50 µs to 5 s.
const DELIVERY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

/// Upper bounds of the stream duration histogram, in seconds: a second to a day.
const DURATION_BUCKETS: [f64; 14] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0,
    86400.0,
];

/// The label of `redisse_refused_total`.
type ReasonLabel = [(&'static str, &'static str); 1];

/// All metrics of one instance, and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    pub(crate) connected: Count,
    pub(crate) served: Counter,
    pub(crate) events_sent: Counter,
    pub(crate) bytes_sent: Counter,
    pub(crate) missed_sent: Counter,
    pub(crate) replayed: Counter,
    pub(crate) published: Counter,
    pub(crate) publish_replays: Counter,
    pub(crate) idempotency_evictions: Counter,
    pub(crate) received: Counter,
    pub(crate) malformed: Counter,
    pub(crate) oversized: Counter,
    pub(crate) slow_disconnects: Counter,
    pub(crate) broker_up: Count,
    pub(crate) shards_recovering: Count,
    pub(crate) broker_reconnects: Counter,
    pub(crate) subscriptions: Count,
    pub(crate) stream_subscriptions: Count,
    pub(crate) streams_starting: Count,
    pub(crate) shared_history_reads: Counter,
    /// From an event's arrival in the process to its frame handed to a stream's connection.
    delivery: Histogram,
    /// How long streams lasted, observed when they end.
    stream_duration: Histogram,
    /// The counters of `redisse_refused_total`'s family, by reason, for a lock-free count.
    refused: [Counter; Refusal::ALL.len()],
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let refusals: Family<ReasonLabel, Counter> = Family::default();
        let refused =
            Refusal::ALL.map(|r| refusals.get_or_create(&[("reason", r.label())]).clone());
        let mut m = Metrics {
            connected: Count::default(),
            served: Counter::default(),
            events_sent: Counter::default(),
            bytes_sent: Counter::default(),
            missed_sent: Counter::default(),
            replayed: Counter::default(),
            published: Counter::default(),
            publish_replays: Counter::default(),
            idempotency_evictions: Counter::default(),
            received: Counter::default(),
            malformed: Counter::default(),
            oversized: Counter::default(),
            slow_disconnects: Counter::default(),
            broker_up: Count::default(),
            shards_recovering: Count::default(),
            broker_reconnects: Counter::default(),
            subscriptions: Count::default(),
            stream_subscriptions: Count::default(),
            streams_starting: Count::default(),
            shared_history_reads: Counter::default(),
            delivery: Histogram::new(DELIVERY_BUCKETS),
            stream_duration: Histogram::new(DURATION_BUCKETS),
            refused,
            registry: Registry::default(),
        };
        m.register(refusals);
        m
    }
}

/// What this build is: version and cargo features, the labels of `redisse_build_info`.
fn build_labels() -> Vec<(&'static str, String)> {
    let features: Vec<&str> = [
        ("cli", cfg!(feature = "cli")),
        ("redis", cfg!(feature = "redis")),
        ("tls", cfg!(feature = "tls")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    vec![
        ("version", env!("CARGO_PKG_VERSION").to_owned()),
        ("features", features.join(",")),
    ]
}

impl Metrics {
    /// Registers every metric under its exposed name (counters get `_total`, units their
    /// suffix, the info metric `_info`).
    fn register(&mut self, refusals: Family<ReasonLabel, Counter>) {
        let r = &mut self.registry;
        r.register(
            "redisse_build",
            "The version of this process and the cargo features it was built with",
            Info::new(build_labels()),
        );
        let gauges = [
            ("redisse_streams_open", "Open SSE streams", &self.connected),
            (
                "redisse_broker_up",
                "1 when the broker is reachable (always 1 in memory; on a Redis Cluster, while a primary answers)",
                &self.broker_up,
            ),
            (
                "redisse_broker_shards_recovering",
                "Redis Cluster primaries whose channels this process is subscribing again (a failover, a node that stopped answering); 0 elsewhere",
                &self.shards_recovering,
            ),
            (
                "redisse_subscribed_channels",
                "Channels this process is subscribed to on the broker (channels with a local listener)",
                &self.subscriptions,
            ),
            (
                "redisse_stream_subscriptions",
                "Channel subscriptions of all open streams (a stream on 3 channels counts 3)",
                &self.stream_subscriptions,
            ),
            (
                "redisse_streams_starting",
                "Streams accepted but not live yet: waiting for the broker or reading history",
                &self.streams_starting,
            ),
        ];
        for (name, help, gauge) in gauges {
            r.register(name, help, gauge.clone());
        }
        let counters = [
            (
                "redisse_streams_ended",
                "SSE streams that have ended, whatever the reason",
                &self.served,
            ),
            (
                "redisse_events_sent",
                "Events sent to clients (lastEventId and missedevents included, heartbeats excluded)",
                &self.events_sent,
            ),
            (
                "redisse_missedevents",
                "missedevents events sent",
                &self.missed_sent,
            ),
            (
                "redisse_replayed_events",
                "Events replayed from history after Last-Event-ID",
                &self.replayed,
            ),
            (
                "redisse_published",
                "Events published through this process",
                &self.published,
            ),
            (
                "redisse_publish_replays",
                "Publishes through this process answered with the id of an earlier one with the same idempotency key, publishing nothing",
                &self.publish_replays,
            ),
            (
                "redisse_idempotency_keys_evicted",
                "Idempotency keys the in-memory broker forgot before their window ended, to stay within its bound",
                &self.idempotency_evictions,
            ),
            (
                "redisse_events_received",
                "Events received from the broker for local subscribers",
                &self.received,
            ),
            (
                "redisse_malformed_payloads",
                "Broker payloads skipped because they were not SSE events",
                &self.malformed,
            ),
            (
                "redisse_oversized_events",
                "Broker events skipped because they are larger than a subscriber's queue",
                &self.oversized,
            ),
            (
                "redisse_shared_history_reads",
                "Streams' history reads answered by an identical read another stream made at the same time",
                &self.shared_history_reads,
            ),
            (
                "redisse_slow_disconnects",
                "Streams closed because the client fell behind its queue",
                &self.slow_disconnects,
            ),
            (
                "redisse_broker_reconnects",
                "Reconnections of the broker subscriber",
                &self.broker_reconnects,
            ),
        ];
        for (name, help, counter) in counters {
            r.register(name, help, counter.clone());
        }
        r.register_with_unit(
            "redisse_sent",
            "Bytes written to streams (events, heartbeats, retry hints)",
            Unit::Bytes,
            self.bytes_sent.clone(),
        );
        r.register("redisse_refused", "Requests refused, by reason", refusals);
        r.register_with_unit(
            "redisse_event_delivery",
            "Time from an event's arrival in this process (published here, or received from Redis) to its frame handed to a stream's connection, for a sample of the writes (each stream's first, then one in eight), from the oldest live event of the write",
            Unit::Seconds,
            self.delivery.clone(),
        );
        r.register_with_unit(
            "redisse_stream_duration",
            "How long SSE streams lasted, observed when they end",
            Unit::Seconds,
            self.stream_duration.clone(),
        );
    }

    /// A snapshot of the gem's four counters.
    pub fn stats(&self) -> Stats {
        Stats {
            connected: self.connected.get(),
            events: self.events_sent.get(),
            served: self.served.get(),
            missing: self.missed_sent.get(),
        }
    }

    /// Records whether the broker is reachable: the gauge is the broker's one up flag.
    pub(crate) fn set_broker_up(&self, up: bool) {
        self.broker_up.set(u64::from(up));
    }

    /// Whether the broker is reachable.
    #[cfg(feature = "redis")]
    pub(crate) fn broker_up(&self) -> bool {
        self.broker_up.get() == 1
    }

    /// Records how many Redis Cluster shards are being recovered while the others serve.
    #[cfg(feature = "redis")]
    pub(crate) fn set_shards_recovering(&self, shards: usize) {
        self.shards_recovering.set(shards as u64);
    }

    /// How many Redis Cluster shards are being recovered (0 but on a cluster).
    pub(crate) fn shards_recovering(&self) -> u64 {
        self.shards_recovering.get()
    }

    pub(crate) fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].inc();
    }

    /// The count of refusals for one reason.
    pub fn refusals(&self, reason: Refusal) -> u64 {
        self.refused[reason as usize].get()
    }

    /// Events from the broker skipped because no subscriber's queue could hold them.
    pub fn oversized_events(&self) -> u64 {
        self.oversized.get()
    }

    /// Streams disconnected because they fell behind.
    pub fn slow_disconnects(&self) -> u64 {
        self.slow_disconnects.get()
    }

    /// Records one write to a stream whose oldest live event arrived `waited` ago.
    pub(crate) fn delivered_after(&self, waited: Duration) {
        self.delivery.observe(waited.as_secs_f64());
    }

    /// Records a stream that ended after `lasted`.
    pub(crate) fn stream_ended_after(&self, lasted: Duration) {
        self.stream_duration.observe(lasted.as_secs_f64());
    }

    /// The Prometheus text exposition (format 0.0.4) of every metric.
    pub fn render_prometheus(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing to a String cannot fail; an encoder error would leave what was written.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

/// The `Content-Type` of [`Metrics::render_prometheus`].
pub(crate) const PROMETHEUS_CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_reason_and_moves() {
        let m = Metrics::default();
        m.refused(Refusal::MaxChannels);
        m.events_sent.inc_by(3);
        m.delivered_after(Duration::from_micros(300));
        let text = m.render_prometheus();
        assert!(
            text.contains("redisse_refused_total{reason=\"max_channels\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("redisse_refused_total{reason=\"bad_query\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("redisse_events_sent_total 3\n"), "{text}");
        assert!(
            text.contains("redisse_event_delivery_seconds_bucket{le=\"0.0005\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("redisse_event_delivery_seconds_bucket{le=\"0.00025\"} 0\n"),
            "{text}"
        );
        assert!(
            text.contains("redisse_event_delivery_seconds_count 1\n"),
            "{text}"
        );
        assert!(text.contains("redisse_sent_bytes_total 0\n"), "{text}");
        assert!(text.contains("redisse_build_info{"), "{text}");
        assert_eq!(m.stats().events, 3);
    }

    #[test]
    fn two_instances_keep_their_figures_apart() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.events_sent.inc();
        assert!(
            a.render_prometheus()
                .contains("redisse_events_sent_total 1\n")
        );
        assert!(
            b.render_prometheus()
                .contains("redisse_events_sent_total 0\n")
        );
    }
}
