//! The in-memory broker: one process, no Redis, the same semantics.
//!
//! One lock orders everything: taking an id, storing the event in its channel's bounded ring and
//! handing it to the dispatcher happen together, so the dispatcher sees ids in order and a
//! history snapshot never misses an event that was already dispatched.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::dispatch::{Dispatch, DispatchSender};
use crate::event::{Event, Frame};
use crate::history::{ChannelHistory, Snapshot};

#[derive(Default)]
struct State {
    counter: u64,
    histories: HashMap<Arc<str>, VecDeque<Frame>>,
}

pub(crate) struct MemoryBroker {
    state: Mutex<State>,
    dispatch: DispatchSender,
    history_size: usize,
}

impl MemoryBroker {
    pub fn new(dispatch: DispatchSender, history_size: usize) -> Self {
        MemoryBroker {
            state: Mutex::default(),
            dispatch,
            history_size,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn publish(&self, channel: &str, event: &Event) -> u64 {
        let mut st = self.lock();
        st.counter += 1;
        let id = st.counter;
        let frame = Frame::event(id, event.encode(id));
        if self.history_size > 0 {
            let ring = st.histories.entry(Arc::from(channel)).or_default();
            ring.push_back(frame.clone());
            while ring.len() > self.history_size {
                ring.pop_front();
            }
        }
        // Sent under the lock so the dispatcher receives ids in order.
        self.dispatch.send(Dispatch::Live {
            channel: channel.to_owned(),
            frame,
        });
        id
    }

    /// Waits until the dispatcher has handled every event published before.
    pub async fn flush(&self) {
        self.dispatch.barrier().await;
    }

    /// See [`super::Broker::snapshot`]; the frames share their bytes with the history.
    pub fn snapshot(&self, channels: &[Arc<str>], after: Option<u64>, budget: usize) -> Snapshot {
        let st = self.lock();
        let counter = (st.counter > 0).then_some(st.counter);
        let after = after.map(|a| if a > st.counter { 0 } else { a });
        let channels = channels
            .iter()
            .map(|name| {
                let Some(ring) = st.histories.get(name) else {
                    return ChannelHistory::default();
                };
                let events = match after {
                    Some(a) => ring.iter().filter(|f| f.id > a).cloned().collect(),
                    None => Vec::new(),
                };
                ChannelHistory {
                    len: ring.len(),
                    oldest: ring.front().map(|f| f.id),
                    events,
                }
            })
            .collect();
        let mut snapshot = Snapshot {
            counter,
            channels,
            truncated: false,
            malformed: 0,
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
            snapshot.truncated = true;
            break;
        }
        bytes += len;
        last = Some(id);
    }
    if snapshot.truncated
        && let Some(last) = last
    {
        for channel in &mut snapshot.channels {
            channel.events.retain(|f| f.id <= last);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dispatch;

    #[test]
    fn a_page_is_a_prefix_of_the_merged_events_within_its_budget() {
        let (tx, _rx) = dispatch::channel();
        let broker = MemoryBroker::new(tx, 100);
        for i in 0..6 {
            let channel = if i % 2 == 0 { "a" } else { "b" };
            broker.publish(channel, &Event::message("0123456789"));
        }
        let channels: Vec<Arc<str>> = vec!["a".into(), "b".into()];
        let all = broker.snapshot(&channels, Some(0), 0);
        let size = all.channels[0].events[0].bytes.len();
        assert!(!all.truncated);
        let page = broker.snapshot(&channels, Some(0), size * 3);
        assert!(page.truncated);
        let ids: Vec<Vec<u64>> = page
            .channels
            .iter()
            .map(|c| c.events.iter().map(|f| f.id).collect())
            .collect();
        assert_eq!(ids, [vec![1, 3], vec![2]]);
        // Metadata is whole: the loss rule reads it.
        assert_eq!(page.channels[0].len, 3);
        // At least one event, however small the budget.
        let one = broker.snapshot(&channels, Some(0), 1);
        assert_eq!(
            one.channels.iter().map(|c| c.events.len()).sum::<usize>(),
            1
        );
    }
}
