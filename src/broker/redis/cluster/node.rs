//! One RESP3 connection to one cluster node, for sharded pub/sub and the few commands around it.
//!
//! The Redis client's multiplexed connection has no `SSUBSCRIBE` of its own outside its cluster
//! connection, which resubscribes by itself after a failover and so hides the very outage the
//! subscriber must see to refill from history. So the subscriber speaks to each primary on a
//! connection of this module: a TCP socket, TLS over it when the seeds are `rediss://` URLs
//! (rustls, each node's certificate checked for the host the slot map names it by, against the
//! CA of `redis_tls_ca` or the system's roots), `HELLO 3` (with `AUTH` when the seeds carry
//! credentials), then commands written in RESP and replies read by a small RESP3 reader.
//!
//! A reader task owns the socket's read half. Pushes (`smessage`, `ssubscribe`,
//! `sunsubscribe`) go to the handler the connection was made with, on that task, in the order
//! the node sent them, and so does a `MOVED` error, as a one-item push of that error: it can
//! only answer an `SSUBSCRIBE` (or `SUNSUBSCRIBE`) sent on a slot the node no longer serves,
//! the only commands with a key this connection sends, so no request waits for it and the
//! connection stays up. Every other reply answers the oldest request still waiting, in order
//! (`SSUBSCRIBE` and `SUNSUBSCRIBE` are answered by pushes only, so they wait for nothing).
//! Another error reply, a reply nobody waits for, a reply that is not RESP, or the end of the
//! stream marks the connection lost: the reader reports it once, with the reason, and stops. What it
//! buffers is bounded: one reply at most [`MAX_BULK`] long, nested at most [`MAX_DEPTH`] deep.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The longest string a reply may carry (Redis's own default `proto-max-bulk-len`).
pub(crate) const MAX_BULK: usize = 512 * 1024 * 1024;
/// How deep replies nest at most (pub/sub replies nest one level; `HELLO` two).
const MAX_DEPTH: usize = 8;
/// Elements of one aggregate reply at most.
const MAX_ITEMS: usize = 1 << 20;

/// A RESP3 reply, as far as this module needs to tell them apart.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Reply {
    /// A simple string, a number in text (double, big number) or a boolean (`1`/`0`).
    Simple(String),
    Error(String),
    Int(i64),
    /// A bulk or verbatim string.
    Bulk(Vec<u8>),
    Null,
    /// An array, a set, or a map (keys and values in turn).
    Array(Vec<Reply>),
    /// A push: the kind first (`smessage`, ...), then its data.
    Push(Vec<Reply>),
}

impl Reply {
    /// The bytes of a string reply.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Reply::Simple(s) => Some(s.as_bytes()),
            Reply::Bulk(b) => Some(b),
            _ => None,
        }
    }
}

