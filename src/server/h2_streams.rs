//! HTTP/2 streams watched one by one: a stream whose client fell behind is reset alone.
//!
//! Over HTTP/2 one connection carries many streams (a browser shares one between all the tabs
//! of an origin), and flow control holds each back on its own: a client that stops reading one
//! stream leaves hyper waiting for that stream's window, so hyper polls its body no more, while
//! the other streams go on. Closing the connection, as for a slow HTTP/1 client, would end them
//! all. hyper runs each HTTP/2 stream as a task of its own, spawned by the connection's
//! executor: [`StreamExecutor`] spawns it with a slot that the service sees as a task-local
//! while the task runs, in which it leaves the handle of the SSE stream it opens ([`adopt`]).
//! The task then watches that handle beside hyper's stream, and once the client became slow it
//! drops hyper's stream, which makes h2 reset that stream (RST_STREAM, CANCEL) and free what it
//! buffered for it; the body, dropped with it, unregisters the connection from the hub.
//!
//! A client that reads nothing at all any more (not one stream: the whole socket) is closed by
//! HTTP/2 PINGs (set up in `server`): after a heartbeat period without a frame from the client
//! the server sends one, and closes the connection when no answer comes within another.

use std::future::{Future, poll_fn};
use std::pin::pin;
use std::task::Poll;

use crate::transport::{StreamHandle, StreamSink};

tokio::task_local! {
    /// Where the service leaves the handle of the stream it opens, in an HTTP/2 stream's task.
    static SLOT: StreamSink;
}

/// hyper's executor for the tasks of HTTP/2 streams: each is spawned on tokio, watched for a
/// slow client.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct StreamExecutor;

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future<Output = ()> + Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(watched(stream));
    }
}

/// Runs hyper's `stream` until it ends, or until the client of the SSE stream it carries became
/// slow: then it is dropped, and h2 resets it.
async fn watched(stream: impl Future<Output = ()>) {
    let slot = StreamSink::default();
    let mut stream = pin!(SLOT.scope(slot.clone(), stream));
    let mut handle: Option<StreamHandle> = None;
    poll_fn(|cx| {
        if stream.as_mut().poll(cx).is_ready() {
            return Poll::Ready(());
        }
        if handle.is_none() {
            handle = slot.take();
        }
        if handle.as_ref().is_some_and(|h| h.poll_slow(cx)) {
            tracing::info!("slow client: resetting its HTTP/2 stream");
            return Poll::Ready(());
        }
        Poll::Pending
    })
    .await;
}

/// Gives `handle` to the HTTP/2 stream task that runs the caller, which watches it from then on;
/// gives it back when the caller runs in no such task (HTTP/1: the connection watches it).
pub(super) fn adopt(handle: StreamHandle) -> Result<(), StreamHandle> {
    let mut handle = Some(handle);
    let _ = SLOT.try_with(|slot| {
        if let Some(h) = handle.take() {
            slot.put(h);
        }
    });
    handle.map_or(Ok(()), Err)
}
