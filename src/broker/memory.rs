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

    pub fn snapshot(&self, channels: &[Arc<str>], after: Option<u64>) -> Snapshot {
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
        Snapshot {
            counter,
            channels,
            malformed: 0,
        }
    }
}
