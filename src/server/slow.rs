//! Watching the stream of an HTTP/1 connection served by hyper for a client that fell behind.
//!
//! hyper writes a response body only as fast as the client reads; blocked on a client that
//! does not read, it never polls the body again, so the body cannot end the response itself.
//! The connection's service hands each stream's [`StreamHandle`] (from the request's sink) here, and the connection task
//! waits on [`SlowStreams::any_slow`] beside hyper: once a client's queue overflows, the task
//! drops the connection. Handles of finished streams are dropped at the next poll, so a
//! kept-alive connection holds the handle of its current stream at most. HTTP/2 streams are
//! watched one by one instead, by their own tasks (`h2_streams`): there, one slow stream must
//! not end the others.

use std::future::poll_fn;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};

use crate::transport::StreamHandle;

#[derive(Default)]
struct Watched {
    handles: Vec<StreamHandle>,
    /// The connection task, woken when a handle is added.
    waker: Option<Waker>,
}

/// The stream handles of one connection; cheap to clone.
#[derive(Clone, Default)]
pub(super) struct SlowStreams(Arc<Mutex<Watched>>);

impl SlowStreams {
    fn lock(&self) -> MutexGuard<'_, Watched> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches one more stream.
    pub fn watch(&self, handle: StreamHandle) {
        let mut watched = self.lock();
        watched.handles.push(handle);
        let waker = watched.waker.take();
        drop(watched);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Completes when the client of one of the watched streams became slow.
    pub async fn any_slow(&self) {
        poll_fn(|cx| {
            let mut watched = self.lock();
            watched.handles.retain(|h| !h.is_finished());
            if watched.handles.iter().any(|h| h.poll_slow(cx)) {
                return Poll::Ready(());
            }
            match &watched.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => watched.waker = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}
