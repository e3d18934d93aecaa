//! Settings of a Redisse instance, each default a named constant.
//!
//! The library never reads the environment: the `redisse` binary turns its command line and
//! environment variables into a [`Config`], and an embedding application builds one in code.

use std::path::PathBuf;
use std::time::Duration;

use crate::redis_url;

/// Period of the `: hb` comment that keeps idle streams alive.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Events kept per channel for `Last-Event-ID` resume (the gem keeps 100).
pub const DEFAULT_HISTORY_SIZE: usize = 100;
/// How long a long-polling stream stays open after its first event.
pub const DEFAULT_POLLING_DELAY: Duration = Duration::from_secs(1);
/// Open SSE streams allowed at once; past it, clients are told to come back later.
pub const DEFAULT_MAX_CONNECTIONS: usize = 100_000;
/// Channels one connection may listen to.
pub const DEFAULT_MAX_CHANNELS: usize = 1024;
/// Channel subscriptions of all open streams together (a stream on 3 channels holds 3): the
/// process-wide bound on what the registry and the streams' channel lists hold, whatever the
/// connection and channel limits allow one by one (each costs about 136 B of server memory,
/// BENCHMARKS.md, so the default bounds them at about 130 MiB). Past it, new streams are told
/// to come back later.
pub const DEFAULT_MAX_SUBSCRIPTIONS: usize = 1_000_000;
/// Bytes waiting to be written to one client before it counts as slow and is disconnected.
pub const DEFAULT_MAX_QUEUE_BYTES: usize = 1024 * 1024;
/// Largest body `POST /publish/<channel>` accepts.
pub const DEFAULT_MAX_PUBLISH_BYTES: usize = 1024 * 1024;
/// Largest request head (request line and headers).
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Longest channel name, in bytes.
pub const DEFAULT_MAX_CHANNEL_NAME_BYTES: usize = 1024;
/// Time a client has to send its complete request head (slow-loris protection).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for streams and requests to finish after a shutdown signal.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Range of the `retry:` hint given to clients told to reconnect (shutdown, overload); each
/// client gets a random value in it so that browsers do not all come back in the same second.
pub const DEFAULT_RETRY_RANGE: (Duration, Duration) =
    (Duration::from_millis(1000), Duration::from_millis(10_000));
