//! The listeners the standalone server binds: TCP with the socket options a push server needs,
//! and unix sockets that clean up their file. Both are axum [`Listener`]s, so they also serve
//! under `axum::serve`, and any other `Listener` serves under [`super::serve`].

use std::io;
use std::net::SocketAddr;
#[cfg(unix)]
use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpSocket, TcpStream};

/// Connections the kernel queues before they are accepted. The standard library's 128 drops
/// SYNs when hundreds of clients connect at once (a reconnect storm after a restart), and each
/// dropped SYN costs its client a one-second retransmission; the kernel caps this value at
/// `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 1024;

/// How long to wait after a failed accept (out of file descriptors, mostly) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

// A peer that vanished without a FIN or RST (a phone that lost its network, a host switched
// off, a NAT that dropped its mapping) would otherwise hold its socket, its queue and its
// subscriptions for as long as the kernel likes: hours without keepalive when the stream is
// idle, about 15 minutes of retransmissions when we are writing to it. Both cases are bounded
// at two minutes:
// - idle (nothing in flight): the first keepalive probe after 60 s of silence, then one every
//   10 s, and the connection is dropped after 6 unanswered ones: 60 + 6 × 10 = 120 s. The
//   heartbeat (15 s by default) usually means data is in flight instead, which is the next case;
//   60 s stays under the idle timeouts of common NATs and load balancers.
// - writing (data unacknowledged): TCP_USER_TIMEOUT drops the connection once data has stayed
//   unacknowledged for 120 s, the same bound, long enough for a mobile client to cross a
//   tunnel or switch networks. Linux also applies it to the keepalive probes, so the two agree.
// Not configurable: no deployment has needed another value yet.
/// Silence before the first keepalive probe.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// Between two keepalive probes.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
))]
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes before the connection is dropped.
#[cfg(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
))]
const KEEPALIVE_PROBES: u32 = 6;
/// Longest time sent data may stay unacknowledged (`TCP_USER_TIMEOUT`, Linux).
#[cfg(any(target_os = "linux", target_os = "android"))]
const USER_TIMEOUT: Duration = Duration::from_secs(120);

/// Sets the options of an accepted connection: `TCP_NODELAY` (small frames must not wait for
/// Nagle's algorithm), keepalive and `TCP_USER_TIMEOUT` (a dead peer is found within two
/// minutes). A failure leaves the connection served without the option, as the kernel's
/// defaults would.
fn set_options(stream: &TcpStream) {
    let _ = stream.set_nodelay(true);
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new().with_time(KEEPALIVE_IDLE);
    // Where the kernel lets the interval and the count be set per socket.
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "freebsd"
    ))]
    let keepalive = keepalive
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = socket.set_tcp_keepalive(&keepalive) {
        tracing::debug!(error = %e, "cannot set TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_user_timeout(Some(USER_TIMEOUT)) {
        tracing::debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// A TCP listener whose connections have `TCP_NODELAY` set (small frames must not wait for
/// Nagle's algorithm), and keepalive and `TCP_USER_TIMEOUT` so that a peer that vanished is
/// found within two minutes.
#[derive(Debug)]
pub struct Tcp(tokio::net::TcpListener);

impl Tcp {
    /// Binds `addr` with `SO_REUSEADDR` (a restarted server binds at once) and a backlog of
    /// [`LISTEN_BACKLOG`].
    pub async fn bind(addr: SocketAddr) -> io::Result<Self> {
        let socket = match addr {
            SocketAddr::V4(_) => TcpSocket::new_v4()?,
            SocketAddr::V6(_) => TcpSocket::new_v6()?,
        };
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        Ok(Tcp(socket.listen(LISTEN_BACKLOG)?))
    }
}

impl From<tokio::net::TcpListener> for Tcp {
    fn from(listener: tokio::net::TcpListener) -> Self {
        Tcp(listener)
    }
}

impl Listener for Tcp {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    set_options(&stream);
                    return (stream, addr);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A unix socket listener; its file is removed when the listener is dropped (the server drops
/// it when it shuts down).
#[cfg(unix)]
#[derive(Debug)]
pub struct Unix {
    listener: tokio::net::UnixListener,
    path: PathBuf,
}

#[cfg(unix)]
impl Unix {
    /// Binds a unix socket at `path`, replacing a stale socket file.
    pub fn bind(path: impl Into<PathBuf>) -> io::Result<Self> {
        let path = path.into();
        if std::fs::metadata(&path).is_ok_and(|m| !m.is_dir()) {
            std::fs::remove_file(&path)?;
        }
        Ok(Unix {
            listener: tokio::net::UnixListener::bind(&path)?,
            path,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(unix)]
impl Drop for Unix {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
impl Listener for Unix {
    type Io = tokio::net::UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok(accepted) => return accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The socket options are read back from the server's side of a connection accepted
    /// through [`Tcp`]'s own `accept`.
    #[tokio::test]
    async fn accepted_sockets_have_nodelay_keepalive_and_a_user_timeout() {
        let mut listener = Tcp::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await;
        let socket = socket2::SockRef::from(&accepted);
        assert!(socket.tcp_nodelay().unwrap());
        assert!(socket.keepalive().unwrap(), "SO_KEEPALIVE is off");
        assert_eq!(socket.tcp_keepalive_time().unwrap(), KEEPALIVE_IDLE);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        {
            assert_eq!(socket.tcp_keepalive_interval().unwrap(), KEEPALIVE_INTERVAL);
            assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
            assert_eq!(socket.tcp_user_timeout().unwrap(), Some(USER_TIMEOUT));
        }
    }
}
