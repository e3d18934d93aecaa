//! Publishing from Rust: a [`Publisher`] for a running instance, for Redis alone (an
//! application process that serves no streams), or recording events for application tests (the
//! gem's `test_mode!`, `test_filter=` and `published`). Each path takes an idempotency key
//! ([`Publisher::publish_idempotent`]) so that a publisher may retry safely (see `idempotency`).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

#[cfg(feature = "redis")]
use crate::broker::redis::RedisPublisher;
#[cfg(feature = "redis")]
use crate::broker::redis::cluster::ClusterStore;
use crate::channel::{ChannelName, InvalidChannel};
#[cfg(feature = "redis")]
use crate::config::DEFAULT_HISTORY_SIZE;
use crate::config::{
    DEFAULT_IDEMPOTENCY_MAX_KEYS, DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_MAX_CHANNEL_NAME_BYTES,
    DEFAULT_MAX_QUEUE_BYTES,
};
use crate::error::BrokerError;
use crate::event::{Event, InvalidEvent};
use crate::idempotency::{Keyed, Outcome, RecentKeys, check_key};
use crate::instance::{Redisse, Shared};

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event itself is invalid (a line break in its type).
    #[error(transparent)]
    InvalidEvent(#[from] InvalidEvent),
    /// The channel name is empty.
    #[error("the channel name is empty")]
    EmptyChannel,
    /// The event, once encoded, would not fit a subscriber's queue (`Config::max_queue_bytes`):
    /// every listener would be disconnected as slow. Answered 413 over HTTP.
    #[error(
        "the event encodes to {size} bytes, more than a subscriber's queue holds ({max} bytes)"
    )]
    EventTooLarge {
        /// The event's encoded size, at most.
        size: usize,
        /// The queue's limit.
        max: usize,
    },
    /// The channel name is longer than subscribers may ask for
    /// (`Config::max_channel_name_bytes`), so nobody could listen to it.
    #[error("the channel name is longer than {max} bytes")]
    ChannelNameTooLong {
        /// The limit, in bytes.
        max: usize,
    },
    /// The idempotency key is not 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII
    /// characters; the message says why. Answered 400 over HTTP.
    ///
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`]: crate::MAX_IDEMPOTENCY_KEY_BYTES
    #[error("{0}")]
    InvalidIdempotencyKey(String),
    /// The idempotency key was used within the window for another event (another channel,
    /// type or data), published with `id`; nothing was published. A new event needs a new key.
    /// Answered 422 over HTTP.
    #[error(
        "the Idempotency-Key was used within the idempotency window for another event \
         (id {id}): nothing was published; a new event needs a new key"
    )]
    IdempotencyKeyReused {
        /// The id of the event the key was first used for.
        id: u64,
    },
    /// The broker failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The publisher cannot be built as asked (a URL the Redis client cannot use, a CA file
    /// that cannot be read, a CA for a URL without TLS); the message says why.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

/// What a publish with an idempotency key did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Publication {
    /// The event's id: published now, or earlier with the same key.
    pub id: u64,
    /// The key was used within the window for this same event: nothing was published now and
    /// `id` is the earlier event's.
    pub replayed: bool,
}

/// Publishes events; cheap to clone.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use redisse::{Event, Publisher};
/// let (publisher, recorder) = Publisher::test();
/// publisher.publish("global", Event::new("foo", "bar")).await?;
/// let events = recorder.published();
/// assert_eq!(events[0].channel, "global");
/// assert_eq!(events[0].event_type, "foo");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Publisher {
    target: Target,
    /// Longest channel name accepted: the instance's limit, or for Redis and test publishers
    /// [`DEFAULT_MAX_CHANNEL_NAME_BYTES`] unless set.
    max_channel_name_bytes: usize,
    /// Largest encoded event: the instance's queue limit, or [`DEFAULT_MAX_QUEUE_BYTES`].
    max_event_bytes: usize,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let target = match &self.target {
            Target::Instance(_) => "instance",
            #[cfg(feature = "redis")]
            Target::Redis(_) => "redis",
            #[cfg(feature = "redis")]
            Target::Cluster(_) => "redis cluster",
            Target::Test(_) => "test",
        };
        f.debug_struct("Publisher")
            .field("target", &target)
            .finish()
    }
}

#[derive(Clone)]
enum Target {
    Instance(Arc<Shared>),
    /// The broker's own publish path, without an instance.
    #[cfg(feature = "redis")]
    Redis(RedisPublisher),
    /// The cluster broker's publish path (ids per channel).
    #[cfg(feature = "redis")]
    Cluster(ClusterStore),
    Test(TestRecorder),
}

impl From<InvalidChannel> for PublishError {
    fn from(e: InvalidChannel) -> Self {
        match e {
            InvalidChannel::Empty => PublishError::EmptyChannel,
            InvalidChannel::TooLong { max } => PublishError::ChannelNameTooLong { max },
        }
    }
}

impl Redisse {
    /// A publisher on this instance's broker.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            target: Target::Instance(self.shared.clone()),
            max_channel_name_bytes: self.shared.config.max_channel_name_bytes,
            max_event_bytes: self.shared.config.max_queue_bytes,
        }
    }
}

/// A publisher's settings that the Redis client refused before connecting (a URL, or a TLS
/// combination it cannot use) are the caller's configuration: [`PublishError::InvalidConfig`],
/// with the client's reason; anything else stays a broker error.
#[cfg(feature = "redis")]
fn settings_refused(e: BrokerError) -> PublishError {
    if let BrokerError::Redis(inner) = &e
        && let Some(refused) = inner.downcast_ref::<redis::RedisError>()
        && refused.kind() == redis::ErrorKind::InvalidClientConfig
    {
        return PublishError::InvalidConfig(refused.to_string());
    }
    PublishError::Broker(e)
}

/// The PEM file `ca` read (see `broker::redis::read_ca`), for a setup that speaks TLS (`tls`);
/// a CA without TLS is refused with `refusal`.
#[cfg(feature = "redis")]
fn read_tls_ca(
    ca: Option<&std::path::Path>,
    tls: bool,
    refusal: &str,
) -> Result<Option<Vec<u8>>, PublishError> {
    match ca {
        Some(_) if !tls => Err(PublishError::InvalidConfig(refusal.into())),
        Some(path) => crate::broker::redis::read_ca(path)
            .map(Some)
            .map_err(|e| PublishError::InvalidConfig(format!("TLS CA: {e}"))),
        None => Ok(None),
    }
}

impl Publisher {
    /// A publisher that writes to Redis directly, in the gem's layout, with the default history
    /// size. It connects on first use and reconnects by itself. Channel names are held to the
    /// default length limit ([`DEFAULT_MAX_CHANNEL_NAME_BYTES`]).
    #[cfg(feature = "redis")]
    pub fn redis(url: &str) -> Result<Self, PublishError> {
        Publisher::redis_with_history(url, DEFAULT_HISTORY_SIZE)
    }

    /// Like [`Publisher::redis`], keeping `history_size` events per channel (0: none). Each trim
    /// records the newest id it removed (`redisse:trimmed`), so servers that keep more events
    /// still send `missedevents` to clients that resume from before them.
    #[cfg(feature = "redis")]
    pub fn redis_with_history(url: &str, history_size: usize) -> Result<Self, PublishError> {
        Publisher::redis_with_tls_ca(url, history_size, None)
    }

    /// Like [`Publisher::redis_with_history`]; with `ca`, a `rediss://` server's certificate
    /// must chain to the CA certificates of that PEM file instead of the system's roots (as
    /// [`Config::redis_tls_ca`](crate::Config::redis_tls_ca)). The file is read here: one that
    /// cannot be read or holds no certificate, or a `ca` for a URL without TLS, is
    /// [`PublishError::InvalidConfig`].
    #[cfg(feature = "redis")]
    pub fn redis_with_tls_ca(
        url: &str,
        history_size: usize,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, PublishError> {
        let ca = read_tls_ca(
            ca,
            crate::redis_url::is_tls_url(url),
            "a TLS CA is for a rediss:// URL",
        )?;
        Ok(Publisher {
            target: Target::Redis(
                RedisPublisher::connect(
                    url,
                    ca.as_deref(),
                    history_size,
                    DEFAULT_IDEMPOTENCY_WINDOW,
                )
                .map_err(settings_refused)?,
            ),
            max_channel_name_bytes: DEFAULT_MAX_CHANNEL_NAME_BYTES,
            max_event_bytes: DEFAULT_MAX_QUEUE_BYTES,
        })
    }

    /// A publisher that writes to the Redis primary that Sentinel names (as
    /// [`Config::redis_sentinel`](crate::Config::redis_sentinel): the sentinels' URLs, and the
    /// primary's name or a URL with the name as host), keeping `history_size` events per
    /// channel. It asks the sentinels on first use, and again when the primary refuses a write
    /// (a demoted primary) or cannot be reached, so that it follows a failover; a publish
    /// refused before it ran is sent once more to the new primary.
    #[cfg(feature = "redis")]
    pub fn redis_sentinel(
        sentinels: &[String],
        master: &str,
        history_size: usize,
    ) -> Result<Self, PublishError> {
        Publisher::redis_sentinel_with_tls_ca(sentinels, master, history_size, None)
    }

    /// Like [`Publisher::redis_sentinel`]; with `ca`, every TLS connection of the setup (to
    /// `rediss://` sentinels, and to the primary when `master` is a `rediss://` URL) must chain
    /// to the CA certificates of that PEM file instead of the system's roots (as
    /// [`Config::redis_tls_ca`](crate::Config::redis_tls_ca)). With a CA, the sentinels' URLs
    /// must all be `rediss://` or all `redis://`, and carry the same user and password. A file
    /// that cannot be read or holds no certificate, a `ca` where nothing is TLS, or sentinels
    /// that break those rules, is [`PublishError::InvalidConfig`].
    #[cfg(feature = "redis")]
    pub fn redis_sentinel_with_tls_ca(
        sentinels: &[String],
        master: &str,
        history_size: usize,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, PublishError> {
        let ca = read_tls_ca(
            ca,
            crate::redis_url::sentinel_uses_tls(master, sentinels),
            "a TLS CA is for TLS: the sentinels' URLs or the primary's must be rediss://",
        )?;
        Ok(Publisher {
            target: Target::Redis(
                RedisPublisher::through_sentinel(
                    sentinels,
                    master,
                    ca.as_deref(),
                    history_size,
                    DEFAULT_IDEMPOTENCY_WINDOW,
                )
                .map_err(settings_refused)?,
            ),
            max_channel_name_bytes: DEFAULT_MAX_CHANNEL_NAME_BYTES,
            max_event_bytes: DEFAULT_MAX_QUEUE_BYTES,
        })
    }

    /// A publisher that writes to a Redis Cluster directly (as
    /// [`Config::redis_cluster`](crate::Config::redis_cluster): seed nodes' `redis://` URLs, or
    /// `rediss://` for TLS with the system's roots), in the cluster layout
    /// (docs/redis-layout.md), keeping `history_size` events per channel: each event gets its
    /// channel's next id. It connects on first use and follows the slot map and failovers; a
    /// publish refused before it ran is sent once more.
    #[cfg(feature = "redis")]
    pub fn redis_cluster(seeds: &[String], history_size: usize) -> Result<Self, PublishError> {
        Publisher::redis_cluster_with_tls_ca(seeds, history_size, None)
    }

    /// Like [`Publisher::redis_cluster`]; with `ca`, the nodes' certificates must chain to the
    /// CA certificates of that PEM file instead of the system's roots (as
    /// [`Config::redis_tls_ca`](crate::Config::redis_tls_ca)), and the seeds must be
    /// `rediss://` URLs. A file that cannot be read or holds no certificate, or a `ca` with
    /// `redis://` seeds, is [`PublishError::InvalidConfig`].
    #[cfg(feature = "redis")]
    pub fn redis_cluster_with_tls_ca(
        seeds: &[String],
        history_size: usize,
        ca: Option<&std::path::Path>,
    ) -> Result<Self, PublishError> {
        crate::config::check_cluster(seeds, false).map_err(PublishError::InvalidConfig)?;
        let ca = read_tls_ca(
            ca,
            crate::broker::redis::cluster::seeds_use_tls(seeds),
            "a TLS CA is for TLS: the cluster's seeds must be rediss:// URLs",
        )?;
        Ok(Publisher {
            target: Target::Cluster(
                ClusterStore::connect(
                    seeds,
                    ca.as_deref(),
                    history_size,
                    DEFAULT_IDEMPOTENCY_WINDOW,
                )
                .map_err(settings_refused)?,
            ),
            max_channel_name_bytes: DEFAULT_MAX_CHANNEL_NAME_BYTES,
            max_event_bytes: DEFAULT_MAX_QUEUE_BYTES,
        })
    }

    /// A publisher that records events instead of sending them, and the recorder to read them.
    pub fn test() -> (Self, TestRecorder) {
        let recorder = TestRecorder::default();
        let publisher = Publisher {
            target: Target::Test(recorder.clone()),
            max_channel_name_bytes: DEFAULT_MAX_CHANNEL_NAME_BYTES,
            max_event_bytes: DEFAULT_MAX_QUEUE_BYTES,
        };
        (publisher, recorder)
    }

    /// Holds channel names to `max` bytes instead: set it to the servers'
    /// `max_channel_name_bytes` when they allow longer names than the default (a publisher of
    /// an instance starts with the instance's limit).
    pub fn with_max_channel_name_bytes(mut self, max: usize) -> Self {
        self.max_channel_name_bytes = max;
        self
    }

    /// Refuses events that encode past `max` bytes instead: set it to the servers'
    /// `max_queue_bytes` when they differ from the default (a publisher of an instance starts
    /// with the instance's).
    pub fn with_max_event_bytes(mut self, max: usize) -> Self {
        self.max_event_bytes = max;
        self
    }

    /// Remembers idempotency keys for `window` instead of [`DEFAULT_IDEMPOTENCY_WINDOW`]: set
    /// it to the servers' `idempotency_window` on a Redis publisher (a publisher of an instance
    /// follows the instance's, and a test publisher keeps its default). At least a millisecond.
    pub fn with_idempotency_window(mut self, window: std::time::Duration) -> Self {
        let window = window.max(std::time::Duration::from_millis(1));
        match &mut self.target {
            #[cfg(feature = "redis")]
            Target::Redis(r) => r.set_window(window),
            #[cfg(feature = "redis")]
            Target::Cluster(c) => c.set_window(window),
            Target::Instance(_) | Target::Test(_) => {
                // Only a Redis publisher keeps its own window (see above).
                let _ = window;
            }
        }
        self
    }

    /// Publishes `event` on `channel` and returns its id. The channel name must be non-empty
    /// and within the publisher's limit, so that clients can listen to it.
    pub async fn publish(
        &self,
        channel: &str,
        event: impl Into<Event>,
    ) -> Result<u64, PublishError> {
        match self.send(channel, event.into(), None).await? {
            Outcome::Published(id) | Outcome::Replayed(id) | Outcome::Conflict(id) => Ok(id),
        }
    }

    /// Publishes `event` on `channel` once per `key`: a publish with the same key and the same
    /// event (channel, type and data) within the idempotency window publishes nothing and
    /// answers the first id, `replayed`. So a publisher that got no answer (a lost connection,
    /// a Redis that stopped) retries with the same key without publishing twice. The key is
    /// 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`](crate::MAX_IDEMPOTENCY_KEY_BYTES) visible ASCII
    /// characters, shared by every path (HTTP's `Idempotency-Key`, the command line, Rust) and
    /// every channel; used again for another event it is [`PublishError::IdempotencyKeyReused`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use redisse::{Config, Event, Redisse};
    /// let redisse = Redisse::new(Config::default())?;
    /// let publisher = redisse.publisher();
    /// let first = publisher
    ///     .publish_idempotent("orders", Event::new("paid", "42"), "order-42-paid")
    ///     .await?;
    /// let retry = publisher
    ///     .publish_idempotent("orders", Event::new("paid", "42"), "order-42-paid")
    ///     .await?;
    /// assert_eq!((retry.id, retry.replayed), (first.id, true));
    /// # Ok(()) }
    /// ```
    pub async fn publish_idempotent(
        &self,
        channel: &str,
        event: impl Into<Event>,
        key: &str,
    ) -> Result<Publication, PublishError> {
        match self.send(channel, event.into(), Some(key)).await? {
            Outcome::Published(id) => Ok(Publication {
                id,
                replayed: false,
            }),
            Outcome::Replayed(id) => Ok(Publication { id, replayed: true }),
            Outcome::Conflict(id) => Err(PublishError::IdempotencyKeyReused { id }),
        }
    }

    async fn send(
        &self,
        channel: &str,
        event: Event,
        key: Option<&str>,
    ) -> Result<Outcome, PublishError> {
        event.validate()?;
        ChannelName::check(channel, self.max_channel_name_bytes)?;
        if let Some(key) = key {
            check_key(key).map_err(PublishError::InvalidIdempotencyKey)?;
        }
        let size = event.max_encoded_len();
        if size > self.max_event_bytes {
            let max = self.max_event_bytes;
            return Err(PublishError::EventTooLarge { size, max });
        }
        let keyed = key.map(|k| Keyed::new(k, channel, &event));
        let keyed = keyed.as_ref();
        match &self.target {
            Target::Instance(shared) => {
                let outcome = shared.broker.publish(channel, &event, keyed).await?;
                let counter = match outcome {
                    Outcome::Published(_) => &shared.metrics.published,
                    Outcome::Replayed(_) => &shared.metrics.publish_replays,
                    Outcome::Conflict(_) => return Ok(outcome),
                };
                counter.inc();
                Ok(outcome)
            }
            #[cfg(feature = "redis")]
            Target::Redis(r) => Ok(r.publish(channel, &event, keyed).await?),
            #[cfg(feature = "redis")]
            Target::Cluster(c) => Ok(c.publish(channel, &event.encode_tail(), keyed).await?),
            Target::Test(recorder) => Ok(recorder.record(channel, event, keyed)),
        }
    }
}

/// An event recorded by a test publisher.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishedEvent {
    /// The channel it was published on.
    pub channel: String,
    /// Its type.
    pub event_type: String,
    /// Its data.
    pub data: String,
}

