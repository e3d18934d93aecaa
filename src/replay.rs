//! Reading a stream's replay in pages, at the pace its client reads.
//!
//! A replay larger than what one history read brings (half the stream's queue) is read page by
//! page: each time the body has written the queue down to half a page, the next page is read
//! after the last id queued and checked with the same loss rule as the first (history may have
//! been trimmed meanwhile), until a page reaches the end of history after the last drop of the
//! live events the stream held, and those follow (see `conn`). Two tasks read pages: a stream's
//! setup, when its first read was a page or its buffer overflowed while it waited, and
//! [`catch_up`], spawned for a live stream that a resume (the refill after a Redis reconnection)
//! would have overflowed.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::broker::Broker;
use crate::conn::Conn;
use crate::history::channel_may_have_lost;
use crate::metrics::Metrics;
use crate::resume::merge;

/// The bytes of history one read brings to a stream: half its queue, so that a replay never
/// holds more than the queue however large the backlog (the page and what the body has not
/// written yet).
pub(crate) fn page_budget(max_queue_bytes: usize) -> usize {
    (max_queue_bytes / 2).max(1)
}

/// What a page read needs besides the stream.
pub(crate) struct Pages<'a> {
    pub broker: &'a Broker,
    pub metrics: &'a Metrics,
    pub history_size: usize,
    pub budget: usize,
}

/// Reads the rest of a paged replay (see the module's text) into `conn`, from after the last
/// id it queued. `ready` is when the stream's subscriptions were known active: a history read
/// shared with another stream must have started after it (and after the stream last dropped
/// live events).
pub(crate) async fn replay_pages(pages: &Pages<'_>, conn: &Conn, ready: Instant) {
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
    loop {
        conn.room(pages.budget / 2).await;
        if conn.is_ending() {
            return;
        }
        let from = conn.replayed_to();
        let ready = from.dropped_at.map_or(ready, |at| ready.max(at));
        let read = pages
            .broker
            .snapshot(&conn.channels, Some(from.after), pages.budget, ready);
        match Box::pin(read).await {
            Ok(page) => {
                let missed = (0..page.channels.len())
                    .any(|i| channel_may_have_lost(from.after, i, &page, pages.history_size));
                let page_end = page.page_end;
                let frames = merge(page);
                pages.metrics.replayed.inc_by(frames.len() as u64);
                if conn.next_page(missed, frames, page_end, from) {
                    return;
                }
                backoff.reset();
            }
            Err(e) => {
                tracing::warn!(conn = conn.id, error = %e, "cannot read history yet; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// The replay of a live stream that a resume would have overflowed (`conn::Push::Replaying`):
/// runs until the stream is live again, ends, or its client leaves.
pub(crate) async fn catch_up(pages: Pages<'_>, conn: Arc<Conn>) {
    struct Forget<'a>(&'a Conn);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            self.0.forget_setup();
        }
    }
    let _forget = Forget(&conn);
    // The stream's subscriptions are active: the resume that overflowed it came after them.
    let ready = Instant::now();
    tokio::select! {
        biased;
        () = conn.ended() => {}
        () = replay_pages(&pages, &conn, ready) => {}
    }
}