/// Parses one reply at the start of `buf`: `Ok(None)` when it is not complete yet, else the
/// reply and how many bytes it took.
pub(crate) fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Reply, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("a reply nested too deep".into());
    }
    let Some(rest) = buf.get(at..) else {
        return Ok(None);
    };
    let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
        if rest.len() > 64 * 1024 {
            return Err("a reply line longer than 64 KiB".into());
        }
        return Ok(None);
    };
    let Some((&kind, line)) = rest[..end].split_first() else {
        return Err("an empty reply line".into());
    };
    let line = std::str::from_utf8(line).map_err(|_| "a reply line that is not UTF-8")?;
    let next = at + end + 2;
    let number = || -> Result<i64, String> {
        line.parse::<i64>()
            .map_err(|_| format!("{line:?} is not a number"))
    };
    match kind {
        b'+' | b',' | b'(' => Ok(Some((Reply::Simple(line.to_owned()), next))),
        b'#' => Ok(Some((
            Reply::Simple(if line == "t" { "1" } else { "0" }.to_owned()),
            next,
        ))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), next))),
        b':' => Ok(Some((Reply::Int(number()?), next))),
        b'_' => Ok(Some((Reply::Null, next))),
        b'$' | b'=' | b'!' => {
            let len = number()?;
            if len < 0 {
                return Ok(Some((Reply::Null, next)));
            }
            let len = usize::try_from(len).map_err(|_| "a length out of range")?;
            if len > MAX_BULK {
                return Err(format!("a string of {len} bytes, more than {MAX_BULK}"));
            }
            let Some(body) = buf.get(next..next + len) else {
                return Ok(None);
            };
            match buf.get(next + len..next + len + 2) {
                None | Some([_]) => return Ok(None),
                Some(b"\r\n") => {}
                Some(_) => return Err("a string not followed by CRLF".into()),
            }
            let mut body = body.to_vec();
            if kind == b'=' {
                // A verbatim string starts with its format (`txt:`).
                body.drain(..body.len().min(4));
            }
            let reply = if kind == b'!' {
                Reply::Error(String::from_utf8_lossy(&body).into_owned())
            } else {
                Reply::Bulk(body)
            };
            Ok(Some((reply, next + len + 2)))
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let count = number()?;
            if count < 0 {
                return Ok(Some((Reply::Null, next)));
            }
            let count = usize::try_from(count).map_err(|_| "a count out of range")?;
            let items = if matches!(kind, b'%' | b'|') {
                count.checked_mul(2).ok_or("a count out of range")?
            } else {
                count
            };
            if items > MAX_ITEMS {
                return Err(format!("an aggregate of {items} elements"));
            }
            let mut out = Vec::with_capacity(items.min(1024));
            let mut pos = next;
            for _ in 0..items {
                match parse_at(buf, pos, depth + 1)? {
                    Some((item, after)) => {
                        out.push(item);
                        pos = after;
                    }
                    None => return Ok(None),
                }
            }
            match kind {
                b'>' => Ok(Some((Reply::Push(out), pos))),
                // Attributes describe the reply that follows them, which is the one returned.
                b'|' => parse_at(buf, pos, depth),
                _ => Ok(Some((Reply::Array(out), pos))),
            }
        }
        other => Err(format!("an unknown reply type {:?}", other as char)),
    }
}

/// Appends `args` as one RESP command (an array of bulk strings).
pub(crate) fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Who handles a node's pushes: called on its reader task, in order; must not block.
pub(crate) type PushHandler = Arc<dyn Fn(Vec<Reply>) + Send + Sync>;

/// Where a connection reports that it was lost: its id and why.
pub(crate) type LostSender = mpsc::UnboundedSender<(u64, String)>;

type Waiters = Arc<Mutex<Pending>>;

/// The requests waiting for their replies, oldest first, each with when it was sent (also
/// those whose caller stopped waiting: their replies are still to come); once the reader
/// stopped, `closed`, and no request waits any more.
#[derive(Default)]
struct Pending {
    queue: VecDeque<(Instant, oneshot::Sender<Result<Reply, String>>)>,
    closed: bool,
}

/// How a node is reached, from the seeds' URL: over TLS (`rediss://`) with this client
/// configuration, and the credentials `HELLO` sends.
#[derive(Clone, Default)]
pub(crate) struct Access {
    pub tls: Option<Arc<rustls::ClientConfig>>,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A connection's bytes: TCP, or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Io for T {}
type Stream = Box<dyn Io>;

/// The TLS client configuration for nodes: trusting the CA certificates of `ca` (PEM) alone,
/// or the system's roots.
pub(crate) fn tls_config(ca: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    match ca {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("not a PEM certificate ({e})"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("a certificate that cannot be a trust anchor ({e})"))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() {
                return Err(
                    "rediss:// seeds without redis_tls_ca (--redis-tls-ca): this \
                            system has no CA certificate to trust; install its CA \
                            certificates, or give the cluster's CA"
                        .into(),
                );
            }
        }
    }
    if roots.is_empty() {
        return Err("no CA certificate to trust".into());
    }
    super::super::install_crypto_provider();
    Ok(rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The host of `addr` (`host:port`, `[v6]:port`) as TLS checks it in the certificate.
fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host:?} is not a host name"))
}

/// Connects to `addr`, with TLS when `access` says so; each step waits at most `timeout`.
async fn open(addr: &str, access: &Access, timeout: Duration) -> Result<Stream, String> {
    let tcp = tcp(addr, timeout).await?;
    match &access.tls {
        None => Ok(Box::new(tcp)),
        Some(tls) => Ok(Box::new(tls_over(tcp, addr, tls, timeout).await?)),
    }
}

/// A TCP connection to `addr` within `timeout`.
async fn tcp(addr: &str, timeout: Duration) -> Result<TcpStream, String> {
    let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| "no answer".to_owned())?
        .map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake over `tcp` with the node at `addr`, its certificate checked for that
