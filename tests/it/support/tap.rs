//! A TCP relay on a free loopback port in front of a server, recording what passes: for each
//! connection a client opened, when it was accepted, whether the server took it, the first
//! bytes each way and when the server's side ended. A test sees through it which requests a
//! browser sent (their `Last-Event-ID`), what it was answered (a `retry:`), when it came back
//! and over how many TCP connections (through TLS too, where it counts without reading).
//!
//! The server's port is fixed at the start, so a server killed and started again on the same
//! port is reached again; while it is down, a connection is accepted and closed at once (the
//! client sees a failed request, as behind any proxy). Each direction is copied to its own end:
//! what the server sent before it died is delivered before the client's side is closed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bytes kept of each direction of a connection (the rest is relayed, not kept).
const KEPT: usize = 256 * 1024;

/// One connection a client opened through the tap.
#[derive(Clone, Debug)]
pub struct Connection {
    pub accepted_at: Instant,
    /// Whether the server accepted the relayed connection.
    pub reached_server: bool,
    /// The first bytes the client sent.
    pub sent: Vec<u8>,
    /// The first bytes the server answered.
    pub received: Vec<u8>,
    /// When the server's side ended (its end of stream or a reset), if it did.
    pub server_ended_at: Option<Instant>,
    /// When the client's side ended, if it did.
    pub client_ended_at: Option<Instant>,
}

impl Connection {
    /// The HTTP/1.1 request heads the client sent on this connection (bodies are not expected:
    /// the tests send `GET`s).
    pub fn request_heads(&self) -> Vec<String> {
        let text = String::from_utf8_lossy(&self.sent);
        text.split("\r\n\r\n")
            .filter(|head| !head.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A header's value in the `index`th request head, by case-insensitive name.
    pub fn header(&self, index: usize, name: &str) -> Option<String> {
        let heads = self.request_heads();
        let head = heads.get(index)?;
        head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    /// The body of the server's HTTP/1.1 answer, de-chunked when it is chunked (as far as it
    /// came).
    pub fn response_body(&self) -> Vec<u8> {
        let Some(end) = find(&self.received, b"\r\n\r\n") else {
            return Vec::new();
        };
        let head = String::from_utf8_lossy(&self.received[..end]).to_ascii_lowercase();
        let mut rest = &self.received[end + 4..];
        if !head.contains("transfer-encoding: chunked") {
            return rest.to_vec();
        }
        let mut body = Vec::new();
        while let Some(line_end) = find(rest, b"\r\n") {
            let size = std::str::from_utf8(&rest[..line_end])
                .ok()
                .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
            let Some(size) = size else { break };
            let data = &rest[line_end + 2..];
            if size == 0 || data.len() < size {
                body.extend_from_slice(&data[..size.min(data.len())]);
                break;
            }
            body.extend_from_slice(&data[..size]);
            rest = data.get(size + 2..).unwrap_or_default();
        }
        body
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The relay, running until dropped.
pub struct Tap {
    pub port: u16,
    connections: Arc<Mutex<Vec<Connection>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Tap {
    /// Relays a free loopback port to `127.0.0.1:server_port`.
    pub async fn start(server_port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tap");
        let port = listener.local_addr().expect("tap address").port();
        let connections: Arc<Mutex<Vec<Connection>>> = Arc::default();
        let records = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let index = {
                    let mut records = records.lock().unwrap();
                    records.push(Connection {
                        accepted_at: Instant::now(),
                        reached_server: false,
                        sent: Vec::new(),
                        received: Vec::new(),
                        server_ended_at: None,
                        client_ended_at: None,
                    });
                    records.len() - 1
                };
                tokio::spawn(relay(client, server_port, records.clone(), index));
            }
        });
        Tap {
            port,
            connections,
            task,
        }
    }

    /// The connections so far, in the order they were accepted.
    pub fn connections(&self) -> Vec<Connection> {
        self.connections.lock().unwrap().clone()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    client: TcpStream,
    server_port: u16,
    records: Arc<Mutex<Vec<Connection>>>,
    index: usize,
) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
        let mut records = records.lock().unwrap();
        records[index].server_ended_at = Some(Instant::now());
        return;
    };
    records.lock().unwrap()[index].reached_server = true;
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = copy(client_read, server_write, records.clone(), index, Way::Sent);
    let down = copy(server_read, client_write, records, index, Way::Received);
    // Each direction to its own end; a client that never closes is dropped with the tap.
    let _ = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(up, down);
    })
    .await;
}

#[derive(Clone, Copy)]
enum Way {
    Sent,
    Received,
}

async fn copy(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    records: Arc<Mutex<Vec<Connection>>>,
    index: usize,
    way: Way,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut records = records.lock().unwrap();
            let kept = match way {
                Way::Sent => &mut records[index].sent,
                Way::Received => &mut records[index].received,
            };
            let room = KEPT.saturating_sub(kept.len()).min(n);
            kept.extend_from_slice(&buf[..room]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let ended = Some(Instant::now());
    match way {
        Way::Sent => records.lock().unwrap()[index].client_ended_at = ended,
        Way::Received => records.lock().unwrap()[index].server_ended_at = ended,
    }
    let _ = to.shutdown().await;
}
