//! What a new stream sends before live events: the replay plan.
//!
//! From the client's position and an atomic snapshot of the counter and the requested channels'
//! histories, decide the preamble (`missedevents`, `lastEventId`), the events to replay (merged
//! across channels in id order) and the position after which live events are new.
//!
//! `missedevents` is sent exactly when events may have been lost, by the rule of `history`
//! ([`channel_may_have_lost`]): some requested channel had an event after the client's last id
//! removed by a recorded trim (exact, whatever size it was trimmed to), or, where publishers may
//! trim without recording (the gem's, on Redis), some requested channel's history is full and
//! some id between the client's last id and that channel's oldest retained event is retained in
//! none of the requested channels' histories. A channel that was never trimmed lost nothing,
//! and a last id that came from another channel is no reason by itself. A last id that is not a
//! number, beyond the counter, or below the data-loss floor (the store lost its data, see
//! `history::Snapshot::floor`), is told too, and everything retained is replayed.

#[cfg(test)]
use crate::event::FrameKind;
use crate::event::{Frame, LastEventId};
use crate::history::{Snapshot, channel_may_have_lost};

/// The frames a stream starts with.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    /// Control frames first: `missedevents`, `lastEventId`.
    pub preamble: Vec<Frame>,
    /// History events, ascending ids.
    pub replay: Vec<Frame>,
    /// Live events with an id at or below this were replayed or were already seen by the
    /// client; 0 when the client gave no usable position.
    pub position: u64,
}

#[cfg(test)]
impl Plan {
    /// Whether the plan tells the client that events may be lost.
    pub fn signals_missed(&self) -> bool {
        self.preamble
            .iter()
            .any(|f| f.kind == FrameKind::MissedEvents)
    }
}

/// Builds the plan. `snapshot` was read with `after = Some(l)` when `last` is `At(l)`.
pub(crate) fn plan(last: LastEventId, snapshot: Snapshot, history_size: usize) -> Plan {
    let counter = snapshot.counter.unwrap_or(0);
    // A first page that is not the whole replay (however empty, when all it read was refused)
    // is never a reason for the counter hint: more events follow it.
    let hint = if snapshot.page_end.is_some() {
        0
    } else {
        counter
    };
    let mut plan = Plan::default();
    let from = match last {
        // Without a position the stream starts at the counter, which the `lastEventId` hint
        // tells the client. (A stream that already received live events while it was being set
        // up is planned as a resume from just before them instead: see `stream::setup`.)
        LastEventId::None => None,
        LastEventId::Unknown => {
            plan.preamble.push(Frame::missed_events());
            None
        }
        LastEventId::At(l) if l > counter || l < snapshot.floor.unwrap_or(0) => {
            // The store lost its data: everything retained is newer than the client knows.
            // (Below the floor, the snapshot must have been read past the counter for that:
            // `stream::set_up` reads it so.)
            plan.preamble.push(Frame::missed_events());
            plan.replay = merge(snapshot);
            plan.position = 0;
            return with_counter_hint(plan, hint);
        }
        LastEventId::At(l) => Some(l),
    };
    let Some(from) = from else {
        return with_counter_hint(plan, hint);
    };
    if may_have_lost(from, &snapshot, history_size) {
        plan.preamble.push(Frame::missed_events());
    }
    plan.replay = merge(snapshot);
    plan.position = from;
    with_counter_hint(plan, hint)
}

/// Adds the `lastEventId` event when nothing is replayed and the counter exists; the stream's
/// position is then the counter, so that no live event comes after the hint with a lower id.
fn with_counter_hint(mut plan: Plan, counter: u64) -> Plan {
    if plan.replay.is_empty() && counter > 0 {
        plan.preamble.push(Frame::last_event_id(counter));
        plan.position = plan.position.max(counter);
    }
    plan
}