/// How long a publish's `Idempotency-Key` is remembered: a retry within it with the same key
/// answers the first id and publishes nothing. An hour covers a publisher's own retries and a
/// job queue's first hour of backoff, and a Redis outage of that length, while what Redis holds
/// stays small: one key of about 230 bytes per keyed publish (measured with 36-character keys,
/// docs/publishing.md), so 100 keyed publishes a second keep about 83 MB (a day, Stripe's
/// window, would be 24 times that).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(3600);
/// Idempotency keys the in-memory broker remembers at most (each holds its key twice, its
/// fingerprint and about 100 bytes of bookkeeping: some 30 MB with 36-character keys, 75 MB with
/// keys at their longest, 256 bytes); past it the oldest is forgotten before its window ends, counted by
/// `redisse_idempotency_keys_evicted_total`.
pub const DEFAULT_IDEMPOTENCY_MAX_KEYS: usize = 100_000;
/// Interval of the PING that finds a half-open Redis subscriber connection.
pub const DEFAULT_REDIS_PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long that PING may take before the connection is deemed dead.
pub const DEFAULT_REDIS_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Settings of a [`Redisse`](crate::Redisse) instance.
///
/// ```
/// use std::time::Duration;
/// let mut config = redisse::Config::default();
/// config.heartbeat = Duration::from_secs(5);
/// config.redis_url = Some("redis://127.0.0.1:6379/".into());
/// assert_eq!(config.history_size, redisse::config::DEFAULT_HISTORY_SIZE);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// Redis URL; `None` runs the in-memory broker (one process). Default: `None`.
    ///
    /// `redis://[user:password@]host[:port][/db]` (an ACL user, or `:password` alone),
    /// `rediss://...` for TLS, or `unix:///path/redis.sock?db=0&user=...&pass=...`.
    pub redis_url: Option<String>,
    /// PEM file of the CA certificates a `rediss://` server's certificate must chain to,
    /// instead of the system's roots (a private CA); only with a `rediss://` URL, through
    /// Sentinel (`redis_sentinel`) with `rediss://` sentinels or primary, or with a cluster's
    /// `rediss://` seeds (`redis_cluster`), where every TLS connection of the setup must chain
    /// to it. Read when the instance starts. Default: `None`.
    pub redis_tls_ca: Option<PathBuf>,
    /// Redis through Sentinel instead of `redis_url`: the sentinels to ask where the primary
    /// is, and the primary's name (see [`SentinelSettings`]). The broker follows a failover to
    /// the promoted replica. Default: `None`.
    pub redis_sentinel: Option<SentinelSettings>,
    /// Redis Cluster instead of `redis_url`: seed nodes' URLs (`redis://[user:password@]host:port`,
    /// any few nodes of the cluster; the others are found from them). Events are published on
    /// each channel's shard (sharded pub/sub, Redis 7.0 or later) and ids are per channel (see
    /// docs/redis-layout.md, "Redis Cluster layout"). With `rediss://` seeds (all of them), every
    /// node is reached over TLS (a cluster with `tls-cluster yes`), trusting `redis_tls_ca` or
    /// the system's roots. Default: `None`.
    pub redis_cluster: Option<Vec<String>>,
    /// The period of the `: hb` comment on idle streams; over HTTP/2 (served by `server`), also
    /// how long a client may stay silent before a PING, and then how long it has to answer it.
    /// Default: [`DEFAULT_HEARTBEAT`].
    pub heartbeat: Duration,
    /// Events kept per channel for resume (the newest). A client that resumes from before an
    /// event trimmed away gets `missedevents`; 0 keeps none, so every resume across an event
    /// gets it. Default: [`DEFAULT_HISTORY_SIZE`].
    pub history_size: usize,
    /// Default: [`DEFAULT_POLLING_DELAY`].
    pub polling_delay: Duration,
    /// A token that lets `POST /publish` on the public router through, sent as
    /// `Authorization: Bearer <token>` (compared in constant time). Without it and without a
    /// JWT key, the public router publishes nothing; the internal router always publishes.
    pub publish_token: Option<String>,
    /// JWT verification: the public router's subscriber authorization mode (channels from the
    /// token's `redisse.subscribe` claim) and a publish credential (`redisse.publish`).
    pub jwt: Option<JwtSettings>,
    /// The auth callback: the public router's subscriber authorization mode where the
    /// application answers, for each stream request, which channels it may see.
    pub auth_callback: Option<CallbackSettings>,
    /// Origins allowed to use the public router from a browser page of another origin (CORS);
    /// `*` allows every origin, without credentials. Empty: no CORS header is sent.
    pub cors_origins: Vec<String>,
    /// How long a publish's idempotency key is remembered (in Redis beside the events, or in
    /// memory): a publish with the same key and the same event within it answers the first id
    /// and publishes nothing; with another event it is refused. At least a millisecond.
    /// Default: [`DEFAULT_IDEMPOTENCY_WINDOW`].
    pub idempotency_window: Duration,
    /// Idempotency keys the in-memory broker remembers at most (Redis keeps every key for its
    /// window). Default: [`DEFAULT_IDEMPOTENCY_MAX_KEYS`].
    pub idempotency_max_keys: usize,
    /// Default: [`DEFAULT_MAX_CONNECTIONS`].
    pub max_connections: usize,
    /// Default: [`DEFAULT_MAX_CHANNELS`].
    pub max_channels: usize,
    /// Default: [`DEFAULT_MAX_SUBSCRIPTIONS`].
    pub max_subscriptions: usize,
    /// Default: [`DEFAULT_MAX_QUEUE_BYTES`].
    pub max_queue_bytes: usize,
    /// Default: [`DEFAULT_MAX_PUBLISH_BYTES`].
    pub max_publish_bytes: usize,
    /// Default: [`DEFAULT_MAX_HEADER_BYTES`]. Applied by the server (`server::serve`).
    pub max_header_bytes: usize,
    /// Default: [`DEFAULT_MAX_CHANNEL_NAME_BYTES`].
    pub max_channel_name_bytes: usize,
    /// Default: [`DEFAULT_HEADER_READ_TIMEOUT`]. Applied by the server (`server::serve`).
    pub header_read_timeout: Duration,
    /// Default: [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub shutdown_timeout: Duration,
    /// Default: [`DEFAULT_RETRY_RANGE`].
    pub retry_range: (Duration, Duration),
    /// Default: [`DEFAULT_REDIS_PING_INTERVAL`].
    pub redis_ping_interval: Duration,
    /// Default: [`DEFAULT_REDIS_PING_TIMEOUT`].
    pub redis_ping_timeout: Duration,
    /// Log each subscription and each event sent at `info` level, as the gem's `--verbose`.
    pub verbose: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            redis_url: None,
            redis_tls_ca: None,
            redis_sentinel: None,
            redis_cluster: None,
            heartbeat: DEFAULT_HEARTBEAT,
            history_size: DEFAULT_HISTORY_SIZE,
            polling_delay: DEFAULT_POLLING_DELAY,
            publish_token: None,
            jwt: None,
            auth_callback: None,
            cors_origins: Vec::new(),
            idempotency_window: DEFAULT_IDEMPOTENCY_WINDOW,
            idempotency_max_keys: DEFAULT_IDEMPOTENCY_MAX_KEYS,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_channels: DEFAULT_MAX_CHANNELS,
            max_subscriptions: DEFAULT_MAX_SUBSCRIPTIONS,
            max_queue_bytes: DEFAULT_MAX_QUEUE_BYTES,
            max_publish_bytes: DEFAULT_MAX_PUBLISH_BYTES,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_channel_name_bytes: DEFAULT_MAX_CHANNEL_NAME_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            retry_range: DEFAULT_RETRY_RANGE,
            redis_ping_interval: DEFAULT_REDIS_PING_INTERVAL,
            redis_ping_timeout: DEFAULT_REDIS_PING_TIMEOUT,
            verbose: false,
        }
    }
}

