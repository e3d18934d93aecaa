//! The in-memory broker: one process, no Redis, the same semantics.
//!
//! One lock orders everything: taking an id, storing the event in its channel's bounded ring and
//! handing it to the dispatcher happen together, so the dispatcher sees ids in order and a
//! history snapshot never misses an event that was already dispatched.
//!
//! Ids must not start again at 1 when the process restarts: a client that comes back with an
//! id of the earlier process would be taken to have seen the new events up to it. So the first
//! id is the clock, in microseconds since the Unix epoch (about 1.7 × 10^15 today: far below
//! `MAX_EVENT_ID`, and below 2^53, so JavaScript reads it exactly until the year 2255), and
//! above any id an earlier broker of this process gave; then one more per event. An earlier
//! process's ids are therefore below it unless that process published, over its whole life, more
//! than one event per microsecond on average (or the clock went back between the two). Every id
//! below the first one counts as trimmed (each channel's watermark starts just under it), so such
//! a client gets `missedevents` and everything retained. Every trim of a ring (overflow, or
//! every event when the history size is 0) raises the channel's watermark.
//!
//! Idempotency keys are checked and remembered under the same lock as the id is taken, so two
//! publishes with one key at the same time publish once (see `idempotency`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::config::Config;
use crate::dispatch::{Dispatch, DispatchSender};
use crate::event::{Event, Frame};
use crate::history::{ChannelHistory, Snapshot};
use crate::idempotency::{Keyed, Outcome, RecentKeys};
use crate::metrics::Metrics;

/// The highest id any in-memory broker of this process gave, so that a new one starts above it
/// even within the same microsecond.
static HIGHEST_ID: AtomicU64 = AtomicU64::new(0);

struct State {
    /// The next id to give.
    next: u64,
    /// The last id given, once one was.
    last: Option<u64>,
    channels: HashMap<Arc<str>, ChannelState>,
    /// The idempotency keys of the last window, bounded.
    keys: RecentKeys,
}

/// One channel's retained events and the newest id trimmed from them.
struct ChannelState {
    ring: VecDeque<Frame>,
    trimmed: u64,
}

pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    dispatch: DispatchSender,
    history_size: usize,
    /// Below this broker's first id: what every channel counts as trimmed from the start.
    before_first: u64,
    metrics: Arc<Metrics>,
}

/// The first id of a new broker (see the module documentation).
fn first_id() -> u64 {
    let clock = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(0));
    clock.max(HIGHEST_ID.load(Relaxed) + 1).max(1)
}

