//! The `redisse` binary on a Redis Cluster (`--redis-cluster`), end to end, as a client sees
//! it: ids are per-channel sequences; a stream on channels c1..cn sends each event with the
//! compound id `<H>-<s1>-...-<sn>` (H: FNV-1a 32-bit over the names sorted bytewise, each
//! followed by a newline, as eight hex digits; si: the last sequence of the i-th channel in that
//! order the stream has sent) and resumes from it; channels on different shards share one
//! stream; a short history, a mismatched id and a failover that lost writes give one
//! `missedevents`; a primary killed under the streams and its replica promoted loses no event
//! that history holds; and three processes on one cluster serve clients that resume on any of
//! them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::{Instant, sleep};

use crate::sentinel::publish_through;
use crate::support::binary::Redisse;
use crate::support::cluster::{Cluster, fnv1a32};
use crate::support::sse::Next;
use crate::support::steps::blocking;
use crate::support::{PATIENCE, SseEvent, SseStream};

/// The longest a test of this module may take, whatever hangs.
const LIMIT: Duration = Duration::from_secs(180);

/// How long a stream that got everything is watched for one more event.
const QUIET: Duration = Duration::from_millis(300);

/// How long events may take to arrive across a failover.
const FAILOVER_WAIT: Duration = Duration::from_secs(60);

/// Where a stream is: each of its channels' last sequence, keyed (and so ordered) by name.
type Position = BTreeMap<String, u64>;

/// Runs a test's body within [`LIMIT`].
async fn within_limit(body: impl Future<Output = ()>) {
    tokio::time::timeout(LIMIT, body)
        .await
        .unwrap_or_else(|_| panic!("the test did not finish within {LIMIT:?}"));
}

/// The hash part of a stream's ids: FNV-1a over its channel names, sorted bytewise, each
/// followed by `\n`.
fn stream_hash<S: AsRef<str>>(channels: &[S]) -> String {
    let mut names: Vec<&str> = channels.iter().map(AsRef::as_ref).collect();
    names.sort_unstable();
    names.dedup();
    let mut bytes = Vec::new();
    for name in names {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(b'\n');
    }
    format!("{:08x}", fnv1a32(&bytes))
}

/// The compound id of `position`.
fn compound(position: &Position) -> String {
    let mut id = stream_hash(&position.keys().collect::<Vec<_>>());
    for seq in position.values() {
        id.push_str(&format!("-{seq}"));
    }
    id
}

/// The position a compound id of a stream on `channels` names; fails the test when its hash
/// or its number of counters is not that stream's.
fn parse_compound(channels: &[String], id: &str) -> Position {
    let mut parts = id.split('-');
    let hash = parts.next().unwrap_or_default();
    assert_eq!(
        hash,
        stream_hash(channels),
        "the hash of id {id:?} for channels {channels:?}"
    );
    let seqs: Vec<u64> = parts
        .map(|s| {
            s.parse()
                .unwrap_or_else(|_| panic!("a counter of {id:?}: {s:?}"))
        })
        .collect();
    let mut names = channels.to_vec();
    names.sort_unstable();
    names.dedup();
    assert_eq!(seqs.len(), names.len(), "counters of id {id:?}");
    names.into_iter().zip(seqs).collect()
}

/// The position of every channel of `channels` at `seq`.
fn at(channels: &[String], seq: u64) -> Position {
    channels.iter().map(|c| (c.clone(), seq)).collect()
}

/// The channel an event's data names (`<channel>/<label>`, as [`data`] makes it).
fn channel_of(e: &SseEvent) -> &str {
    e.data
        .split_once('/')
        .map(|(c, _)| c)
        .unwrap_or_else(|| panic!("an event not published by this test: {e:?}"))
}

/// The data published as event `label` of `channel`.
fn data(channel: &str, label: impl std::fmt::Display) -> String {
    format!("{channel}/{label}")
}

/// The query of a stream on `channels`.
fn query(channels: &[String]) -> String {
    format!("/?{}", channels.join("&"))
}

/// A client on a cluster: it keeps the compound id of the last event it got (or of the
/// `lastEventId` event) and comes back with it, to any process. It checks every event as it
/// comes: its id has this stream's hash and counters, moves only its own channel's counter,
/// and moves it up (once a `missedevents` started the stream over, from wherever it restarts).
struct Reader {
    name: String,
    /// The channels as its query names them (in any order).
    channels: Vec<String>,
    stream: Option<SseStream>,
    position: Position,
    /// Each channel's sequences it got, across its connections, in arrival order.
    got: BTreeMap<String, Vec<u64>>,
    /// Each channel's data it got, in arrival order.
    data: BTreeMap<String, Vec<String>>,
    /// How many `missedevents` it was sent, across its connections.
    missed: usize,
    /// What came, in order: `missedevents`, or the channel of an event.
    order: Vec<String>,
    /// Whether a `missedevents` came and no event since: the next event's channel may go back
    /// (what history retained, sent again after lost writes).
    reset: bool,
}

impl Reader {
    /// A client without a position on `channels`, connected to `to`, whose channels are at
    /// `now`: the stream's first event is the `lastEventId` hint of `now`.
    async fn live(name: &str, to: &Redisse, channels: &[String], now: &Position) -> Reader {
        let mut stream = SseStream::open(&to.url(&query(channels)), &[]).await;
        assert_eq!(stream.status, 200, "{name}: a stream");
        let position = read_hints(&mut stream, channels, now, name).await;
        Reader {
            stream: Some(stream),
            ..Reader::at(name, channels, position)
        }
    }

    /// A client that is not connected, at `position` on `channels`.
    fn at(name: &str, channels: &[String], position: Position) -> Reader {
        Reader {
            name: name.to_owned(),
            channels: channels.to_vec(),
            stream: None,
            position,
            got: BTreeMap::new(),
            data: BTreeMap::new(),
            missed: 0,
            order: Vec::new(),
            reset: false,
        }
    }

    /// Drops its connection.
    fn disconnect(&mut self) {
        self.stream = None;
    }

    /// Connects again to `to` with `Last-Event-ID`, or with `?lastEventId=` when `in_query`.
    async fn reconnect(&mut self, to: &Redisse, in_query: bool) {
        self.disconnect();
        let id = compound(&self.position);
        let stream = if in_query {
            let url = format!("{}&lastEventId={id}", to.url(&query(&self.channels)));
            SseStream::open(&url, &[]).await
        } else {
            SseStream::open(&to.url(&query(&self.channels)), &[("last-event-id", &id)]).await
        };
        assert_eq!(stream.status, 200, "{}: the stream back", self.name);
        self.stream = Some(stream);
    }

    fn stream(&mut self) -> &mut SseStream {
        self.stream.as_mut().expect("a connected client")
    }

    /// Records and checks an event.
    fn record(&mut self, e: SseEvent) {
        let name = self.name.clone();
        match e.event.as_str() {
            "missedevents" => {
                assert_eq!(e.id, None, "{name}: missedevents has no id");
                self.missed += 1;
                self.order.push(e.event);
                self.reset = true;
            }
            "lastEventId" => {
                let next = parse_compound(&self.channels, e.id.as_deref().expect("an id"));
                if !self.reset {
                    for (c, seq) in &next {
                        assert!(
                            *seq >= self.position[c],
                            "{name}: the hint {next:?} is below its position {:?}",
                            self.position
                        );
                    }
                }
                self.position = next;
            }
            "m" => {
                let Some(id) = e.id.as_deref() else {
                    panic!("{name}: an event without an id: {e:?}");
                };
                let next = parse_compound(&self.channels, id);
                let channel = channel_of(&e).to_owned();
                assert!(
                    next.contains_key(&channel),
                    "{name}: not its channel: {e:?}"
                );
                for (c, seq) in &next {
                    let before = self.position[c];
                    if *c == channel {
                        assert!(
                            self.reset || *seq > before,
                            "{name}: {c} went from {before} to {seq} (twice or out of order): \
                             {e:?}; got {:?}",
                            self.got
                        );
                    } else {
                        assert_eq!(
                            *seq, before,
                            "{name}: an event of {channel} moved {c}'s counter: {e:?}"
                        );
                    }
                }
                self.got
                    .entry(channel.clone())
                    .or_default()
                    .push(next[&channel]);
                self.order.push(channel.clone());
                self.data.entry(channel).or_default().push(e.data);
                self.position = next;
                self.reset = false;
            }
            other => panic!("{name}: an unexpected event {other:?}: {e:?}"),
        }
    }

    /// Reads until it got `n` more events, waiting at most `wait` for each.
    async fn read(&mut self, n: usize, wait: Duration) {
        let until = self.count() + n;
        while self.count() < until {
            let name = self.name.clone();
            match self.stream().next_within(wait).await {
                Next::Event(e) => self.record(e),
                other => panic!(
                    "{name}: {other:?} after {} events: {:?}",
                    self.count(),
                    self.got
                ),
            }
        }
    }

    /// Reads until its position reaches `last` on every channel `last` names.
    async fn read_through(&mut self, last: &Position, wait: Duration) {
        while last.iter().any(|(c, seq)| self.position[c] < *seq) {
            let name = self.name.clone();
            match self.stream().next_within(wait).await {
                Next::Event(e) => self.record(e),
                other => panic!(
                    "{name}: {other:?} at {:?}, waiting for {last:?}",
                    self.position
                ),
            }
        }
    }

    /// Events got, over all channels.
    fn count(&self) -> usize {
        self.data.values().map(Vec::len).sum()
    }

    /// Fails if anything but a heartbeat comes within [`QUIET`].
    async fn expect_silence(&mut self) {
        let name = self.name.clone();
        match self.stream().next_within(QUIET).await {
            Next::Timeout => {}
            other => panic!("{name}: expected nothing more, got {other:?}"),
        }
    }

    /// Fails unless it got exactly `want` for each channel (nothing for the others).
    /// Reads the `n` events to come within `wait`, waits for silence after them, and checks
    /// what came against `want` ([`Reader::check`]).
    async fn read_exactly(&mut self, n: usize, wait: Duration, want: &BTreeMap<String, Vec<u64>>) {
        self.read(n, wait).await;
        self.expect_silence().await;
        self.check(want);
    }

    fn check(&self, want: &BTreeMap<String, Vec<u64>>) {
        let want: BTreeMap<&String, &Vec<u64>> =
            want.iter().filter(|(_, seqs)| !seqs.is_empty()).collect();
        let got: BTreeMap<&String, &Vec<u64>> = self.got.iter().collect();
        assert_eq!(got, want, "{}: each channel's sequences", self.name);
    }
}

/// Reads the `lastEventId` event a stream on `channels` without a position starts with (one,
/// naming every channel's current sequence, docs/protocol.md), checks that it is `now`, and
/// returns it.
async fn read_hints(
    stream: &mut SseStream,
    channels: &[String],
    now: &Position,
    name: &str,
) -> Position {
    let e = stream.next().await;
    assert_eq!(e.event, "lastEventId", "{name}: the first event: {e:?}");
    let hint = parse_compound(channels, e.id.as_deref().expect("an id"));
    assert_eq!(
        hint, *now,
        "{name}: the hint names each channel's current sequence"
    );
    hint
}

/// Each channel's sequences among `published` (channel, seq) above `after`, ascending.
fn expected(published: &[(String, u64)], after: &Position) -> BTreeMap<String, Vec<u64>> {
    let mut want: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (channel, seq) in published {
        if let Some(from) = after.get(channel)
            && seq > from
        {
            want.entry(channel.clone()).or_default().push(*seq);
        }
    }
    for seqs in want.values_mut() {
        seqs.sort_unstable();
    }
    want
}

/// The highest sequence of each channel among `published`.
fn last_of(published: &[(String, u64)]) -> Position {
    let mut last = Position::new();
    for (channel, seq) in published {
        let e = last.entry(channel.clone()).or_insert(0);
        *e = (*e).max(*seq);
    }
    last
}

/// `redisse --redis-cluster` on `cluster`'s nodes, with `extra` options, up.
async fn redisse_on(cluster: &Cluster, extra: &[&str]) -> Redisse {
    let seeds = cluster.seeds();
    let mut args = vec!["--redis-cluster", seeds.as_str()];
    args.extend_from_slice(extra);
    let process = blocking(|| Redisse::start(&args));
    process.readiness_becomes("ok").await;
    process
}

/// Publishes one event per label, on `channels` in turn, through `process`'s publish API;
/// the (channel, seq) answers.
async fn publish_each(
    process: &Redisse,
    channels: &[String],
    labels: std::ops::Range<usize>,
) -> Vec<(String, u64)> {
    let mut answered = Vec::new();
    for i in labels {
        let channel = &channels[i % channels.len()];
        let seq = process
            .publish_event(channel, Some("m"), &data(channel, i))
            .await;
        answered.push((channel.clone(), seq));
    }
    answered
}

/// Publishes event `i` for each `i` of `labels` on `channels[i % 2]` through `process`, with
/// an idempotency key and retries through refusals ([`publish_through`]), `pause` apart, in a
/// task of its own; the (channel, seq) answers.
fn publish_in_turn(
    process: &Arc<Redisse>,
    channels: &[String],
    labels: std::ops::Range<usize>,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<(String, u64)>> {
    let process = process.clone();
    let channels = channels.to_vec();
    tokio::spawn(async move {
        let mut answered = Vec::new();
        for i in labels {
            let ch = &channels[i % 2];
            let seq = publish_through(&process, ch, &data(ch, i)).await;
            answered.push((ch.clone(), seq));
            sleep(pause).await;
        }
        answered
    })
}

/// Checks that each channel's publishes were answered `seqs`, in order, none twice.
fn assert_answered(published: &[(String, u64)], channels: &[String], seqs: std::ops::Range<u64>) {
    for ch in channels {
        let got: Vec<u64> = published
            .iter()
            .filter(|(c, _)| c == ch)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            got,
            seqs.clone().collect::<Vec<u64>>(),
            "{ch}: answered in order, none twice"
        );
    }
}

/// Checks that `c` got events `0..n` (published on `channels[i % 2]`), each once, in order.
fn assert_every_event_once(c: &Reader, channels: &[String], n: usize) {
    for ch in channels {
        let want: Vec<String> = (0..n)
            .filter(|i| channels[i % 2] == *ch)
            .map(|i| data(ch, i))
            .collect();
        assert_eq!(c.data[ch], want, "{ch}: every event once, in order");
    }
}

