//! GET /metrics and GET /health (README, "Operations").
//!
//! `/metrics` is served by the internal router (the public one has none: there `/metrics` is a path
//! of the SSE endpoint like any other). It is checked with a small strict parser of the Prometheus
//! text format (only `HELP` and `TYPE` comments, one of each per metric and before its samples,
//! samples of a metric together, valid names, quoted label values, numeric values, no duplicate
//! series), and its counters must move exactly as events flow. No series may be labelled by
//! channel.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::on_both_brokers;
use crate::support::binary::Redisse;
use crate::support::sse::client;
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(
    counters_move_as_events_flow,
    health_is_200_while_the_broker_is_up
);

/// Series name with its labels (`name{a="b"}`) to value.
type Samples = BTreeMap<String, f64>;

/// Parses the Prometheus text exposition format strictly.
fn parse_prometheus(text: &str) -> Result<Samples, String> {
    let mut samples = Samples::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped = HashSet::new();
    let mut finished = HashSet::new();
    let mut current: Option<String> = None;
    if !text.ends_with('\n') {
        return Err("the text does not end with a line feed".into());
    }
    for (n, line) in text.lines().enumerate() {
        let at = |msg: &str| format!("line {}: {msg}: {line:?}", n + 1);
        if let Some(comment) = line.strip_prefix('#') {
            let mut words = comment.trim_start().splitn(3, ' ');
            let (kind, name, rest) = (words.next(), words.next(), words.next());
            let name = name.ok_or_else(|| at("comment without a metric name"))?;
            check_name(name).map_err(|e| at(&e))?;
            match kind {
                Some("HELP") => {
                    if !helped.insert(name.to_owned()) {
                        return Err(at("second HELP"));
                    }
                }
                Some("TYPE") => {
                    let t = rest.ok_or_else(|| at("TYPE without a type"))?;
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                        return Err(at("unknown type"));
                    }
                    if typed.insert(name.to_owned(), t.to_owned()).is_some() {
                        return Err(at("second TYPE"));
                    }
                }
                _ => return Err(at("a comment that is neither HELP nor TYPE")),
            }
            continue;
        }
        if line.is_empty() {
            return Err(at("empty line"));
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| at("no value"))?;
        let value: f64 = value.parse().map_err(|_| at("value is not a number"))?;
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => {
                let labels = labels
                    .strip_suffix('}')
                    .ok_or_else(|| at("unclosed labels"))?;
                (name, parse_labels(labels).map_err(|e| at(&e))?)
            }
            None => (series, Vec::new()),
        };
        check_name(name).map_err(|e| at(&e))?;
        // A histogram's samples are its name with `_bucket`, `_sum` and `_count`.
        let family = match typed.get(name) {
            Some(_) => name,
            None => ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|base| typed.get(*base).is_some_and(|t| t == "histogram"))
                .ok_or_else(|| at("a sample before its metric's TYPE"))?,
        };
        if current.as_deref() != Some(family) {
            if finished.contains(family) {
                return Err(at("the samples of a metric are not together"));
            }
            if let Some(prev) = current.replace(family.to_owned()) {
                finished.insert(prev);
            }
        }
        for (label, _) in &labels {
            let allowed = match label.as_str() {
                "reason" => true,
                "le" => name.ends_with("_bucket"),
                "version" | "features" => name == "redisse_build_info",
                _ => false,
            };
            if !allowed {
                return Err(at("an unexpected label (no per-channel labels)"));
            }
        }
        let key = if labels.is_empty() {
            name.to_owned()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        if samples.insert(key, value).is_some() {
            return Err(at("duplicate series"));
        }
    }
    Ok(samples)
}

fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn parse_labels(mut rest: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("invalid label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next().ok_or("unterminated label value")? {
                (i, '"') => break i,
                (_, '\\') => match chars.next().ok_or("dangling escape")?.1 {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => return Err(format!("bad escape \\{c}")),
                },
                (_, '\n') => return Err("line feed in a label value".into()),
                (_, c) => value.push(c),
            }
        };
        out.push((name.to_owned(), value));
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or(rest);
    }
    Ok(out)
}