type TypeFilter = Arc<dyn Fn(&str) -> bool + Send + Sync>;

/// What a test publisher recorded.
#[derive(Clone, Default)]
pub struct TestRecorder {
    inner: Arc<Mutex<Recorded>>,
    ids: Arc<AtomicU64>,
}

struct Recorded {
    events: Vec<PublishedEvent>,
    filter: Option<TypeFilter>,
    /// The idempotency keys of the default window, as an instance in memory keeps them.
    keys: RecentKeys,
}

impl Default for Recorded {
    fn default() -> Self {
        Recorded {
            events: Vec::new(),
            filter: None,
            keys: RecentKeys::new(DEFAULT_IDEMPOTENCY_WINDOW, DEFAULT_IDEMPOTENCY_MAX_KEYS),
        }
    }
}

impl std::fmt::Debug for TestRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRecorder")
            .field("events", &self.lock().events.len())
            .finish()
    }
}

impl TestRecorder {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, channel: &str, event: Event, keyed: Option<&Keyed<'_>>) -> Outcome {
        let mut rec = self.lock();
        let now = std::time::Instant::now();
        if let Some(keyed) = keyed
            && let Some(earlier) = rec.keys.check(keyed, now)
        {
            return earlier;
        }
        let id = self.ids.fetch_add(1, Relaxed) + 1;
        if let Some(keyed) = keyed {
            rec.keys.remember(keyed, id, now);
        }
        let keep = rec.filter.as_ref().is_none_or(|f| f(event.event_type()));
        if keep {
            rec.events.push(PublishedEvent {
                channel: channel.to_owned(),
                event_type: event.event_type().to_owned(),
                data: event.data().to_owned(),
            });
        }
        Outcome::Published(id)
    }

    /// The events recorded so far, in order.
    pub fn published(&self) -> Vec<PublishedEvent> {
        self.lock().events.clone()
    }

    /// Forgets the recorded events (the gem's `test_mode!`).
    pub fn clear(&self) {
        self.lock().events.clear();
    }

    /// Clears the record and keeps only events whose type passes `filter` from now on (the
    /// gem's `test_filter=`).
    pub fn set_filter(&self, filter: impl Fn(&str) -> bool + Send + Sync + 'static) {
        let mut rec = self.lock();
        rec.events.clear();
        rec.filter = Some(Arc::new(filter));
    }
}

