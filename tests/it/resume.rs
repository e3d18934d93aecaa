//! Resume with Last-Event-ID: replay, history caps, missedevents and the lastEventId event
//! (docs/protocol.md, docs/history.md).
//!
//! Every test runs on both brokers, except the one that resumes on a second server process, which
//! needs Redis. The gem's acceptance cases 34-37 and 42-43 (reference/redisse-gem.md 9.4) are
//! here, adapted to our `missedevents` rule: it is sent exactly when an id between the client's
//! position and a full channel's oldest retained event is retained in none of the requested
//! channels.

use std::time::Duration;

use crate::on_both_brokers;
use crate::support::sse::Next;
use crate::support::{Backend, SseEvent, SseStream, TestServer};

const QUIET: Duration = Duration::from_millis(300);

on_both_brokers!(
    replay_merges_the_requested_channels_in_id_order_then_goes_live,
    gem_34_history_after_the_last_id_without_missedevents,
    gem_35_trimmed_past_the_client_gives_missedevents_then_100_events,
    gem_36_trimmed_up_to_the_clients_next_id_is_not_a_loss,
    gem_37_each_channel_keeps_100_merged_by_id,
    gem_42_reconnect_with_the_last_seen_id,
    gem_43_lasteventid_event_gives_a_position_to_resume_from,
    a_configured_history_size_is_the_cap_and_the_missedevents_threshold,
    a_last_id_from_another_channel_is_no_reason_for_missedevents,
    a_channel_never_trimmed_never_gives_missedevents,
    lasteventid_event_only_when_nothing_is_replayed_and_the_counter_exists,
    the_header_wins_over_the_query_parameter,
    empty_or_zero_means_no_position,
    an_unusable_id_opens_the_stream_with_missedevents_then_live_events,
    a_last_id_beyond_the_counter_gives_missedevents_then_all_history,
    events_published_as_a_stream_opens_arrive_once_and_never_below_the_hint,
);

fn ids(events: &[SseEvent]) -> Vec<u64> {
    events
        .iter()
        .map(|e| {
            e.id.as_deref()
                .expect("event id")
                .parse()
                .expect("numeric id")
        })
        .collect()
}

fn datas(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.data.as_str()).collect()
}

fn id_header(id: u64) -> String {
    id.to_string()
}

/// Opens `path` with `Last-Event-ID: id`.
async fn resume(server: &TestServer, path: &str, id: &str) -> SseStream {
    let s = server.stream(path, &[("last-event-id", id)]).await;
    assert_eq!(s.status, 200);
    s
}

async fn replay_merges_the_requested_channels_in_id_order_then_goes_live(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let start = server.publish("a", "m", "a0").await;
    let mut expected = Vec::new();
    for i in 0..6 {
        let (ch, data) = match i % 3 {
            0 => ("a", format!("a{i}")),
            1 => ("b", format!("b{i}")),
            _ => ("c", format!("c{i}")),
        };
        let id = server.publish(ch, "m", &data).await;
        if ch != "c" {
            expected.push((id, data));
        }
    }
    let mut s = resume(&server, "/?a&b", &id_header(start)).await;
    let got = s.take(expected.len()).await;
    let got: Vec<(u64, String)> = ids(&got)
        .into_iter()
        .zip(got.iter().map(|e| e.data.clone()))
        .collect();
    assert_eq!(
        got, expected,
        "replay of a and b after {start}, in id order, without c"
    );
    let live = server.publish("b", "m", "live").await;
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(live.to_string()), "live"));
    s.expect_silence(QUIET).await;
}

async fn gem_34_history_after_the_last_id_without_missedevents(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let e = server.publish("global", "foo", "foo_data").await;
    server.publish("global", "foo", "hist_1").await;
    server.publish("channel_1", "foo", "hist_2").await;
    let mut s = resume(&server, "/?global&channel_1", &id_header(e)).await;
    let got = s.take(2).await;
    assert_eq!(datas(&got), ["hist_1", "hist_2"]);
    assert!(got.iter().all(|e| e.event == "foo"));
    s.expect_silence(QUIET).await;
}

async fn gem_35_trimmed_past_the_client_gives_missedevents_then_100_events(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let e = server.publish("global", "foo", "foo_data").await;
    server.publish("global", "foo", "missed").await;
    server.publish("global", "foo", "first").await;
    for _ in 0..98 {
        server.publish("global", "foo", "foo_data").await;
    }
    server.publish("global", "foo", "last straw").await;
    let mut s = resume(&server, "/?global", &id_header(e)).await;
    let first = s.next().await;
    assert_eq!(first.event, "missedevents");
    assert_eq!((first.id, first.data.as_str()), (None, ""));
    let got = s.take(100).await;
    assert_eq!(got[0].data, "first");
    assert!(got[1..99].iter().all(|e| e.data == "foo_data"));
    assert_eq!(got[99].data, "last straw");
    let ids = ids(&got);
    assert_eq!(ids, (e + 2..=e + 101).collect::<Vec<_>>());
    s.expect_silence(QUIET).await;
    assert!(!String::from_utf8_lossy(&s.raw).contains("lastEventId"));
}