/// A warm-up event on each channel, so that each has a sequence and the streams' first event is
/// `lastEventId`; checks that a channel's first id is 1.
async fn warm(process: &Redisse, channels: &[String]) {
    for c in channels {
        let seq = process.publish_event(c, Some("m"), &data(c, "warm")).await;
        assert_eq!(seq, 1, "the first id of {c}");
    }
}

/// With the replica of `slot`'s primary synced, publishes events `labels` on `channels` in
/// turn through `process` ([`publish_in_turn`]) while that primary is killed (SIGKILL) and its
/// replica promoted; the cluster and the (channel, seq) answers.
async fn publish_through_a_failover(
    mut cluster: Cluster,
    slot: u16,
    process: &Arc<Redisse>,
    channels: &[String],
    labels: std::ops::Range<usize>,
) -> (Cluster, Vec<(String, u64)>) {
    blocking(|| cluster.wait_synced(slot));
    let publishing = publish_in_turn(process, channels, labels, Duration::from_millis(100));
    sleep(Duration::from_millis(300)).await;
    let (cluster, (old, new)) = tokio::task::spawn_blocking(move || {
        let ports = cluster.kill_primary_and_wait_failover(slot);
        (cluster, ports)
    })
    .await
    .expect("failover");
    assert_ne!(old, new);
    (cluster, publishing.await.expect("the publisher"))
}

/// A client back at `early` on `channels`: it gets the `n` events after it that `published`
/// lists, from history, and no `missedevents`.
async fn resume_from(
    process: &Redisse,
    channels: &[String],
    early: &Position,
    published: &[(String, u64)],
    n: usize,
) {
    let mut back = Reader::at("back from before", channels, early.clone());
    back.reconnect(process, false).await;
    back.read_exactly(n, PATIENCE, &expected(published, early))
        .await;
    assert_eq!(back.missed, 0);
}

/// Two channels on different primaries arrive on one stream, each with its own sequence 1, 2,
/// 3..., under compound ids; the publish API answers each channel's sequence; each channel's
/// history is on the primary its slot names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channels_on_different_shards_arrive_on_one_stream() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("shard", 2);
        let (a, b) = (&channels[0], &channels[1]);
        let process = redisse_on(&cluster, &[]).await;
        warm(&process, &channels).await;
        // The query names them in the other order: the ids are the same.
        let reversed = vec![b.clone(), a.clone()];
        let mut stream = SseStream::open(&process.url(&query(&reversed)), &[]).await;
        // A fresh stream: each channel's current sequence.
        read_hints(&mut stream, &reversed, &at(&channels, 1), "the stream").await;
        let published = publish_each(&process, &channels, 0..6).await;
        let seqs: Vec<u64> = published.iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs, [2, 2, 3, 3, 4, 4], "each channel's own sequence");
        let mut position = at(&channels, 1);
        let mut per_channel: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for _ in 0..6 {
            let e = stream.next().await;
            assert_eq!(e.event, "m", "{e:?}");
            let channel = channel_of(&e).to_owned();
            *position.get_mut(&channel).expect("its channel") += 1;
            assert_eq!(e.id.as_deref(), Some(compound(&position).as_str()), "{e:?}");
            per_channel
                .entry(if channel == *a { "a" } else { "b" })
                .or_default()
                .push(e.data);
        }
        assert_eq!(per_channel["a"], [data(a, 0), data(a, 2), data(a, 4)]);
        assert_eq!(per_channel["b"], [data(b, 1), data(b, 3), data(b, 5)]);
        stream.expect_silence(QUIET).await;
        // Each history on its own primary, stored with the channel's sequence.
        for (c, labels) in [(a, [0, 2, 4]), (b, [1, 3, 5])] {
            let stored = blocking(|| cluster.stored(c));
            assert_eq!(stored.len(), 4, "{c}: {stored:?}");
            for (i, (entry, label)) in stored[1..].iter().zip(labels).enumerate() {
                assert!(
                    entry.starts_with(&format!("id: {}\n", i + 2))
                        && entry.contains(&format!("data: {}\n", data(c, label))),
                    "{c}: {stored:?}"
                );
            }
        }
    })
    .await;
}

/// A client leaves with a compound id; events are published on both shards while it is away;
/// it comes back (with `Last-Event-ID`, then with `?lastEventId=`, its channels named in
/// another order) and gets exactly what it missed, once, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compound_id_resumes_across_shards_exactly_once() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("away", 2);
        let process = redisse_on(&cluster, &[]).await;
        warm(&process, &channels).await;
        let mut c = Reader::live("the client", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();
        assert_eq!(start, at(&channels, 1));
        let mut published = publish_each(&process, &channels, 0..4).await;
        c.read(4, PATIENCE).await;

        c.disconnect();
        // Away: three on one shard, two on the other.
        let away: Vec<String> = vec![
            channels[0].clone(),
            channels[1].clone(),
            channels[0].clone(),
            channels[0].clone(),
            channels[1].clone(),
        ];
        for (i, ch) in away.iter().enumerate() {
            let seq = process
                .publish_event(ch, Some("m"), &data(ch, 100 + i))
                .await;
            published.push((ch.clone(), seq));
        }
        c.reconnect(&process, false).await;
        c.read(5, PATIENCE).await;
        c.expect_silence().await;
        assert_eq!(c.missed, 0, "history holds everything");

        // The channels in the other order, the id in the query.
        c.disconnect();
        c.channels.reverse();
        published.extend(publish_each(&process, &channels, 10..12).await);
        c.reconnect(&process, true).await;
        c.read(2, PATIENCE).await;
        // And live again.
        published.extend(publish_each(&process, &channels, 20..23).await);
        c.read_exactly(3, PATIENCE, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0);
        assert_eq!(c.position, last_of(&published));
    })
    .await;
}

/// With `--history-size 3`, a client that was away while one channel got five events gets one
/// `missedevents`, then what history retained after its position (the other channel's event
/// included), then live events; a client whose position history still covers gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_history_gives_one_missedevents() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("short", 2);
        let (a, b) = (&channels[0], &channels[1]);
        let process = redisse_on(&cluster, &["--history-size", "3"]).await;
        warm(&process, &channels).await;
        let mut c = Reader::live("trimmed", &process, &channels, &at(&channels, 1)).await;
        c.disconnect();
        // a: 2..6 (its history keeps 4, 5, 6), b: 2.
        for i in 0..5 {
            process
                .publish_event(a, Some("m"), &data(a, format!("away{i}")))
                .await;
        }
        process.publish_event(b, Some("m"), &data(b, "away")).await;
        let mut covered = c.position.clone();
        covered.insert(a.clone(), 3);
        c.reconnect(&process, false).await;
        c.read(4, PATIENCE).await;
        assert_eq!(
            c.order.first().map(String::as_str),
            Some("missedevents"),
            "the stream starts with missedevents: {:?}",
            c.order
        );
        assert_eq!(c.got[a], [4, 5, 6], "what a's history retained");
        assert_eq!(c.got[b], [2]);
        assert_eq!(
            c.data[a],
            [data(a, "away2"), data(a, "away3"), data(a, "away4")]
        );
        let live = process.publish_event(b, Some("m"), &data(b, "live")).await;
        c.read(1, PATIENCE).await;
        assert_eq!(c.got[b], [2, live]);
        c.expect_silence().await;
        assert_eq!(c.missed, 1, "one missedevents");

        // A position that a's three retained events still follow: nothing was lost.
        let mut near = Reader::at("covered", &channels, covered);
        near.reconnect(&process, false).await;
        near.read(5, PATIENCE).await;
        assert_eq!(near.missed, 0);
        assert_eq!(near.got[a], [4, 5, 6]);
        assert_eq!(near.got[b], [2, live]);
        near.expect_silence().await;
    })
    .await;
}

/// A compound id of another set of channels (another hash), with the wrong number of
/// counters, a plain number or garbage: one `missedevents`, then the stream starts from the
/// channels' current positions (no history replayed) and goes on live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_compound_id_gets_one_missedevents() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("odd", 2);
        let a = &channels[0];
        let process = redisse_on(&cluster, &[]).await;
        warm(&process, &channels).await;
        publish_each(&process, &channels, 0..4).await;
        // Both channels are at 3 now.
        let hash = stream_hash(&channels);
        let other = stream_hash(&channels[..1]);
        let bad = [
            format!("{other}-1-1"),
            format!("{other}-1"),
            format!("{hash}-1"),
            format!("{hash}-1-1-1"),
            "1".to_owned(),
            "abc".to_owned(),
            format!("{hash}-x-1"),
        ];
        for (n, id) in bad.iter().enumerate() {
            for in_query in [false, true] {
                let url = if in_query {
                    format!("{}&lastEventId={id}", process.url(&query(&channels)))
                } else {
                    process.url(&query(&channels))
                };
                let headers: &[(&str, &str)] = if in_query {
                    &[]
                } else {
                    &[("last-event-id", id)]
                };
                let mut s = SseStream::open(&url, headers).await;
                assert_eq!(s.status, 200, "id {id:?}");
                let first = s.next().await;
                assert_eq!(first.event, "missedevents", "id {id:?}: {first:?}");
                assert_eq!(first.id, None);
                let seq = process
                    .publish_event(a, Some("m"), &data(a, format!("live{n}{in_query}")))
                    .await;
                // The hint of the current positions, if any, then the live event.
                let mut position = at(&channels, 3);
                *position.get_mut(a).expect("a") = seq - 1;
                let mut next = s.next().await;
                if next.event == "lastEventId" {
                    let hint = parse_compound(&channels, next.id.as_deref().expect("an id"));
                    assert_eq!(
                        hint, position,
                        "id {id:?}: the hint of the current positions"
                    );
                    next = s.next().await;
                }
                *position.get_mut(a).expect("a") = seq;
                assert_eq!(
                    (next.event.as_str(), next.data.as_str()),
                    ("m", data(a, format!("live{n}{in_query}")).as_str()),
                    "id {id:?}: history is not replayed"
                );
                assert_eq!(next.id.as_deref(), Some(compound(&position).as_str()));
                s.expect_silence(QUIET).await;
            }
        }
    })
    .await;
}

/// The primary of one channel's slot is killed (SIGKILL) while events are published on it and
/// on a channel of another shard; its replica (synced) is promoted. The stream stays open
/// (heartbeats) and gets every event once, in each channel's order, with the sequences the
/// publishers were answered; a client resuming from before the failover gets the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_no_event_that_history_holds() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("fo", 2);
        let slot = cluster.slot_of_channel(&channels[0]);
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &channels).await;
        let mut c = Reader::live(
            "through the failover",
            &process,
            &channels,
            &at(&channels, 1),
        )
        .await;
        let start = c.position.clone();
        let mut published = Vec::new();
        for i in 0..10 {
            let ch = &channels[i % 2];
            let seq = publish_through(&process, ch, &data(ch, i)).await;
            published.push((ch.clone(), seq));
        }
        c.read(10, PATIENCE).await;
        let early = c.position.clone();
        let heartbeats = c.stream().comments.len();
        let started = Instant::now();
        let (cluster, during) =
            publish_through_a_failover(cluster, slot, &process, &channels, 10..40).await;
        let took = started.elapsed();
        published.extend(during);
        assert_answered(&published, &channels, 2..22);
        c.read_exactly(30, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(
            c.missed, 0,
            "the replica had every write (failover took {took:?})"
        );
        assert!(
            c.stream().comments.len() > heartbeats,
            "heartbeats kept the stream open through the failover"
        );
        assert_every_event_once(&c, &channels, 40);

        // From before the failover: the rest, from the promoted replica's history.
        resume_from(&process, &channels, &early, &published, 30).await;
        drop(cluster);
    })
    .await;
}

/// A slot moved live to another primary (as a resharding moves it, keys one by one) under a
/// stream and publishers on it: every event arrives once, in order, without `missedevents`;
/// afterwards the new owner holds the channel's history and this process's subscription.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_another_primary_loses_nothing() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        let three = cluster.channels_on_distinct_primaries("mv", 3);
        let channels = vec![three[0].clone(), three[1].clone()];
        let moved = &three[0];
        let slot = cluster.slot_of_channel(moved);
        let to = cluster.primary_of_channel(&three[2]);
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &channels).await;
        let mut c = Reader::live("through the move", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();
        let publishing = publish_in_turn(&process, &channels, 0..30, Duration::from_millis(50));
        sleep(Duration::from_millis(200)).await;
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || {
            mover.move_slot(slot, to, Duration::from_millis(100));
        })
        .await
        .expect("the slot moved");
        let published = publishing.await.expect("the publisher");
        assert_answered(&published, &channels, 2..17);
        c.read_exactly(30, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(
            c.missed, 0,
            "nothing was lost: the keys moved with the slot"
        );
        assert_every_event_once(&c, &channels, 30);
        assert_eq!(cluster.primary_of_channel(moved), to);
        let log = process.log();
        assert!(
            log.contains("its slot moved"),
            "the subscriber saw the slot move: {log}"
        );
        assert_eq!(
            cluster.stored(moved).len(),
            16,
            "the history moved with the slot"
        );
        let (_, subscribers): (String, i64) = redis::cmd("PUBSUB")
            .arg("SHARDNUMSUB")
            .arg(crate::support::cluster::history_key(moved))
            .query(&mut cluster.node(to).con())
            .expect("PUBSUB SHARDNUMSUB");
        assert_eq!(
            subscribers, 1,
            "the process subscribed at the slot's new owner"
        );
        // And live on the new owner.
        let seq = publish_through(&process, moved, &data(moved, "after")).await;
        assert_eq!(seq, 17);
        c.read(1, PATIENCE).await;
        assert_eq!(c.got[moved].last(), Some(&17));
    })
    .await;
}

/// A channel that had no event yet when its stream opened: its pub/sub connection is cut while
/// the process is frozen, three events are published on it meanwhile (through another
/// process), and once the process goes on it refills them from history: the stream gets them
/// without reconnecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_events_is_refilled_after_its_connection_is_cut() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("fresh", 2);
        let (fresh, other) = (&channels[0], &channels[1]);
        let process = redisse_on(&cluster, &[]).await;
        let publisher = redisse_on(&cluster, &[]).await;
        process
            .publish_event(other, Some("m"), &data(other, "warm"))
            .await;
        let now: Position = [(fresh.clone(), 0), (other.clone(), 1)].into();
        let mut c = Reader::live("fresh channel", &process, &channels, &now).await;
        assert_eq!(c.position[fresh], 0, "no event of {fresh} yet");
        let start = c.position.clone();
        cut_while_frozen(&cluster, &process, &publisher, fresh, &mut c, &start).await;
    })
    .await;
}

