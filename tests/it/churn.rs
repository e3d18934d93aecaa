//! Thousands of connect/disconnect cycles leave nothing behind.
//!
//! 3000 raw TCP clients per broker, 30 at a time, each on a few of 50 channels, leave in every
//! way a client can: after the stream is live, right after sending the request (while the
//! stream is still being set up), after the response head, or in the middle of the request
//! head. Afterwards no connection, subscription (in the hub, and on Redis per `PUBSUB`) or
//! task may remain: the runtime's count of alive tasks returns to what it was before.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use crate::on_both_brokers;
use crate::support::raw::stream_request;
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(thousands_of_cycles_leave_no_connection_subscription_or_task);

const WORKERS: usize = 30;
const CYCLES_PER_WORKER: usize = 100;
const CHANNELS: usize = 50;

/// How a client leaves.
#[derive(Clone, Copy)]
enum Leave {
    /// Once the stream is live (its `lastEventId` event arrived).
    WhenLive,
    /// Right after sending the request, while the stream may still be set up.
    AfterRequest,
    /// After the response head.
    AfterHead,
    /// In the middle of the request head.
    MidHead,
}

async fn cycle(addr: SocketAddr, n: usize) {
    let leave = [
        Leave::WhenLive,
        Leave::AfterRequest,
        Leave::AfterHead,
        Leave::MidHead,
    ][n % 4];
    let path = format!("/?c{}&c{}&all", n % CHANNELS, (n * 7 + 3) % CHANNELS);
    let request = stream_request(&path, &[]);
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    match leave {
        Leave::MidHead => {
            tcp.write_all(&request[..request.len() / 2]).await.unwrap();
            return;
        }
        _ => tcp.write_all(&request).await.unwrap(),
    }
    let until: &[u8] = match leave {
        Leave::AfterRequest => return,
        Leave::AfterHead => b"\r\n\r\n",
        _ => b"event: lastEventId\n",
    };
    read_until(&mut tcp, until).await;
}

async fn read_until(tcp: &mut TcpStream, marker: &[u8]) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !got.windows(marker.len()).any(|w| w == marker) {
        let n = timeout(deadline - Instant::now(), tcp.read(&mut buf))
            .await
            .expect("the stream answered in time")
            .expect("read");
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Channels Redis has subscribers for (`PUBSUB CHANNELS`), or none in memory.
fn redis_channels(backend: &Backend) -> Vec<String> {
    match backend {
        Backend::Memory => Vec::new(),
        Backend::Redis(r) => redis::cmd("PUBSUB")
            .arg("CHANNELS")
            .query(&mut r.con())
            .expect("PUBSUB CHANNELS"),
    }
}

async fn thousands_of_cycles_leave_no_connection_subscription_or_task(backend: Backend) {
    let server = TestServer::start(backend.config()).await;
    server.publish("warm", "m", "").await;
    // One live stream first: its subscription shows where it should, then goes.
    let mut sanity = TcpStream::connect(server.addr).await.unwrap();
    sanity
        .write_all(&stream_request("/?sanity", &[]))
        .await
        .unwrap();
    read_until(&mut sanity, b"event: lastEventId\n").await;
    assert_eq!(server.redisse.subscribed_channels(), 1);
    if let Backend::Redis(r) = &backend {
        let numsub: (String, u64) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg("sanity")
            .query(&mut r.con())
            .unwrap();
        assert_eq!(numsub.1, 1);
    }
    drop(sanity);
    settle(&server, &backend, usize::MAX).await;
    let baseline = alive_tasks();

    let started = Instant::now();
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| {
            let addr = server.addr;
            tokio::spawn(async move {
                for i in 0..CYCLES_PER_WORKER {
                    cycle(addr, w * CYCLES_PER_WORKER + i).await;
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("a churn worker failed");
    }
    let churn = started.elapsed();
    // A client that closed at once (after its request, or mid-head) may still wait in the
    // listener's accept queue when the workers are done, to be accepted later. The queue is
    // first in, first out: once a new stream is served, every earlier connection was accepted.
    let mut last = TcpStream::connect(server.addr).await.unwrap();
    last.write_all(&stream_request("/?sanity", &[]))
        .await
        .unwrap();
    read_until(&mut last, b"event: lastEventId\n").await;
    drop(last);
    settle(&server, &backend, baseline).await;
    println!(
        "churn: {} cycles in {churn:?}; alive tasks {baseline} before, {} after",
        WORKERS * CYCLES_PER_WORKER,
        alive_tasks()
    );
    assert_eq!(server.redisse.stats().connected, 0);
    // Still serving.
    let mut s = server.live_stream("/?c1&all").await;
    let id = server.publish("all", "m", "after churn").await;
    assert_eq!(s.next().await.id, Some(id.to_string()));
}

fn reconnects(server: &TestServer) -> u64 {
    server.metric("redisse_broker_reconnects_total")
}

/// Waits until nothing is left: no connection, no local or Redis subscription, and at most
/// `tasks` alive tasks.
async fn settle(server: &TestServer, backend: &Backend, tasks: usize) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (conns, subs) = (
            server.redisse.connections(),
            server.redisse.subscribed_channels(),
        );
        let redis = redis_channels(backend);
        let alive = alive_tasks();
        // A reconnection of the Redis subscriber (its PING times out on a loaded machine) may
        // leave a connection task of its own: that is per reconnection, not per client.
        let allowed = tasks.saturating_add(reconnects(server) as usize);
        let counted = server.redisse.stats().connected;
        if conns == 0 && counted == 0 && subs == 0 && redis.is_empty() && alive <= allowed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "left behind: {conns} connections ({counted} counted), {subs} subscribed channels, Redis channels \
             {redis:?}, {alive} alive tasks (baseline {tasks}); broker reconnects {}",
            reconnects(server)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