/// The gem sends `missedevents` here because it cannot prove nothing was lost; our rule sees that
/// the oldest retained event is the one right after the client's, so nothing was.
async fn gem_36_trimmed_up_to_the_clients_next_id_is_not_a_loss(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let before = server.publish("other", "foo", "not global").await;
    let e = server.publish("global", "foo", "foo_data").await;
    server.publish("global", "foo", "first").await;
    for _ in 0..98 {
        server.publish("global", "foo", "foo_data").await;
    }
    server.publish("global", "foo", "last straw").await;
    let mut s = resume(&server, "/?global", &id_header(e)).await;
    let got = s.take(100).await;
    assert_eq!(got[0].event, "foo", "no missedevents: {:?}", got[0]);
    assert_eq!(got[0].data, "first");
    assert!(got[1..99].iter().all(|e| e.data == "foo_data"));
    assert_eq!(got[99].data, "last straw");
    s.expect_silence(QUIET).await;
    // One event further back, `e` may have been a global event the client did not see.
    let mut s = resume(&server, "/?global", &id_header(before)).await;
    assert_eq!(s.next().await.event, "missedevents");
}

async fn gem_37_each_channel_keeps_100_merged_by_id(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let e = server.publish("global", "foo", "seen").await;
    for i in 0..99 {
        server.publish("global", "foo", &format!("g{i}")).await;
    }
    for i in 0..100 {
        server.publish("channel_1", "bar", &format!("c{i}")).await;
    }
    let mut s = resume(&server, "/?global&channel_1", &id_header(e)).await;
    let got = s.take(199).await;
    assert!(got[..99].iter().all(|e| e.event == "foo"));
    assert!(got[99..].iter().all(|e| e.event == "bar"));
    assert_eq!(ids(&got), (e + 1..=e + 199).collect::<Vec<_>>());
    s.expect_silence(QUIET).await;
    // 101 more on channel_1: it keeps the newest 100 only, and the client from `e` lost one.
    for i in 0..101 {
        server.publish("channel_1", "bar", &format!("d{i}")).await;
    }
    let mut s = resume(&server, "/?channel_1", &id_header(e + 199)).await;
    assert_eq!(s.next().await.event, "missedevents");
    let got = s.take(100).await;
    assert_eq!(got[0].data, "d1");
    assert_eq!(got[99].data, "d100");
    s.expect_silence(QUIET).await;
}

async fn gem_42_reconnect_with_the_last_seen_id(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut s = server.live_stream("/?global").await;
    server.publish("global", "foo", "bar").await;
    let seen = s.next().await;
    assert_eq!((seen.event.as_str(), seen.data.as_str()), ("foo", "bar"));
    drop(s);
    server.publish("global", "foo", "baz").await;
    let mut s = resume(&server, "/?global", seen.id.as_deref().unwrap()).await;
    let e = s.next_within(Duration::from_millis(500)).await;
    let Next::Event(e) = e else {
        panic!("no event: {e:?}")
    };
    assert_eq!((e.event.as_str(), e.data.as_str()), ("foo", "baz"));
}

async fn gem_43_lasteventid_event_gives_a_position_to_resume_from(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let i = server.publish("global", "foo", "bar").await;
    let mut s = server.stream("/?global", &[]).await;
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId");
    assert_eq!(first.id, Some(i.to_string()));
    drop(s);
    server.publish("global", "foo", "baz").await;
    let mut s = resume(&server, "/?global", &id_header(i)).await;
    let Next::Event(e) = s.next_within(Duration::from_millis(500)).await else {
        panic!("no event")
    };
    assert_eq!((e.event.as_str(), e.data.as_str()), ("foo", "baz"));
}

async fn a_configured_history_size_is_the_cap_and_the_missedevents_threshold(backend: Backend) {
    let mut config = backend.config();
    config.history_size = 5;
    let server = TestServer::start(config).await;
    let mut all = Vec::new();
    for i in 1..=8 {
        all.push(server.publish("a", "m", &format!("e{i}")).await);
    }
    // Client after e1: e2 and e3 were trimmed, so it is told, then gets the 5 kept.
    let mut s = resume(&server, "/?a", &id_header(all[0])).await;
    assert_eq!(s.next().await.event, "missedevents");
    assert_eq!(datas(&s.take(5).await), ["e4", "e5", "e6", "e7", "e8"]);
    s.expect_silence(QUIET).await;
    // Client after e3: the oldest kept is e4, nothing lost.
    let mut s = resume(&server, "/?a", &id_header(all[2])).await;
    let got = s.take(5).await;
    assert_eq!(datas(&got), ["e4", "e5", "e6", "e7", "e8"]);
    s.expect_silence(QUIET).await;
}