/// With `process` frozen (SIGSTOP), its pub/sub connection to `channel`'s primary is cut and
/// three events are published on `channel` through `publisher`; once `process` goes on, `c`
/// (at `start`) gets exactly them, and no `missedevents`.
async fn cut_while_frozen(
    cluster: &Cluster,
    process: &Redisse,
    publisher: &Redisse,
    channel: &String,
    c: &mut Reader,
    start: &Position,
) {
    process.signal("-STOP");
    let killed = cluster.kill_clients(cluster.primary_of_channel(channel), "pubsub");
    let published = publish_each(publisher, std::slice::from_ref(channel), 0..3).await;
    process.signal("-CONT");
    assert!(
        killed >= 1,
        "the frozen process's pub/sub connection was cut"
    );
    c.read_exactly(3, PATIENCE, &expected(&published, start))
        .await;
    assert_eq!(c.missed, 0);
}

/// The replica of one channel's primary is cut off (frozen, its link dropped), the primary
/// acknowledges three more events on that channel, then dies; the replica is promoted without
/// them. The stream gets one `missedevents`, then what the new primary holds; the next event of
/// that channel has a sequence above the lost ones; the other shard's channel flows on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_promoted_replica_never_got_are_missedevents() {
    within_limit(async {
        let mut cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("lost", 2);
        let (a, b) = (channels[0].clone(), channels[1].clone());
        let slot = cluster.slot_of_channel(&a);
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        warm(&process, &channels).await;
        let mut c = Reader::live("the client", &process, &channels, &at(&channels, 1)).await;
        for i in 0..5 {
            process.publish_event(&a, Some("m"), &data(&a, i)).await;
        }
        c.read(5, PATIENCE).await;
        blocking(|| cluster.wait_synced(slot));
        let replica = blocking(|| cluster.cut_replica(slot));
        let mut acknowledged_last = 0;
        for i in 5..8 {
            acknowledged_last = process.publish_event(&a, Some("m"), &data(&a, i)).await;
        }
        assert_eq!(acknowledged_last, 9, "warm, then 0..8 on {a}");
        c.read(3, PATIENCE).await;
        let old = blocking(|| cluster.kill_primary(slot));
        cluster.unfreeze(replica);
        let cluster = tokio::task::spawn_blocking(move || {
            let new = cluster.wait_failover(slot, old);
            assert_eq!(new, replica, "the cut replica is the one promoted");
            cluster
        })
        .await
        .expect("failover");
        let held = cluster.stored(&a);
        let held: Vec<String> = held
            .iter()
            .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect();
        let want: Vec<String> = std::iter::once(data(&a, "warm"))
            .chain((0..5).map(|i| data(&a, i)))
            .collect();
        assert_eq!(held, want, "the promoted replica lacks the last three");

        // missedevents, then the retained events of a (as after any loss of data).
        let first = match c.stream().next_within(FAILOVER_WAIT).await {
            Next::Event(e) => e,
            other => panic!("no missedevents: {other:?}"),
        };
        assert_eq!(first.event, "missedevents", "{first:?}");
        c.record(first);
        let before = c.data.get(&a).map_or(0, Vec::len);
        c.read(want.len(), PATIENCE).await;
        assert_eq!(c.data[&a][before..], want[..], "what the new primary holds");
        let after = publish_through(&process, &a, &data(&a, "after")).await;
        assert!(
            after > acknowledged_last,
            "{after} after {acknowledged_last}"
        );
        let other = publish_through(&process, &b, &data(&b, "other")).await;
        assert_eq!(other, 2, "the other shard lost nothing");
        c.read(2, PATIENCE).await;
        assert_eq!(c.got[&a].last(), Some(&after));
        assert_eq!(c.got[&b], [other]);
        assert_eq!(c.position[&a], after);
        c.expect_silence().await;
        assert_eq!(c.missed, 1, "one missedevents");
    })
    .await;
}

/// One channel's primary loses its data without any connection dropping (`FLUSHALL` on it):
/// the channel's sequence starts again from 1. The next event of that channel is noticed to
/// go back, and handled as a loss: the stream gets one `missedevents`, then what the primary
/// retained (that event), and the channel's sequence is raised, so that the next event's passes
/// every one the stream had; the other shard's channel flows on.
/// (Before, the event came with sequence 1, below the stream's position, and was dropped as
/// already seen: lost without a word.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_flushed_under_a_live_connection_is_a_loss_told_at_the_next_event() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("flushed", 2);
        let (a, b) = (channels[0].clone(), channels[1].clone());
        let process = redisse_on(&cluster, &[]).await;
        warm(&process, &channels).await;
        let mut c = Reader::live("the client", &process, &channels, &at(&channels, 1)).await;
        let mut last = 0;
        for i in 0..5 {
            last = process.publish_event(&a, Some("m"), &data(&a, i)).await;
        }
        c.read(5, PATIENCE).await;
        assert_eq!(c.position[&a], last);
        let primary = cluster.primary_of_channel(&a);
        let _: () = redis::cmd("FLUSHALL")
            .query(&mut cluster.node(primary).con())
            .expect("FLUSHALL");

        let after = publish_through(&process, &a, &data(&a, "after")).await;
        assert_eq!(after, 1, "the flushed sequence starts again");
        let first = match c.stream().next_within(FAILOVER_WAIT).await {
            Next::Event(e) => e,
            other => panic!("no missedevents after the flush: {other:?}"),
        };
        assert_eq!(first.event, "missedevents", "{first:?}");
        c.record(first);
        c.read(1, PATIENCE).await;
        assert_eq!(c.data[&a].last(), Some(&data(&a, "after")));
        let again = publish_through(&process, &a, &data(&a, "again")).await;
        assert!(again > last, "the sequence is raised past {last}: {again}");
        let other = publish_through(&process, &b, &data(&b, "other")).await;
        c.read(2, PATIENCE).await;
        assert_eq!(c.got[&a].last(), Some(&again));
        assert_eq!(c.position[&a], again);
        assert_eq!(c.got[&b].last(), Some(&other));
        c.expect_silence().await;
        assert_eq!(c.missed, 1, "one missedevents");
    })
    .await;
}

/// Three processes on one cluster; nine clients spread over them on channels of all three
/// shards; publishers publish through all three at once. Every client gets each event of its
/// channels once, in order; clients that leave come back with their compound id to another
/// process and get what they missed from history, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_serve_clients_that_resume_on_any_of_them() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let shards = cluster.channels_on_distinct_primaries("t", 3);
        let mut all = shards.clone();
        all.extend(cluster.channels_beside(&shards[0], "u", 1));
        let mut processes = Vec::new();
        for _ in 0..3 {
            processes.push(redisse_on(&cluster, &[]).await);
        }
        warm(&processes[0], &all).await;
        // Client k: two or three of the four channels.
        let subsets: Vec<Vec<String>> = (0..9)
            .map(|k| {
                let mut s = vec![all[k % 4].clone(), all[(k + 1) % 4].clone()];
                if k % 2 == 1 {
                    s.push(all[(k + 2) % 4].clone());
                }
                s
            })
            .collect();
        let mut clients = Vec::new();
        for (k, channels) in subsets.iter().enumerate() {
            let name = format!("client {k} on process {}", k % 3);
            clients.push(Reader::live(&name, &processes[k % 3], channels, &at(channels, 1)).await);
        }
        let starts: Vec<Position> = clients.iter().map(|c| c.position.clone()).collect();

        let round = |from: usize| {
            let processes = &processes;
            let all = &all;
            async move {
                let publishers = (0..3)
                    .map(|p| publish_each(&processes[p], all, from + p * 100..from + p * 100 + 12));
                join_all(publishers).await.concat()
            }
        };
        let mut published = round(0).await;
        let last = last_of(&published);
        for c in &mut clients {
            let mine: Position = last
                .iter()
                .filter(|(ch, _)| c.channels.contains(ch))
                .map(|(ch, s)| (ch.clone(), *s))
                .collect();
            c.read_through(&mine, PATIENCE).await;
        }
        // Clients 0, 4 and 8 leave; two rounds are published; they come back elsewhere.
        for k in [0, 4, 8] {
            clients[k].disconnect();
        }
        published.extend(round(1000).await);
        for (k, to) in [(0, 1), (4, 2), (8, 0)] {
            clients[k].reconnect(&processes[to], k == 4).await;
        }
        published.extend(round(2000).await);
        let last = last_of(&published);
        for (c, start) in clients.iter_mut().zip(&starts) {
            let mine: Position = last
                .iter()
                .filter(|(ch, _)| c.channels.contains(ch))
                .map(|(ch, s)| (ch.clone(), *s))
                .collect();
            c.read_through(&mine, PATIENCE).await;
            c.check(&expected(&published, start));
            assert_eq!(c.missed, 0, "{}: history holds everything", c.name);
        }
        join_all(clients.iter_mut().map(Reader::expect_silence)).await;
        // Each channel's sequence went 2, 3, ... with no gap and no repeat across processes.
        for ch in &all {
            let mut seqs: Vec<u64> = published
                .iter()
                .filter(|(c, _)| c == ch)
                .map(|(_, s)| *s)
                .collect();
            seqs.sort_unstable();
            let n = seqs.len() as u64;
            assert_eq!(seqs, (2..2 + n).collect::<Vec<u64>>(), "{ch}");
        }
    })
    .await;
}

/// The old primary of a failover, started again, rejoins as a replica; the stream opened
/// before it, and publishes after it, go on through the new primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_rejoins_as_a_replica_and_streams_go_on() {
    within_limit(async {
        let mut cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("back", 2);
        let slot = cluster.slot_of_channel(&channels[0]);
        let process = redisse_on(&cluster, &[]).await;
        warm(&process, &channels).await;
        let mut c = Reader::live("the client", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();
        let mut published = publish_each(&process, &channels, 0..4).await;
        c.read(4, PATIENCE).await;
        blocking(|| cluster.wait_synced(slot));
        let (cluster, old) = tokio::task::spawn_blocking(move || {
            let (old, _) = cluster.kill_primary_and_wait_failover(slot);
            cluster.restart(old);
            (cluster, old)
        })
        .await
        .expect("failover and restart");
        assert_ne!(cluster.primary_of(slot), old, "it came back as a replica");
        for i in 4..8 {
            let ch = &channels[i % 2];
            published.push((
                ch.clone(),
                publish_through(&process, ch, &data(ch, i)).await,
            ));
        }
        c.read_exactly(4, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0);
        blocking(|| cluster.wait_synced(slot));
    })
    .await;
}

/// The harness itself, without redisse: a key written and synced survives its primary's
/// SIGKILL on the promoted replica, a key written after the replica was cut off does not, and
/// the killed node comes back as a replica of the new primary.
#[test]
fn the_harness_fails_a_slot_over_and_the_cut_replica_lacks_the_last_write() {
    let mut cluster = Cluster::start();
    let key = crate::support::cluster::history_key("harness");
    let slot = cluster.slot(&key);
    assert_eq!(slot, cluster.slot_of_channel("harness"));
    let write = |cluster: &Cluster, member: &str| {
        let primary = cluster.primary_of(slot);
        let _: i64 = redis::cmd("ZADD")
            .arg(&key)
            .arg(1)
            .arg(member)
            .query(&mut cluster.node(primary).con())
            .expect("ZADD");
    };
    write(&cluster, "kept");
    cluster.wait_synced(slot);
    let replica = cluster.cut_replica(slot);
    write(&cluster, "lost");
    let old = cluster.kill_primary(slot);
    cluster.unfreeze(replica);
    let new = cluster.wait_failover(slot, old);
    assert_eq!(new, replica);
    assert_eq!(cluster.primary_of(slot), new);
    let held: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut cluster.node(new).con())
        .expect("ZRANGE");
    assert_eq!(held, ["kept"]);
    cluster.restart(old);
    assert_eq!(
        cluster.replica_of_slot(slot),
        old,
        "back as the new primary's replica"
    );
    write(&cluster, "again");
    cluster.wait_synced(slot);
    // A replica serves reads of its primary's slots once asked READONLY.
    let mut con = cluster.node(old).con();
    let _: () = redis::cmd("READONLY").query(&mut con).expect("READONLY");
    let copied: Vec<String> = redis::cmd("ZRANGE")
        .arg(&key)
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .expect("ZRANGE on the replica");
    assert_eq!(
        copied,
        ["again", "kept"],
        "the rejoined node copied the new primary"
    );
    // Names on distinct primaries, and names beside one.
    let names = cluster.channels_on_distinct_primaries("h", 3);
    let mut primaries: Vec<u16> = names
        .iter()
        .map(|c| cluster.primary_of_channel(c))
        .collect();
    primaries.sort_unstable();
    primaries.dedup();
    assert_eq!(primaries.len(), 3, "{names:?}");
    let first = cluster.primary_of_channel(&names[0]);
    let beside = cluster.channels_beside(&names[0], "i", 2);
    assert!(
        beside
            .iter()
            .all(|c| cluster.primary_of_channel(c) == first),
        "{beside:?}"
    );
}

/// The id rule of this module's helpers, against values computed apart (python): FNV-1a of
/// `"a\nb\n"` is 0x7a256dee, whatever order the query names the channels in.
#[test]
fn compound_ids_hash_the_sorted_names() {
    assert_eq!(stream_hash(&["b", "a"]), "7a256dee");
    assert_eq!(stream_hash(&["a", "b", "a"]), "7a256dee");
    let channels = vec!["b".to_owned(), "a".to_owned()];
    let position: Position = [("a".to_owned(), 3), ("b".to_owned(), 10)].into();
    assert_eq!(compound(&position), "7a256dee-3-10");
    assert_eq!(parse_compound(&channels, "7a256dee-3-10"), position);
}

