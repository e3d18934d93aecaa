//! One history read for the streams that need the same one at the same time.
//!
//! After a deploy or an outage thousands of browsers come back at once, most with the same
//! channels and the same `Last-Event-ID`; each stream would read the same history from Redis
//! (and hold its own copy of it). Reads of the same channels, position and page size that
//! overlap in time share one: the first starts it, the others wait for its answer and take a
//! copy whose events share their bytes.
//!
//! Sharing must not lose an event: a stream's read must start after its subscriptions became
//! active (then every event is either in the history read or delivered live). So a stream joins
//! a read only if it started after the instant its own subscriptions were ready; otherwise it
//! starts a new one, which later streams join. A failed read fails its waiters too (each
//! retries after its own backoff) rather than each trying again in turn behind a Redis that
//! does not answer. Hand-written (a map of `tokio::sync::OnceCell`s) because the joining rule
//! depends on when each waiter became ready, which a plain memoizing cache does not know.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tokio::time::Instant;

use crate::error::BrokerError;
use crate::history::Snapshot;
use crate::metrics::Metrics;

#[derive(Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    channels: Box<[Arc<str>]>,
    after: Option<u64>,
    budget: usize,
}

struct Flight {
    started: Instant,
    answer: OnceCell<Result<Snapshot, Arc<BrokerError>>>,
}

/// A shared read's failure, as each of its waiters returns it.
#[derive(Debug)]
struct Failed(Arc<BrokerError>);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0 {
            BrokerError::Redis(inner) => inner.fmt(f),
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for Failed {}

fn failed(e: &Arc<BrokerError>) -> BrokerError {
    match &**e {
        BrokerError::Protocol(what) => BrokerError::Protocol(what.clone()),
        BrokerError::Redis(_) => BrokerError::Redis(Box::new(Failed(e.clone()))),
    }
}

/// The reads in flight, by what they read.
#[derive(Default)]
pub(crate) struct SharedReads {
    flights: Mutex<HashMap<ReadKey, Arc<Flight>>>,
}

/// Removes the flight its starter put in the map once the starter is done (or gone): later
/// streams start a fresh read.
struct Landing<'a> {
    reads: &'a SharedReads,
    key: ReadKey,
    flight: Arc<Flight>,
}

impl Drop for Landing<'_> {
    fn drop(&mut self) {
        let mut flights = self.reads.lock();
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
    }
}

impl SharedReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ReadKey, Arc<Flight>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The snapshot `read` returns, or the answer of an identical read that started after
    /// `ready` (when the caller's subscriptions were active).
    pub async fn read<F, Fut>(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
        budget: usize,
        ready: Instant,
        metrics: &Metrics,
        read: F,
    ) -> Result<Snapshot, BrokerError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Snapshot, BrokerError>>,
    {
        let key = ReadKey {
            channels: channels.into(),
            after,
            budget,
        };
        let (flight, landing) = {
            let mut flights = self.lock();
            match flights.get(&key) {
                Some(f) if f.started >= ready => (f.clone(), None),
                _ => {
                    let flight = Arc::new(Flight {
                        started: Instant::now(),
                        answer: OnceCell::new(),
                    });
                    flights.insert(key.clone(), flight.clone());
                    let landing = Landing {
                        reads: self,
                        key,
                        flight: flight.clone(),
                    };
                    (flight, Some(landing))
                }
            }
        };
        let mut ran = false;
        let answer = flight
            .answer
            .get_or_init(|| {
                ran = true;
                async { read().await.map_err(Arc::new) }
            })
            .await;
        if !ran && answer.is_ok() {
            metrics.shared_history_reads.inc();
        }
        let answer = answer.clone().map_err(|e| failed(&e));
        drop(landing);
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use tokio::sync::Semaphore;

    fn channels() -> Vec<Arc<str>> {
        vec![Arc::from("a"), Arc::from("b")]
    }

    #[tokio::test(start_paused = true)]
    async fn overlapping_reads_share_one_unless_it_started_before_the_caller_was_ready() {
        let reads = Arc::new(SharedReads::default());
        let metrics = Arc::new(Metrics::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Semaphore::new(0));
        let start = |ready: Instant| {
            let (reads, metrics, calls, go) =
                (reads.clone(), metrics.clone(), calls.clone(), go.clone());
            tokio::spawn(async move {
                reads
                    .read(&channels(), Some(7), 100, ready, &metrics, || async move {
                        calls.fetch_add(1, Relaxed);
                        let _permit = go.acquire().await;
                        Ok(Snapshot {
                            counter: Some(9),
                            ..Snapshot::default()
                        })
                    })
                    .await
            })
        };
        let first = start(Instant::now());
        tokio::task::yield_now().await;
        // Ready before the first read started: joins it.
        let joined = start(Instant::now() - std::time::Duration::from_millis(1));
        tokio::time::advance(std::time::Duration::from_millis(5)).await;
        // Ready after it started: must read by itself.
        let own = start(Instant::now());
        tokio::task::yield_now().await;
        go.add_permits(3);
        for task in [first, joined, own] {
            let snap = task.await.expect("no panic").expect("a snapshot");
            assert_eq!(snap.counter, Some(9));
        }
        assert_eq!(calls.load(Relaxed), 2, "two reads for three callers");
        assert_eq!(metrics.shared_history_reads.get(), 1);
        assert!(reads.lock().is_empty(), "finished reads are forgotten");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_read_fails_its_waiters_without_each_trying_again() {
        let reads = Arc::new(SharedReads::default());
        let metrics = Arc::new(Metrics::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let go = Arc::new(Semaphore::new(0));
        let ready = Instant::now();
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                let (reads, metrics, calls, go) =
                    (reads.clone(), metrics.clone(), calls.clone(), go.clone());
                tokio::spawn(async move {
                    reads
                        .read(&channels(), Some(7), 100, ready, &metrics, || async move {
                            calls.fetch_add(1, Relaxed);
                            let _permit = go.acquire().await;
                            Err(BrokerError::Protocol("no answer".into()))
                        })
                        .await
                })
            })
            .collect();
        tokio::task::yield_now().await;
        go.add_permits(3);
        for task in tasks {
            let err = task.await.expect("no panic").expect_err("the read failed");
            assert!(err.to_string().contains("no answer"), "{err}");
        }
        assert_eq!(calls.load(Relaxed), 1, "one read for three waiters");
    }
}
