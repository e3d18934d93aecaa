//! Raw TCP clients for what `reqwest` will not do: never read, send a partial or malformed
//! request head, or count bytes without keeping them. Also the process's resident memory, and
//! running one test alone in a child process (for measurements other tests would disturb).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout_at};

/// A `GET` for a stream, with `Accept: text/event-stream` and the extra header lines.
pub fn stream_request(path_and_query: &str, extra: &[&str]) -> Vec<u8> {
    let mut req = format!(
        "GET {path_and_query} HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n"
    );
    for line in extra {
        req.push_str(line);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Connects with a small receive buffer (so a client that never reads fills up quickly).
pub async fn connect_small(addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    socket.connect(addr).await.expect("connect")
}

/// Sends `request` on a new connection and reads until the server closes it (or `wait`
/// passes, which fails the test). Returns everything received.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(request).await.expect("send the request");
    read_to_close(&mut tcp, wait).await
}

/// Reads until end of stream or a reset; fails the test if it takes longer than `wait`.
pub async fn read_to_close(tcp: &mut TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!(
                "the server did not close the connection within {wait:?}; got {:?}",
                String::from_utf8_lossy(&out[..out.len().min(400)])
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Like [`read_to_close`], but only counts the bytes.
pub async fn count_to_close(tcp: &mut TcpStream, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut total = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => panic!("the server did not close the connection within {wait:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return total,
            Ok(Ok(n)) => total += n,
        }
    }
}

/// The status code of a raw HTTP/1 response.
pub fn status_of(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"))
}

/// The resident set size of this process, in KiB (`VmRSS` in `/proc/self/status`).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

const ISOLATED: &str = "REDISSE_IT_ISOLATED";

/// Runs the test named `name` (its full path, e.g. `slow_client::memory_is_bounded`) alone in a
/// child process of this test binary, for measurements of the whole process. Returns `true` in
/// the parent, after checking the child passed (the caller then returns), and `false` in the
/// child, which goes on with the test's body.
pub fn in_child_process(name: &str) -> bool {
    if std::env::var(ISOLATED).as_deref() == Ok(name) {
        return false;
    }
    // `/proc/self/exe` runs this very binary even if a rebuild has replaced the file since.
    let out = std::process::Command::new("/proc/self/exe")
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(ISOLATED, name)
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the isolated test {name} failed:\n{stdout}\n{stderr}"
    );
    print!("{stdout}");
    true
}