/// The cluster over TLS (`tls-cluster yes`, every node on a TLS port) with a private CA
/// (`--redis-tls-ca`): the binary reaches every node over TLS, for its scripts and for its
/// sharded subscriptions; channels of two shards arrive on one stream; the library's publisher
/// and `redisse publish` publish with the CA, and without it the binary does not start and
/// nothing is published (the nodes' certificates are not trusted); a primary killed under the stream and its TLS replica
/// promoted loses nothing, and a client resuming from before gets the rest from history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_private_ca_shards_and_a_failover_lose_nothing() {
    use redisse::{Event, Publisher};
    within_limit(async {
        let pki = crate::redis_tls::Pki::new();
        let files = pki.files();
        let cluster = blocking(move || Cluster::start_tls(files));
        let seeds = cluster.seeds();
        let seed_list: Vec<String> = seeds.split(',').map(str::to_owned).collect();
        assert!(
            seed_list.iter().all(|s| s.starts_with("rediss://")),
            "{seeds}"
        );
        let channels = cluster.channels_on_distinct_primaries("tls", 2);
        let slot = cluster.slot_of_channel(&channels[0]);
        let ca = pki.ca();
        // Without the CA the binary does not start, and says why.
        let err = crate::startup::fails_to_start(&["--redis-cluster", &seeds]).await;
        assert!(err.contains("invalid peer certificate"), "{err}");
        let options = ["--redis-tls-ca", ca.as_str(), "--heartbeat", "1"];
        let process = Arc::new(redisse_on(&cluster, &options).await);
        warm(&process, &channels).await;
        let mut c = Reader::live("over TLS", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();
        let mut published = Vec::new();
        for i in 0..10 {
            let ch = &channels[i % 2];
            let seq = publish_through(&process, ch, &data(ch, i)).await;
            published.push((ch.clone(), seq));
        }

        // The library's publisher and the command line, trusting the CA.
        let publisher =
            Publisher::redis_cluster_with_tls_ca(&seed_list, 100, Some(&pki.path("ca.pem")))
                .expect("a TLS cluster publisher");
        let ch = &channels[0];
        let seq = publisher
            .publish(ch, Event::new("m", data(ch, 10)))
            .await
            .expect("published over TLS");
        published.push((ch.clone(), seq));
        let ch = &channels[1];
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(["publish", "--redis-cluster", &seeds, "--redis-tls-ca", &ca])
            .args(["-t", "m", ch, &data(ch, 11)])
            .env_remove("REDISSE_REDIS")
            .env_remove("REDISSE_SERVER")
            .env_remove("REDISSE_REDIS_TLS_CA")
            .output()
            .expect("run redisse publish");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "redisse publish over TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        published.push((ch.clone(), stdout.trim().parse().expect("an id")));
        // Without the CA, the system's roots do not know the test's CA.
        let untrusting = Publisher::redis_cluster(&seed_list, 100).expect("a publisher");
        let refused = untrusting
            .publish(&channels[0], Event::new("m", "never"))
            .await;
        let refused = refused.expect_err("published without the CA").to_string();
        assert!(refused.contains("invalid peer certificate"), "{refused}");
        c.read(12, PATIENCE).await;
        let early = c.position.clone();

        // A primary killed under the stream, with publishes going on.
        let (cluster, during) =
            publish_through_a_failover(cluster, slot, &process, &channels, 12..30).await;
        published.extend(during);
        assert_answered(&published, &channels, 2..17);
        c.read_exactly(18, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0, "the TLS replica had every write");
        assert_every_event_once(&c, &channels, 30);

        // From before the failover: the rest, read from history over TLS.
        resume_from(&process, &channels, &early, &published, 18).await;
        drop(cluster);
    })
    .await;
}

/// One shard failing over does not hold the others: once the subscriber has seen the killed
/// primary's connection go (`/health` says 200 `degraded` while it recovers), an event published on a
/// channel of another shard reaches the stream at once, while that shard is still failing
/// over (the subscriber used to hold every channel's live events until the failed shard was
/// back); then the failed shard's events arrive too, each once, in order, none missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_failing_over_does_not_hold_the_other_shards_events() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("beside", 2);
        let Failing {
            process,
            mut c,
            start,
            mut published,
            failover,
        } = fail_over_under_a_stream(cluster, &channels, &[]).await;
        let other = &channels[1];
        let seq = publish_through(&process, other, &data(other, 5)).await;
        published.push((other.clone(), seq));
        c.read(1, PATIENCE).await;
        let arrived = Instant::now();
        let health = process.readiness().await;
        let (cluster, (old, new), failed_over) = failover.await.expect("failover");
        assert_ne!(old, new);
        assert_eq!(
            health, "degraded",
            "the other shard's event came while the subscriber was still recovering"
        );
        assert!(
            arrived < failed_over,
            "the other shard's event came {:?} after the failover was over",
            arrived - failed_over
        );

        // The failed shard's channel, after its failover: everything once, in order.
        after_the_failover(&process, &mut c, &channels, published, &start, 5).await;
        drop(cluster);
    })
    .await;
}

/// What a test of a shard's failover under a stream works with ([`fail_over_under_a_stream`]).
struct Failing {
    process: Arc<Redisse>,
    /// On both channels, at their warm-up events, through events 0..4.
    c: Reader,
    start: Position,
    published: Vec<(String, u64)>,
    /// The failover: the cluster, the old and new primary's ports, and when it was over.
    failover: tokio::task::JoinHandle<(Cluster, (u16, u16), Instant)>,
}

/// A process on `cluster`, a warm-up event on `channels` (two, on distinct primaries) and on
/// `also`, a stream on `channels` that gets events 0..4 (in turn on each), then the primary of
/// the first channel killed (SIGKILL) and its replica promoted, in a task of its own; returns
/// once the process saw the loss (`/health` 200 `degraded`: the other shards serve).
async fn fail_over_under_a_stream(
    cluster: Cluster,
    channels: &[String],
    also: &[String],
) -> Failing {
    let slot = cluster.slot_of_channel(&channels[0]);
    let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
    warm(&process, &[channels, also].concat()).await;
    let mut c = Reader::live("beside a failover", &process, channels, &at(channels, 1)).await;
    let start = c.position.clone();
    let mut published = Vec::new();
    for i in 0..4 {
        let ch = &channels[i % 2];
        let seq = publish_through(&process, ch, &data(ch, i)).await;
        published.push((ch.clone(), seq));
    }
    c.read(4, PATIENCE).await;
    blocking(|| cluster.wait_synced(slot));
    let failover = tokio::task::spawn_blocking(move || {
        let mut cluster = cluster;
        let ports = cluster.kill_primary_and_wait_failover(slot);
        (cluster, ports, Instant::now())
    });
    process.readiness_becomes("degraded").await;
    Failing {
        process,
        c,
        start,
        published,
        failover,
    }
}

/// After [`fail_over_under_a_stream`]'s failover, events 4 and 6..10 on `channels` in turn:
/// `c` gets the `n` events it has not had yet, and has then every event 0..10 once, in order,
/// none missed (the replica had every write).
async fn after_the_failover(
    process: &Redisse,
    c: &mut Reader,
    channels: &[String],
    mut published: Vec<(String, u64)>,
    start: &Position,
    n: usize,
) {
    for i in [4, 6, 7, 8, 9] {
        let ch = &channels[i % 2];
        let seq = publish_through(process, ch, &data(ch, i)).await;
        published.push((ch.clone(), seq));
    }
    c.read_exactly(n, FAILOVER_WAIT, &expected(&published, start))
        .await;
    assert_eq!(c.missed, 0, "the replica had every write");
    assert_every_event_once(c, channels, 10);
}

/// Streams opened while one shard fails over, on channels of another shard, start at once:
/// one on a channel already subscribed, one on a channel nobody listened to (its subscription
/// is made during the recovery), and one coming back with a position (its history read from
/// the healthy shard). Each gets its channel's next event before the failover is over, while
/// the subscriber is still recovering (`/health` 200 `degraded`). (A stream's setup used to wait for a
/// barrier behind every subscription, which the failed shard held until it was back: the
/// failover's whole length.) Then the stream on both shards gets everything, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_during_another_shards_failover_start_at_once() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("opening", 2);
        let quiet = cluster.channels_beside(&channels[1], "quiet", 1).remove(0);
        let Failing {
            process,
            mut c,
            start,
            mut published,
            failover,
        } = fail_over_under_a_stream(cluster, &channels, std::slice::from_ref(&quiet)).await;
        let other = &channels[1];
        let one = std::slice::from_ref(other);
        let mut subscribed = Reader::live("subscribed", &process, one, &at(one, 3)).await;
        let alone = std::slice::from_ref(&quiet);
        let mut new = Reader::live("new", &process, alone, &at(alone, 1)).await;
        let mut back = Reader::at("back", one, at(one, 1));
        back.reconnect(&process, false).await;
        back.read(2, PATIENCE).await;
        assert_eq!(
            back.data[other],
            [data(other, 1), data(other, 3)],
            "back: its history"
        );
        let seq = publish_through(&process, other, &data(other, 5)).await;
        published.push((other.clone(), seq));
        assert_eq!(publish_through(&process, &quiet, &data(&quiet, 5)).await, 2);
        for r in [&mut subscribed, &mut new, &mut back] {
            r.read(1, PATIENCE).await;
        }
        let started = Instant::now();
        let health = process.readiness().await;
        let (cluster, (old, new_primary), failed_over) = failover.await.expect("failover");
        assert_ne!(old, new_primary);
        assert_eq!(
            health, "degraded",
            "the streams started while the subscriber was still recovering"
        );
        assert!(
            started < failed_over,
            "the streams on the healthy shard started {:?} after the failover was over",
            started - failed_over
        );
        assert_eq!(subscribed.data[other], [data(other, 5)]);
        assert_eq!(new.data[&quiet], [data(&quiet, 5)]);
        assert_eq!(
            back.data[other],
            [data(other, 1), data(other, 3), data(other, 5)]
        );

        // The stream on both shards: everything once, in order, the failed shard's after its
        // failover.
        after_the_failover(&process, &mut c, &channels, published, &start, 6).await;
        drop(cluster);
    })
    .await;
}

/// A primary that stops answering (SIGSTOP, as a host gone: connections to it are accepted and
/// never answered) does not slow the other shards' new streams while the subscriber recovers
/// it (the cluster told not to fail it over within the test): a stream on a new channel of a
/// shard already connected, and one on a shard with no connection yet, each start within a
/// second. (Each recovery attempt used to wait the whole connect timeout, 2 s, on the stopped
/// node, for the slot map and again for its channels, before it took the new streams'
/// subscriptions.) Once the node answers again, the stream on it gets everything, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stops_answering_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        cluster.set_node_timeout(Duration::from_secs(120));
        let three = cluster.channels_on_distinct_primaries("stopped", 3);
        let (hung, live, far) = (&three[0], &three[1], &three[2]);
        let beside = cluster.channels_beside(live, "beside", 1).remove(0);
        let hung_primary = cluster.primary_of_channel(hung);
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        let channels = vec![hung.clone(), live.clone()];
        warm(&process, &[three.clone(), vec![beside.clone()]].concat()).await;
        let mut c = Reader::live("on both", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();

        cluster.freeze(hung_primary);
        // The watchdog finds it (a PING every 5 s, unanswered for 3 s).
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        // A recovery attempt is under way, on the stopped node.
        sleep(Duration::from_millis(500)).await;
        for ch in [&beside, far] {
            let one = std::slice::from_ref(ch);
            let opened = Instant::now();
            let mut r = Reader::live(ch, &process, one, &at(one, 1)).await;
            let took = opened.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "a stream on {ch} took {took:?} to start while another shard's node is stopped"
            );
            assert_eq!(publish_through(&process, ch, &data(ch, 1)).await, 2);
            r.read(1, PATIENCE).await;
            assert_eq!(r.data[ch.as_str()], [data(ch, 1)]);
        }
        let seq = publish_through(&process, live, &data(live, 1)).await;
        c.read(1, PATIENCE).await;
        assert_eq!(
            process.readiness().await,
            "degraded",
            "still recovering the stopped node"
        );

        cluster.unfreeze(hung_primary);
        process.readiness_becomes("ok").await;
        let mut published = vec![(live.clone(), seq)];
        for i in [0, 2] {
            let s = publish_through(&process, hung, &data(hung, i)).await;
            published.push((hung.clone(), s));
        }
        c.read_exactly(2, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0);
        drop(cluster);
    })
    .await;
}

/// A primary stops answering (SIGSTOP) and, before the watchdog notices, another shard's
/// connection is cut: the recovery that follows asks the slot map on the connections up
/// first, the stopped node's among them, and PINGs every connection, each waiting its whole
/// request timeout (3 s) on the stopped node. A stream opened meanwhile on a third shard's new
/// channel waits for that attempt: the same stall as
/// `a_primary_that_stops_answering_does_not_slow_the_other_shards_new_streams`, when the
/// stopped node is still taken for up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_stops_answering_unnoticed_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        cluster.set_node_timeout(Duration::from_secs(120));
        let three = cluster.channels_on_distinct_primaries("unnoticed", 3);
        let (hung, cut, far) = (&three[0], &three[1], &three[2]);
        let hung_primary = cluster.primary_of_channel(hung);
        let cut_primary = cluster.primary_of_channel(cut);
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        let channels = vec![hung.clone(), cut.clone()];
        warm(&process, &three).await;
        let _c = Reader::live("on both", &process, &channels, &at(&channels, 1)).await;

        cluster.freeze(hung_primary);
        let killed = cluster.kill_clients(cut_primary, "pubsub");
        assert!(killed >= 1, "the connection to {cut_primary} was cut");
        sleep(Duration::from_millis(200)).await;
        let one = std::slice::from_ref(far);
        let opened = Instant::now();
        let mut r = Reader::live(far, &process, one, &at(one, 1)).await;
        let took = opened.elapsed();
        cluster.unfreeze(hung_primary);
        assert!(
            took < Duration::from_secs(1),
            "a stream on {far} took {took:?} to start while another shard's node is stopped"
        );
        assert_eq!(publish_through(&process, far, &data(far, 1)).await, 2);
        r.read(1, PATIENCE).await;
    })
    .await;
}

