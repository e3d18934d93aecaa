//! Brokers carry events between publishers and servers and keep each channel's short history.
//!
//! Two implementations with one behaviour, so one test suite runs against both:
//! [`memory`] (one process, the default) and `redis` (feature `redis`: any number of processes,
//! the gem's Redis layout, on one Redis or on the primary Sentinel names; or `redis::cluster`, on a
//! Redis Cluster, ids per channel). A broker assigns ids from one counter for all channels, stores each
//! event in its channel's history (the newest `history_size`, recording the newest id each trim
//! removed, see `history`), and hands it, encoded once, to
//! the hub's dispatcher of every process with local listeners. Each broker owns what it needs
//! to do so: the Redis broker starts and supervises its own pub/sub subscriber. Both remember
//! publishes' idempotency keys for the window, checked atomically with the publish.

pub(crate) mod memory;
#[cfg(feature = "redis")]
pub(crate) mod redis;

use std::sync::Arc;

use crate::config::Config;
use crate::dispatch::{DispatchSender, SubSender};
use crate::error::{BrokerError, Error};
use crate::event::Event;
use crate::history::Snapshot;
use crate::idempotency::{Keyed, Outcome};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// The broker of one instance.
pub(crate) enum Broker {
    Memory(memory::MemoryBroker),
    #[cfg(feature = "redis")]
    Redis(redis::RedisBroker),
    /// Redis Cluster: ids per channel (see [`Broker::per_channel_ids`]).
    #[cfg(feature = "redis")]
    Cluster(redis::cluster::ClusterBroker),
}

impl Broker {
    /// Starts the broker `config` names: in memory, or Redis (whose subscriber task starts
    /// here, watched in `tasks`). Returns it with where the hub sends subscription changes (`None` in memory).
    pub fn start(
        config: &Config,
        dispatch: DispatchSender,
        metrics: &Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<(Broker, Option<SubSender>), Error> {
        if !config.uses_redis() {
            metrics.set_broker_up(true);
            let broker = memory::MemoryBroker::new(dispatch, config, metrics.clone());
            return Ok((Broker::Memory(broker), None));
        }
        #[cfg(feature = "redis")]
        if config.redis_cluster.is_some() {
            let (broker, subscriptions) =
                redis::cluster::ClusterBroker::start(config, dispatch, metrics.clone(), tasks)?;
            return Ok((Broker::Cluster(broker), Some(subscriptions)));
        }
        #[cfg(feature = "redis")]
        {
            let (broker, subscriptions) =
                redis::RedisBroker::start(config, dispatch, metrics.clone(), tasks)?;
            Ok((Broker::Redis(broker), Some(subscriptions)))
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = tasks;
            Err(Error::RedisNotBuilt)
        }
    }

    /// Waits at most `timeout` for the broker `config` names to answer (at once in memory),
    /// before any of its tasks starts: see `redis::probe`. A zero `timeout` only checks the
    /// settings (URL, CA file).
    pub async fn wait_until_answered(
        config: &Config,
        timeout: std::time::Duration,
    ) -> Result<(), Error> {
        if !config.uses_redis() {
            return Ok(());
        }
        #[cfg(feature = "redis")]
        {
            if config.redis_cluster.is_some() {
                return redis::cluster::wait_until_answered(config, timeout).await;
            }
            redis::wait_until_answered(config, timeout).await
        }
        #[cfg(not(feature = "redis"))]
        {
            let _ = timeout;
            Err(Error::RedisNotBuilt)
        }
    }

    /// Assigns an id, stores the event in history and delivers it to every subscriber; with
    /// `keyed`, only when its key was not used within the idempotency window (in the same
    /// atomic step), else answers the earlier event's id (see [`Outcome`]).
    pub async fn publish(
        &self,
        channel: &str,
        event: &Event,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        match self {
            Broker::Memory(b) => Ok(b.publish(channel, event, keyed)),
            #[cfg(feature = "redis")]
            Broker::Redis(b) => b.publish(channel, event, keyed).await,
            #[cfg(feature = "redis")]
            Broker::Cluster(b) => b.publish(channel, event, keyed).await,
        }
    }

    /// Reads the counter and, when `after` is given, each channel's events after it. When
    /// `after` is beyond the counter (the store lost its data), every retained event is read.
    /// A `budget` other than 0 reads one page: the events in id order (merged across channels)
    /// up to about that many bytes (at least one event), with `page_end` set when more remain.
    /// `ready` is when the caller's subscriptions were last known active (after
    /// [`Broker::subscriptions_ready`]): a Redis read that started after it may be shared.
    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
        budget: usize,
        ready: tokio::time::Instant,
    ) -> Result<Snapshot, BrokerError> {
        match self {
            Broker::Memory(b) => {
                let _ = ready;
                Ok(b.snapshot(channels, after, budget))
            }
            #[cfg(feature = "redis")]
            Broker::Redis(b) => b.snapshot(channels, after, budget, ready).await,
            #[cfg(feature = "redis")]
            Broker::Cluster(b) => b.snapshot(channels, after, budget, ready).await,
        }
    }

    /// Waits until every subscription of `channels` registered before this call is active on
    /// the broker, so that a history read made afterwards and the live events overlap instead
    /// of leaving a gap. During a Redis outage this waits for the reconnection (on a Redis
    /// Cluster, for the shards of `channels` only). Returns the instant from which they were
    /// known active.
    pub async fn subscriptions_ready(&self, channels: &[Arc<str>]) -> tokio::time::Instant {
        match self {
            Broker::Memory(_) => {
                let _ = channels;
                tokio::time::Instant::now()
            }
            #[cfg(feature = "redis")]
            Broker::Redis(b) => b.subscriptions_ready().await,
            #[cfg(feature = "redis")]
            Broker::Cluster(b) => b.subscriptions_ready(channels).await,
        }
    }

    /// Waits until every event of `channels` published before this call that this process
    /// will dispatch has reached the dispatcher and been offered to the connections, so that a
    /// stream that read the counter can tell the events it will get live from the ones before
    /// it.
    pub async fn flush(&self, channels: &[Arc<str>]) {
        match self {
            Broker::Memory(b) => {
                let _ = channels;
                b.flush().await
            }
            // The subscriber answers a barrier after a PING on the pub/sub connection, whose
            // reply follows every message Redis pushed before it.
            #[cfg(feature = "redis")]
            Broker::Redis(b) => {
                b.subscriptions_ready().await;
            }
            // The same, with a PING on each node's connection (those of `channels` while
            // another shard fails over).
            #[cfg(feature = "redis")]
            Broker::Cluster(b) => {
                b.subscriptions_ready(channels).await;
            }
        }
    }

    /// Whether the broker can be reached now.
    pub fn is_up(&self) -> bool {
        match self {
            Broker::Memory(_) => true,
            #[cfg(feature = "redis")]
            Broker::Redis(b) => b.is_up(),
            #[cfg(feature = "redis")]
            Broker::Cluster(b) => b.is_up(),
        }
    }

    /// Whether ids are sequences of each channel (Redis Cluster: each channel's counter lives on
    /// its shard) rather than one counter for all channels. Streams on several channels then
    /// read and follow each channel on its own and write a compound id.
    pub fn per_channel_ids(&self) -> bool {
        match self {
            Broker::Memory(_) => false,
            #[cfg(feature = "redis")]
            Broker::Redis(_) => false,
            #[cfg(feature = "redis")]
            Broker::Cluster(_) => true,
        }
    }
}