impl Config {
    /// Checks the settings that cannot work: a zero period (heartbeat, Redis PING) would stop
    /// a background task at once, a zero PING timeout would declare Redis dead on every PING,
    /// and a zero queue or channel-name limit would refuse every event or every channel.
    /// [`crate::Redisse::new`] calls it.
    pub fn validate(&self) -> Result<(), String> {
        let zero = |what: &str| Err(format!("{what} must be more than zero"));
        if self.heartbeat.is_zero() {
            return zero("heartbeat");
        }
        if self.redis_ping_interval.is_zero() {
            return zero("redis_ping_interval");
        }
        if self.redis_ping_timeout.is_zero() {
            return zero("redis_ping_timeout");
        }
        if self.max_queue_bytes == 0 {
            return zero("max_queue_bytes");
        }
        if self.max_channel_name_bytes == 0 {
            return zero("max_channel_name_bytes");
        }
        if self.idempotency_window < Duration::from_millis(1) {
            return Err("idempotency_window must be at least a millisecond".into());
        }
        if self.idempotency_max_keys == 0 {
            return zero("idempotency_max_keys");
        }
        if self.retry_range.1 < self.retry_range.0 {
            return Err("retry_range must not end before it starts".into());
        }
        if self.jwt.is_some() && self.auth_callback.is_some() {
            return Err(
                "one subscriber authorization mode at a time: JWT or the auth \
                        callback, not both"
                    .into(),
            );
        }
        if let Some(jwt) = &self.jwt {
            jwt.check()?;
        }
        if let Some(callback) = &self.auth_callback {
            if callback.timeout.is_zero() {
                return zero("the auth callback's timeout");
            }
            if !(callback.url.starts_with("http://") || callback.url.starts_with("https://")) {
                return Err("the auth callback URL must start with http:// or https://".into());
            }
            callback
                .url
                .parse::<http::Uri>()
                .map_err(|e| format!("the auth callback URL is not a URL: {e}"))?;
        }
        if self.cors_origins.len() > 1 && self.cors_origins.iter().any(|o| o == "*") {
            return Err(
                "the CORS origin `*` (every origin, without credentials) cannot be \
                        combined with listed origins"
                    .into(),
            );
        }
        if let Some(bad) = self.cors_origins.iter().find(|o| !valid_origin(o)) {
            return Err(format!(
                "{bad:?} is not an origin (scheme://host[:port], without a path), nor `*`"
            ));
        }
        if let Some(sentinel) = &self.redis_sentinel {
            if self.redis_url.is_some() {
                return Err("redis_url or redis_sentinel, not both: with Sentinel, the \
                            primary's address comes from the sentinels"
                    .into());
            }
            sentinel.check()?;
            if self.redis_tls_ca.is_some() && !sentinel.uses_tls() {
                return Err(
                    "redis_tls_ca is for TLS: with redis_sentinel, the sentinels' URLs \
                            or the primary's (rediss://name) must be rediss:// URLs"
                        .into(),
                );
            }
        }
        if let Some(seeds) = &self.redis_cluster {
            check_cluster(
                seeds,
                self.redis_url.is_some() || self.redis_sentinel.is_some(),
            )?;
        }
        if let Some(seeds) = &self.redis_cluster {
            if self.redis_tls_ca.is_some() && !seeds.iter().any(|s| redis_url::is_tls_url(s)) {
                return Err(
                    "redis_tls_ca is for TLS: with redis_cluster, the seeds must be \
                            rediss:// URLs"
                        .into(),
                );
            }
        } else if self.redis_tls_ca.is_some()
            && self.redis_sentinel.is_none()
            && !self.redis_url.as_deref().is_some_and(redis_url::is_tls_url)
        {
            return Err(
                "redis_tls_ca is for a TLS Redis: redis_url must be a rediss:// URL".into(),
            );
        }
        Ok(())
    }