impl MemoryBroker {
    /// A broker with `config`'s history size and idempotency window and bound.
    pub fn new(dispatch: DispatchSender, config: &Config, metrics: Arc<Metrics>) -> Self {
        let first = first_id();
        MemoryBroker {
            state: Mutex::new(State {
                next: first,
                last: None,
                channels: HashMap::new(),
                keys: RecentKeys::new(config.idempotency_window, config.idempotency_max_keys),
            }),
            dispatch,
            history_size: config.history_size,
            before_first: first - 1,
            metrics,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Publishes `event`, unless `keyed`'s key was used within the window (see
    /// [`Outcome`]).
    pub fn publish(&self, channel: &str, event: &Event, keyed: Option<&Keyed<'_>>) -> Outcome {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(keyed) = keyed
            && let Some(earlier) = st.keys.check(keyed, now)
        {
            return earlier;
        }
        let id = st.next;
        st.next += 1;
        st.last = Some(id);
        HIGHEST_ID.fetch_max(id, Relaxed);
        let frame = Frame::live(id, event.encode(id));
        let before_first = self.before_first;
        let ch = st
            .channels
            .entry(Arc::from(channel))
            .or_insert_with(|| ChannelState {
                ring: VecDeque::new(),
                trimmed: before_first,
            });
        if self.history_size == 0 {
            ch.trimmed = id;
        } else {
            // History keeps the frame without its arrival: only live delivery is timed.
            ch.ring.push_back(Frame {
                arrived: None,
                ..frame.clone()
            });
            while ch.ring.len() > self.history_size {
                if let Some(old) = ch.ring.pop_front() {
                    ch.trimmed = old.id;
                }
            }
        }
        if let Some(keyed) = keyed {
            let evicted = st.keys.remember(keyed, id, now);
            if evicted > 0 {
                self.metrics.idempotency_evictions.inc_by(evicted);
            }
        }
        // Sent under the lock so the dispatcher receives ids in order.
        self.dispatch.send(Dispatch::Live {
            channel: channel.to_owned(),
            frame,
        });
        Outcome::Published(id)
    }

    /// Waits until the dispatcher has handled every event published before.
    pub async fn flush(&self) {
        self.dispatch.barrier().await;
    }

    /// See [`super::Broker::snapshot`]; the frames share their bytes with the history.
    pub fn snapshot(&self, channels: &[Arc<str>], after: Option<u64>, budget: usize) -> Snapshot {
        let st = self.lock();
        let last = st.last.unwrap_or(0);
        let after = after.map(|a| if a > last { 0 } else { a });
        let channels = channels
            .iter()
            .map(|name| {
                let Some(ch) = st.channels.get(name) else {
                    return ChannelHistory {
                        trimmed: self.before_first,
                        ..ChannelHistory::default()
                    };
                };
                let events = match after {
                    Some(a) => ch.ring.iter().filter(|f| f.id > a).cloned().collect(),
                    None => Vec::new(),
                };
                ChannelHistory {
                    len: ch.ring.len(),
                    oldest: ch.ring.front().map(|f| f.id),
                    trimmed: ch.trimmed,
                    events,
                }
            })
            .collect();
        let mut snapshot = Snapshot {
            counter: st.last,
            channels,
            page_end: None,
            floor: None,
            malformed: 0,
            unrecorded_trims: false,
        };
        if budget > 0 {
            keep_page(&mut snapshot, budget);
        }
        snapshot
    }
}

/// Cuts a snapshot to its first page: the events in id order, across channels, up to `budget`
/// bytes (at least one).
fn keep_page(snapshot: &mut Snapshot, budget: usize) {
    let mut ids: Vec<(u64, usize)> = snapshot
        .channels
        .iter()
        .flat_map(|c| &c.events)
        .map(|f| (f.id, f.bytes.len()))
        .collect();
    ids.sort_unstable();
    let mut bytes = 0;
    let mut last = None;
    for (id, len) in ids {
        if last.is_some() && bytes + len > budget {
            snapshot.page_end = last;
            break;
        }
        bytes += len;
        last = Some(id);
    }
    if let Some(end) = snapshot.page_end {
        for channel in &mut snapshot.channels {
            channel.events.retain(|f| f.id <= end);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(history_size: usize) -> MemoryBroker {
        let (tx, _rx) = crate::dispatch::channel();
        let config = Config {
            history_size,
            ..Config::default()
        };
        MemoryBroker::new(tx, &config, Arc::default())
    }

    impl MemoryBroker {
        /// Publishes without a key, returning the id.
        fn publish_id(&self, channel: &str, event: &Event) -> u64 {
            match self.publish(channel, event, None) {
                Outcome::Published(id) => id,
                other => panic!("a publish without a key gave {other:?}"),
            }
        }
    }

    fn names(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|&n| Arc::from(n)).collect()
    }

    #[test]
    fn a_new_broker_starts_above_every_earlier_one_and_counts_what_is_below_as_trimmed() {
        let old = broker(100);
        let old_ids: Vec<u64> = (0..1000)
            .map(|_| old.publish_id("a", &Event::message("x")))
            .collect();
        let new = broker(100);
        let first = new.publish_id("a", &Event::message("y"));
        assert!(first > *old_ids.last().unwrap());
        let snap = new.snapshot(&names(&["a", "never"]), Some(old_ids[5]), 0);
        assert_eq!(snap.counter, Some(first));
        assert_eq!(snap.channels[0].trimmed, first - 1);
        assert_eq!(snap.channels[1].trimmed, first - 1);
        assert!(!snap.unrecorded_trims);
    }

    #[test]
    fn a_fresh_broker_has_no_counter_yet() {
        let b = broker(100);
        let snap = b.snapshot(&names(&["a"]), None, 0);
        assert_eq!(snap.counter, None);
        assert!(snap.channels[0].trimmed > 0);
    }

    #[test]
    fn trims_raise_the_watermark() {
        let b = broker(2);
        let ids: Vec<u64> = (0..5)
            .map(|_| b.publish_id("a", &Event::message("x")))
            .collect();
        let snap = b.snapshot(&names(&["a"]), Some(ids[0]), 0);
        let a = &snap.channels[0];
        assert_eq!((a.len, a.oldest, a.trimmed), (2, Some(ids[3]), ids[2]));
        let b = broker(0);
        let id = b.publish_id("a", &Event::message("x"));
        let snap = b.snapshot(&names(&["a"]), Some(id - 1), 0);
        let a = &snap.channels[0];
        assert_eq!((a.len, a.oldest, a.trimmed), (0, None, id));
    }

    #[test]
    fn a_page_is_a_prefix_of_the_merged_events_within_its_budget() {
        let broker = broker(100);
        let ids: Vec<u64> = (0..6)
            .map(|i| {
                let channel = if i % 2 == 0 { "a" } else { "b" };
                broker.publish_id(channel, &Event::message("0123456789"))
            })
            .collect();
        let channels = names(&["a", "b"]);
        let from = Some(ids[0] - 1);
        let all = broker.snapshot(&channels, from, 0);
        let size = all.channels[0].events[0].bytes.len();
        assert_eq!(all.page_end, None);
        let page = broker.snapshot(&channels, from, size * 3);
        assert_eq!(page.page_end, Some(ids[2]));
        let got: Vec<Vec<u64>> = page
            .channels
            .iter()
            .map(|c| c.events.iter().map(|f| f.id).collect())
            .collect();
        assert_eq!(got, [vec![ids[0], ids[2]], vec![ids[1]]]);
        // Metadata is whole: the loss rule reads it.
        assert_eq!(page.channels[0].len, 3);
        // At least one event, however small the budget.
        let one = broker.snapshot(&channels, from, 1);
        assert_eq!(
            one.channels.iter().map(|c| c.events.len()).sum::<usize>(),
            1
        );
    }
}