/// History size 3. a: 1, b: 2, b: 3, a: 4, a: 5, a: 6, so a keeps 4,5,6 (full, 1 trimmed) and b
/// keeps 2,3.
async fn a_last_id_from_another_channel_is_no_reason_for_missedevents(backend: Backend) {
    let mut config = backend.config();
    config.history_size = 3;
    let server = TestServer::start(config).await;
    let mut id = Vec::new();
    for ch in ["a", "b", "b", "a", "a", "a"] {
        id.push(server.publish(ch, "m", ch).await);
    }
    // From a's 1, with b requested too: 2 and 3 are b's, nothing lost.
    let mut s = resume(&server, "/?a&b", &id_header(id[0])).await;
    assert_eq!(ids(&s.take(5).await), id[1..]);
    s.expect_silence(QUIET).await;
    // From b's 3, asking for a only: the gap 3..4 is empty.
    let mut s = resume(&server, "/?a", &id_header(id[2])).await;
    assert_eq!(ids(&s.take(3).await), id[3..]);
    s.expect_silence(QUIET).await;
    // From a's 1, asking for a only: 2 and 3 are in no requested history. The in-memory broker
    // knows every trim it made (a's newest trimmed is 1), so nothing was lost; on Redis the
    // gem's publisher may have trimmed a without recording it, so they may have been a's.
    let mut s = resume(&server, "/?a", &id_header(id[0])).await;
    match backend {
        Backend::Memory => {
            let got = s.take(3).await;
            assert_eq!(got[0].event, "m", "no missedevents in memory: {got:?}");
            assert_eq!(ids(&got), id[3..]);
            s.expect_silence(QUIET).await;
        }
        Backend::Redis(_) => {
            assert_eq!(s.next().await.event, "missedevents");
            assert_eq!(ids(&s.take(3).await), id[3..]);
        }
    }
}

async fn a_channel_never_trimmed_never_gives_missedevents(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let before = server.publish("other", "m", "o").await;
    let first = server.publish("a", "m", "a1").await;
    for i in 0..150 {
        server.publish("other", "m", &format!("o{i}")).await;
    }
    let second = server.publish("a", "m", "a2").await;
    // From a's first event, the 150 between are another channel's: a is not full.
    let mut s = resume(&server, "/?a", &id_header(first)).await;
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(second.to_string()), "a2"));
    s.expect_silence(QUIET).await;
    // From an id before any of a's events: a is still not full.
    let mut s = resume(&server, "/?a", &id_header(before)).await;
    assert_eq!(datas(&s.take(2).await), ["a1", "a2"]);
    s.expect_silence(QUIET).await;
}

async fn lasteventid_event_only_when_nothing_is_replayed_and_the_counter_exists(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    // No counter yet: nothing at all before the first live event.
    let mut s = server.stream("/?a", &[]).await;
    s.expect_silence(QUIET).await;
    let id = server.publish("a", "m", "live").await;
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), "live"));
    assert_eq!(
        String::from_utf8_lossy(&s.raw),
        format!("id: {id}\nevent: m\ndata: live\n\n")
    );
    // The counter exists: the exact lastEventId event comes first.
    let other = server.publish("b", "m", "x").await;
    let mut s = server.stream("/?a", &[]).await;
    s.next().await;
    assert_eq!(
        String::from_utf8_lossy(&s.raw),
        format!("id: {other}\nevent: lastEventId\ndata: \n\n")
    );
    // With a last id and nothing after it on the channel: the counter too.
    let mut s = resume(&server, "/?a", &id_header(id)).await;
    let e = s.next().await;
    assert_eq!(
        (e.event.as_str(), e.id),
        ("lastEventId", Some(other.to_string()))
    );
    s.expect_silence(QUIET).await;
    // Something replayed: no lastEventId event.
    let mut s = resume(&server, "/?a&b", &id_header(id)).await;
    let e = s.next().await;
    assert_eq!((e.event.as_str(), e.data.as_str()), ("m", "x"));
    s.expect_silence(QUIET).await;
}