    /// The broker's name for logs: `in-memory`, or the Redis server as the Redis client
    /// understood the URL, without its password (`redis://alice@10.0.0.1:6379/0`,
    /// `unix:///run/redis.sock (db 0)`).
    pub fn broker_description(&self) -> String {
        match (&self.redis_url, &self.redis_sentinel, &self.redis_cluster) {
            (Some(url), _, _) => redis_url::describe(url),
            (None, Some(sentinel), _) => sentinel.describe(),
            (None, None, Some(seeds)) => describe_cluster(seeds),
            (None, None, None) => "in-memory".to_owned(),
        }
    }

    /// Whether the broker is Redis (`redis_url`, `redis_sentinel` or `redis_cluster`), not the
    /// in-memory one.
    pub fn uses_redis(&self) -> bool {
        self.redis_url.is_some() || self.redis_sentinel.is_some() || self.redis_cluster.is_some()
    }
}

/// The checks of [`Config::redis_cluster`]: at least one seed, all `redis://` or all
/// `rediss://` URLs, and no other way to Redis beside it (`other`).
pub(crate) fn check_cluster(seeds: &[String], other: bool) -> Result<(), String> {
    if other {
        return Err(
            "redis_cluster or redis_url/redis_sentinel, not both: a Redis Cluster \
                    is reached through its seed nodes"
                .into(),
        );
    }
    if seeds.is_empty() {
        return Err("redis_cluster needs at least one seed node URL".into());
    }
    for seed in seeds {
        let scheme = seed.split_once("://").map(|(s, _)| s);
        if !scheme
            .is_some_and(|s| s.eq_ignore_ascii_case("redis") || s.eq_ignore_ascii_case("rediss"))
        {
            return Err(format!(
                "{}: a Redis Cluster seed must be a redis://host:port or rediss://host:port URL",
                redis_url::describe(seed)
            ));
        }
    }
    if let Some(seed) = seeds.iter().find(|s| s.ends_with("#insecure")) {
        return Err(format!(
            "{}: #insecure (no certificate check) is not supported with redis_cluster: give \
             the cluster's CA with redis_tls_ca instead",
            redis_url::describe(seed)
        ));
    }
    let tls = seeds.iter().filter(|s| redis_url::is_tls_url(s)).count();
    if tls != 0 && tls != seeds.len() {
        return Err(
            "redis_cluster: the seeds must be all rediss:// (TLS) or all redis://, as every \
             node of a cluster is reached the same way"
                .into(),
        );
    }
    Ok(())
}

