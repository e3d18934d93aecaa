//! What the SSE endpoint and the server that carries its streams agree on, below both.
//!
//! A stream response is an ordinary `http::Response` whose body never ends by itself, so any
//! router and any layer can carry it, and any server can write it. One thing a server needs
//! beyond the body: a client that stops reading leaves the server blocked on a write, and then
//! nobody polls the body to see that the client's queue overflowed. So every stream comes with
//! a [`StreamHandle`]; a server that writes the body watches the handle while a write is
//! pending and ends the stream when the client became slow (closing an HTTP/1 connection,
//! resetting an HTTP/2 stream). A server that wants the
//! handle puts a [`StreamSink`] in the request's extensions, and the endpoint leaves the handle
//! there; without a sink, the handle is in the response's extensions. (The sink is what the
//! server uses: a response's extensions cost a map of their own per stream, which measured
//! about 90 bytes more per idle stream, BENCHMARKS.md.)
//! `server` does this on both of its paths (the bare socket and hyper); under another server
//! (`axum::serve`), the body itself ends with an error the next time it is polled.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::Context;

/// Something that knows whether a stream's client fell behind.
pub(crate) trait SlowWatch: Send + Sync {
    /// Whether the client became too slow; otherwise `cx` is woken when it does, or when the
    /// stream is gone.
    fn poll_slow(&self, cx: &mut Context<'_>) -> bool;

    /// Whether the stream is gone (its body was dropped): there is nothing left to watch.
    fn is_finished(&self) -> bool;
}

/// In the extensions of every stream response: watches its client for slowness.
#[derive(Clone)]
pub(crate) struct StreamHandle(Arc<dyn SlowWatch>);

impl StreamHandle {
    pub fn new(watch: Arc<dyn SlowWatch>) -> Self {
        StreamHandle(watch)
    }

    /// See [`SlowWatch::poll_slow`].
    pub fn poll_slow(&self, cx: &mut Context<'_>) -> bool {
        self.0.poll_slow(cx)
    }

    /// See [`SlowWatch::is_finished`].
    pub fn is_finished(&self) -> bool {
        self.0.is_finished()
    }
}

impl fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StreamHandle")
    }
}

/// Where an endpoint leaves the handle of the stream it opens for a request: put in the
/// request's extensions by the server that will write the response.
#[derive(Clone, Debug, Default)]
pub(crate) struct StreamSink(Arc<Mutex<Option<StreamHandle>>>);

impl StreamSink {
    /// Leaves the stream's handle.
    pub fn put(&self, handle: StreamHandle) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
    }

    /// The handle, if the request opened a stream.
    pub fn take(&self) -> Option<StreamHandle> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}
