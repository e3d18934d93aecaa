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

/// A TCP listener whose connections have `TCP_NODELAY` set: small frames must not wait for
/// Nagle's algorithm.
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
                    let _ = stream.set_nodelay(true);
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