/// How logs name a cluster: its seeds, without any password.
fn describe_cluster(seeds: &[String]) -> String {
    let seeds: Vec<String> = seeds.iter().map(|s| redis_url::describe(s)).collect();
    format!("Redis Cluster (seeds {})", seeds.join(","))
}

/// Where Sentinel finds the Redis primary ([`Config::redis_sentinel`]).
///
/// ```
/// let sentinel = redisse::config::SentinelSettings::new(
///     vec!["redis://10.0.0.1:26379".into(), "redis://10.0.0.2:26379".into()],
///     "mymaster",
/// );
/// let mut config = redisse::Config::default();
/// config.redis_sentinel = Some(sentinel);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SentinelSettings {
    /// The sentinels' URLs (`redis://[:password@]host:26379`, the password being the
    /// sentinels' own), asked in turn.
    pub sentinels: Vec<String>,
    /// The primary's name as the sentinels know it (`mymaster`), or a URL whose host is that
    /// name and which carries what the primary's connection needs: its ACL user and password
    /// and database (`redis://alice:secret@mymaster/2`), `rediss://` for TLS.
    pub master: String,
}

impl SentinelSettings {
    /// The `sentinels` (URLs) and the primary's name or URL (see [`SentinelSettings::master`]).
    pub fn new(sentinels: Vec<String>, master: impl Into<String>) -> Self {
        SentinelSettings {
            sentinels,
            master: master.into(),
        }
    }

    /// Whether any connection of the setup is TLS: a `rediss://` sentinel or primary.
    pub(crate) fn uses_tls(&self) -> bool {
        redis_url::sentinel_uses_tls(&self.master, &self.sentinels)
    }

    fn check(&self) -> Result<(), String> {
        if self.sentinels.is_empty() {
            return Err("redis_sentinel needs at least one sentinel URL".into());
        }
        if self.master.is_empty() {
            return Err("redis_sentinel needs the primary's name (redis_master)".into());
        }
        Ok(())
    }

    /// How logs name it: the primary's name and the sentinels, without any password.
    pub(crate) fn describe(&self) -> String {
        let sentinels: Vec<String> = self
            .sentinels
            .iter()
            .map(|url| redis_url::describe(url))
            .collect();
        format!(
            "primary {} (Sentinel {})",
            redis_url::describe_master(&self.master),
            sentinels.join(",")
        )
    }
}

/// How the JWT of subscribers and publishers is verified.
///
/// The algorithm is fixed here, never by the token's header; `none` is never accepted.
///
/// ```
/// let jwt = redisse::config::JwtSettings::hmac(b"a long random secret".to_vec(), "HS256")
///     .audience("events")
///     .issuer("my-app");
/// let mut config = redisse::Config::default();
/// config.jwt = Some(jwt);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct JwtSettings {
    /// The HMAC secret, or the PEM public key (RSA, EC or Ed25519).
    pub key: JwtKey,
    /// The one algorithm accepted, by its JOSE name (`HS256`, `RS256`, `ES256`, `EdDSA`...).
    pub algorithm: String,
    /// The cookie read when there is no `Authorization: Bearer` header.
    pub cookie: String,
    /// When set, tokens must carry this `aud`.
    pub audience: Option<String>,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
}

/// A JWT verification key.
#[derive(Clone)]
#[non_exhaustive]
pub enum JwtKey {
    /// An HMAC secret (`HS256`, `HS384`, `HS512`).
    Secret(Vec<u8>),
    /// A public key in PEM (`RS*` and `PS*`: RSA; `ES256`, `ES384`: EC; `EdDSA`: Ed25519).
    PublicKeyPem(Vec<u8>),
}

/// The cookie that carries the token by default.
pub const DEFAULT_JWT_COOKIE: &str = "redisseAuthorization";
/// The JOSE names [`JwtSettings::algorithm`] takes.
pub const JWT_ALGORITHMS: [&str; 10] = [
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
];

impl JwtSettings {
    /// HMAC with `secret`.
    pub fn hmac(secret: Vec<u8>, algorithm: &str) -> Self {
        JwtSettings::with_key(JwtKey::Secret(secret), algorithm)
    }

    /// A PEM public key (RSA, EC or Ed25519).
    pub fn public_key_pem(pem: Vec<u8>, algorithm: &str) -> Self {
        JwtSettings::with_key(JwtKey::PublicKeyPem(pem), algorithm)
    }