/// host, within `timeout`.
async fn tls_over(
    tcp: TcpStream,
    addr: &str,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = server_name(addr)?;
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    tokio::time::timeout(timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| NO_HANDSHAKE.to_owned())?
        .map_err(|e| format!("TLS: {e}"))
}

/// Why a TLS handshake failed when the node did not answer it in time.
const NO_HANDSHAKE: &str = "no TLS handshake";

/// Whether the node at `addr` (as the slot map names it) can be reached over TLS as `access`
/// says, for the startup check: `Err((fatal, why))`, fatal when the node answers TCP and
/// refuses or fails the handshake (a certificate that is not valid for that address, or not
/// from a trusted CA).
pub(crate) async fn check_tls(
    addr: &str,
    access: &Access,
    timeout: Duration,
) -> Result<(), (bool, String)> {
    let Some(tls) = &access.tls else {
        return Ok(());
    };
    let tcp = tcp(addr, timeout).await.map_err(|e| (false, e))?;
    tls_over(tcp, addr, tls, timeout)
        .await
        .map(drop)
        .map_err(|e| (e != NO_HANDSHAKE, e))
}

/// A connection to one node (see the module documentation).
pub(crate) struct NodeConn {
    /// Unique within the process: tells a lost report of this connection from an older one's.
    pub id: u64,
    write: WriteHalf<Stream>,
    out: Vec<u8>,
    waiting: Waiters,
    reader: JoinHandle<()>,
    timeout: Duration,
}

impl Drop for NodeConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl NodeConn {
    /// Connects to `addr` (`host:port`, over TLS when `access` says so), says `HELLO 3`
    /// (authenticating as `access` says), and from then on hands pushes to `pushes` and reports
    /// its loss to `lost`. Every step, and every later request, waits at most `timeout`.
    pub async fn connect(
        addr: &str,
        id: u64,
        access: &Access,
        timeout: Duration,
        pushes: PushHandler,
        lost: LostSender,
    ) -> Result<NodeConn, String> {
        let (mut read, write) = tokio::io::split(open(addr, access, timeout).await?);
        let waiting: Waiters = Arc::default();
        let waiters = waiting.clone();
        let reader = tokio::spawn(async move {
            let why = read_loop(&mut read, &waiters, &pushes).await;
            // The waiting requests fail when their senders are dropped; later ones at once.
            let mut pending = waiters.lock().unwrap_or_else(|e| e.into_inner());
            pending.queue.clear();
            pending.closed = true;
            drop(pending);
            let _ = lost.send((id, why));
        });
        let mut con = NodeConn {
            id,
            write,
            out: Vec::new(),
            waiting,
            reader,
            timeout,
        };
        let mut hello: Vec<&[u8]> = vec![b"HELLO", b"3"];
        if let Some(password) = &access.password {
            let user = access.username.as_deref().unwrap_or("default");
            hello.extend([b"AUTH".as_slice(), user.as_bytes(), password.as_bytes()]);
        }
        match con.request(&hello).await? {
            Reply::Array(_) => Ok(con),
            other => Err(format!("HELLO 3 answered {other:?}")),
        }
    }

    /// Queues a command that no reply answers (`SSUBSCRIBE`, `SUNSUBSCRIBE`), sent at the
    /// next [`NodeConn::flush`] or request.
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode(&mut self.out, args);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<(), String> {
        if self.out.is_empty() {
            return Ok(());
        }
        let out = std::mem::take(&mut self.out);
        // Flushed too: over TLS, `write_all` may leave the end in rustls's buffer, sent only
        // at the next write, when the socket was full.
        let write = async {
            self.write.write_all(&out).await?;
            self.write.flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| "a write timed out".to_owned())?
            .map_err(|e| e.to_string())
    }

    /// Sends a command (after what is queued) and waits for its reply; an error reply is an
    /// `Err` (and the connection is then lost).
    pub async fn request(&mut self, args: &[&[u8]]) -> Result<Reply, String> {
        let timeout = self.timeout;
        self.request_waiting(args, timeout)
            .await?
            .ok_or_else(|| format!("no reply within {timeout:?}"))
    }