/// Nodes whose certificate is valid for the seeds' host name (`localhost`) but not for the
/// address the slot map names them by (`127.0.0.1`, Redis's default): every connection made
/// from the slot map (the subscriber's, and the cluster client's) would fail its certificate
/// check, so the startup check makes a TLS handshake with each primary at that address, and
/// the start is refused with the reason. (It used to check the seed alone, by the seed URL's
/// host: the server started, `/health` turned 503 at the first use, and no stream or publish
/// ever worked.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_a_certificate_not_valid_for_the_slot_maps_hosts_stops_the_start() {
    within_limit(async {
        let pki = crate::redis_tls::Pki::for_names(&["localhost"]);
        let files = pki.files();
        let cluster = blocking(move || Cluster::start_tls(files));
        let seeds = cluster.seeds().replace("127.0.0.1", "localhost");
        let ca = pki.ca();
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(crate::support::binary::LOOPBACK)
            .args(["--redis-cluster", &seeds, "--redis-tls-ca", &ca])
            .env("NO_COLOR", "1")
            .env_remove("REDISSE_REDIS")
            .env_remove("REDISSE_REDIS_CONNECT_TIMEOUT")
            .env_remove("REDISSE_REDIS_TLS_CA")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run redisse");
        let exited = tokio::time::timeout(Duration::from_secs(15), child.wait()).await;
        let _ = child.start_kill();
        let out = child.wait_with_output().await.expect("its output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        match exited {
            Ok(status) => {
                assert!(!status.expect("wait").success(), "{stderr}");
                assert!(
                    stderr.contains("as the slot map names it")
                        && stderr.contains("invalid peer certificate"),
                    "{stderr}"
                );
            }
            Err(_) => panic!(
                "redisse started (still running after 15 s) with nodes whose certificates are \
                 not valid for the slot map's addresses, which it can never reach; stderr:\n{}",
                stderr.lines().take(6).collect::<Vec<_>>().join("\n")
            ),
        }
        drop(cluster);
    })
    .await;
}

/// A slot moved under a stream whose other channel is on the same primary, in another slot:
/// the moved channel alone is subscribed again where its slot went (the connection to the old
/// owner stays, for the other channel: the same pub/sub client there before and after, where
/// the whole connection used to be dropped and made again), `/health` stays `ok`, and every
/// event of both channels arrives once, in order, none missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_moves_its_channels_alone() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        let three = cluster.channels_on_distinct_primaries("alone", 3);
        let moved = three[0].clone();
        let beside = cluster.channels_beside(&moved, "beside", 1).remove(0);
        let slot = cluster.slot_of_channel(&moved);
        assert_ne!(slot, cluster.slot_of_channel(&beside), "another slot");
        let from = cluster.primary_of(slot);
        let to = cluster.primary_of_channel(&three[1]);
        let channels = vec![moved.clone(), beside.clone()];
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &channels).await;
        let mut c = Reader::live("moved alone", &process, &channels, &at(&channels, 1)).await;
        let start = c.position.clone();
        let before = cluster.pubsub_client_ids(from);
        assert_eq!(
            before.len(),
            1,
            "one subscriber connection to {from}: {before:?}"
        );

        let publishing = publish_in_turn(&process, &channels, 0..20, Duration::from_millis(50));
        sleep(Duration::from_millis(200)).await;
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || mover.move_slot(slot, to, Duration::from_millis(100)))
            .await
            .expect("the slot moved");
        let published = publishing.await.expect("the publisher");
        assert_answered(&published, &channels, 2..12);
        c.read_exactly(20, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0);
        assert_every_event_once(&c, &channels, 20);
        let log = process.log();
        assert!(log.contains("its slot moved"), "the move was seen: {log}");
        assert_eq!(
            cluster.pubsub_client_ids(from),
            before,
            "the connection to the old owner stayed, for {beside}"
        );
        assert!(
            !log.contains("redis cluster subscriber connection lost"),
            "no connection was dropped: {log}"
        );
        assert_eq!(process.readiness().await, "ok");
        // Both live: the moved channel at its new owner, the other where it was.
        for ch in &channels {
            let seq = publish_through(&process, ch, &data(ch, "after")).await;
            assert_eq!(seq, 12);
        }
        c.read(2, PATIENCE).await;
        assert_eq!(c.got[&moved].last(), Some(&12));
        assert_eq!(c.got[&beside].last(), Some(&12));
    })
    .await;
}

/// A slot moved while nobody on this process listened to its channels: the subscriber's slot
/// map still names the old owner, so a stream opened on such a channel has its `SSUBSCRIBE`
/// sent there, and the node answers `MOVED`. That channel alone is subscribed again where the
/// slot went; the connection to the old owner goes on serving its other channels, nothing is
/// counted as a reconnection, and both streams get their events. (`MOVED` used to end the
/// connection like any error: every channel of the node held and refilled, a reconnection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_sent_to_a_slots_old_owner_follows_the_slot_alone() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        let three = cluster.channels_on_distinct_primaries("stale", 3);
        let kept = three[0].clone();
        let fresh = cluster.channels_beside(&kept, "fresh", 1).remove(0);
        let slot = cluster.slot_of_channel(&fresh);
        assert_ne!(slot, cluster.slot_of_channel(&kept), "another slot");
        let from = cluster.primary_of(slot);
        let to = cluster.primary_of_channel(&three[1]);
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        let both = [kept.clone(), fresh.clone()];
        warm(&process, &both).await;
        let one = std::slice::from_ref(&kept);
        let mut c = Reader::live("kept", &process, one, &at(one, 1)).await;
        let before = cluster.pubsub_client_ids(from);
        assert_eq!(before.len(), 1, "one subscriber connection to {from}");
        let reconnects = process.metric("redisse_broker_reconnects_total").await;
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || mover.move_slot(slot, to, Duration::from_millis(10)))
            .await
            .expect("the slot moved");

        let alone = std::slice::from_ref(&fresh);
        let mut f = Reader::live("fresh", &process, alone, &at(alone, 1)).await;
        for ch in &both {
            assert_eq!(publish_through(&process, ch, &data(ch, 1)).await, 2);
        }
        c.read(1, PATIENCE).await;
        f.read(1, PATIENCE).await;
        assert_eq!(c.data[&kept], [data(&kept, 1)]);
        assert_eq!(f.data[&fresh], [data(&fresh, 1)]);
        let log = process.log();
        assert!(
            log.contains("answered MOVED"),
            "the redirection was seen: {log}"
        );
        assert!(
            !log.contains("redis cluster subscriber connection"),
            "no connection was dropped (lost or failed): {log}"
        );
        assert_eq!(
            cluster.pubsub_client_ids(from),
            before,
            "the connection to the old owner stayed, for {kept}"
        );
        assert_eq!(
            process.metric("redisse_broker_reconnects_total").await,
            reconnects,
            "no reconnection counted"
        );
        assert_eq!(process.readiness().await, "ok");
        c.expect_silence().await;
        f.expect_silence().await;
    })
    .await;
}

/// A stream on two channels whose subscriptions go in one batch: one on a slot whose owner
/// the subscriber's map no longer names (its `SSUBSCRIBE` answered `MOVED`), one on a healthy
/// node. The `MOVED` makes `apply` return before it notes the sequence of the channel that was
/// placed fine, and the recovery that follows leaves that channel alone (it is placed where
/// the map says): its last sequence stays unknown. When its connection is later cut, the
/// events published meanwhile must still be refilled (as in
/// `a_channel_without_events_is_refilled_after_its_connection_is_cut`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_subscribed_beside_a_moved_answer_is_still_refilled_after_a_cut() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        let three = cluster.channels_on_distinct_primaries("beside", 3);
        let healthy = three[2].clone();
        let stale = cluster.channels_beside(&three[0], "stale", 1).remove(0);
        let slot = cluster.slot_of_channel(&stale);
        let to = cluster.primary_of_channel(&three[1]);
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        let publisher = redisse_on(&cluster, &[]).await;
        let both = vec![healthy.clone(), stale.clone()];
        warm(&process, &both).await;
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || mover.move_slot(slot, to, Duration::from_millis(10)))
            .await
            .expect("the slot moved");
        let mut c = Reader::live("both", &process, &both, &at(&both, 1)).await;
        let start = c.position.clone();
        let log = process.log();
        assert!(
            log.contains("answered MOVED"),
            "the redirection was seen: {log}"
        );
        process.readiness_becomes("ok").await;

        cut_while_frozen(&cluster, &process, &publisher, &healthy, &mut c, &start).await;
    })
    .await;
}

/// A slot moved (every node healthy) to a primary the process has no connection to yet, which
/// takes 0.5 s to answer a new connection (busy: a script spinning that long, as under any
/// slow command; or a far link). Placing the moved channel there is no outage: `/health` stays `ok`, no
/// reconnection is counted, nothing logs `cannot recover`, as operations.md says of a move
/// with every connection up. (With `CONNECT_WAIT`, 100 ms, the recovery attempt gives up on
/// the connection it is still making: the broker is marked down, and a reconnection counted.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_to_a_node_slow_to_accept_a_connection_is_no_outage() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let three = cluster.channels_on_distinct_primaries("slowto", 3);
        // No event yet: its slot holds no key, nothing to migrate.
        let moved = three[0].clone();
        let slot = cluster.slot_of_channel(&moved);
        let from = cluster.primary_of(slot);
        let to = cluster.primary_of_channel(&three[1]);
        let third = cluster.primary_of_channel(&three[2]);
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        // With a channel of the third primary, warm (a stream shows its position once one of
        // its channels has an event).
        let companion = three[2].clone();
        warm(&process, std::slice::from_ref(&companion)).await;
        let both = vec![moved.clone(), companion.clone()];
        let now: Position = [(moved.clone(), 0), (companion.clone(), 1)].into();
        let mut c = Reader::live("moved", &process, &both, &now).await;
        assert_eq!(cluster.pubsub_client_ids(to), Vec::<u64>::new(), "no connection to {to}");
        let reconnects = process.metric("redisse_broker_reconnects_total").await;
        let (from_id, to_id) = (cluster.node_id(from), cluster.node_id(to));
        let setslot = |port: u16, args: &[&str]| cluster.set_slot(slot, port, args);
        blocking(|| {
            setslot(to, &["IMPORTING", &from_id]);
            setslot(from, &["MIGRATING", &to_id]);
            // `to` takes the slot and at once (the same pipeline: before it can tell the
            // others) is busy for 0.5 s: a script that spins, nothing else served meanwhile.
            let mut busy_con = cluster.node(to).con();
            let (slot_arg, to_arg) = (slot, to_id.clone());
            let busy = std::thread::spawn(move || {
                let _: () = redis::pipe()
                    .cmd("CLUSTER")
                    .arg("SETSLOT")
                    .arg(slot_arg)
                    .arg("NODE")
                    .arg(&to_arg)
                    .ignore()
                    .cmd("EVAL")
                    .arg(
                        "local t = redis.call('TIME') local end_us = t[1] * 1000000 + t[2] + 500000 \
                         repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= end_us",
                    )
                    .arg(0)
                    .ignore()
                    .query(&mut busy_con)
                    .expect("the busy script");
            });
            std::thread::sleep(Duration::from_millis(100));
            setslot(third, &["NODE", &to_id]);
            // The old owner ends the subscription: the subscriber places it on `to`.
            setslot(from, &["NODE", &to_id]);
            busy.join().expect("the busy script's thread");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while cluster.pubsub_client_ids(to).is_empty() {
            assert!(Instant::now() < deadline, "never subscribed on {to}");
            sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(publish_through(&process, &moved, &data(&moved, 1)).await, 1);
        c.read(1, PATIENCE).await;
        let log = process.log();
        assert!(
            !log.contains("cannot recover"),
            "a move to a node that took 0.5 s to accept was an outage: {log}"
        );
        assert_eq!(
            process.metric("redisse_broker_reconnects_total").await,
            reconnects,
            "no reconnection counted"
        );
    })
    .await;
}

/// A slot moved to a primary that refuses the subscription for a while (its `SSUBSCRIBE`
/// denied): the recovery of the moved channel fails, `/health` turns `degraded` and the log says
/// `cannot recover`, the connection to the new owner is dropped. Once it is allowed again the
/// subscriber recovers: that is a reconnection like any other (counted in
/// `redisse_broker_reconnects_total`, logged `redis cluster subscriber recovered`, as
/// operations.md says), though the recovery began as a move with every connection up. (It was
/// neither counted nor logged when the recovery was judged a move at its start alone.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_whose_new_owner_refuses_for_a_while_is_a_reconnection_when_it_is_over() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        let three = cluster.channels_on_distinct_primaries("refused", 3);
        let moved = three[0].clone();
        let slot = cluster.slot_of_channel(&moved);
        let to = cluster.primary_of_channel(&three[1]);
        let channels = vec![moved.clone()];
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &channels).await;
        let mut c = Reader::live("moved, refused", &process, &channels, &at(&channels, 1)).await;
        let reconnects = process.metric("redisse_broker_reconnects_total").await;
        cluster.set_default_acl(to, "-ssubscribe");
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || mover.move_slot(slot, to, Duration::from_millis(10)))
            .await
            .expect("the slot moved");
        process.readiness_becomes("degraded").await;
        sleep(Duration::from_millis(500)).await;
        cluster.set_default_acl(to, "+ssubscribe");
        process.readiness_becomes("ok").await;
        let seq = publish_through(&process, &moved, &data(&moved, "after")).await;
        assert_eq!(seq, 2);
        c.read(1, FAILOVER_WAIT).await;
        let log = process.log();
        assert!(log.contains("cannot recover"), "the recovery failed: {log}");
        let counted = process.metric("redisse_broker_reconnects_total").await - reconnects;
        let logged = log.contains("redis cluster subscriber recovered");
        assert!(
            counted > 0 && logged,
            "/health went degraded and back and the log said `cannot recover`, the connection to \
             {to} was dropped and made again: reconnections counted {counted}, `recovered` \
             logged {logged}"
        );
    })
    .await;
}