    fn with_key(key: JwtKey, algorithm: &str) -> Self {
        JwtSettings {
            key,
            algorithm: algorithm.to_owned(),
            cookie: DEFAULT_JWT_COOKIE.to_owned(),
            audience: None,
            issuer: None,
        }
    }

    /// Requires this audience.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Requires this issuer.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Reads the token from this cookie.
    pub fn cookie(mut self, name: impl Into<String>) -> Self {
        self.cookie = name.into();
        self
    }

    /// The algorithm is known and fits the key; the key itself is parsed when the instance
    /// starts.
    fn check(&self) -> Result<(), String> {
        let alg = self.algorithm.as_str();
        if !JWT_ALGORITHMS.contains(&alg) {
            return Err(format!(
                "unknown JWT algorithm {alg:?} (one of {})",
                JWT_ALGORITHMS.join(", ")
            ));
        }
        match (&self.key, alg.starts_with("HS")) {
            (JwtKey::Secret(s), true) if s.is_empty() => Err("the JWT secret is empty".into()),
            (JwtKey::Secret(_), true) | (JwtKey::PublicKeyPem(_), false) => Ok(()),
            (JwtKey::Secret(_), false) => Err(format!(
                "the JWT algorithm {alg} needs a public key, not a secret"
            )),
            (JwtKey::PublicKeyPem(_), true) => Err(format!(
                "the JWT algorithm {alg} needs a secret, not a public key"
            )),
        }?;
        if self.cookie.is_empty() {
            return Err("the JWT cookie name is empty".into());
        }
        Ok(())
    }
}

impl std::fmt::Debug for JwtSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        let key = match self.key {
            JwtKey::Secret(_) => "secret",
            JwtKey::PublicKeyPem(_) => "public key",
        };
        f.debug_struct("JwtSettings")
            .field("key", &key)
            .field("algorithm", &self.algorithm)
            .field("cookie", &self.cookie)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Where and how the auth callback is asked.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CallbackSettings {
    /// `http://` or `https://` URL the server POSTs to.
    pub url: String,
    /// How long an answer may take (504 past it). Default: [`DEFAULT_AUTH_CALLBACK_TIMEOUT`].
    pub timeout: Duration,
    /// How long an answer is reused for an identical request; `None`: never.
    pub cache: Option<Duration>,
}

/// How long the auth callback may take to answer.
pub const DEFAULT_AUTH_CALLBACK_TIMEOUT: Duration = Duration::from_secs(2);

impl CallbackSettings {
    /// The callback at `url`, with the default timeout and no cache.
    pub fn new(url: impl Into<String>) -> Self {
        CallbackSettings {
            url: url.into(),
            timeout: DEFAULT_AUTH_CALLBACK_TIMEOUT,
            cache: None,
        }
    }
}