fn may_have_lost(from: u64, snapshot: &Snapshot, history_size: usize) -> bool {
    (0..snapshot.channels.len()).any(|i| channel_may_have_lost(from, i, snapshot, history_size))
}

/// The snapshot's events across channels, ascending ids, once each.
pub(crate) fn merge(snapshot: Snapshot) -> Vec<Frame> {
    let mut all: Vec<Frame> = snapshot
        .channels
        .into_iter()
        .flat_map(|c| c.events)
        .collect();
    all.sort_by_key(|f| f.id);
    all.dedup_by_key(|f| f.id);
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::ChannelHistory;
    use bytes::Bytes;

    fn history(ids: &[u64], len: usize, after: u64) -> ChannelHistory {
        ChannelHistory {
            len,
            oldest: ids.first().copied(),
            trimmed: 0,
            events: ids
                .iter()
                .filter(|&&i| i > after)
                .map(|&i| Frame::event(i, Bytes::new()))
                .collect(),
        }
    }

    /// A snapshot as Redis reads it, where the gem may trim without recording.
    fn snap(counter: u64, channels: Vec<ChannelHistory>) -> Snapshot {
        Snapshot {
            counter: Some(counter),
            channels,
            page_end: None,
            floor: None,
            malformed: 0,
            unrecorded_trims: true,
        }
    }

    fn trimmed_up_to(mut h: ChannelHistory, trimmed: u64) -> ChannelHistory {
        h.trimmed = trimmed;
        h
    }

    #[test]
    fn a_trimmed_channel_past_the_client_signals_loss() {
        // history size 3: channel a holds 5,6,7 (full); client is at 2; ids 3,4 are nowhere.
        let s = snap(7, vec![history(&[5, 6, 7], 3, 2)]);
        let p = plan(LastEventId::At(2), s, 3);
        assert!(p.signals_missed());
        assert_eq!(p.replay.len(), 3);
    }

    #[test]
    fn ids_retained_in_another_requested_channel_are_not_losses() {
        // a: 5,6,7 (full); b: 3,4 (not full); client at 2: 3 and 4 were b's.
        let s = snap(7, vec![history(&[5, 6, 7], 3, 2), history(&[3, 4], 2, 2)]);
        let p = plan(LastEventId::At(2), s, 3);
        assert!(!p.signals_missed());
        let ids: Vec<u64> = p.replay.iter().map(|f| f.id).collect();
        assert_eq!(ids, [3, 4, 5, 6, 7]);
    }

    #[test]
    fn an_untrimmed_channel_never_signals_loss() {
        // The client's last id (1) came from another channel; a holds 5,6 and was never trimmed.
        let s = snap(6, vec![history(&[5, 6], 2, 1)]);
        let p = plan(LastEventId::At(1), s, 100);
        assert!(!p.signals_missed());
        assert_eq!(p.position, 1);
    }

    #[test]
    fn nothing_replayed_gives_the_counter() {
        let p = plan(LastEventId::None, snap(9, vec![history(&[], 0, 0)]), 100);
        assert_eq!(p.preamble.len(), 1);
        assert_eq!(
            &p.preamble[0].bytes[..],
            b"id: 9\nevent: lastEventId\ndata: \n\n"
        );
        // The hint is the position: no live event after it may have a lower id. (Live events
        // the stream received before its snapshot turn it into a resume: `stream::setup`.)
        assert_eq!(p.position, 9);
        let fresh = Snapshot::default();
        assert!(plan(LastEventId::None, fresh, 100).preamble.is_empty());
    }

    #[test]
    fn a_resume_from_zero_replays_everything_retained() {
        let p = plan(
            LastEventId::At(0),
            snap(3, vec![history(&[1, 3], 2, 0)]),
            100,
        );
        assert!(!p.signals_missed());
        assert_eq!(p.replay.iter().map(|f| f.id).collect::<Vec<_>>(), [1, 3]);
        assert_eq!(p.position, 0);
    }

    #[test]
    fn unknown_and_future_positions_signal_loss() {
        let p = plan(LastEventId::Unknown, snap(4, vec![]), 100);
        assert!(p.signals_missed());
        assert_eq!(p.position, 4);
        let p = plan(
            LastEventId::At(50),
            snap(4, vec![history(&[2, 4], 2, 0)]),
            100,
        );
        assert!(p.signals_missed());
        assert_eq!(p.replay.len(), 2);
    }

    #[test]
    fn a_recorded_trim_below_the_servers_size_signals_loss_then_replays_what_is_kept() {
        // Another publisher kept 3 (5,6,7) and recorded trimming up to 4; the server keeps 100.
        let a = trimmed_up_to(history(&[5, 6, 7], 3, 2), 4);
        let p = plan(LastEventId::At(2), snap(7, vec![a]), 100);
        assert!(p.signals_missed());
        assert_eq!(p.replay.iter().map(|f| f.id).collect::<Vec<_>>(), [5, 6, 7]);
        assert_eq!(p.position, 2);
        // From the newest trimmed id: nothing lost.
        let a = trimmed_up_to(history(&[5, 6, 7], 3, 4), 4);
        let p = plan(LastEventId::At(4), snap(7, vec![a]), 100);
        assert!(!p.signals_missed());
        assert_eq!(p.replay.len(), 3);
    }

    #[test]
    fn only_the_trimmed_channel_matters_and_nothing_kept_still_gives_the_hint() {
        // Size 0 on a (everything trimmed, up to 6); b kept 4. From 3: a lost 5 or 6.
        let a = trimmed_up_to(history(&[], 0, 3), 6);
        let b = history(&[4], 1, 3);
        let p = plan(LastEventId::At(3), snap(6, vec![a, b]), 100);
        assert!(p.signals_missed());
        assert_eq!(p.replay.iter().map(|f| f.id).collect::<Vec<_>>(), [4]);
        let a = trimmed_up_to(history(&[], 0, 6), 6);
        let p = plan(LastEventId::At(6), snap(6, vec![a]), 100);
        assert!(!p.signals_missed());
        assert_eq!(
            &p.preamble[0].bytes[..],
            b"id: 6\nevent: lastEventId\ndata: \n\n"
        );
    }

    #[test]
    fn a_position_below_the_data_loss_floor_signals_loss_then_replays_everything_read() {
        // Redis lost its data at about 50; ids 1 and 2 were given again before a server raised
        // the counter and the floor to 51; 52 came after. The snapshot was read past the counter.
        let mut s = snap(52, vec![history(&[1, 2, 52], 3, 0)]);
        s.floor = Some(51);
        let p = plan(LastEventId::At(50), s.clone(), 100);
        assert!(p.signals_missed());
        assert_eq!(
            p.replay.iter().map(|f| f.id).collect::<Vec<_>>(),
            [1, 2, 52]
        );
        assert_eq!(p.position, 0);
        // From the floor itself (the raised counter, the hint a client got after the raise):
        // nothing lost.
        let mut s = snap(52, vec![history(&[1, 2, 52], 3, 51)]);
        s.floor = Some(51);
        let p = plan(LastEventId::At(51), s, 100);
        assert!(!p.signals_missed());
        assert_eq!(p.replay.iter().map(|f| f.id).collect::<Vec<_>>(), [52]);
        assert_eq!(p.position, 51);
    }

    #[test]
    fn in_memory_a_full_history_alone_is_no_loss() {
        // Every trim is recorded in memory: a kept 5,6,7 at size 3 and trimmed nothing above 2.
        let mut s = snap(7, vec![trimmed_up_to(history(&[5, 6, 7], 3, 2), 2)]);
        s.unrecorded_trims = false;
        let p = plan(LastEventId::At(2), s, 3);
        assert!(!p.signals_missed());
        assert_eq!(p.replay.len(), 3);
    }
}
