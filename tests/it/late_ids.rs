//! Two publishers in the gem's layout racing (each `INCR`s, then `PUBLISH`es and `ZADD`s): the
//! lower id can arrive second. A stream delivers such a late event once, without its `id:`
//! line (so the browser's last id stays the highest), and a resume after it repeats nothing and
//! skips nothing (see `src/seen.rs`; the window is 64 ids).

use std::time::Duration;

use crate::support::sse::Next;
use crate::support::{Backend, RedisServer, SseStream, TestServer};

/// The second half of a gem publish: `PUBLISH` then `ZADD`, as the gem does.
fn publish_as_the_gem(redis: &RedisServer, channel: &str, id: u64, data: &str) {
    let payload = format!("id: {id}\nevent: m\ndata: {data}\n\n");
    redis.publish_raw(channel, &payload);
    redis.store_raw(channel, id, &payload);
}

/// Nothing more arrives but the `lastEventId` hint a stream with nothing to replay starts with.
async fn quiet(stream: &mut SseStream) {
    loop {
        match stream.next_within(Duration::from_millis(300)).await {
            Next::Timeout => return,
            Next::Event(e) if e.event == "lastEventId" => continue,
            other => panic!("nothing more was expected, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_gem_publishers_lose_nothing_live_or_on_resume() {
    let backend = Backend::redis();
    let server = TestServer::start(backend.config()).await;
    let redis = backend.redis_server();
    let mut both = server.live_stream("/?a&b").await;
    let (low, high) = tokio::task::block_in_place(|| {
        let low = redis.next_id();
        let high = redis.next_id();
        // The higher id is published first.
        publish_as_the_gem(redis, "b", high, "high");
        publish_as_the_gem(redis, "a", low, "low");
        (low, high)
    });
    let first = both.next().await;
    assert_eq!(
        (first.id, first.data.as_str()),
        (Some(high.to_string()), "high")
    );
    let late = both.next().await;
    assert_eq!(late.data, "low", "the late event is delivered");
    assert_eq!(
        late.id, None,
        "without its id: the browser's last id stays {high}"
    );
    let next = server.publish("a", "m", "next").await;
    assert_eq!(both.next().await.id, Some(next.to_string()));
    quiet(&mut both).await;

    // A browser that got all of it resumes from the highest id it saw: nothing again.
    let mut resumed = server
        .stream("/?a&b", &[("Last-Event-ID", &next.to_string())])
        .await;
    quiet(&mut resumed).await;
    // One that went away right after the late event resumes from `high`: only what followed.
    let mut resumed = server
        .stream("/?a&b", &[("Last-Event-ID", &high.to_string())])
        .await;
    assert_eq!(resumed.next().await.id, Some(next.to_string()));
    quiet(&mut resumed).await;
    // One that went away before either resumes from before both: both, in id order.
    let mut resumed = server
        .stream("/?a&b", &[("Last-Event-ID", &(low - 1).to_string())])
        .await;
    let ids: Vec<Option<String>> = resumed.take(3).await.into_iter().map(|e| e.id).collect();
    assert_eq!(
        ids,
        [
            Some(low.to_string()),
            Some(high.to_string()),
            Some(next.to_string())
        ]
    );
}