/// `scheme://host[:port]` with nothing after it.
fn valid_origin(origin: &str) -> bool {
    if origin == "*" {
        return true;
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', ' '])
        && http::HeaderValue::from_str(origin).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_that_cannot_work_are_refused() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            heartbeat: Duration::ZERO,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err("heartbeat must be more than zero".into()));
        let c = Config {
            redis_ping_interval: Duration::ZERO,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("redis_ping_interval"));
        let c = Config {
            max_queue_bytes: 0,
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("max_queue_bytes"));
        let c = Config {
            retry_range: (Duration::from_secs(2), Duration::from_secs(1)),
            ..Config::default()
        };
        assert!(c.validate().unwrap_err().contains("retry_range"));
    }

    #[test]
    fn passwords_never_reach_the_logs() {
        let described = |url: &str| {
            Config {
                redis_url: Some(url.into()),
                ..Config::default()
            }
            .broker_description()
        };
        assert_eq!(Config::default().broker_description(), "in-memory");
        for url in [
            "redis://:pw@h:1/0",
            "redis://u:pw@h/",
            "rediss://u:pw@h/",
            "unix:///tmp/r.sock?pass=pw",
            "unix:///tmp/r.sock?user=u&pass=pw&db=1",
            "redis://u:pw@h:bad/",
            "pw",
        ] {
            let d = described(url);
            assert!(!d.contains("pw"), "{url} -> {d}");
        }
    }

    #[test]
    fn a_tls_ca_needs_a_tls_url() {
        let with = |url: Option<&str>| Config {
            redis_url: url.map(Into::into),
            redis_tls_ca: Some("ca.pem".into()),
            ..Config::default()
        };
        assert_eq!(with(Some("rediss://h:6380/")).validate(), Ok(()));
        assert_eq!(with(Some("REDISS://h/")).validate(), Ok(()));
        for url in [None, Some("redis://h/"), Some("unix:///r.sock")] {
            let e = with(url).validate().unwrap_err();
            assert!(e.contains("redis_tls_ca") && e.contains("rediss://"), "{e}");
        }
    }

    #[test]
    fn a_tls_ca_with_sentinel_needs_a_tls_sentinel_or_primary() {
        let with = |sentinels: &[&str], master: &str| Config {
            redis_sentinel: Some(SentinelSettings::new(
                sentinels.iter().map(|s| s.to_string()).collect(),
                master,
            )),
            redis_tls_ca: Some("ca.pem".into()),
            ..Config::default()
        };
        assert_eq!(with(&["rediss://h:26380/"], "m").validate(), Ok(()));
        assert_eq!(with(&["redis://h:26379/"], "rediss://m").validate(), Ok(()));
        let e = with(&["redis://h:26379/"], "m").validate().unwrap_err();
        assert!(e.contains("redis_tls_ca") && e.contains("rediss://"), "{e}");
        let e = with(&["redis://h:26379/"], "redis://m")
            .validate()
            .unwrap_err();
        assert!(e.contains("redis_tls_ca") && e.contains("rediss://"), "{e}");
    }

    #[test]
    fn a_cluster_is_reached_through_seeds_alone_all_plain_or_all_tls() {
        let with = |seeds: &[&str]| Config {
            redis_cluster: Some(seeds.iter().map(|s| s.to_string()).collect()),
            ..Config::default()
        };
        let ok = with(&["redis://127.0.0.1:7000", "redis://:pw@10.0.0.2:7001/"]);
        assert_eq!(ok.validate(), Ok(()));
        assert!(ok.uses_redis());
        assert_eq!(
            ok.broker_description(),
            "Redis Cluster (seeds redis://127.0.0.1:7000/0,redis://10.0.0.2:7001/0)"
        );
        assert!(with(&[]).validate().unwrap_err().contains("at least one"));
        assert_eq!(with(&["rediss://:secret@h:7000"]).validate(), Ok(()));
        let mixed = with(&["rediss://:secret@h:7000", "redis://:secret@h:7001"])
            .validate()
            .unwrap_err();
        assert!(
            mixed.contains("all rediss://") && !mixed.contains("secret"),
            "{mixed}"
        );
        let ca = |seeds: &[&str]| Config {
            redis_tls_ca: Some(PathBuf::from("/etc/ca.pem")),
            ..with(seeds)
        };
        assert_eq!(ca(&["rediss://h:7000"]).validate(), Ok(()));
        let insecure = with(&["rediss://:secret@h:7000/#insecure"])
            .validate()
            .unwrap_err();
        assert!(
            insecure.contains("#insecure")
                && insecure.contains("redis_tls_ca")
                && !insecure.contains("secret"),
            "{insecure}"
        );
        let plain_ca = ca(&["redis://h:7000"]).validate().unwrap_err();
        assert!(
            plain_ca.contains("redis_tls_ca") && plain_ca.contains("rediss://"),
            "{plain_ca}"
        );
        let unix = with(&["unix:///r.sock"]).validate().unwrap_err();
        assert!(unix.contains("redis://host:port"), "{unix}");
        let both = Config {
            redis_url: Some("redis://h/".into()),
            ..with(&["redis://h:7000"])
        };
        assert!(both.validate().unwrap_err().contains("not both"));
        let sentinel = Config {
            redis_sentinel: Some(SentinelSettings::new(vec!["redis://s:26379".into()], "m")),
            ..with(&["redis://h:7000"])
        };
        assert!(sentinel.validate().unwrap_err().contains("not both"));
    }
}
