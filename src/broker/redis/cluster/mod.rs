//! The Redis Cluster broker: each channel on one shard, ids per channel.
//!
//! The gem's layout cannot live on a cluster (its global counter and the channels' histories
//! would be in different slots, which one script cannot touch), so a cluster has a layout of its
//! own ([`layout`], written down in docs/redis-layout.md): every key of a channel shares a hash
//! tag, so one slot, and each channel has its own sequence instead of the global counter. Ids
//! are therefore per channel (see `Broker::per_channel_ids`): a stream on several channels
//! follows each on its own and writes a compound id.
//!
//! The scripts are the single-Redis broker's, with the channel's keys in place of the global
//! ones: the publish script with `SPUBLISH` (sharded pub/sub, Redis 7.0 or later) on the history
//! key as shard channel, the history script with one channel, the raise script on the channel's
//! sequence and floor. So there is one way to write an event. They run on the Redis client's
//! cluster connection, which routes each call to the primary of its slot and follows `MOVED`,
//! `ASK` and failovers; a publish refused before it ran is sent once more. Pub/sub is the
//! [`subscriber`]'s, on connections of its own ([`node`]) to the primaries of the subscribed
//! channels' slots.
//!
//! `Publisher::redis_cluster` (and `redisse publish --redis-cluster`) publish through a
//! [`ClusterStore`] of their own.
//!
//! With `rediss://` seeds every connection is TLS: the client's to every node (its slot map
//! then names each node's TLS port) and the subscriber's ([`node`]), trusting the CA file of
//! `redis_tls_ca` alone or the system's roots. Seeds are all `rediss://` or all `redis://`.
//!
//! Not yet: the single-Redis broker's signs of a Redis that lost its data without failing over
//! (a watchdog reading of the counter, the floor and the newest event): on a cluster a data
//! loss is seen when a node's connection is lost, by each channel's sequence.

pub(crate) mod layout;
pub(crate) mod node;
mod subscriber;

use std::sync::Arc;
use std::time::Duration;

use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo, RedisError, Script, ServerErrorKind, Value};
use tokio::sync::{OnceCell, mpsc};

use self::subscriber::ClusterSubscriber;
use super::{PUBLISH_SCRIPT, RAISE_SCRIPT, SNAPSHOT_SCRIPT};
use crate::backoff::Backoff;
use crate::config::Config;
use crate::dispatch::{DispatchSender, SubSender};
use crate::error::{BrokerError, Error};
use crate::event::Event;
use crate::history::Snapshot;
use crate::idempotency::{Keyed, Outcome};
use crate::metrics::Metrics;
use crate::tasks::Tasks;

/// The cluster command connection, made at first use (and again after a failed attempt): the
/// Redis client's, which keeps one connection per node and follows the slot map.
pub(crate) struct ClusterCommands {
    client: ClusterClient,
    con: OnceCell<ClusterConnection>,
}

impl ClusterCommands {
    /// For the cluster the `seeds` (URLs) belong to, `rediss://` ones trusting `ca` (PEM) or
    /// the system's roots; nothing connects yet.
    pub fn new(seeds: &[String], ca: Option<&[u8]>) -> Result<Self, RedisError> {
        let mut builder = ClusterClient::builder(seeds.iter().map(String::as_str))
            .connection_timeout(Duration::from_secs(2))
            .response_timeout(Duration::from_secs(10))
            .retries(6);
        if seeds_use_tls(seeds) {
            super::install_crypto_provider();
        }
        if let Some(pem) = ca {
            builder = builder.certs(redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            });
        }
        let client = builder.build()?;
        Ok(ClusterCommands {
            client,
            con: OnceCell::new(),
        })
    }

    /// The connection (a cheap handle on the client's task).
    pub async fn get(&self) -> Result<ClusterConnection, BrokerError> {
        self.con
            .get_or_try_init(|| self.client.get_async_connection())
            .await
            .cloned()
            .map_err(BrokerError::redis)
    }
}