#[cfg(all(test, feature = "redis"))]
mod tests {
    use super::*;

    /// A CA file that reads, for the refusals that come after it is read.
    fn ca_file(dir: &std::path::Path) -> std::path::PathBuf {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("CA");
        let path = dir.join("ca.pem");
        std::fs::write(&path, ca.pem()).expect("write the CA");
        path
    }

    #[test]
    fn sentinels_a_ca_cannot_serve_are_a_configuration_error() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = ca_file(dir.path());
        let refused = |sentinels: &[&str]| {
            let sentinels: Vec<String> = sentinels.iter().map(|s| s.to_string()).collect();
            match Publisher::redis_sentinel_with_tls_ca(&sentinels, "mymaster", 100, Some(&ca)) {
                Err(PublishError::InvalidConfig(why)) => why,
                Err(other) => panic!("not a configuration error: {other:?}"),
                Ok(_) => panic!("accepted {sentinels:?}"),
            }
        };
        let mixed = refused(&["rediss://s1:26379", "redis://s2:26379"]);
        assert!(mixed.contains("all rediss://"), "{mixed}");
        let passwords = refused(&["rediss://:first@s1:26379", "rediss://:second@s2:26379"]);
        assert!(passwords.contains("same user and password"), "{passwords}");
        assert!(
            !passwords.contains("first") && !passwords.contains("second"),
            "{passwords}"
        );
    }
}
