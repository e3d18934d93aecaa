//! Brokers carry events between publishers and servers and keep each channel's short history.
//!
//! Two implementations with one behaviour, so one test suite runs against both:
//! [`memory`] (one process, the default) and [`redis`] (any number of processes, the gem's Redis
//! layout). A broker assigns ids from one counter for all channels, stores each event in its
//! channel's history (the newest `history_size`), and hands it, encoded once, to the hub's
//! dispatcher of every process with local listeners.

pub(crate) mod memory;
pub(crate) mod redis;
pub(crate) mod subscriber;

use std::sync::Arc;

use crate::conn::Frame;
use crate::event::Event;

/// Why a broker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Redis answered with an error or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Redis answered something this layout does not expect.
    #[error("unexpected reply from redis: {0}")]
    Protocol(String),
}

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
    /// History entries skipped because they were not SSE events (written by someone else).
    pub malformed: u64,
}

/// The broker of one instance.
pub(crate) enum Broker {
    Memory(memory::MemoryBroker),
    Redis(redis::RedisBroker),
}

impl Broker {
    /// Assigns an id, stores the event in history and delivers it to every subscriber.
    pub async fn publish(&self, channel: &str, event: &Event) -> Result<u64, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(channel, event)),
            Broker::Redis(b) => b.publish(channel, event).await,
        }
    }

    /// Reads the counter and, when `after` is given, each channel's events after it. When
    /// `after` is beyond the counter (the store lost its data), every retained event is read.
    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.snapshot(channels, after)),
            Broker::Redis(b) => {
                let snapshot = b.snapshot(channels, after).await?;
                b.count_malformed(snapshot.malformed);
                Ok(snapshot)
            }
        }
    }

    /// Waits until every subscription registered before this call is active on the broker, so
    /// that a history read made afterwards and the live events overlap instead of leaving a gap.
    /// During a Redis outage this waits for the reconnection.
    pub async fn subscriptions_ready(&self) {
        match self {
            Broker::Memory(_) => {}
            Broker::Redis(b) => b.subscriptions_ready().await,
        }
    }

    /// Waits until every event published before this call that this process will dispatch has
    /// reached the dispatcher and been offered to the connections, so that a stream that read
    /// the counter can tell the events it will get live from the ones before it.
    pub async fn flush(&self) {
        match self {
            Broker::Memory(b) => b.flush().await,
            // The subscriber answers a barrier after a PING on the pub/sub connection, whose
            // reply follows every message Redis pushed before it.
            Broker::Redis(b) => b.subscriptions_ready().await,
        }
    }

    /// Whether the broker can be reached now.
    pub fn is_up(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            Broker::Redis(b) => b.is_up(),
        }
    }
}
