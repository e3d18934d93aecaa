//! Steps that the tests of Redis outages (`outage.rs`) and of many processes on one Redis
//! (`scale_out.rs`) share: polling a condition with a deadline, Redis's own count of a
//! channel's subscribers, blocking calls that must not stall the runtime, and reading a live
//! stream through an id.

use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::{PATIENCE, RedisServer, SseEvent, SseStream};

/// Polls `cond` every 10 ms until it holds; fails the test after [`PATIENCE`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + PATIENCE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

/// Subscribers of `channel` as Redis counts them (-1 when Redis cannot be asked).
pub fn numsub(redis: &RedisServer, channel: &str) -> i64 {
    let Ok(client) = redis::Client::open(redis.url()) else {
        return -1;
    };
    let Ok(mut con) = client.get_connection() else {
        return -1;
    };
    let reply: redis::RedisResult<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query(&mut con);
    reply.map_or(-1, |(_, n)| n)
}

/// Runs a blocking operation (on a Redis process, say) without stalling the runtime's other
/// tasks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// An event's numeric id (fails the test when it has none).
pub fn id_of(e: &SseEvent) -> u64 {
    e.id.as_deref().expect("id").parse().expect("numeric id")
}

/// Reads events until one with id `last` (inclusive); fails on `missedevents`.
pub async fn read_through(s: &mut SseStream, last: u64) -> Vec<u64> {
    let mut ids = Vec::new();
    while ids.last() != Some(&last) {
        let e = s.next().await;
        assert_ne!(
            e.event, "missedevents",
            "nothing was lost; got {ids:?} so far"
        );
        let id = id_of(&e);
        assert!(
            ids.last().is_none_or(|&prev| id > prev),
            "ids go up: {id} after {ids:?}"
        );
        assert!(id <= last, "unexpected id {id} past {last}");
        ids.push(id);
    }
    ids
}
