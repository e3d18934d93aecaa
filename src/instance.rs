//! [`Redisse`], the handle to one running instance: broker, hub, dispatcher and heartbeat.
//!
//! Creating it starts the background tasks (dispatcher, heartbeat, and with Redis the
//! subscriber); every clone shares them. From it come the SSE endpoint, the standalone router
//! and the publisher.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use crate::auth::{AuthCallback, JwtVerifier, PublishCredentials};
use crate::broker::Broker;
use crate::config::Config;
use crate::dispatch;
use crate::error::Error;
use crate::hub::Hub;
use crate::metrics::{Metrics, Stats};

/// A running Redisse instance. Cheap to clone; all clones share the same state.
///
/// Must be created inside a Tokio runtime, which runs its background tasks.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use redisse::{Config, Event, Redisse};
/// let redisse = Redisse::new(Config::default())?;
/// let publisher = redisse.publisher();
/// let first = publisher.publish("news", Event::message("hello")).await?;
/// // In memory, ids start from the clock (so that a restart does not reuse them), then go up
/// // by one per event.
/// assert!(first > 1_000_000_000_000_000);
/// assert_eq!(publisher.publish("news", "again").await?, first + 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Redisse {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Redisse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redisse")
            .field("broker", &self.shared.config.broker_description())
            .field("connections", &self.connections())
            .finish()
    }
}

pub(crate) struct Shared {
    pub config: Config,
    pub hub: Arc<Hub>,
    pub broker: Broker,
    pub metrics: Arc<Metrics>,
    /// The configured JWT verifier (subscriber mode and publish credential).
    pub jwt: Option<JwtVerifier>,
    /// The configured auth callback (subscriber mode).
    pub auth_callback: Option<AuthCallback>,
    /// What lets `POST /publish` through the public router.
    pub publish_credentials: PublishCredentials,
    /// Keys of the random `retry:` jitter.
    jitter: RandomState,
}

impl Redisse {
    /// Starts an instance on the broker `config` names (in memory when `redis_url` is `None`).
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate().map_err(Error::InvalidConfig)?;
        let jwt = config
            .jwt
            .as_ref()
            .map(JwtVerifier::new)
            .transpose()
            .map_err(Error::InvalidConfig)?;
        let auth_callback = config
            .auth_callback
            .as_ref()
            .map(AuthCallback::new)
            .transpose()
            .map_err(Error::InvalidConfig)?;
        let publish_credentials =
            PublishCredentials::new(config.publish_token.as_deref(), jwt.clone());
        let metrics = Arc::new(Metrics::default());
        let (dispatch_tx, dispatch_rx) = dispatch::channel();
        let (broker, subscriptions) = Broker::start(&config, dispatch_tx, &metrics)?;
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            subscriptions,
            config.verbose,
            config.max_queue_bytes,
            config.max_subscriptions,
        ));
        tokio::spawn(Hub::dispatch(Arc::downgrade(&hub), dispatch_rx));
        let shared = Arc::new(Shared {
            config,
            hub,
            broker,
            metrics,
            jwt,
            auth_callback,
            publish_credentials,
            jitter: RandomState::new(),
        });
        spawn_heartbeat(&shared);
        Ok(Redisse { shared })
    }

    /// The settings this instance runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The gem's counters: connected, events, served, missing.
    pub fn stats(&self) -> Stats {
        self.shared.metrics.stats()
    }

    /// Every counter, for `/metrics` and for tests.
    pub fn metrics(&self) -> &Metrics {
        &self.shared.metrics
    }

    /// Whether the broker is reachable (always true in memory).
    pub fn is_broker_up(&self) -> bool {
        self.shared.broker.is_up()
    }

    /// Open SSE streams.
    pub fn connections(&self) -> usize {
        self.shared.hub.connections()
    }

    /// Channels with at least one local listener (and so subscribed on the broker).
    pub fn subscribed_channels(&self) -> usize {
        self.shared.hub.channel_count()
    }

    /// Ends every stream with a jittered `retry:` and refuses new ones; the HTTP server's
    /// graceful shutdown then completes as soon as the clients have read their last bytes.
    pub fn shutdown(&self) {
        let shared = &self.shared;
        shared.hub.shutdown(|conn| shared.retry_millis(conn));
    }
}

impl Shared {
    /// A random `retry:` value in the configured range, different for each connection.
    pub fn retry_millis(&self, salt: u64) -> u64 {
        let (lo, hi) = self.config.retry_range;
        let (lo, hi) = (lo.as_millis() as u64, hi.as_millis() as u64);
        if hi <= lo {
            return lo;
        }
        lo + self.jitter.hash_one(salt) % (hi - lo)
    }
}

fn spawn_heartbeat(shared: &Arc<Shared>) {
    let period = shared.config.heartbeat;
    let shared = Arc::downgrade(shared);
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            ticks.tick().await;
            match shared.upgrade() {
                Some(shared) => shared.hub.heartbeat_all(|conn| shared.retry_millis(conn)),
                None => return,
            }
        }
    });
}