/// Whether a failed call certainly did not run and may be sent again at once: refused, or
/// redirected or refused by the cluster while its slot map changes.
fn refused_before_running(e: &RedisError) -> bool {
    e.is_connection_refusal()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::Moved
                    | ServerErrorKind::Ask
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            )
        )
}

/// The channels' events on the cluster: the scripts on each channel's slot. Cheap to clone
/// (the connection is shared).
#[derive(Clone)]
pub(crate) struct ClusterStore {
    commands: Arc<ClusterCommands>,
    publish: Script,
    snapshot: Script,
    raise: Script,
    history_size: usize,
    window: Duration,
}

impl ClusterStore {
    pub fn new(commands: ClusterCommands, history_size: usize, window: Duration) -> Self {
        ClusterStore {
            commands: Arc::new(commands),
            publish: Script::new(PUBLISH_SCRIPT),
            snapshot: Script::new(SNAPSHOT_SCRIPT),
            raise: Script::new(RAISE_SCRIPT),
            history_size,
            window,
        }
    }

    /// A store for publishing alone (`Publisher::redis_cluster`), on the cluster of `seeds`
    /// (`rediss://` ones trusting `ca`, see [`ClusterCommands::new`]).
    pub fn connect(
        seeds: &[String],
        ca: Option<&[u8]>,
        history_size: usize,
        window: Duration,
    ) -> Result<Self, BrokerError> {
        let commands = ClusterCommands::new(seeds, ca).map_err(BrokerError::redis)?;
        Ok(ClusterStore::new(commands, history_size, window))
    }

    /// Keeps idempotency keys for `window` instead.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Runs the publish script on the channel's slot: the event gets the channel's next
    /// sequence number, is stored in its history and `SPUBLISH`ed on its shard channel; with
    /// `keyed`, only when the key was not used on this channel within the window.
    pub async fn publish(
        &self,
        channel: &str,
        tail: &[u8],
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        let mut inv = self.publish.key(layout::history_key(channel));
        inv.key(layout::sequence_key(channel))
            .key(layout::trimmed_key(channel))
            .arg(tail)
            .arg(self.history_size)
            .arg("SPUBLISH");
        if let Some(keyed) = keyed {
            inv.key(layout::idempotency_key(channel, keyed.key))
                .arg(&keyed.fingerprint)
                .arg(super::window_millis(self.window));
        }
        let mut con = self.commands.get().await?;
        let reply: (u64, u8) = match inv.invoke_async(&mut con).await {
            Err(e) if refused_before_running(&e) => {
                tracing::debug!(error = %e, "publish refused by the cluster: sent once more");
                inv.invoke_async(&mut con).await
            }
            reply => reply,
        }
        .map_err(BrokerError::redis)?;
        super::publish_outcome(reply)
    }

    /// One channel's sequence, floor and events after `after`, read by the history script on
    /// its slot (see `super::HistoryReader::snapshot`, of which this is the one-channel case).
    pub async fn snapshot(
        &self,
        channel: &str,
        after: Option<u64>,
        budget: usize,
    ) -> Result<Snapshot, BrokerError> {
        let after_arg = after.map_or_else(|| "-1".to_owned(), |a| a.to_string());
        let mut inv = self.snapshot.key(layout::sequence_key(channel));
        inv.key(layout::trimmed_key(channel))
            .key(layout::floor_key(channel))
            .key(layout::history_key(channel))
            .arg(&after_arg)
            .arg(budget);
        let mut con = self.commands.get().await?;
        let reply: Value = match inv.invoke_async(&mut con).await {
            // A read changes nothing: tried once more on whatever failed.
            Err(e) => {
                tracing::debug!(error = %e, "history read failed: read once more");
                inv.invoke_async(&mut con).await
            }
            ok => ok,
        }
        .map_err(BrokerError::redis)?;
        let page = super::parse_snapshot(reply)?;
        let mut snap = Snapshot {
            counter: page.counter,
            channels: page.histories,
            page_end: page.page_end,
            floor: page.floor,
            malformed: page.malformed,
            unrecorded_trims: true,
        };
        if snap.channels.len() != 1 {
            return Err(BrokerError::Protocol(format!(
                "history script: {} channels for one",
                snap.channels.len()
            )));
        }
        if let Some(cut) = snap.page_end {
            for history in &mut snap.channels {
                history.events.retain(|f| f.id <= cut);
            }
        }
        Ok(snap)
    }