#[test]
fn the_parser_is_strict() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total 3\n# TYPE b gauge\nb{reason=\"x\"} 1\nb{reason=\"y\\\"z\"} 2\n";
    let s = parse_prometheus(good).unwrap();
    assert_eq!(s["a_total"], 3.0);
    let histogram = "# TYPE h_seconds histogram\nh_seconds_bucket{le=\"0.5\"} 1\nh_seconds_bucket{le=\"+Inf\"} 2\nh_seconds_sum 1.5\nh_seconds_count 2\n";
    assert_eq!(s["b{reason=\"y\"z\"}"], 2.0);
    let h = parse_prometheus(histogram).unwrap();
    assert_eq!(h["h_seconds_bucket{le=\"+Inf\"}"], 2.0);
    for bad in [
        "a 1\n",
        "# TYPE a counter\na one\n",
        "# TYPE a counter\na 1",
        "# TYPE a counter\na 1\na 2\n",
        "# TYPE a counter\n# TYPE a gauge\n",
        "# TYPE a counter\na{channel=\"news\"} 1\n",
        "# TYPE a counter\na{reason=\"x} 1\n",
        "# TYPE 1a counter\n",
        "# random comment\n",
        "# TYPE a counter\n# TYPE b counter\na 1\nb 1\na{reason=\"x\"} 1\n",
        "# TYPE a counter\na_bucket{le=\"1\"} 1\n",
        "# TYPE g gauge\ng{le=\"1\"} 1\n",
        "# TYPE g gauge\ng{version=\"1\"} 1\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

/// `GET /metrics` on the internal router.
async fn scrape(server: &TestServer) -> Samples {
    let res = client()
        .get(server.internal_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = res.text().await.unwrap();
    parse_prometheus(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn delta(before: &Samples, after: &Samples, key: &str) -> f64 {
    let get = |s: &Samples| *s.get(key).unwrap_or_else(|| panic!("no series {key}"));
    get(after) - get(before)
}

async fn counters_move_as_events_flow(backend: Backend) {
    let mut config = backend.config();
    config.history_size = 3;
    let server = TestServer::start(config).await;
    let before = scrape(&server).await;
    let mut s1 = server.live_stream("/?a").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(server.publish("a", "m", &format!("e{i}")).await);
    }
    assert_eq!(s1.take(5).await.len(), 5);
    // Replay of one event.
    let from = ids[3].to_string();
    let mut s2 = server.stream("/?a", &[("last-event-id", &from)]).await;
    assert_eq!(s2.next().await.id, Some(ids[4].to_string()));
    // A trimmed history: missedevents, then the three retained events.
    let from = ids[0].to_string();
    let mut s3 = server.stream("/?a", &[("last-event-id", &from)]).await;
    let got: Vec<String> = s3.take(4).await.into_iter().map(|e| e.event).collect();
    assert_eq!(got, ["missedevents", "m", "m", "m"]);
    // Two refusals.
    let res = client().get(server.url("/?a")).send().await.unwrap();
    assert_eq!(res.status(), 406);
    let bad = server.stream("/?%zz", &[]).await;
    assert_eq!(bad.status, 400);

    let mid = scrape(&server).await;
    assert_eq!(mid["redisse_streams_open"], 3.0);
    assert_eq!(mid["redisse_broker_up"], 1.0);
    assert!(mid["redisse_subscribed_channels"] >= 1.0);
    assert_eq!(
        delta(&before, &mid, "redisse_published_total"),
        6.0,
        "5 + warm-up"
    );
    assert!(delta(&before, &mid, "redisse_events_received_total") >= 5.0);
    // s1: lastEventId + 5; s2: 1 replayed; s3: missedevents + 3 replayed.
    assert_eq!(delta(&before, &mid, "redisse_events_sent_total"), 11.0);
    assert_eq!(delta(&before, &mid, "redisse_replayed_events_total"), 4.0);
    assert_eq!(delta(&before, &mid, "redisse_missedevents_total"), 1.0);
    let received = (s1.raw.len() + s2.raw.len() + s3.raw.len()) as f64;
    assert_eq!(delta(&before, &mid, "redisse_sent_bytes_total"), received);
    for (reason, n) in [
        ("not_acceptable", 1.0),
        ("bad_query", 1.0),
        ("max_channels", 0.0),
    ] {
        let key = format!("redisse_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(delta(&before, &mid, &key), n, "{key}");
    }
    assert_eq!(mid["redisse_slow_disconnects_total"], 0.0);
    assert_eq!(mid["redisse_broker_reconnects_total"], 0.0);
    assert_eq!(mid["redisse_malformed_payloads_total"], 0.0);
    // The JSON stats agree.
    let stats = server.redisse.stats();
    assert_eq!(stats.events as f64, mid["redisse_events_sent_total"]);
    assert_eq!(stats.missing as f64, mid["redisse_missedevents_total"]);

    drop((s2, s3));
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let now = scrape(&server).await;
        if now["redisse_streams_open"] == 1.0 {
            break now;
        }
        assert!(Instant::now() < deadline, "closed streams still counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(delta(&mid, &after, "redisse_streams_ended_total"), 2.0);
    assert_eq!(server.redisse.stats().served, 2);
    drop(s1);
}

async fn health_is_200_while_the_broker_is_up(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let res = client().get(server.url("/health")).send().await.unwrap();
        if res.status() == 200 {
            break;
        }
        // On Redis, the subscriber may still be connecting.
        assert!(
            matches!(backend, Backend::Redis(_)),
            "memory is always healthy"
        );
        assert!(Instant::now() < deadline, "never healthy: {}", res.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(scrape(&server).await["redisse_broker_up"], 1.0);
}

#[tokio::test]
async fn metrics_and_health_with_accept_event_stream_are_streams() {
    let server = TestServer::start(Backend::memory().config()).await;
    server.publish("warm", "m", "").await;
    for path in ["/metrics?a", "/health?a"] {
        let mut s = server.stream(path, &[]).await;
        assert_eq!(s.status, 200, "{path}");
        assert_eq!(s.header("content-type"), Some("text/event-stream"));
        assert_eq!(s.next().await.event, "lastEventId", "{path}");
        let id = server.publish("a", "m", path).await;
        assert_eq!(s.next().await.id, Some(id.to_string()));
    }
    // Without a channel it is the endpoint's 404, not the metrics.
    let s = server.stream("/metrics", &[]).await;
    assert_eq!(s.status, 404);
    let res = client().get(server.url("/health")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "ok\n");
}

#[tokio::test]
async fn every_refusal_reason_and_metric_is_exposed() {
    let server = TestServer::start(Backend::memory().config()).await;
    let samples = scrape(&server).await;
    let reasons = [
        "max_connections",
        "max_channels",
        "max_subscriptions",
        "channel_name_too_long",
        "bad_query",
        "publish_too_large",
        "bad_publish",
        "publish_unauthorized",
        "cors_origin",
        "policy",
        "not_acceptable",
        "header_too_large",
        "header_timeout",
        "bad_request",
        "idempotency_conflict",
    ];
    for reason in reasons {
        let key = format!("redisse_refused_total{{reason=\"{reason}\"}}");
        assert_eq!(samples.get(&key), Some(&0.0), "{key}");
    }
    // And no reason beyond these (a new one must be added to this list).
    let exposed: Vec<&String> = samples
        .keys()
        .filter(|k| k.starts_with("redisse_refused_total{"))
        .collect();
    assert_eq!(exposed.len(), reasons.len(), "{exposed:?}");
    for name in [
        "redisse_streams_open",
        "redisse_streams_ended_total",
        "redisse_events_sent_total",
        "redisse_sent_bytes_total",
        "redisse_published_total",
        "redisse_publish_replays_total",
        "redisse_idempotency_keys_evicted_total",
        "redisse_events_received_total",
        "redisse_replayed_events_total",
        "redisse_missedevents_total",
        "redisse_slow_disconnects_total",
        "redisse_broker_up",
        "redisse_broker_reconnects_total",
        "redisse_subscribed_channels",
        "redisse_stream_subscriptions",
        "redisse_streams_starting",
        "redisse_malformed_payloads_total",
        "redisse_oversized_events_total",
        "redisse_shared_history_reads_total",
        concat!(
            "redisse_build_info{version=\"",
            env!("CARGO_PKG_VERSION"),
            "\",features=\"cli,redis,tls\"}"
        ),
        "redisse_event_delivery_seconds_count",
        "redisse_event_delivery_seconds_sum",
        "redisse_event_delivery_seconds_bucket{le=\"+Inf\"}",
        "redisse_stream_duration_seconds_count",
        "redisse_stream_duration_seconds_bucket{le=\"+Inf\"}",
    ] {
        assert!(samples.contains_key(name), "{name} missing");
    }
}

/// `--verbose` logs each subscription and each event, with the gem's words.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verbose_logs_subscriptions_and_events_like_the_gem() {
    let server = Redisse::start(&["--verbose"]);
    server.publish("warm", String::new()).await;
    let mut s = crate::support::SseStream::open(&server.url("/?news&sports"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    server.publish("news", "hello verbose".into()).await;
    assert_eq!(s.next().await.data, "hello verbose");
    drop(s);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let log = server.log();
        let subscribed = log
            .lines()
            .any(|l| l.contains("Subscribing to") && l.contains("news") && l.contains("sports"));
        let sending = log.contains("Sending:") && log.contains("data: hello verbose");
        // The connection's span names it in its log lines.
        let span = log
            .lines()
            .any(|l| l.contains("sse{conn=") && l.contains("channels=2"));
        if subscribed && sending && span && log.contains("Unsubscribing") {
            break;
        }
        assert!(Instant::now() < deadline, "missing verbose lines:\n{log}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Foreign entries in a channel's history (written by another Redis client) are skipped on
/// replay, the stream goes on, and each one is counted in `redisse_malformed_payloads_total`;
/// so is a foreign pub/sub message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_payloads_are_skipped_and_counted() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let first = server.publish("mixed", "m", "one").await;
    let mut con = backend.redis_server().con();
    for (score, junk) in [(first + 1, "garbage"), (first + 2, "id: 7\nno end")] {
        let _: i64 = redis::cmd("ZADD")
            .arg("mixed")
            .arg(score)
            .arg(junk)
            .query(&mut con)
            .unwrap();
    }
    let second = server.publish("mixed", "m", "two").await;
    let before = scrape(&server).await;
    let mut s = server
        .stream("/?mixed", &[("last-event-id", &first.to_string())])
        .await;
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data),
        (Some(second.to_string()), "two".to_string())
    );
    let after = scrape(&server).await;
    assert_eq!(
        delta(&before, &after, "redisse_malformed_payloads_total"),
        2.0
    );

    let _: i64 = redis::cmd("PUBLISH")
        .arg("mixed")
        .arg("not an event")
        .query(&mut con)
        .unwrap();
    let third = server.publish("mixed", "m", "three").await;
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data),
        (Some(third.to_string()), "three".to_string())
    );
    let later = scrape(&server).await;
    assert_eq!(
        delta(&after, &later, "redisse_malformed_payloads_total"),
        1.0
    );
}

/// What Python's `prometheus_client.parser` (the Prometheus project's own client) reads in a
/// scrape: each family's type and samples, as JSON.
fn parse_with_prometheus_client(text: &str) -> serde_json::Value {
    use std::io::Write;
    use std::process::{Command, Stdio};
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    families[f.name] = {
        "type": f.type,
        "samples": [[s.name, s.labels, s.value] for s in f.samples],
    }
print(json.dumps(families))
"#;
    let missing = "this test needs Python 3 with the prometheus-client package: \
                   `python3 -m pip install prometheus-client` (.ci/run installs it)";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{missing}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named 'prometheus_client'"),
        "{missing}"
    );
    assert!(out.status.success(), "the parser failed: {stderr}\n{text}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A histogram family's buckets (upper bound, cumulative count), `_sum` and `_count`, checked:
/// ascending bounds ending at `+Inf`, cumulative counts, `+Inf` equal to `_count`.
fn histogram(families: &serde_json::Value, name: &str) -> (Vec<(f64, f64)>, f64, f64) {
    let family = &families[name];
    assert_eq!(family["type"], "histogram", "{name}: {family}");
    let (mut buckets, mut sum, mut count) = (Vec::new(), None, None);
    for sample in family["samples"].as_array().unwrap() {
        let value = sample[2].as_f64().unwrap();
        match sample[0].as_str().unwrap().strip_prefix(name).unwrap() {
            "_bucket" => {
                let le = sample[1]["le"].as_str().unwrap();
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                buckets.push((le, value));
            }
            "_sum" => sum = Some(value),
            "_count" => count = Some(value),
            other => panic!("{name}: unexpected sample {other}"),
        }
    }
    let (sum, count) = (sum.unwrap(), count.unwrap());
    assert!(buckets.len() >= 2, "{name}: {buckets:?}");
    for pair in buckets.windows(2) {
        assert!(
            pair[0].0 < pair[1].0,
            "{name}: bounds not ascending {buckets:?}"
        );
        assert!(pair[0].1 <= pair[1].1, "{name}: not cumulative {buckets:?}");
    }
    assert_eq!(buckets.last().unwrap(), &(f64::INFINITY, count), "{name}");
    (buckets, sum, count)
}

/// The scrape read by the Prometheus project's own parser: every family has a type, the build
/// info names the version, and both histograms move as events flow and a stream ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_parser_reads_the_metrics_and_the_histograms_move() {
    let server = TestServer::start(Backend::memory().config()).await;
    let text = |server: &TestServer| {
        let server = server.internal_url("/metrics");
        async move {
            client()
                .get(server)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let before = parse_with_prometheus_client(&text(&server).await);
    let info = &before["redisse_build_info"]["samples"][0];
    assert_eq!(info[1]["version"], env!("CARGO_PKG_VERSION"), "{info}");
    for (name, kind) in [
        ("redisse_streams_open", "gauge"),
        ("redisse_streams_ended", "counter"),
        ("redisse_events_sent", "counter"),
        ("redisse_sent_bytes", "counter"),
        ("redisse_refused", "counter"),
        ("redisse_slow_disconnects", "counter"),
        ("redisse_broker_up", "gauge"),
    ] {
        assert_eq!(before[name]["type"], kind, "{name}: {}", before[name]);
    }
    let (_, _, delivered_before) = histogram(&before, "redisse_event_delivery_seconds");
    let (_, _, ended_before) = histogram(&before, "redisse_stream_duration_seconds");

    let mut s = server.live_stream("/?parsed").await;
    for i in 0..9 {
        server.publish("parsed", "m", &format!("e{i}")).await;
        s.next().await;
    }
    drop(s);
    server.wait_connections(0).await;
    let deadline = Instant::now() + PATIENCE;
    let after = loop {
        let after = parse_with_prometheus_client(&text(&server).await);
        if histogram(&after, "redisse_stream_duration_seconds").2 > ended_before {
            break after;
        }
        assert!(Instant::now() < deadline, "no stream duration observed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let (buckets, sum, delivered) = histogram(&after, "redisse_event_delivery_seconds");
    // Nine live events read one by one, nine writes (lastEventId is not timed): the first and
    // the ninth are timed (one write in eight is).
    assert_eq!(delivered - delivered_before, 2.0, "{buckets:?}");
    assert!(sum > 0.0 && sum < 5.0 * PATIENCE.as_secs_f64(), "{sum}");
    let (_, _, ended) = histogram(&after, "redisse_stream_duration_seconds");
    assert_eq!(ended - ended_before, 1.0);
    assert_eq!(after["redisse_streams_open"]["samples"][0][2], 0.0);
}
