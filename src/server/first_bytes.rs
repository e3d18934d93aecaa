//! A deadline on a connection's first bytes, which hyper's own header read timeout misses.
//!
//! hyper-util's HTTP/1-or-2 detection reads the first bytes of a connection (up to the 24 of
//! the HTTP/2 preface) before hyper's HTTP/1 header read timeout is armed, and without any
//! timeout: a client that connects and sends nothing, or part of the preface, would hold its
//! socket forever. [`FirstBytesDeadline`] fails the read with `TimedOut` when the bytes that
//! decide the protocol have not arrived in time. It disarms as soon as they rule out the
//! HTTP/2 preface (an HTTP/1 request, timed from there by hyper) or complete it.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};
use tokio::time::Sleep;

/// The HTTP/2 connection preface.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An IO whose reads fail once `timeout` has passed without the protocol-deciding bytes.
pub(super) struct FirstBytesDeadline<IO> {
    io: IO,
    /// Armed until the protocol is decided.
    deadline: Option<Pin<Box<Sleep>>>,
    /// How many bytes matched the HTTP/2 preface so far.
    matched: usize,
}

impl<IO> FirstBytesDeadline<IO> {
    pub(super) fn new(io: IO, timeout: Duration) -> Self {
        FirstBytesDeadline {
            io,
            deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            matched: 0,
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if H2_PREFACE.get(self.matched) != Some(&b) {
                self.deadline = None;
                return;
            }
            self.matched += 1;
        }
        if self.matched >= H2_PREFACE.len() {
            self.deadline = None;
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FirstBytesDeadline<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let res = Pin::new(&mut this.io).poll_read(cx, buf);
        match &res {
            Poll::Ready(Ok(())) if this.deadline.is_some() => {
                this.watch(&buf.filled()[before..]);
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline
                    && deadline.as_mut().poll(cx).is_ready()
                {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "no request head within the header read timeout",
                    )));
                }
            }
            _ => {}
        }
        res
    }
}

forward_async_write!(FirstBytesDeadline);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http1_bytes_disarm_and_the_preface_disarms_when_complete() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut d = FirstBytesDeadline::new((), Duration::from_secs(1));
            d.watch(b"GET / HTTP/1.1\r\n");
            assert!(d.deadline.is_none());
            let mut d = FirstBytesDeadline::new((), Duration::from_secs(1));
            d.watch(b"PRI * HTTP/2.0");
            assert!(d.deadline.is_some(), "a partial preface keeps the deadline");
            d.watch(&H2_PREFACE[14..]);
            assert!(d.deadline.is_none());
        });
    }
}