    /// [`NodeConn::request`], its reply waited for `wait` at most: `Ok(None)` when none came by
    /// then, which says nothing against the connection (a reply that comes later is read and
    /// dropped in its turn).
    pub async fn request_waiting(
        &mut self,
        args: &[&[u8]],
        wait: Duration,
    ) -> Result<Option<Reply>, String> {
        let mut answer = self.send(args).await?;
        answer.wait(wait).await
    }

    /// Sends a command (after what is queued) and returns what its reply comes to, without
    /// waiting for it: the caller may go on using the connection meanwhile (replies come in
    /// the order their commands were sent).
    pub async fn send(&mut self, args: &[&[u8]]) -> Result<Answer, String> {
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if pending.closed {
                // Nothing would ever answer it: not a wait of `timeout` for nothing.
                return Err("the connection closed".into());
            }
            pending.queue.push_back((Instant::now(), tx));
        }
        encode(&mut self.out, args);
        self.flush().await?;
        Ok(Answer(rx))
    }

    /// How long a request waits for its reply before the connection is taken for lost.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether the oldest request still unanswered (waited for or not) was sent a whole
    /// request timeout ago: the node has answered nothing since.
    pub fn stalled(&self) -> bool {
        let pending = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        pending
            .queue
            .front()
            .is_some_and(|(sent, _)| sent.elapsed() >= self.timeout)
    }
}

/// The reply to a command sent with [`NodeConn::send`], to come.
pub(crate) struct Answer(oneshot::Receiver<Result<Reply, String>>);

impl Answer {
    /// The reply, waited for `wait` at most: `Ok(None)` when none came by then; an error
    /// reply, or the connection closing first, is an `Err`. Waited for again
    /// after `Ok(None)`, it goes on waiting for the same reply.
    pub async fn wait(&mut self, wait: Duration) -> Result<Option<Reply>, String> {
        match tokio::time::timeout(wait, &mut self.0).await {
            Err(_) => Ok(None),
            Ok(Err(_)) => Err("the connection closed".into()),
            Ok(Ok(reply)) => reply.map(Some),
        }
    }
}

