//! A channel's short history as a broker reads it, and the rule that tells when events may have
//! been lost from it.
//!
//! Both brokers return a [`Snapshot`]: the id counter and the requested channels' histories,
//! read at one instant. The stream's replay plan (`resume`) and the Redis subscriber's refill
//! after a reconnection decide `missedevents` from it with the same rule,
//! [`channel_may_have_lost`]: some requested channel's history is full (it holds the configured
//! maximum, so it has been trimmed) and some id between the client's last id and that channel's
//! oldest retained event is retained in none of the requested channels' histories. Ids are
//! unique across channels, so an id retained elsewhere was not this channel's event; an id
//! retained nowhere might have been. A channel that was never trimmed lost nothing.

use crate::event::Frame;

/// One channel's history as seen at one instant.
#[derive(Debug, Default)]
pub(crate) struct ChannelHistory {
    /// Events retained (trimmed to the history size).
    pub len: usize,
    /// Lowest id retained.
    pub oldest: Option<u64>,
    /// Retained events with an id above the requested position, ascending.
    pub events: Vec<Frame>,
}

/// The id counter and the requested channels' histories, read atomically.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// The last id given, or `None` when no event was ever published.
    pub counter: Option<u64>,
    /// One entry per requested channel, in the order requested.
    pub channels: Vec<ChannelHistory>,
    /// The read stopped at its byte budget: `channels` hold a prefix of the events after the
    /// position (every event up to the highest id returned, merged across channels), and the
    /// rest is read by a later page.
    pub truncated: bool,
    /// History entries skipped because they were not SSE events (written by someone else).
    #[cfg_attr(not(feature = "redis"), allow(dead_code))] // always 0 in memory
    pub malformed: u64,
}

/// Whether channel `index` of the snapshot may have lost events after `from` (the rule in the
/// module documentation). The snapshot must hold every channel's events after `from`.
pub(crate) fn channel_may_have_lost(
    from: u64,
    index: usize,
    snapshot: &Snapshot,
    history_size: usize,
) -> bool {
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
