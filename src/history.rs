//! A channel's short history as a broker reads it, and the rule that tells when events may have
//! been lost from it.
//!
//! Both brokers return a [`Snapshot`]: the id counter and the requested channels' histories,
//! read at one instant. The stream's replay plan (`resume`) and the Redis subscriber's refill
//! after a reconnection decide `missedevents` from it with the same rule,
//! [`channel_may_have_lost`], in two parts:
//!
//! - **recorded trims** (exact): every trim our brokers and publishers make records the newest
//!   id it removed from the channel, its trimmed watermark. A channel lost events after the
//!   client's last id exactly when its watermark is above that id, whatever size the history
//!   was trimmed to (0 included: every event is then trimmed as it is published). The in-memory
//!   broker also counts every id below its first one as trimmed, so a position from an earlier
//!   instance is a loss.
//! - **unrecorded trims** (Redis only: the Ruby gem's publisher trims without recording): some
//!   requested channel's history is full at the server's configured size (so it may have been
//!   trimmed) and some id between the client's last id and that channel's oldest retained event
//!   is retained in none of the requested channels' histories. Ids are unique across channels,
//!   so an id retained elsewhere was not this channel's event; an id retained nowhere might have
//!   been. A publisher that trims without recording to fewer events than the server keeps
//!   cannot be detected this way.

use crate::event::Frame;

/// One channel's history as seen at one instant.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChannelHistory {
    /// Events retained (trimmed to the history size).
    pub len: usize,
    /// Lowest id retained.
    pub oldest: Option<u64>,
    /// The newest id a recorded trim removed from this channel; 0 when none is known.
    pub trimmed: u64,
    /// Retained events with an id above the requested position, ascending.
    pub events: Vec<Frame>,
}

/// The id counter and the requested channels' histories, read atomically.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// The last id given, or `None` when no event was ever published.
    pub counter: Option<u64>,
    /// One entry per requested channel, in the order requested.
    pub channels: Vec<ChannelHistory>,
    /// Set when the read stopped at its byte budget: the last id it read (whether that entry
    /// was an event or was refused), up to which `channels` hold every event after the position
    /// merged across channels; the rest is read by a later page, after this id.
    pub page_end: Option<u64>,
    /// Redis only: the data-loss floor (`redisse:lostBelow`, see `broker::redis`). A position
    /// below it was given before Redis lost its data, or is one of the ids given again after the
    /// loss and before a server raised the counter: events after it may be lost and, when ids
    /// were given again, may have lower ids than it. `None` when no floor is recorded (and
    /// always in memory, whose ids never start again: its first id does the same work through
    /// the trimmed watermarks).
    pub floor: Option<u64>,
    /// History entries skipped because they were not SSE events (written by someone else).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // always 0 in memory
    pub malformed: u64,
    /// Whether a publisher may trim histories without recording it (the gem's, on Redis): a
    /// full history is then a sign of loss too. False in memory, where the broker is the only
    /// publisher and records every trim.
    pub unrecorded_trims: bool,
}

/// Whether channel `index` of the snapshot may have lost events after `from` (the rule in the
/// module documentation). The snapshot must hold every channel's events after `from`;
/// `history_size` is the server's.
pub(crate) fn channel_may_have_lost(
    from: u64,
    index: usize,
    snapshot: &Snapshot,
    history_size: usize,
) -> bool {
    let ch = &snapshot.channels[index];
    if ch.trimmed > from {
        return true;
    }
    snapshot.unrecorded_trims && full_with_a_gap(from, index, snapshot, history_size)
}

/// The unrecorded-trim part of the rule: the channel is full and some id between `from` and
/// its oldest retained event is retained in no requested channel.
fn full_with_a_gap(from: u64, index: usize, snapshot: &Snapshot, history_size: usize) -> bool {
    let ch = &snapshot.channels[index];
    let Some(oldest) = ch.oldest else {
        return false;
    };
    if ch.len < history_size || oldest <= from + 1 {
        return false;
    }
    let gap = oldest - from - 1;
    let retained = snapshot
        .channels
        .iter()
        .flat_map(|c| &c.events)
        .filter(|f| f.id > from && f.id < oldest)
        .count() as u64;
    retained < gap
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn channel(ids: &[u64], trimmed: u64, after: u64) -> ChannelHistory {
        ChannelHistory {
            len: ids.len(),
            oldest: ids.first().copied(),
            trimmed,
            events: ids
                .iter()
                .filter(|&&i| i > after)
                .map(|&i| Frame::event(i, Bytes::new()))
                .collect(),
        }
    }

    fn snapshot(channels: Vec<ChannelHistory>, unrecorded_trims: bool) -> Snapshot {
        Snapshot {
            counter: Some(100),
            channels,
            page_end: None,
            floor: None,
            malformed: 0,
            unrecorded_trims,
        }
    }

    #[test]
    fn a_recorded_trim_past_the_position_is_a_loss_whatever_the_size() {
        // Trimmed to 3 while the server keeps 100: a holds 5,6,7, trimmed up to 4.
        for unrecorded in [false, true] {
            let s = snapshot(vec![channel(&[5, 6, 7], 4, 2)], unrecorded);
            assert!(channel_may_have_lost(2, 0, &s, 100));
            assert!(channel_may_have_lost(3, 0, &s, 100));
            let s = snapshot(vec![channel(&[5, 6, 7], 4, 4)], unrecorded);
            assert!(!channel_may_have_lost(4, 0, &s, 100));
        }
    }

    #[test]
    fn size_zero_keeps_nothing_and_the_watermark_tells() {
        let s = snapshot(vec![channel(&[], 9, 8)], false);
        assert!(channel_may_have_lost(8, 0, &s, 0));
        let s = snapshot(vec![channel(&[], 9, 9)], false);
        assert!(!channel_may_have_lost(9, 0, &s, 0));
    }

    #[test]
    fn a_full_history_with_a_gap_counts_only_when_trims_may_go_unrecorded() {
        // Size 3, nothing recorded: a holds 5,6,7; ids 3 and 4 are nowhere.
        let s = snapshot(vec![channel(&[5, 6, 7], 0, 2)], true);
        assert!(channel_may_have_lost(2, 0, &s, 3));
        let s = snapshot(vec![channel(&[5, 6, 7], 0, 2)], false);
        assert!(!channel_may_have_lost(2, 0, &s, 3));
        // Not full at the server's size: no sign of an unrecorded trim.
        let s = snapshot(vec![channel(&[5, 6, 7], 0, 2)], true);
        assert!(!channel_may_have_lost(2, 0, &s, 4));
    }

    #[test]
    fn a_gap_covered_by_another_requested_channel_is_not_a_loss() {
        let s = snapshot(
            vec![channel(&[5, 6, 7], 0, 2), channel(&[3, 4], 0, 2)],
            true,
        );
        assert!(!channel_may_have_lost(2, 0, &s, 3));
        assert!(!channel_may_have_lost(2, 1, &s, 3));
    }
}