/// A slot moved (its primary healthy, the new owner healthy) while another shard fails over:
/// the moved channel's events reach streams once it is subscribed where its slot went, not
/// after the other shard's failover. (The moved channel joins the recovery that is retrying
/// the failed shard; it used to be held, or not yet subscribed, until every shard was
/// placed and the one `Resume` is sent, i.e. until the failover is over.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_moved_during_another_shards_failover_is_not_held_by_it() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let three = cluster.channels_on_distinct_primaries("overlap", 3);
        let moved = three[0].clone();
        let failing = three[2].clone();
        let moved_slot = cluster.slot_of_channel(&moved);
        let failing_slot = cluster.slot_of_channel(&failing);
        let to = cluster.primary_of_channel(&three[1]);
        let channels = vec![moved.clone(), failing.clone()];
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &channels).await;
        let mut c = Reader::live(
            "moved in a failover",
            &process,
            &channels,
            &at(&channels, 1),
        )
        .await;
        blocking(|| cluster.wait_synced(failing_slot));
        assert!(
            cluster.pubsub_client_ids(to).is_empty(),
            "no subscriber connection to {to} before the move"
        );
        let cluster = Arc::new(std::sync::Mutex::new(cluster));

        let killer = cluster.clone();
        let old = blocking(move || killer.lock().unwrap().kill_primary(failing_slot));
        process.readiness_becomes("degraded").await;
        // Within the node timeout (2 s): the cluster still serves the other slots.
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || {
            mover
                .lock()
                .unwrap()
                .move_slot(moved_slot, to, Duration::from_millis(10))
        })
        .await
        .expect("the slot moved");
        let seq = publish_through(&process, &moved, &data(&moved, "moved")).await;
        assert_eq!(seq, 2);
        let published_at = Instant::now();
        let waiter = cluster.clone();
        let failover = tokio::task::spawn_blocking(move || {
            let new = waiter.lock().unwrap().wait_failover(failing_slot, old);
            (new, Instant::now())
        });
        c.read(1, FAILOVER_WAIT).await;
        let arrived = Instant::now();
        let health = process.readiness().await;
        let (new, failed_over) = failover.await.expect("failover");
        assert_ne!(old, new);
        assert_eq!(c.got[&moved].last(), Some(&2));
        assert!(
            published_at < failed_over,
            "inconclusive: the publish was answered only after the failover"
        );
        // Subscribed where the slot went: by the node's `sunsubscribe` push, or by the
        // recovery's next read of the slot map, whichever came first.
        assert!(
            !cluster.lock().unwrap().pubsub_client_ids(to).is_empty(),
            "the moved channel is subscribed on {to}: {}",
            process.log()
        );
        assert!(
            arrived < failed_over && health == "degraded",
            "the moved channel's event waited for the other shard's failover: published {:?} \
             before it was over, it came {:?} after it (/health {health} then)",
            failed_over - published_at,
            arrived.saturating_duration_since(failed_over)
        );
    })
    .await;
}

/// A cluster told not to fail a primary over within the test (`cluster-node-timeout` 120 s),
/// three channels named `prefix...` on its three primaries and those primaries' ports, and a
/// process on it with a heartbeat every second.
async fn held_cluster(prefix: &str) -> (Cluster, Vec<String>, Vec<u16>, Redisse) {
    let cluster = blocking(Cluster::start);
    cluster.set_node_timeout(Duration::from_secs(120));
    let three = cluster.channels_on_distinct_primaries(prefix, 3);
    let primaries = three
        .iter()
        .map(|c| cluster.primary_of_channel(c))
        .collect();
    let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
    (cluster, three, primaries, process)
}

/// [`held_cluster`] with a stream on the first of its three channels: the cluster, the three
/// primaries, the process and the stream's reader.
async fn following_one(prefix: &str) -> (Cluster, Vec<u16>, Redisse, Reader) {
    let (cluster, three, primaries, process) = held_cluster(prefix).await;
    let one = vec![three[0].clone()];
    warm(&process, &one).await;
    let reader = Reader::live("on one", &process, &one, &at(&one, 1)).await;
    (cluster, primaries, process, reader)
}

/// A `SUNSUBSCRIBE` whose confirmation never comes (its connection lost right after: here the
/// node refuses the command, which ends the connection) leaves its channel in `ending`; that
/// bookkeeping is emptied only once every connection answered a PING. While another shard's
/// primary answers slowly (stopped 2.2 s at a time, never long enough for the watchdog), the
/// recovery and the batches pass it over and never empty it. The channel, wanted again and
/// then moved by a real slot migration, has the node's `sunsubscribe` push taken for the
/// confirmation of the lost `SUNSUBSCRIBE`: the move is missed, the channel stays subscribed
/// on its slot's old owner, and its events are never delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_after_a_lost_sunsubscribe_is_seen_while_another_node_is_slow() {
    within_limit(async {
        let cluster = Arc::new(blocking(Cluster::start));
        cluster.set_node_timeout(Duration::from_secs(120));
        let three = cluster.channels_on_distinct_primaries("ending", 3);
        let (x, z) = (three[0].clone(), three[2].clone());
        let slot = cluster.slot_of_channel(&x);
        let a = cluster.primary_of(slot);
        let b = cluster.primary_of_channel(&three[1]);
        let slow = cluster.primary_of_channel(&z);
        let process = Arc::new(redisse_on(&cluster, &["--heartbeat", "1"]).await);
        warm(&process, &[x.clone(), z.clone()]).await;
        let zs = std::slice::from_ref(&z);
        let _zr = Reader::live("on the slow node", &process, zs, &at(zs, 1)).await;
        let xs = std::slice::from_ref(&x);
        let mut first = Reader::live("first on x", &process, xs, &at(xs, 1)).await;
        first.read(0, PATIENCE).await;

        // The slow node: stopped 2.2 s, going on 10 ms, over and over.
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let cycler = {
            let (cluster, stop) = (cluster.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    cluster.freeze(slow);
                    std::thread::sleep(Duration::from_millis(2200));
                    cluster.unfreeze(slow);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        sleep(Duration::from_millis(300)).await;

        // The SUNSUBSCRIBE of x is refused: the connection to `a` is lost before any
        // confirmation.
        cluster.set_default_acl(a, "-sunsubscribe");
        first.disconnect();
        let deadline = Instant::now() + Duration::from_secs(15);
        while !process.log().contains("redis cluster subscriber recovered") {
            assert!(
                Instant::now() < deadline,
                "the connection to {a} was not lost and recovered: {}",
                process.log()
            );
            sleep(Duration::from_millis(50)).await;
        }
        cluster.set_default_acl(a, "+sunsubscribe");
        let mut again = Reader::live("again on x", &process, xs, &at(xs, 1)).await;
        let mover = cluster.clone();
        tokio::task::spawn_blocking(move || mover.move_slot(slot, b, Duration::from_millis(10)))
            .await
            .expect("the slot moved");
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut seen = false;
        while Instant::now() < deadline && !seen {
            seen = process.log().contains("its slot moved");
            sleep(Duration::from_millis(50)).await;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        cycler.join().expect("the cycler");
        cluster.unfreeze(slow);
        assert!(
            seen,
            "the move of {x}'s slot from {a} to {b} was not seen (its `sunsubscribe` push taken \
             for the confirmation of the SUNSUBSCRIBE lost with the connection to {a}): {}",
            process.log()
        );
        assert_eq!(publish_through(&process, &x, &data(&x, 1)).await, 2);
        again.read(1, PATIENCE).await;
    })
    .await;
}

/// With every connection healthy (nothing to recover), a primary the subscriber has no
/// connection to stops answering (its kernel accepts, `HELLO` is never answered), and a stream
/// is opened on one of its channels: the first connection to it is made in the background, and
/// a stream opened meanwhile on a new channel of a healthy shard starts at once, not after the
/// stopped node's connect timeout. Once the node answers, the first stream starts too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_to_a_stopped_node_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("first").await;
        let (near, unmet, far) = (&three[0], &three[1], &three[2]);
        warm(&process, &three).await;
        let one = std::slice::from_ref(near);
        let _c = Reader::live("on near", &process, one, &at(one, 1)).await;
        assert!(
            cluster.pubsub_client_ids(primaries[1]).is_empty(),
            "no subscriber connection to {}",
            primaries[1]
        );
        cluster.freeze(primaries[1]);
        let url = process.url(&query(std::slice::from_ref(unmet)));
        let waiting = tokio::spawn(async move { SseStream::open(&url, &[]).await });
        sleep(Duration::from_millis(50)).await;
        let one = std::slice::from_ref(far);
        let opened = Instant::now();
        let mut r = Reader::live(far, &process, one, &at(one, 1)).await;
        let took = opened.elapsed();
        cluster.unfreeze(primaries[1]);
        assert!(
            took < Duration::from_secs(1),
            "a stream on {far} took {took:?} to start behind a first connection to a stopped \
             node: {}",
            process.log()
        );
        assert_eq!(publish_through(&process, far, &data(far, 1)).await, 2);
        r.read(1, PATIENCE).await;
        let w = waiting
            .await
            .expect("the stream on the stopped node's channel");
        starts_then_delivers(&process, w, unmet, 2).await;
    })
    .await;
}

/// `w`, a stream on `channel` alone opened with no position, starts (its `lastEventId` hint)
/// and then gets the event published next, which is to be the channel's `seq`th.
async fn starts_then_delivers(process: &Redisse, mut w: SseStream, channel: &str, seq: u64) {
    assert_eq!(w.status, 200, "the stream on {channel}");
    let mut next = async || match w.next_within(FAILOVER_WAIT).await {
        Next::Event(e) => e,
        other => panic!("the stream on {channel}: {other:?}: {}", process.log()),
    };
    assert_eq!(next().await.event, "lastEventId", "the stream on {channel}");
    let label = format!("after-{seq}");
    assert_eq!(
        publish_through(process, channel, &data(channel, &label)).await,
        seq
    );
    assert_eq!(
        next().await.data,
        data(channel, &label),
        "the stream on {channel}"
    );
}

/// While one primary is stopped and its shard recovered, a stream is opened on a channel of
/// a second stopped primary, one the subscriber has no connection to yet (neither lost nor
/// failed in this recovery), and another on a healthy third shard: the connection to the
/// second stopped node (its kernel accepts, `HELLO` is never answered) is waited for whole,
/// 3 s, and the healthy shard's new stream waits behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_never_connected_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        cluster.set_node_timeout(Duration::from_secs(120));
        let three = cluster.channels_on_distinct_primaries("unmet", 3);
        let (hung, unmet, far) = (&three[0], &three[1], &three[2]);
        let hung_primary = cluster.primary_of_channel(hung);
        let unmet_primary = cluster.primary_of_channel(unmet);
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        warm(&process, &three).await;
        let one = std::slice::from_ref(hung);
        let _c = Reader::live("on hung", &process, one, &at(one, 1)).await;
        assert!(
            cluster.pubsub_client_ids(unmet_primary).is_empty(),
            "no subscriber connection to {unmet_primary}"
        );

        cluster.freeze(hung_primary);
        cluster.freeze(unmet_primary);
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        sleep(Duration::from_millis(500)).await;
        let url = process.url(&query(std::slice::from_ref(unmet)));
        let _waiting = tokio::spawn(async move { SseStream::open(&url, &[]).await });
        sleep(Duration::from_millis(50)).await;
        let one = std::slice::from_ref(far);
        let opened = Instant::now();
        let mut r = Reader::live(far, &process, one, &at(one, 1)).await;
        let took = opened.elapsed();
        cluster.unfreeze(hung_primary);
        cluster.unfreeze(unmet_primary);
        assert!(
            took < Duration::from_secs(1),
            "a stream on {far} took {took:?} to start behind a connection to a stopped node: {}",
            process.log()
        );
        assert_eq!(publish_through(&process, far, &data(far, 1)).await, 2);
        r.read(1, PATIENCE).await;
    })
    .await;
}

/// A primary stops answering (SIGSTOP) while the process is in its normal loop: the watchdog's
/// next PING to it goes unanswered for the whole request timeout (3 s) before the node is
/// taken for lost. Streams opened on new channels of a healthy shard all that time start at
/// once: the loop goes on taking the hub's subscriptions while the PINGs wait. (The watchdog
/// used to wait for each PING in turn, in the loop: a stream opened then waited for the
/// unanswered PING, up to 3 s.) Probes every 200 ms from the freeze until the node is
/// noticed cover the watchdog's wait wherever its tick (every 5 s) falls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_while_the_watchdog_waits_for_a_stopped_node_start_at_once() {
    within_limit(async {
        let Beside {
            cluster,
            stopped: hung_primary,
            probes,
            process,
            reader: _c,
        } = beside_a_stopped_shard("watched", "probe", 60).await;

        cluster.freeze(hung_primary);
        let frozen = Instant::now();
        let mut slowest = Duration::ZERO;
        let mut noticed = None;
        for ch in &probes {
            let one = std::slice::from_ref(ch);
            let opened = Instant::now();
            let _r = Reader::live(ch, &process, one, &at(one, 1)).await;
            slowest = slowest.max(opened.elapsed());
            if process.readiness().await != "ok" {
                noticed = Some(frozen.elapsed());
                break;
            }
            sleep(Duration::from_millis(200)).await;
        }
        cluster.unfreeze(hung_primary);
        assert!(
            noticed.is_some(),
            "the stopped node was not noticed within {} probes",
            probes.len()
        );
        assert!(
            slowest < Duration::from_secs(1),
            "a stream on a healthy shard took {slowest:?} to start while the watchdog waited for \
             a stopped node (noticed {noticed:?} after the freeze)"
        );
    })
    .await;
}

/// `/health` on a cluster: 200 `degraded` while a primary the process follows has stopped
/// answering (SIGSTOP: a host gone) and the others serve, with `redisse_broker_up` 1 and
/// `redisse_broker_shards_recovering` 1 (every process that follows that shard says the same at
/// once: a load balancer that takes unready processes out would take them all, for one shard);
/// 503 once no primary answers, `redisse_broker_up` 0; `ok` again once they answer, and the
/// stream on the three shards then gets every event once, in order, none missed. (`/health`
/// used to say 503 for one shard's failover as for the whole cluster's.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_while_one_shard_recovers_and_unavailable_when_none_answers() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("ready").await;
        warm(&process, &three).await;
        let mut c = Reader::live("on all", &process, &three, &at(&three, 1)).await;
        let start = c.position.clone();
        assert_eq!(process.readiness().await, "ok");
        assert_eq!(process.metric("redisse_broker_shards_recovering").await, 0);

        // One primary stops answering: the watchdog notices (a PING every 5 s, 3 s to answer).
        cluster.freeze(primaries[0]);
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        assert_eq!(process.metric("redisse_broker_up").await, 1);
        assert_eq!(process.metric("redisse_broker_shards_recovering").await, 1);
        let mut published = Vec::new();
        let seq = publish_through(&process, &three[1], &data(&three[1], 1)).await;
        published.push((three[1].clone(), seq));
        c.read(1, PATIENCE).await;
        assert_eq!(c.data[three[1].as_str()], [data(&three[1], 1)]);

        // Then the two others: no shard serves.
        cluster.freeze(primaries[1]);
        cluster.freeze(primaries[2]);
        process
            .readiness_within("503", Duration::from_secs(20))
            .await;
        assert_eq!(process.metric("redisse_broker_up").await, 0);

        cluster.unfreeze_all(&primaries);
        process.readiness_within("ok", FAILOVER_WAIT).await;
        assert_eq!(process.metric("redisse_broker_shards_recovering").await, 0);
        for (i, ch) in three.iter().enumerate() {
            let seq = publish_through(&process, ch, &data(ch, 10 + i)).await;
            published.push((ch.clone(), seq));
        }
        c.read_exactly(3, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(c.missed, 0);
    })
    .await;
}

