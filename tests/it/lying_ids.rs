//! An id far beyond Redis's counter, written by another Redis client, moves no shared state: it
//! is refused (counted as malformed) live and in history, so the other channels of a stream
//! keep flowing and a later pub/sub reconnection sees no false data loss.
//!
//! The rule (README, "Ids that lie"): a live event whose id is more than `MAX_ID_LEAD`
//! (10,000,000) past the highest counter this process has read (at each
//! connection, each stream's history read and each watchdog tick) is refused; a history entry
//! whose id is past the counter read in the same atomic snapshot is refused.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use crate::support::sse::Next;
use crate::support::{Backend, PATIENCE, TestServer};

const LIE: &str = "id: 9223372036854775807\nevent: lie\ndata: forged\n\n";
const LIE_ID: u64 = 9_223_372_036_854_775_807;

fn malformed(server: &TestServer) -> u64 {
    server.metric("redisse_malformed_payloads_total")
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_live_id_on_one_channel_does_not_stop_the_others() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let redis = backend.redis_server();
    let mut both = server.live_stream("/?a&b").await;
    let mut only_b = server.live_stream("/?b").await;
    let first = server.publish("b", "m", "before").await;
    assert_eq!(both.next().await.id, Some(first.to_string()));
    assert_eq!(only_b.next().await.id, Some(first.to_string()));

    tokio::task::block_in_place(|| redis.publish_raw("a", LIE));
    wait_for("the lie to be refused", || malformed(&server) == 1).await;
    let next = server.publish("b", "m", "after").await;
    let got = both.next().await;
    assert_eq!(
        (got.id.as_deref(), got.event.as_str()),
        (Some(next.to_string().as_str()), "m"),
        "the stream on a and b goes on with b's next event"
    );

    // A pub/sub reconnection afterwards refills from the real last id: no missedevents, no
    // duplicate, for either stream.
    let reconnects = server.metric("redisse_broker_reconnects_total");
    tokio::task::block_in_place(|| redis.kill_pubsub_clients());
    wait_for("the subscriber to reconnect", || {
        server.metric("redisse_broker_reconnects_total") > reconnects
    })
    .await;
    let last = server.publish("b", "m", "after the reconnection").await;
    for stream in [&mut both, &mut only_b] {
        loop {
            let e = stream.next().await;
            assert_ne!(e.event, "missedevents", "nothing was lost");
            assert_ne!(e.id, Some(LIE_ID.to_string()));
            let id: u64 = e.id.as_deref().expect("an id").parse().expect("numeric");
            assert!(id > first, "no duplicate of {id}");
            if id == last {
                break;
            }
        }
        assert!(matches!(
            stream.next_within(Duration::from_millis(300)).await,
            Next::Timeout
        ));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lying_history_entry_is_not_replayed() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let redis = backend.redis_server();
    let before = server.publish("a", "m", "before").await;
    let real = server.publish("a", "m", "real").await;
    tokio::task::block_in_place(|| {
        redis.store_raw("a", LIE_ID, LIE);
    });
    let mut resumed = server
        .stream("/?a", &[("Last-Event-ID", &before.to_string())])
        .await;
    let e = resumed.next().await;
    assert_eq!(e.id, Some(real.to_string()));
    let after = server.publish("a", "m", "live").await;
    let e = resumed.next().await;
    assert_eq!(
        e.id,
        Some(after.to_string()),
        "the live event after the real one, not the lie"
    );
    assert!(malformed(&server) >= 1);
}
