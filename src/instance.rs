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
use crate::replay::{Pages, catch_up, page_budget};
use crate::tasks::Tasks;

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
    /// The background tasks, watched (`/health` and `/livez` report one that stopped).
    pub tasks: Tasks,
    /// Keys of the random `retry:` jitter.
    jitter: RandomState,
    /// When the instance started (the status page's uptime).
    pub started: std::time::Instant,
    /// Status streams open (`status`), bounded.
    pub status_streams: Arc<std::sync::atomic::AtomicUsize>,
}

impl Redisse {
    /// Starts an instance on the broker `config` names (in memory when neither `redis_url` nor `redis_sentinel` is set).
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
        let tasks = Tasks::default();
        let (broker, subscriptions) = Broker::start(&config, dispatch_tx, &metrics, &tasks)?;
        let hub = Arc::new(Hub::new(
            metrics.clone(),
            subscriptions,
            config.verbose,
            config.max_queue_bytes,
            config.max_subscriptions,
        ));
        let shared = Arc::new(Shared {
            config,
            hub,
            broker,
            metrics,
            jwt,
            auth_callback,
            publish_credentials,
            tasks,
            jitter: RandomState::new(),
            started: std::time::Instant::now(),
            status_streams: Arc::default(),
        });
        // Streams that a resume turned into replays read their pages in tasks of their own;
        // held weakly, so that the dispatcher does not keep the instance alive.
        let weak = Arc::downgrade(&shared);
        let replay = move |conn| {
            if let Some(shared) = weak.upgrade() {
                tokio::spawn(async move {
                    let pages = Pages {
                        broker: &shared.broker,
                        metrics: &shared.metrics,
                        history_size: shared.config.history_size,
                        budget: page_budget(shared.config.max_queue_bytes),
                    };
                    catch_up(pages, conn).await;
                });
            }
        };
        shared.tasks.spawn(
            "dispatcher",
            Hub::dispatch(Arc::downgrade(&shared.hub), dispatch_rx, replay),
        );
        spawn_heartbeat(&shared);
        Ok(Redisse { shared })
    }

    /// Starts an instance as [`Redisse::new`] does, once its broker answers: waits at most
    /// `timeout` for Redis to answer a PING on a real connection (with the URL's password and
    /// TLS), and fails with [`Error::BrokerUnreachable`] naming the cause (refused, no answer,
    /// an unknown host, a wrong password, not a Redis server) when it does not. A wrong
    /// password or a server that is not Redis fails at once. A zero `timeout` does not wait,
    /// and the in-memory broker never does.
    ///
    /// Only the start is checked: once running, the instance survives Redis outages (streams
    /// wait, `/health` answers 503 until Redis is back). [`Redisse::new`] never waits: the
    /// broker connects in the background.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// let mut config = redisse::Config::default();
    /// config.redis_url = Some("redis://127.0.0.1:1/".into()); // nothing listens there
    /// let err = redisse::Redisse::connect(config, Duration::from_millis(200)).await.unwrap_err();
    /// assert!(err.to_string().contains("connection refused"), "{err}");
    /// # Ok(()) }
    /// ```
    pub async fn connect(config: Config, timeout: std::time::Duration) -> Result<Self, Error> {
        Redisse::check(&config, timeout).await?;
        Redisse::new(config)
    }

    /// What [`Redisse::connect`] checks before it starts anything: the settings, the broker's
    /// URL and CA file, and (unless `timeout` is zero) that the broker answers. The command
    /// line checks before it listens and starts the instance after its first log line.
    pub(crate) async fn check(config: &Config, timeout: std::time::Duration) -> Result<(), Error> {
        config.validate().map_err(Error::InvalidConfig)?;
        Broker::wait_until_answered(config, timeout).await
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

    /// Whether the broker is reachable (always true in memory; on a Redis Cluster, also while
    /// one shard recovers and the others serve).
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
    let tasks = &shared.tasks;
    let shared = Arc::downgrade(shared);
    tasks.spawn("heartbeat", async move {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use http::Request;
    use tower::ServiceExt;

    use super::*;

    /// `/health` and `/livez` on the internal router: status and body.
    async fn page(redisse: &Redisse, path: &str) -> (u16, String) {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let res = redisse.internal_router().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// A background task that stops (ended here with the watcher's abort handle, as a panic
    /// would end it: `tasks::tests` checks a real panic is recorded the same way) turns
    /// `/health` and `/livez` to 503 naming it: it never comes back.
    #[tokio::test]
    async fn a_stopped_background_task_fails_health_and_livez() {
        for name in ["heartbeat", "dispatcher"] {
            let redisse = Redisse::new(Config::default()).unwrap();
            assert_eq!(page(&redisse, "/health").await.0, 200);
            assert_eq!(page(&redisse, "/livez").await.0, 200);
            redisse.shared.tasks.abort(name);
            let mut health = page(&redisse, "/health").await;
            for _ in 0..500 {
                if health.0 != 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                health = page(&redisse, "/health").await;
            }
            assert_eq!(health.0, 503, "{name}: {health:?}");
            assert!(health.1.contains(name), "{health:?}");
            let livez = page(&redisse, "/livez").await;
            assert_eq!(livez.0, 503, "{name}: {livez:?}");
            assert!(livez.1.contains(name), "{livez:?}");
        }
    }

    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn the_redis_subscriber_is_watched_too() {
        let config = Config {
            redis_url: Some("redis://127.0.0.1:1/".into()),
            ..Config::default()
        };
        let redisse = Redisse::new(config).unwrap();
        let mut names = redisse.shared.tasks.names();
        names.sort_unstable();
        assert_eq!(names, ["dispatcher", "heartbeat", "redis subscriber"]);
    }
}