/// A cluster whose node timeout keeps it from failing a stopped primary over, a process on it
/// and a stream on two channels of distinct primaries, one of them (`stopped`) to be stopped,
/// and `probes`: channels of the other channel's shard, all warm, for streams to open while
/// the first is stopped.
struct Beside {
    cluster: Cluster,
    stopped: u16,
    probes: Vec<String>,
    process: Redisse,
    reader: Reader,
}

async fn beside_a_stopped_shard(prefix: &str, probe: &str, probes: usize) -> Beside {
    let cluster = blocking(Cluster::start);
    cluster.set_node_timeout(Duration::from_secs(120));
    let two = cluster.channels_on_distinct_primaries(prefix, 2);
    let stopped = cluster.primary_of_channel(&two[0]);
    let probes = cluster.channels_beside(&two[1], probe, probes);
    let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
    warm(&process, &[two.clone(), probes.clone()].concat()).await;
    let reader = Reader::live("on both", &process, &two, &at(&two, 1)).await;
    Beside {
        cluster,
        stopped,
        probes,
        process,
        reader,
    }
}

/// A primary that is slow for a moment (here stopped 0.6 s: a fork, a slow command) while a
/// stream on another shard opens is passed over by that stream's confirmation (its PING
/// unanswered within `ASIDE_WAIT`), and then answers everything again, watchdog PINGs
/// included. Seconds later it is slow for a moment again while another stream opens: that is
/// no reason to drop its connection (it answered every PING well within its request timeout).
/// `confirm` keeps the first moment's `slow_since` entry (never removed while the connection
/// answers other PINGs, in the normal loop or after a recovery), so the second pass-over finds
/// it "slow" for longer than its timeout and drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_slow_for_a_moment_twice_is_not_taken_for_lost() {
    within_limit(async {
        let Beside {
            cluster,
            stopped: slow_primary,
            probes,
            process,
            reader: _c,
        } = beside_a_stopped_shard("blip", "blipprobe", 2).await;
        let before = cluster.pubsub_client_ids(slow_primary);

        let mut readers = Vec::new();
        for (i, ch) in probes.iter().enumerate() {
            if i > 0 {
                // Well past the request timeout (3 s) and a watchdog round, all answered.
                sleep(Duration::from_secs(6)).await;
            }
            cluster.freeze(slow_primary);
            let one = std::slice::from_ref(ch);
            readers.push(Reader::live(ch, &process, one, &at(one, 1)).await);
            sleep(Duration::from_millis(600)).await;
            cluster.unfreeze(slow_primary);
        }
        sleep(Duration::from_secs(1)).await;
        let log = process.log();
        assert!(
            !log.contains("redis cluster subscriber connection failed"),
            "a node stopped 0.6 s twice, 6 s apart, was taken for lost: {log}"
        );
        assert_eq!(
            process.metric("redisse_broker_reconnects_total").await,
            0,
            "no reconnection"
        );
        assert_eq!(
            cluster.pubsub_client_ids(slow_primary),
            before,
            "the same pub/sub connection on the slow node"
        );
    })
    .await;
}

/// A primary that answers every PING, each within a second (well inside its 3 s request
/// timeout: the watchdog never takes it for lost), but none within `ASIDE_WAIT` (250 ms) while
/// streams open on another shard: here it is stopped 0.7 s, let go, stopped again, and a
/// stream opens at each stop. Its connection is not lost: nothing it was sent went unanswered
/// for 3 s. `confirm` counts the time since the first pass-over, never reset by the passed-over
/// PINGs' late answers, and drops it after 3 s of pass-overs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_answering_every_ping_within_a_second_is_not_taken_for_lost() {
    within_limit(async {
        let Beside {
            cluster,
            stopped: slow_primary,
            probes,
            process,
            reader: _c,
        } = beside_a_stopped_shard("laggy", "laggyprobe", 6).await;
        let before = cluster.pubsub_client_ids(slow_primary);

        let mut readers = Vec::new();
        for ch in &probes {
            cluster.freeze(slow_primary);
            let one = std::slice::from_ref(ch);
            readers.push(Reader::live(ch, &process, one, &at(one, 1)).await);
            sleep(Duration::from_millis(700)).await;
            cluster.unfreeze(slow_primary);
            sleep(Duration::from_millis(20)).await;
        }
        sleep(Duration::from_secs(1)).await;
        let log = process.log();
        assert!(
            !log.contains("redis cluster subscriber connection failed"),
            "a node answering every PING within a second was taken for lost: {log}"
        );
        assert_eq!(
            cluster.pubsub_client_ids(slow_primary),
            before,
            "the same pub/sub connection on the slow node"
        );
    })
    .await;
}

/// Every primary stops answering (SIGSTOP; their replicas still answer the slot map, and no
/// failover can be elected without primaries) while the process follows a channel on one of
/// them only: no primary answers, so `/health` is 503 (docs/operations.md: "503 when no primary
/// answers"). (Primaries the process had no connection to were taken for serving, so it said
/// 200 `degraded` for as long as they were stopped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unavailable_when_every_primary_stops_and_one_is_followed() {
    within_limit(async {
        let (cluster, primaries, process, _c) = following_one("alldown").await;
        cluster.freeze_all(&primaries);
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut health = process.readiness().await;
        while health != "503" && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
            health = process.readiness().await;
        }
        cluster.unfreeze_all(&primaries);
        assert_eq!(
            health, "503",
            "/health with every primary stopped (10 s after the followed one was noticed)"
        );
    })
    .await;
}

/// Every node stops answering (SIGSTOP: primaries and replicas, as when their hosts are cut
/// off) while the process follows a channel: once the lost connection is noticed (`degraded`),
/// `/health` says 503 within a few seconds, the time one node takes to be given up (2 s), not
/// one such wait per node asked for the slot map in turn. (Asked one after the other, the six
/// nodes took 12 s, `/health` saying `degraded` all that time.) Once they answer, `ok` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unavailable_soon_when_every_node_stops() {
    within_limit(async {
        let (cluster, _, process, _c) = following_one("cutoff").await;
        let ports = cluster.ports();
        cluster.freeze_all(&ports);
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        let noticed = Instant::now();
        let deadline = noticed + Duration::from_secs(20);
        let mut health = process.readiness().await;
        while health != "503" && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
            health = process.readiness().await;
        }
        let took = noticed.elapsed();
        cluster.unfreeze_all(&ports);
        assert_eq!(health, "503", "/health with every node stopped");
        assert!(
            took < Duration::from_secs(6),
            "/health said degraded for {took:?} with every node stopped: {}",
            process.log()
        );
        process
            .readiness_within("ok", Duration::from_secs(20))
            .await;
    })
    .await;
}

/// Every primary the process follows stops answering (503: none serves), then two of the three
/// answer again while the third stays stopped: their channels are subscribed again and their
/// events reach the stream, so the cluster serves and one shard recovers: `/health` is 200
/// `degraded`, as docs/operations.md says. (A primary that ever failed during the recovery
/// was counted as not serving until the whole recovery succeeded, so `/health` stayed 503
/// until the last shard was back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_again_once_some_primaries_answer_after_all_stopped() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("back").await;
        warm(&process, &three).await;
        let mut c = Reader::live("on all", &process, &three, &at(&three, 1)).await;
        cluster.freeze_all(&primaries);
        process
            .readiness_within("503", Duration::from_secs(25))
            .await;
        cluster.unfreeze(primaries[1]);
        cluster.unfreeze(primaries[2]);
        // The two shards back serve: an event on one reaches the stream.
        let seq = publish_through(&process, &three[1], &data(&three[1], 1)).await;
        assert_eq!(seq, 2);
        c.read(1, FAILOVER_WAIT).await;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut health = process.readiness().await;
        while health != "degraded" && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
            health = process.readiness().await;
        }
        cluster.unfreeze(primaries[0]);
        assert_eq!(
            health, "degraded",
            "/health with two of three primaries back and serving (their events arriving), \
             the third still stopped"
        );
        process.readiness_within("ok", FAILOVER_WAIT).await;
    })
    .await;
}

/// A stream opened during a shard's failover, on a channel of that shard and one of another,
/// does not wait for the failover: the healthy channel's history and live events reach it
/// while the failed shard recovers, and the failed shard's channel joins once its shard is
/// back, with what it missed after the client's position; every event once, in order, none
/// missed. (Such a stream used to send nothing but heartbeats until every channel had read its
/// history: the failover's whole length.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_across_a_failing_shard_gets_the_other_shards_events_meanwhile() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        let channels = cluster.channels_on_distinct_primaries("across", 2);
        let (failing, healthy) = (channels[0].clone(), channels[1].clone());
        let Failing {
            process,
            c: _c,
            start,
            mut published,
            failover,
        } = fail_over_under_a_stream(cluster, &channels, &[]).await;
        // Back from where it stood before events 0..4: 0 and 2 on the failing shard, 1 and 3
        // on the healthy one.
        let mut late = Reader::at("across", &channels, start.clone());
        late.reconnect(&process, false).await;
        late.read(2, PATIENCE).await;
        assert!(
            !failover.is_finished(),
            "the failover was over before the stream's first events ({:?} came)",
            late.order
        );
        assert_eq!(
            late.data.get(healthy.as_str()),
            Some(&vec![data(&healthy, 1), data(&healthy, 3)]),
            "the healthy channel's history, during the failover"
        );
        let seq = publish_through(&process, &healthy, &data(&healthy, 5)).await;
        published.push((healthy.clone(), seq));
        late.read(1, PATIENCE).await;
        let arrived = Instant::now();
        let health = process.readiness().await;
        let (_cluster, (old, new), failed_over) = failover.await.expect("failover");
        assert_ne!(old, new);
        assert!(
            arrived < failed_over && health == "degraded",
            "the healthy channel's events came {:?} after the failover was over",
            arrived.saturating_duration_since(failed_over)
        );
        for i in [6, 8] {
            let seq = publish_through(&process, &failing, &data(&failing, i)).await;
            published.push((failing.clone(), seq));
        }
        // The failed shard's channel: its history after the client's position (events 0 and
        // 2), then 6 and 8.
        late.read_exactly(4, FAILOVER_WAIT, &expected(&published, &start))
            .await;
        assert_eq!(late.missed, 0);
        assert_eq!(
            late.data[failing.as_str()],
            [0, 2, 6, 8].map(|i| data(&failing, i))
        );
    })
    .await;
}

/// The primary of slot 0 stops answering (SIGSTOP, the cluster told not to fail it over) while
/// the process follows a channel on it alone: once the watchdog finds it, the recovery has no
/// connection up to ask the slot map on, and asks the slot map's primaries in slot order, the
/// stopped one first, over a new connection that waits its whole connect timeout (2 s) before
/// the next primary is asked; every attempt again. A stream opened meanwhile on another shard's
/// channel waits for that, against "stalls nobody else: a recovery waits 100 ms for a new
/// connection to it" (docs/operations.md) and the second's bound of
/// `a_primary_that_stops_answering_does_not_slow_the_other_shards_new_streams` (where a
/// connection up to another primary answers the slot map).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_primary_followed_alone_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let cluster = blocking(Cluster::start);
        cluster.set_node_timeout(Duration::from_secs(120));
        let first = cluster.primary_of(0);
        let three = cluster.channels_on_distinct_primaries("alone", 3);
        let hung = three
            .iter()
            .find(|c| cluster.primary_of_channel(c) == first)
            .expect("a channel on the primary of slot 0")
            .clone();
        let other = three
            .iter()
            .find(|c| **c != hung)
            .expect("a channel on another primary")
            .clone();
        let process = redisse_on(&cluster, &["--heartbeat", "1"]).await;
        warm(&process, &[hung.clone(), other.clone()]).await;
        let followed = vec![hung.clone()];
        let _c = Reader::live("on the stopped one", &process, &followed, &at(&followed, 1)).await;

        cluster.freeze(first);
        process
            .readiness_within("degraded", Duration::from_secs(20))
            .await;
        // A recovery attempt is under way.
        sleep(Duration::from_millis(500)).await;
        let one = std::slice::from_ref(&other);
        let opened = Instant::now();
        let mut r = Reader::live(&other, &process, one, &at(one, 1)).await;
        let took = opened.elapsed();
        cluster.unfreeze(first);
        assert!(
            took < Duration::from_secs(1),
            "a stream on {other} took {took:?} to start while another shard's node is stopped"
        );
        assert_eq!(publish_through(&process, &other, &data(&other, 1)).await, 2);
        r.read(1, PATIENCE).await;
    })
    .await;
}

/// One primary is killed (no failover: the cluster told not to) under a stream on every
/// shard, and the two others answer slowly, every request within about a second (here
/// stopped 1 s, let go 20 ms, over and over: a loaded node, a slow link), while the seeds
/// name the replicas first (roles change with failovers, seeds do not). The two primaries
/// serve: nothing they are sent goes unanswered for their request timeout, so they are kept,
/// and their events reach the stream. `/health` is to say 200 `degraded` throughout (one
/// shard recovering, primaries answering); before c5fda06 it did (`serving()`). Now it says 503
/// whenever an attempt's slot map came from a replica seed (each primary's connection passed
/// over at `ASIDE_WAIT`, 250 ms, then asked no more) and the attempt's PING to each primary
/// was passed over too: `primary_answered` counts only answers within 250 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_stays_degraded_while_the_other_primaries_answer_slowly() {
    within_limit(async {
        let mut cluster = blocking(Cluster::start);
        cluster.set_node_timeout(Duration::from_secs(120));
        let three = cluster.channels_on_distinct_primaries("slowly", 3);
        let slots: Vec<u16> = three.iter().map(|c| cluster.slot_of_channel(c)).collect();
        let primaries: Vec<u16> = slots.iter().map(|s| cluster.primary_of(*s)).collect();
        let replicas: Vec<u16> = slots.iter().map(|s| cluster.replica_of_slot(*s)).collect();
        let seeds: Vec<String> = replicas
            .iter()
            .chain(&primaries)
            .map(|p| cluster.node(*p).url())
            .collect();
        let seeds = seeds.join(",");
        let process =
            blocking(|| Redisse::start(&["--redis-cluster", seeds.as_str(), "--heartbeat", "1"]));
        process.readiness_becomes("ok").await;
        warm(&process, &three).await;
        let _c = Reader::live("on all", &process, &three, &at(&three, 1)).await;

        cluster.kill_primary(slots[0]);
        process.readiness_becomes("degraded").await;
        let slow = &primaries[1..];
        let mut seen: BTreeMap<String, u32> = BTreeMap::new();
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            for p in slow {
                cluster.freeze(*p);
            }
            let thaw = Instant::now() + Duration::from_secs(1);
            while Instant::now() < thaw {
                *seen.entry(process.readiness().await).or_default() += 1;
                sleep(Duration::from_millis(50)).await;
            }
            for p in slow {
                cluster.unfreeze(*p);
            }
            sleep(Duration::from_millis(20)).await;
        }
        let log = process.log();
        assert!(
            !log.contains("redis cluster subscriber connection failed"),
            "a slow primary was taken for lost: {log}"
        );
        assert!(
            !seen.contains_key("503"),
            "/health while one shard recovers and two primaries answer every request within \
             about a second: {seen:?}"
        );
    })
    .await;
}

