//! A client that never reads is disconnected; others keep receiving (docs/limits.md).
//!
//! The slow client is a raw TCP socket with a small receive buffer that sends its request and
//! never reads. Large events go to its channel while a reading client measures how long each
//! event takes to reach it. The slow client must be disconnected (its socket closed, the
//! connection gone from the hub, `slow_disconnects` counted) and the process's resident
//! memory must stay bounded while more than 50 MB go through the channel.

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use crate::on_both_brokers;
use crate::support::raw::{self, connect_small, count_to_close, rss_kib, stream_request};
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(a_client_that_never_reads_is_disconnected_and_others_keep_up);

/// Per-connection queue bound used here: small, so that the slow client trips it quickly.
const QUEUE: usize = 256 * 1024;
/// Size of each large event's data.
const EVENT: usize = 32 * 1024;
/// Events published per round before the reader reads them (well under the queue bound).
const BURST: usize = 4;
/// The longest a reading client may wait for an event while the slow one is stuck.
const PROMPT: Duration = Duration::from_millis(1500);

async fn a_client_that_never_reads_is_disconnected_and_others_keep_up(backend: Backend) {
    let mut config = backend.config();
    config.max_queue_bytes = QUEUE;
    let server = TestServer::start(config).await;
    let mut reader = server.live_stream("/?big").await;
    let mut slow = connect_small(server.addr).await;
    slow.write_all(&stream_request("/?big", &[])).await.unwrap();
    wait_for(
        || server.redisse.connections() == 2,
        "the slow client's stream",
    )
    .await;

    // 4 MB through the channel: far more than the queue and the socket buffers hold.
    let (events, worst) = publish_and_read(&server, &mut reader, 128).await;
    assert_eq!(events, 128 * BURST);
    assert!(
        worst < PROMPT,
        "an event took {worst:?} to reach the reader"
    );
    wait_for(
        || server.redisse.connections() == 1,
        "the slow client to be disconnected",
    )
    .await;
    assert_eq!(server.redisse.metrics().slow_disconnects(), 1);
    // Its socket is closed: what it can still read is what the kernel had buffered.
    let leftover = count_to_close(&mut slow, PATIENCE).await;
    assert!(
        leftover < 128 * BURST * EVENT / 2,
        "the slow client could read {leftover} bytes after its disconnection"
    );
    // The reader is still fine.
    let id = server.publish("big", "after", "x").await;
    let e = reader.next().await;
    assert_eq!((e.id, e.event), (Some(id.to_string()), "after".to_string()));
}

/// Publishes `rounds` bursts of large events on `big` and reads each burst with `reader`.
/// Returns the events read and the longest time one took to arrive.
async fn publish_and_read(
    server: &TestServer,
    reader: &mut crate::support::SseStream,
    rounds: usize,
) -> (usize, Duration) {
    let data = "x".repeat(EVENT);
    let (mut read, mut worst) = (0, Duration::ZERO);
    for _ in 0..rounds {
        let sent = Instant::now();
        let mut ids = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            ids.push(server.publish("big", "big", &data).await);
        }
        for id in ids {
            let e = reader.next().await;
            assert_eq!(e.id, Some(id.to_string()), "the reader lost an event");
            assert_eq!(e.data.len(), EVENT);
            worst = worst.max(sent.elapsed());
            read += 1;
        }
        // The test client keeps every byte; drop them so they do not count as server memory.
        reader.raw = Vec::new();
    }
    (read, worst)
}

async fn wait_for(mut done: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + PATIENCE;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// More than 50 MB through the channel of clients that never read: the process's resident
/// memory grows by less than [`RSS_BOUND_KIB`]. Runs in a child process, alone, so that other
/// tests do not disturb the measurement.
#[test]
fn memory_stays_bounded_under_clients_that_never_read() {
    if raw::in_child_process("slow_client::memory_stays_bounded_under_clients_that_never_read") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(memory_stays_bounded(Backend::memory()));
}

/// The stated bound on resident memory growth: the in-memory history alone holds 100 events
/// of 32 KiB (3.2 MB), and the allocator keeps some slack.
const RSS_BOUND_KIB: u64 = 24 * 1024;

async fn memory_stays_bounded(backend: Backend) {
    let mut config = backend.config();
    config.max_queue_bytes = QUEUE;
    let server = TestServer::start(config).await;
    let mut reader = server.live_stream("/?big").await;
    // Warm up the allocator and the history with a first pass, then measure.
    publish_and_read(&server, &mut reader, 50).await;
    let before = rss_kib();
    let mut slow_clients = Vec::new();
    let mut published = 0;
    // 10 rounds of 40 bursts of 4 x 32 KiB: 52 MB; a new client that never reads each round.
    for round in 0..10 {
        let mut slow = connect_small(server.addr).await;
        slow.write_all(&stream_request("/?big", &[])).await.unwrap();
        wait_for(
            || server.redisse.connections() == 2,
            "the slow client's stream",
        )
        .await;
        let (events, worst) = publish_and_read(&server, &mut reader, 40).await;
        published += events * EVENT;
        assert!(worst < PROMPT, "round {round}: an event took {worst:?}");
        wait_for(
            || server.redisse.connections() == 1,
            "the slow client to be disconnected",
        )
        .await;
        slow_clients.push(slow);
    }
    let after = rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "slow clients: published {} MB; RSS {before} KiB -> {after} KiB (growth {growth} KiB, bound {RSS_BOUND_KIB} KiB)",
        published / 1_000_000
    );
    assert!(published > 50_000_000);
    assert_eq!(server.redisse.metrics().slow_disconnects(), 10);
    assert!(
        growth < RSS_BOUND_KIB,
        "resident memory grew by {growth} KiB while {published} bytes were published"
    );
}
