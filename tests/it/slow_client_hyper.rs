//! A client that stops reading is closed on the hyper path of a plain connection too.
//!
//! The slow client's first request is `GET /health`, which hyper serves; hyper then keeps the
//! connection for good, so its next request, a stream request, is a stream under hyper. The
//! client stops reading (a small receive buffer, as in `slow_client`): hyper blocks on the write
//! and polls the body no more, so only the server's watch of the stream's handle
//! (`server::slow`) can see that its queue overflowed and close the socket. Meanwhile a reading
//! stream on the same channel keeps receiving every event.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout_at};

use crate::on_both_brokers;
use crate::support::raw::{connect_small, count_to_close, stream_request};
use crate::support::{Backend, PATIENCE, TestServer};

on_both_brokers!(a_stream_under_hyper_that_is_not_read_is_closed_and_others_keep_up);

/// Per-connection queue bound: small, so that the slow client trips it quickly.
const QUEUE: usize = 256 * 1024;
/// Size of each event's data.
const EVENT: usize = 32 * 1024;
/// Events published before the reader reads them (well under the queue bound).
const BURST: usize = 4;
/// Bursts: 4 MB in all, far more than the queue and the socket buffers hold.
const ROUNDS: usize = 128;

async fn a_stream_under_hyper_that_is_not_read_is_closed_and_others_keep_up(backend: Backend) {
    let mut config = backend.config();
    config.max_queue_bytes = QUEUE;
    let server = TestServer::start(config).await;
    let mut reader = server.live_stream("/?big").await;

    let mut slow = connect_small(server.addr).await;
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response_to_health(&mut slow).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\nok\n"),
        "{answer:?}"
    );
    // The same connection, now hyper's: a stream request, and then no more reading.
    slow.write_all(&stream_request("/?big", &[])).await.unwrap();
    server.wait_connections(2).await;

    let data = "x".repeat(EVENT);
    let mut read = 0;
    for _ in 0..ROUNDS {
        let mut ids = Vec::with_capacity(BURST);
        for _ in 0..BURST {
            ids.push(server.publish("big", "big", &data).await);
        }
        for id in ids {
            let e = reader.next().await;
            assert_eq!(e.id, Some(id.to_string()), "the reader lost an event");
            assert_eq!(e.data.len(), EVENT);
            read += 1;
        }
        reader.raw = Vec::new();
    }
    assert_eq!(read, ROUNDS * BURST);
    // Gone from the hub: its body was dropped, which only happens once hyper's connection is.
    server.wait_connections(1).await;
    assert_eq!(server.redisse.metrics().slow_disconnects(), 1);
    // Its socket is closed: what it can still read is what the kernel had buffered.
    let leftover = count_to_close(&mut slow, PATIENCE).await;
    assert!(
        leftover < ROUNDS * BURST * EVENT / 2,
        "the slow client could read {leftover} bytes after its disconnection"
    );
    // The reader is still fine, and nobody else was disconnected.
    let id = server.publish("big", "after", "x").await;
    let e = reader.next().await;
    assert_eq!((e.id, e.event), (Some(id.to_string()), "after".to_owned()));
    assert_eq!(server.redisse.metrics().slow_disconnects(), 1);
}

/// Reads the answer to `GET /health` (a head and `ok\n`), and nothing more.
async fn read_response_to_health(tcp: &mut tokio::net::TcpStream) -> String {
    let deadline = Instant::now() + PATIENCE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.ends_with(b"\r\n\r\nok\n") {
        match timeout_at(deadline, tcp.read(&mut chunk)).await {
            Err(_) => panic!(
                "no answer to /health in time; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => panic!(
                "closed before answering /health; got {:?}",
                String::from_utf8_lossy(&buf)
            ),
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8(buf).expect("an ASCII answer")
}