/// Every primary stops answering (SIGSTOP; the cluster told not to fail them over) while the
/// process follows no channel (just started, or its streams all left): no primary answers, so
/// `/health` is to say 503 (docs/operations.md: "503 when no primary answers";
/// `redisse_broker_up`: "1 while a primary answers"), as it does once a channel is followed
/// (`health_is_unavailable_when_every_primary_stops_and_one_is_followed`). With no channel
/// followed the subscriber holds no connection: the watchdog asks each primary a PING on a
/// connection of its own. (It had nothing to PING: `/health` went on saying 200 `ok` for as
/// long as the primaries were stopped, publishes failing meanwhile.) Once they answer,
/// `/health` is `ok` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unavailable_when_every_primary_stops_and_no_channel_is_followed() {
    within_limit(async {
        let (cluster, _, primaries, process) = held_cluster("nobody").await;
        assert_eq!(process.readiness().await, "ok");
        cluster.freeze_all(&primaries);
        // Well past a watchdog round (a PING every 5 s, 3 s to answer) and a recovery attempt.
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut health = process.readiness().await;
        while health != "503" && Instant::now() < deadline {
            sleep(Duration::from_millis(100)).await;
            health = process.readiness().await;
        }
        let up = process.metric("redisse_broker_up").await;
        cluster.unfreeze_all(&primaries);
        assert_eq!(
            (health.as_str(), up),
            ("503", 0),
            "/health and redisse_broker_up 15 s after every primary stopped, no channel followed"
        );
        // Back once they answer.
        process
            .readiness_within("ok", Duration::from_secs(20))
            .await;
    })
    .await;
}

/// Every primary stops answering (SIGSTOP) for 15 s while the process follows no channel, then
/// they all answer again: once `/health` says `ok`, a stream opened on each shard starts at
/// once and gets the events published after it, as before the stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_every_primary_stopped_and_came_back_new_streams_start_and_get_events() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("after").await;
        warm(&process, &three).await;
        cluster.freeze_all(&primaries);
        sleep(Duration::from_secs(15)).await;
        cluster.unfreeze_all(&primaries);
        process
            .readiness_within("ok", Duration::from_secs(20))
            .await;
        let opened = Instant::now();
        let mut r = Reader::live("on all three", &process, &three, &at(&three, 1)).await;
        let took = opened.elapsed();
        for ch in &three {
            assert_eq!(publish_through(&process, ch, &data(ch, 1)).await, 2);
        }
        r.read(3, PATIENCE).await;
        assert!(
            took < Duration::from_secs(2),
            "a stream opened once /health was ok again took {took:?} to start: {}",
            process.log()
        );
    })
    .await;
}

/// A followed primary stops answering (SIGSTOP) and, before the watchdog notices (its PING
/// waits 3 s), a client opens a stream on a channel of that primary already subscribed (one
/// more client of that shard, or one coming back), then another client a stream on a new
/// channel of a healthy shard. The second stream is to start at once: the watchdog's wait
/// holds no new stream (`streams_opened_while_the_watchdog_waits_for_a_stopped_node_start_at_once`),
/// and a recovery passes a stopped node over. The first stream starts once the node answers.
/// (`apply` used to await the PING confirming the first stream's barrier on the stopped node's
/// connection inline, for its whole request timeout, 3 s, the healthy shard's stream waiting
/// with it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_on_a_stopped_nodes_channel_does_not_slow_the_other_shards_new_streams() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("mustwait").await;
        let (hung, live) = (&three[0], &three[1]);
        let hung_primary = primaries[0];
        let fresh = cluster.channels_beside(live, "mustfresh", 1).remove(0);
        warm(&process, &[hung.clone(), live.clone(), fresh.clone()]).await;
        let channels = vec![hung.clone(), live.clone()];
        let _c = Reader::live("on both", &process, &channels, &at(&channels, 1)).await;

        cluster.freeze(hung_primary);
        let frozen = Instant::now();
        let url = process.url(&query(std::slice::from_ref(hung)));
        let waiting = tokio::spawn(async move { SseStream::open(&url, &[]).await });
        sleep(Duration::from_millis(100)).await;
        let one = std::slice::from_ref(&fresh);
        let opened = Instant::now();
        let mut r = Reader::live(&fresh, &process, one, &at(one, 1)).await;
        let took = opened.elapsed();
        cluster.unfreeze(hung_primary);
        assert!(
            took < Duration::from_secs(1),
            "a stream on {fresh} (a healthy shard) took {took:?} to start, opened {:?} after \
             another shard's primary stopped, behind a stream on that primary's channel: {}",
            opened - frozen,
            process.log()
        );
        assert_eq!(publish_through(&process, &fresh, &data(&fresh, 1)).await, 2);
        r.read(1, PATIENCE).await;
        // The stream that waited for the stopped node starts once it answers.
        let w = waiting
            .await
            .expect("the stream on the stopped node's channel");
        starts_then_delivers(&process, w, hung, 2).await;
    })
    .await;
}

/// A primary the process has no connection to stops answering (SIGSTOP), and a stream opens on
/// one of its channels: the subscription's first connection to it goes unanswered for the
/// whole connect timeout (3 s) and fails, so the shard of a followed channel is recovering
/// and `/health` is to say `degraded` from then on (docs/operations.md: a stopped node is
/// noticed "once it has left a request unanswered for 3 s"). (It used to say `ok` 3 s longer:
/// the failure in `apply` marked the node neither lost nor `failing`, so the recovery's
/// attempts took its next connection, still being made, for "a first connection to a node
/// not failing", no outage, until that one failed too.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_once_a_first_connection_to_a_stopped_node_failed() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("unmethealth").await;
        let (followed, unmet) = (&three[0], &three[1]);
        let unmet_primary = primaries[1];
        warm(&process, &[followed.clone(), unmet.clone()]).await;
        let one = std::slice::from_ref(followed);
        let _c = Reader::live("followed", &process, one, &at(one, 1)).await;
        assert!(
            cluster.pubsub_client_ids(unmet_primary).is_empty(),
            "no subscriber connection to {unmet_primary}"
        );

        cluster.freeze(unmet_primary);
        sleep(Duration::from_millis(300)).await;
        assert_eq!(process.readiness().await, "ok");
        let url = process.url(&query(std::slice::from_ref(unmet)));
        let opened = Instant::now();
        let waiting = tokio::spawn(async move { SseStream::open(&url, &[]).await });
        let mut health = process.readiness().await;
        while health == "ok" && opened.elapsed() < Duration::from_secs(15) {
            sleep(Duration::from_millis(50)).await;
            health = process.readiness().await;
        }
        let noticed = opened.elapsed();
        cluster.unfreeze(unmet_primary);
        waiting.abort();
        assert_eq!(
            health, "degraded",
            "/health with a followed shard's primary stopped"
        );
        assert!(
            noticed < Duration::from_millis(4500),
            "/health said ok for {noticed:?} after a stream opened on a stopped node's channel \
             (its first connection fails after 3 s): {}",
            process.log()
        );
    })
    .await;
}

/// A stream opens on a channel without events yet whose primary is slow (stopped): its
/// barrier's PING is not answered within `ASIDE_WAIT`, so it becomes a `Deferred`
/// confirmation, which also holds the channel as new (its sequence to be noted once the node
/// answers). Before the node answers, another shard's pub/sub connection is cut: the run loop
/// enters a recovery, which takes the deferred barrier and the new channel over. The node
/// answers, the recovery ends and the stream starts. Later its own pub/sub connection is cut
/// while the process is frozen and three events are published meanwhile: the refill reads
/// them from history (as `a_channel_without_events_is_refilled_after_its_connection_is_cut`
/// does without the deferral). (The recovery used to drop the deferred new channel, its
/// sequence never noted: the refill then read nothing, and the stream never got them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deferred_new_channel_taken_over_by_a_recovery_is_refilled_after_its_connection_is_cut() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("deferfresh").await;
        let slow_ch = &three[0];
        let (slow_primary, cut_primary) = (primaries[0], primaries[1]);
        let fresh = cluster
            .channels_beside(slow_ch, "deferfreshnew", 1)
            .remove(0);
        assert_eq!(cluster.primary_of_channel(&fresh), slow_primary);
        let publisher = redisse_on(&cluster, &[]).await;
        warm(&process, &three).await;
        let _c = Reader::live("on three", &process, &three, &at(&three, 1)).await;

        cluster.freeze(slow_primary);
        // With a channel of the third shard, which has events: its stream starts with a
        // `lastEventId` hint (a stream whose channels are all at 0 has none).
        let one = vec![fresh.clone(), three[2].clone()];
        let now: Position = [(fresh.clone(), 0), (three[2].clone(), 1)].into();
        let url = process.url(&query(&one));
        let opening = async {
            let mut stream = SseStream::open(&url, &[]).await;
            assert_eq!(stream.status, 200, "the stream on {fresh}");
            let e = match stream.next_within(PATIENCE).await {
                Next::Event(e) => e,
                other => panic!(
                    "the stream on {fresh} did not start within {PATIENCE:?}: {other:?}: {}",
                    process.log()
                ),
            };
            assert_eq!(e.event, "lastEventId", "the first event on {fresh}: {e:?}");
            let hint = parse_compound(&one, e.id.as_deref().expect("an id"));
            assert_eq!(hint, now, "the hint of {fresh}");
            Reader {
                stream: Some(stream),
                ..Reader::at("fresh", &one, hint)
            }
        };
        let driving = async {
            // The new stream's barrier is deferred (ASIDE_WAIT is 250 ms).
            sleep(Duration::from_millis(500)).await;
            let killed = cluster.kill_clients(cut_primary, "pubsub");
            assert!(killed >= 1, "the other shard's connection was cut");
            // The recovery waits for the stopped node's PING (its barrier's); the node
            // answers well within the request timeout (3 s).
            sleep(Duration::from_millis(700)).await;
            cluster.unfreeze(slow_primary);
        };
        let (mut c, ()) = tokio::join!(opening, driving);
        assert_eq!(c.position[&fresh], 0, "no event of {fresh} yet");
        let start = c.position.clone();
        // Everything settled (the recovery is over).
        sleep(Duration::from_secs(1)).await;
        cut_while_frozen(&cluster, &process, &publisher, &fresh, &mut c, &start).await;
    })
    .await;
}

/// Two primaries stop answering (SIGSTOP): one (`slow`) the process has a connection to, one
/// (`unmet`) it has none to. A stream opens on a new channel of each: `apply` subscribes the
/// first on the slow node's connection (its PING unanswered: a `Slow`), and the first
/// connection to the unmet node is still being made after `CONNECT_WAIT`, so the batch is
/// left to a recovery (`unplaced`). A stream opened 0.6 s later on a healthy shard's channel
/// starts within a few seconds (the recovery's own full wait for the slow node's PING is its
/// request timeout, 3 s; 7 s is allowed), though the nodes answer only after 12 s. (`apply`
/// used to read the sequence of each new channel placed, the slow node's included, on that
/// stopped node, in the subscriber task, which then took nothing else until the node
/// answered.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_channel_on_a_stopped_node_left_to_a_recovery_does_not_stall_the_subscriber() {
    within_limit(async {
        let (cluster, three, primaries, process) = held_cluster("stallnote").await;
        let (followed, healthy, unmet) = (&three[0], &three[1], &three[2]);
        let (slow_primary, unmet_primary) = (primaries[0], primaries[2]);
        let fresh = cluster
            .channels_beside(followed, "stallnotefresh", 1)
            .remove(0);
        let probe = cluster
            .channels_beside(healthy, "stallnoteprobe", 1)
            .remove(0);
        warm(
            &process,
            &[
                followed.clone(),
                healthy.clone(),
                unmet.clone(),
                probe.clone(),
            ],
        )
        .await;
        let two = vec![followed.clone(), healthy.clone()];
        let _c = Reader::live("on two", &process, &two, &at(&two, 1)).await;
        assert!(
            cluster.pubsub_client_ids(unmet_primary).is_empty(),
            "no subscriber connection to {unmet_primary}"
        );

        cluster.freeze_all(&[slow_primary, unmet_primary]);
        let url = process.url(&query(&[fresh.clone(), unmet.clone()]));
        let waiting = tokio::spawn(async move { SseStream::open(&url, &[]).await });
        sleep(Duration::from_millis(600)).await;
        let probe_url = process.url(&query(std::slice::from_ref(&probe)));
        let opened = Instant::now();
        let opening = async {
            let mut s = SseStream::open(&probe_url, &[]).await;
            assert_eq!(s.status, 200, "the stream on {probe}");
            let first = s.next_within(Duration::from_secs(30)).await;
            (opened.elapsed(), first)
        };
        let driving = async {
            sleep(Duration::from_secs(12)).await;
            cluster.unfreeze_all(&[slow_primary, unmet_primary]);
        };
        let ((took, first), ()) = tokio::join!(opening, driving);
        waiting.abort();
        assert!(
            matches!(&first, Next::Event(e) if e.event == "lastEventId"),
            "the stream on {probe}: {first:?}"
        );
        assert!(
            took < Duration::from_secs(7),
            "a stream on {probe} (a healthy shard) took {took:?} to start, opened 0.6 s after \
             a stream on new channels of two stopped primaries: {}",
            process.log()
        );
    })
    .await;
}