/// Reads replies until the connection fails; returns why.
async fn read_loop(read: &mut ReadHalf<Stream>, waiting: &Waiters, pushes: &PushHandler) -> String {
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match read.read(&mut chunk).await {
            Ok(0) => return "the node closed the connection".into(),
            Ok(n) => n,
            Err(e) => return e.to_string(),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut start = 0;
        loop {
            let parsed = match parse(&buf[start..]) {
                Ok(p) => p,
                Err(e) => return format!("not a RESP reply: {e}"),
            };
            let Some((reply, used)) = parsed else { break };
            start += used;
            match reply {
                Reply::Push(items) => pushes(items),
                Reply::Error(e) if e.starts_with("MOVED ") => pushes(vec![Reply::Error(e)]),
                reply => {
                    let waiter = waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .queue
                        .pop_front();
                    let error = match &reply {
                        Reply::Error(e) => Some(e.clone()),
                        _ => None,
                    };
                    match waiter {
                        Some((_, tx)) => {
                            let _ = tx.send(match reply {
                                Reply::Error(e) => Err(e),
                                ok => Ok(ok),
                            });
                        }
                        None => {
                            return format!(
                                "a reply nobody waited for: {}",
                                error.as_deref().unwrap_or("(not an error)")
                            );
                        }
                    }
                    if let Some(e) = error {
                        return format!("the node answered an error: {e}");
                    }
                }
            }
        }
        buf.drain(..start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_checked_for_the_host_the_slot_map_names() {
        assert_eq!(
            server_name("10.0.0.7:7000"),
            Ok(ServerName::try_from("10.0.0.7").unwrap())
        );
        assert_eq!(
            server_name("[::1]:7000"),
            Ok(ServerName::try_from("::1").unwrap())
        );
        assert_eq!(
            server_name("node-1.cache.example:6380"),
            Ok(ServerName::try_from("node-1.cache.example").unwrap())
        );
        assert!(server_name("bad host:7000").is_err());
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let e = tls_config(Some(b"not a certificate")).unwrap_err();
        assert!(e.contains("no CA certificate"), "{e}");
    }

    /// Over TLS, `flush` hands the node everything queued. `write_all` on a rustls stream
    /// returns once rustls took the bytes, which may still sit in its buffer when the
    /// socket was full (tokio-rustls sends them at the next write or `flush`): without a
    /// `flush` of the stream, a node that reads slowly never gets the end of a batch of
    /// `SSUBSCRIBE`s, nor a request's command (which then times out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_over_tls_sends_everything_queued() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let access = Access {
            tls: Some(Arc::new(tls_config(Some(ca.pem().as_bytes())).unwrap())),
            username: None,
            password: None,
        };
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let blob = vec![b'x'; 8 << 20];
        let mut expected = Vec::new();
        encode(&mut expected, &[b"ECHO", &blob]);
        let total = expected.len();
        // Whether the end stays behind depends on the socket's state at the last write: a
        // few rounds, so that it shows.
        for round in 0..16 {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let acceptor = acceptor.clone();
            let node = tokio::spawn(async move {
                let (socket, _) = listener.accept().await.unwrap();
                let mut tls = acceptor.accept(socket).await.unwrap();
                let mut buf = [0u8; 256];
                let _ = tls.read(&mut buf).await.unwrap();
                tls.write_all(b"%1\r\n+server\r\n+redis\r\n").await.unwrap();
                tls.flush().await.unwrap();
                // A slow reader: the socket stays full while the client writes.
                let mut got = 0;
                let mut chunk = vec![0u8; 16 * 1024];
                while got < total {
                    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut chunk)).await {
                        Ok(Ok(n)) if n > 0 => got += n,
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                got
            });
            let (lost_tx, _lost_rx) = mpsc::unbounded_channel();
            let pushes: PushHandler = Arc::new(|_| {});
            let timeout = Duration::from_secs(30);
            let mut con = NodeConn::connect(&addr, 1, &access, timeout, pushes, lost_tx)
                .await
                .expect("connected over TLS");
            con.queue(&[b"ECHO", &blob]);
            con.flush().await.expect("flushed");
            let got = node.await.unwrap();
            assert_eq!(
                got, total,
                "round {round}: the node got {got} of the {total} bytes flushed"
            );
            drop(con);
        }
    }

    /// A listener on a free loopback port, standing for a node, and its address.
    async fn fake_node() -> (String, tokio::net::TcpListener) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        (listener.local_addr().unwrap().to_string(), listener)
    }

    /// Accepts one connection and answers its `HELLO 3`.
    async fn hello(listener: tokio::net::TcpListener) -> TcpStream {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = socket.read(&mut buf).await.unwrap();
        socket
            .write_all(b"%1\r\n+server\r\n+redis\r\n")
            .await
            .unwrap();
        socket
    }

    /// A node that answers `HELLO` then closes the connection: a request made after the
    /// reader saw the end fails at once, saying so, instead of waiting its whole timeout for a
    /// reply nothing will send (it did: the recovery of a cluster whose every pub/sub connection
    /// was cut waited 3 s on a `PING` to a node already gone).
    #[tokio::test]
    async fn a_request_after_the_connection_closed_fails_at_once() {
        let (addr, listener) = fake_node().await;
        let node = tokio::spawn(async move {
            // Closed on drop.
            drop(hello(listener).await);
        });
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
        let pushes: PushHandler = Arc::new(|_| {});
        let timeout = Duration::from_secs(20);
        let mut con = NodeConn::connect(&addr, 7, &Access::default(), timeout, pushes, lost_tx)
            .await
            .expect("connected");
        node.await.unwrap();
        let (id, why) = lost_rx.recv().await.expect("the loss is reported");
        assert_eq!((id, why.as_str()), (7, "the node closed the connection"));
        let started = std::time::Instant::now();
        let e = con.request(&[b"PING"]).await.unwrap_err();
        assert_eq!(e, "the connection closed");
        assert!(
            started.elapsed() < timeout,
            "it waited {:?}",
            started.elapsed()
        );
    }

    /// A `MOVED` answer (to an `SSUBSCRIBE` on a slot the node gave away) goes to the push
    /// handler and answers no request: the `PING` after it gets its `PONG`, and the connection
    /// stays up. Another error is still a loss.
    #[tokio::test]
    async fn a_moved_answer_is_handed_over_and_the_connection_stays() {
        let (addr, listener) = fake_node().await;
        let node = tokio::spawn(async move {
            let mut socket = hello(listener).await;
            let mut buf = [0u8; 256];
            let _ = socket.read(&mut buf).await.unwrap();
            socket
                .write_all(b"-MOVED 42 127.0.0.1:7001\r\n+PONG\r\n")
                .await
                .unwrap();
            let _ = socket.read(&mut buf).await.unwrap();
            socket.write_all(b"-ERR no\r\n").await.unwrap();
            socket
        });
        let (lost_tx, mut lost_rx) = mpsc::unbounded_channel();
        let handed = Arc::new(Mutex::new(Vec::new()));
        let seen = handed.clone();
        let pushes: PushHandler = Arc::new(move |items| seen.lock().unwrap().push(items));
        let timeout = Duration::from_secs(20);
        let mut con = NodeConn::connect(&addr, 3, &Access::default(), timeout, pushes, lost_tx)
            .await
            .expect("connected");
        con.queue(&[b"SSUBSCRIBE", b"x"]);
        assert_eq!(
            con.request(&[b"PING"]).await,
            Ok(Reply::Simple("PONG".into()))
        );
        assert_eq!(
            *handed.lock().unwrap(),
            [vec![Reply::Error("MOVED 42 127.0.0.1:7001".into())]]
        );
        assert!(lost_rx.try_recv().is_err(), "the connection is up");
        assert_eq!(con.request(&[b"PING"]).await, Err("ERR no".into()));
        let (id, why) = lost_rx.recv().await.expect("the loss is reported");
        assert_eq!(
            (id, why.as_str()),
            (3, "the node answered an error: ERR no")
        );
        drop(node.await.unwrap());
    }

    fn whole(text: &[u8]) -> Reply {
        let (reply, used) = parse(text).unwrap().unwrap();
        assert_eq!(used, text.len(), "{}", String::from_utf8_lossy(text));
        reply
    }

    #[test]
    fn replies_are_parsed_whole_or_waited_for() {
        assert_eq!(whole(b"+PONG\r\n"), Reply::Simple("PONG".into()));
        assert_eq!(whole(b":42\r\n"), Reply::Int(42));
        assert_eq!(
            whole(b"-MOVED 1 h:1\r\n"),
            Reply::Error("MOVED 1 h:1".into())
        );
        assert_eq!(whole(b"$3\r\nab\n\r\n"), Reply::Bulk(b"ab\n".to_vec()));
        assert_eq!(whole(b"$-1\r\n"), Reply::Null);
        assert_eq!(whole(b"_\r\n"), Reply::Null);
        assert_eq!(whole(b"=8\r\ntxt:some\r\n"), Reply::Bulk(b"some".to_vec()));
        assert_eq!(
            whole(b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n"),
            Reply::Push(vec![
                Reply::Bulk(b"smessage".to_vec()),
                Reply::Bulk(b"c".to_vec()),
                Reply::Bulk(b"hi".to_vec()),
            ])
        );
        assert_eq!(
            whole(b"%1\r\n+server\r\n+redis\r\n"),
            Reply::Array(vec![
                Reply::Simple("server".into()),
                Reply::Simple("redis".into())
            ])
        );
        // An attribute is skipped for the reply it describes.
        assert_eq!(whole(b"|1\r\n+a\r\n:1\r\n:7\r\n"), Reply::Int(7));
        // Two replies in a row: the first is taken alone.
        let (first, used) = parse(b":1\r\n:2\r\n").unwrap().unwrap();
        assert_eq!((first, used), (Reply::Int(1), 4));
        // Incomplete: every prefix of a reply waits for more.
        let push = b">3\r\n$8\r\nsmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n";
        for cut in 0..push.len() {
            assert_eq!(parse(&push[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn what_is_not_resp_or_too_big_is_refused() {
        assert!(parse(b"?what\r\n").is_err());
        assert!(parse(b":x\r\n").is_err());
        assert!(parse(b"$2\r\nabcd\r\n").is_err());
        assert!(parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()).is_err());
        assert!(parse(format!("*{}\r\n", MAX_ITEMS + 1).as_bytes()).is_err());
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert!(parse(deep.as_bytes()).is_err());
        assert!(parse(&vec![b'+'; 70 * 1024]).is_err());
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SSUBSCRIBE", b"a b"]);
        assert_eq!(out, b"*2\r\n$10\r\nSSUBSCRIBE\r\n$3\r\na b\r\n");
    }
}