    /// After writes of `channel` were lost, raises its sequence above `known` and its floor
    /// to the raised value, unless the floor is already above `known` (see `RAISE_SCRIPT`);
    /// with `known` 0, only makes sure that the floor exists. Returns the sequence and floor.
    pub async fn raise(&self, channel: &str, known: u64) -> Result<(u64, u64), BrokerError> {
        let mut inv = self.raise.key(layout::sequence_key(channel));
        inv.key(layout::floor_key(channel)).arg(known);
        let mut con = self.commands.get().await?;
        let (sequence, floor): (i64, i64) = inv
            .invoke_async(&mut con)
            .await
            .map_err(BrokerError::redis)?;
        Ok((sequence.max(0) as u64, floor.max(0) as u64))
    }

    /// The channel's sequence now (0 when it has none).
    pub async fn sequence(&self, channel: &str) -> Result<u64, BrokerError> {
        let mut con = self.commands.get().await?;
        let value: Option<String> = redis::cmd("GET")
            .arg(layout::sequence_key(channel))
            .query_async(&mut con)
            .await
            .map_err(BrokerError::redis)?;
        Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

/// Whether the seeds are `rediss://` URLs (`Config::validate` refuses a mix).
pub(crate) fn seeds_use_tls(seeds: &[String]) -> bool {
    seeds.iter().any(|s| crate::redis_url::is_tls_url(s))
}

/// How the subscriber's own connections reach the nodes: TLS when the seeds are `rediss://`
/// (trusting `ca`, or the system's roots), and the first seed's credentials (the cluster
/// client asks every node with them too).
fn seeds_access(seeds: &[String], ca: Option<&[u8]>) -> Result<node::Access, Error> {
    let tls = if seeds_use_tls(seeds) {
        Some(Arc::new(
            node::tls_config(ca).map_err(Error::InvalidConfig)?,
        ))
    } else {
        None
    };
    let Some(first) = seeds.first() else {
        return Ok(node::Access::default());
    };
    let info = first
        .as_str()
        .into_connection_info()
        .map_err(|e| Error::RedisUrl(Box::new(e)))?;
    Ok(node::Access {
        tls,
        username: info.redis_settings().username().map(str::to_owned),
        password: info.redis_settings().password().map(str::to_owned),
    })
}

/// The seeds' `host:port` addresses.
fn seed_addresses(seeds: &[String]) -> Result<Vec<String>, RedisError> {
    seeds
        .iter()
        .map(|s| Ok(s.as_str().into_connection_info()?.addr().to_string()))
        .collect()
}

/// Publishing and history on a Redis Cluster; subscriptions go to the subscriber task.
pub(crate) struct ClusterBroker {
    store: Arc<ClusterStore>,
    subscriptions: SubSender,
    metrics: Arc<Metrics>,
}

impl ClusterBroker {
    /// Prepares the cluster connection (made at first use) and starts the subscriber task.
    pub fn start(
        config: &Config,
        dispatch: DispatchSender,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<(Self, SubSender), Error> {
        let seeds = config.redis_cluster.as_deref().unwrap_or_default();
        let ca = super::config_ca(config)?;
        let bad_url = |e: RedisError| Error::RedisUrl(Box::new(e));
        let store = Arc::new(ClusterStore::new(
            ClusterCommands::new(seeds, ca.as_deref()).map_err(bad_url)?,
            config.history_size,
            config.idempotency_window,
        ));
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let subscriber = ClusterSubscriber::new(
            seed_addresses(seeds).map_err(bad_url)?,
            seeds_access(seeds, ca.as_deref())?,
            store.clone(),
            metrics.clone(),
            dispatch,
            sub_rx,
            config,
        );
        tasks.spawn("redis cluster subscriber", subscriber.run());
        let broker = ClusterBroker {
            store,
            subscriptions: sub_tx.clone(),
            metrics,
        };
        Ok((broker, sub_tx))
    }

    pub async fn publish(
        &self,
        channel: &str,
        event: &Event,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        self.store
            .publish(channel, &event.encode_tail(), keyed)
            .await
    }

    /// A stream's snapshot or page of exactly one channel (ids are per channel: a stream on
    /// several reads each on its own).
    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
        budget: usize,
        ready: tokio::time::Instant,
    ) -> Result<Snapshot, BrokerError> {
        let _ = ready;
        let [channel] = channels else {
            return Err(BrokerError::Protocol(format!(
                "a Redis Cluster snapshot reads one channel, not {}",
                channels.len()
            )));
        };
        let snapshot = self.store.snapshot(channel, after, budget).await?;
        if snapshot.malformed > 0 {
            self.metrics.malformed.inc_by(snapshot.malformed);
        }
        Ok(snapshot)
    }

    /// Returns when the subscriptions of `channels` were confirmed active on their nodes (see
    /// `dispatch::Ready`): while one shard fails over, a stream on the others' channels does
    /// not wait for it.
    pub async fn subscriptions_ready(&self, channels: &[Arc<str>]) -> tokio::time::Instant {
        crate::dispatch::barrier(&self.subscriptions, Some(channels)).await
    }

    pub fn is_up(&self) -> bool {
        self.metrics.broker_up()
    }
}

/// Pauses between the startup check's attempts.
const MIN_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Waits at most `timeout` for a seed of the cluster to answer and say `cluster_state:ok`;
/// with a zero `timeout`, only checks the settings. The error names the cluster by its seeds,
/// without passwords.
pub(crate) async fn wait_until_answered(config: &Config, timeout: Duration) -> Result<(), Error> {
    let seeds = config.redis_cluster.as_deref().unwrap_or_default();
    let ca = super::config_ca(config)?;
    ClusterCommands::new(seeds, ca.as_deref()).map_err(|e| Error::RedisUrl(Box::new(e)))?;
    let access = seeds_access(seeds, ca.as_deref())?;
    if timeout.is_zero() {
        return Ok(());
    }
    let described = config.broker_description();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut backoff = Backoff::new(MIN_PAUSE, MAX_PAUSE);
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let mut last = None;
        for seed in seeds {
            let attempt = tokio::time::timeout(
                remaining,
                check_seed(seed, ca.as_deref(), &access, remaining),
            )
            .await;
            match attempt.unwrap_or_else(|_| Err(super::probe::Unanswered::transient("no answer")))
            {
                Ok(()) => return Ok(()),
                Err(failure) if !failure.transient => {
                    return Err(Error::BrokerUnreachable {
                        message: format!("{described}: {}", failure.cause),
                        waited: None,
                    });
                }
                Err(failure) => last = Some(failure),
            }
        }
        let pause = backoff
            .next_delay()
            .min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        if pause.is_zero() {
            let cause = last.map_or_else(|| "no answer".to_owned(), |f| f.cause);
            return Err(Error::BrokerUnreachable {
                message: format!("{described}: {cause}"),
                waited: Some(timeout),
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// The `redis_version` of an `INFO server` reply when it is older than 7.0 (no sharded
/// pub/sub); `None` when it is recent enough or not said.
fn too_old(info: &str) -> Option<&str> {
    let version = info
        .lines()
        .find_map(|l| l.trim().strip_prefix("redis_version:"))?;
    let major: u32 = version.split('.').next()?.parse().ok()?;
    (major < 7).then_some(version)
}

/// One seed: a connection, `INFO cluster` saying it is a cluster node, a Redis recent enough
/// for sharded pub/sub, and `CLUSTER INFO` saying the cluster is up; over TLS, a handshake with
/// each primary at the address the slot map names it by (the address every later connection
/// uses), whose certificate must be valid for it.
async fn check_seed(
    seed: &str,
    ca: Option<&[u8]>,
    access: &node::Access,
    remaining: Duration,
) -> Result<(), super::probe::Unanswered> {
    use super::probe::{Unanswered, classify};
    let client = super::client(seed, ca, false).map_err(|e| classify(&e))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(remaining))
        .set_response_timeout(Some(remaining));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| classify(&e))?;
    let info: String = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut con)
        .await
        .map_err(|e| classify(&e))?;
    if !info.lines().any(|l| l.trim() == "cluster_enabled:1") {
        return Err(Unanswered::fatal(
            "not a Redis Cluster node (cluster_enabled is not 1): for one Redis, use \
             --redis instead of --redis-cluster",
        ));
    }
    let server: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await
        .map_err(|e| classify(&e))?;
    if let Some(version) = too_old(&server) {
        return Err(Unanswered::fatal(format!(
            "Redis {version}: the cluster broker needs Redis 7.0 or later (sharded pub/sub)"
        )));
    }
    let state: String = redis::cmd("CLUSTER")
        .arg("INFO")
        .query_async(&mut con)
        .await
        .map_err(|e| classify(&e))?;
    match state
        .lines()
        .find_map(|l| l.trim().strip_prefix("cluster_state:"))
    {
        Some("ok") => {}
        other => {
            return Err(Unanswered::transient(format!(
                "the cluster is not up (cluster_state:{})",
                other.unwrap_or("unknown")
            )));
        }
    }
    if access.tls.is_none() {
        return Ok(());
    }
    // The slot map as the subscriber reads it (on a connection of its kind, over TLS).
    let seed = client.get_connection_info().addr().to_string();
    let (lost, _) = mpsc::unbounded_channel();
    let quiet: node::PushHandler = Arc::new(|_| {});
    let slots = async {
        let mut asked = node::NodeConn::connect(&seed, 0, access, remaining, quiet, lost).await?;
        let reply = asked.request(&[b"CLUSTER", b"SLOTS"]).await?;
        subscriber::SlotMap::parse(&reply, &seed)
    };
    let slots = slots
        .await
        .map_err(|e| Unanswered::transient(format!("{seed}: {e}")))?;
    for addr in slots.primaries() {
        if let Err((fatal, why)) = node::check_tls(&addr, access, remaining).await {
            let why = format!("the node at {addr}, as the slot map names it: {why}");
            return Err(if fatal {
                Unanswered::fatal(why)
            } else {
                Unanswered::transient(why)
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redis_without_sharded_pub_sub_is_told_apart() {
        assert_eq!(
            too_old("# Server\r\nredis_version:6.2.14\r\n"),
            Some("6.2.14")
        );
        assert_eq!(too_old("redis_version:7.0.15\n"), None);
        assert_eq!(too_old("redis_version:10.0.0\n"), None);
        assert_eq!(too_old("redis_mode:cluster\n"), None);
    }

    #[test]
    fn only_failures_before_running_are_sent_again() {
        let moved = RedisError::from((ErrorKind::Server(ServerErrorKind::Moved), "MOVED"));
        assert!(refused_before_running(&moved));
        let down = RedisError::from((ErrorKind::Server(ServerErrorKind::ClusterDown), "down"));
        assert!(refused_before_running(&down));
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(refused_before_running(&refused));
        // A reply lost after the script may have run is not sent again.
        let reset = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!refused_before_running(&reset));
        let script = RedisError::from((ErrorKind::Server(ServerErrorKind::ResponseError), "ERR"));
        assert!(!refused_before_running(&script));
    }
}