async fn the_header_wins_over_the_query_parameter(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut id = Vec::new();
    for i in 1..=3 {
        id.push(server.publish("a", "m", &format!("e{i}")).await);
    }
    let path = format!("/?a&lastEventId={}", id[0]);
    let mut s = server
        .stream(&path, &[("last-event-id", &id_header(id[1]))])
        .await;
    assert_eq!(datas(&s.take(1).await), ["e3"]);
    s.expect_silence(QUIET).await;
    let mut s = server.stream(&path, &[]).await;
    assert_eq!(datas(&s.take(2).await), ["e2", "e3"]);
    s.expect_silence(QUIET).await;
    // An empty header is still the header: no position, whatever the query says.
    let mut s = server.stream(&path, &[("last-event-id", "")]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    s.expect_silence(QUIET).await;
}

async fn empty_or_zero_means_no_position(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let last = server.publish("a", "m", "e1").await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("/?a", &[("last-event-id", "0")]),
        ("/?a", &[("last-event-id", "")]),
        ("/?a&lastEventId=0", &[]),
        ("/?a&lastEventId=", &[]),
    ];
    for (path, headers) in cases {
        let mut s = server.stream(path, headers).await;
        assert_eq!(s.status, 200);
        let e = s.next().await;
        assert_eq!(
            (e.event.as_str(), e.id),
            ("lastEventId", Some(last.to_string())),
            "{path} {headers:?}"
        );
        s.expect_silence(Duration::from_millis(100)).await;
    }
}

async fn an_unusable_id_opens_the_stream_with_missedevents_then_live_events(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    server.publish("a", "m", "old").await;
    for bad in ["abc", "-5", "99999999999999999999", "1.5"] {
        let mut s = resume(&server, "/?a", bad).await;
        let first = s.next().await;
        assert_eq!(first.event, "missedevents", "Last-Event-ID {bad:?}");
        // The preamble is out, so the stream is live.
        let live = server.publish("a", "m", "live").await;
        let mut next = s.next().await;
        if next.event == "lastEventId" {
            next = s.next().await;
        }
        assert_eq!(
            next.data, "live",
            "Last-Event-ID {bad:?}: history is not replayed"
        );
        assert_eq!(next.id, Some(live.to_string()));
    }
    let mut s = server.stream("/?a&lastEventId=x1", &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next().await.event, "missedevents");
}

async fn a_last_id_beyond_the_counter_gives_missedevents_then_all_history(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    let mut id = Vec::new();
    for ch in ["a", "b", "a"] {
        id.push(server.publish(ch, "m", ch).await);
    }
    let mut s = resume(&server, "/?a&b", &id_header(id[2] + 1000)).await;
    assert_eq!(s.next().await.event, "missedevents");
    assert_eq!(ids(&s.take(3).await), id);
    let live = server.publish("b", "m", "live").await;
    assert_eq!(s.next().await.id, Some(live.to_string()));
    s.expect_silence(QUIET).await;
}

/// A client without a position that is sent events while its stream is being set up gets them
/// (it was connected), and no id after the `lastEventId` hint is lower than the hint's.
async fn events_published_as_a_stream_opens_arrive_once_and_never_below_the_hint(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    // `old` is already subscribed here (another stream listens), `new{i}` is not yet.
    let _other = server.live_stream("/?old").await;
    server.publish("elsewhere", "m", "counter").await;
    for i in 0..20 {
        let fresh = format!("new{i}");
        let mut s = server.stream(&format!("/?old&{fresh}"), &[]).await;
        let mut published = Vec::new();
        for ch in ["old", fresh.as_str(), "old"] {
            published.push(server.publish(ch, "m", ch).await);
        }
        let mut got = Vec::new();
        let mut floor = 0;
        while got.last() != published.last() {
            let e = s.next().await;
            let id: u64 = e.id.as_deref().expect("id").parse().expect("numeric id");
            assert!(id >= floor, "round {i}: id {id} after {floor}");
            if e.event == "lastEventId" {
                assert!(got.is_empty(), "round {i}: the hint comes first");
                floor = id + 1;
                continue;
            }
            floor = id + 1;
            got.push(id);
        }
        // What came is a suffix of what was published (events before the hint's position are
        // before the client's), and the last one always comes.
        assert!(
            published.ends_with(&got),
            "round {i}: {got:?} of {published:?}"
        );
        s.expect_silence(Duration::from_millis(20)).await;
    }
}

/// Two server processes on one Redis: a client reads from one, and resumes on the other exactly
/// where it left off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_on_a_second_server_process() {
    let backend = Backend::redis();
    let one = TestServer::start(backend.config()).await;
    let two = TestServer::start(backend.config()).await;
    let mut s = one.live_stream("/?global&other").await;
    let mut published = Vec::new();
    for i in 0..5 {
        published.push(one.publish("global", "m", &format!("e{i}")).await);
    }
    let got = s.take(3).await;
    assert_eq!(ids(&got), published[..3]);
    drop(s);
    for i in 5..8 {
        published.push(two.publish("other", "m", &format!("e{i}")).await);
    }
    let mut s = resume(&two, "/?global&other", got[2].id.as_deref().unwrap()).await;
    assert_eq!(ids(&s.take(5).await), published[3..]);
    let live = one.publish("global", "m", "live").await;
    assert_eq!(s.next().await.id, Some(live.to_string()));
    s.expect_silence(QUIET).await;
}
