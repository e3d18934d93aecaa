//! The command line's flags, each with its environment variable, and their conversion into a
//! [`Config`].

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, CallbackSettings, Config, JwtSettings, SentinelSettings};

/// Server-Sent Events server: one EventSource, many channels, Redis or in-memory broker.
#[derive(Debug, Parser)]
#[command(name = "redisse", version, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to do; `serve` when absent.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Options of `serve`, also accepted without the word `serve`.
    #[command(flatten)]
    pub serve: ServeArgs,
}

/// `redisse publish ...` on its own: parsed without the server's options, so that none of their
/// environment variables (`REDISSE_HEARTBEAT`, `REDISSE_INTERNAL_ADDRESS`...) is read as a
/// server option or can make publishing fail.
#[derive(Debug, Parser)]
#[command(name = "redisse", version)]
pub struct PublishCli {
    /// Always `publish`.
    #[command(subcommand)]
    pub command: PublishOnly,
}

/// The one subcommand of [`PublishCli`].
#[derive(Debug, Subcommand)]
pub enum PublishOnly {
    /// Publish one event and print its id.
    Publish(PublishArgs),
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the SSE server (the default).
    Serve(Box<ServeArgs>),
    /// Publish one event and print its id.
    Publish(Box<PublishArgs>),
}

/// Options of `redisse serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(short = 'a', long, env = "REDISSE_ADDRESS", default_value = "0.0.0.0")]
    pub address: IpAddr,
    /// Port to listen on.
    #[arg(short = 'p', long, env = "REDISSE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Listen on this unix socket instead of TCP.
    #[arg(short = 'S', long, env = "REDISSE_SOCKET", value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Redis URL (redis://[USER:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS,
    /// unix:///PATH?pass=PASSWORD); without it, the in-memory broker.
    #[arg(long, env = "REDISSE_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// PEM file of the CA that signed the rediss:// server's certificate (a private CA), the
    /// rediss:// sentinels' and primary's with --redis-sentinel, or the nodes' with rediss://
    /// --redis-cluster seeds; without it, the system's roots.
    #[arg(long, env = "REDISSE_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Redis through Sentinel instead of --redis: the sentinels' URLs, comma-separated
    /// (redis://[:PASSWORD@]HOST:26379, the sentinels' own password); needs --redis-master.
    #[arg(
        long,
        env = "REDISSE_REDIS_SENTINEL",
        value_name = "URL,...",
        value_delimiter = ',',
        conflicts_with = "redis",
        requires = "redis_master"
    )]
    pub redis_sentinel: Vec<String>,
    /// Redis Cluster instead of --redis: seed nodes' URLs, comma-separated
    /// (redis://[USER:PASSWORD@]HOST:PORT, a few nodes of the cluster; rediss:// for TLS, all
    /// of them); sharded pub/sub (Redis 7.0 or later), ids per channel.
    #[arg(
        long,
        env = "REDISSE_REDIS_CLUSTER",
        value_name = "URL,...",
        value_delimiter = ',',
        conflicts_with_all = ["redis", "redis_sentinel"]
    )]
    pub redis_cluster: Vec<String>,
    /// The primary's name as the sentinels know it (mymaster), or a URL with that name as
    /// host and the primary's user, password and database (redis://USER:PASSWORD@mymaster/0,
    /// rediss:// for TLS).
    #[arg(
        long,
        env = "REDISSE_REDIS_MASTER",
        value_name = "NAME",
        requires = "redis_sentinel"
    )]
    pub redis_master: Option<String>,
    /// At startup, how long to wait for Redis to answer a PING (a Redis still starting) before
    /// exiting with the cause; 0 starts without waiting (the broker then connects in the
    /// background). Once started, outages are waited out whatever this says.
    #[arg(long, env = "REDISSE_REDIS_CONNECT_TIMEOUT", value_name = "DURATION", default_value = "5", value_parser = parse_duration, allow_negative_numbers = true)]
    pub redis_connect_timeout: Duration,
    /// Log to standard output instead of standard error.
    #[arg(short = 's', long, env = "REDISSE_STDOUT")]
    pub stdout: bool,
    /// Log to this file instead of standard error.
    #[arg(short = 'l', long, env = "REDISSE_LOG_FILE", value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Log each subscription and each event.
    #[arg(short = 'v', long, env = "REDISSE_VERBOSE")]
    pub verbose: bool,
    /// Log lines as text, or as one JSON object per line (for a log collector).
    #[arg(long, env = "REDISSE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Write the process id to this file.
    #[arg(short = 'P', long, env = "REDISSE_PID", value_name = "FILE")]
    pub pid: Option<PathBuf>,
    /// Serve HTTPS (with --ssl-key and --ssl-cert).
    #[arg(long, env = "REDISSE_SSL", requires_all = ["ssl_key", "ssl_cert"])]
    pub ssl: bool,
    /// PEM private key for --ssl.
    #[arg(long, env = "REDISSE_SSL_KEY", value_name = "FILE")]
    pub ssl_key: Option<PathBuf>,
    /// PEM certificate chain for --ssl.
    #[arg(long, env = "REDISSE_SSL_CERT", value_name = "FILE")]
    pub ssl_cert: Option<PathBuf>,
    /// Heartbeat period (seconds like 15 or 0.5, or with units like 500ms); also how long an
    /// HTTP/2 client may stay silent before a PING, and then how long it has to answer it.
    #[arg(long, env = "REDISSE_HEARTBEAT", default_value = "15", value_parser = parse_duration, allow_negative_numbers = true)]
    pub heartbeat: Duration,
    /// Events kept per channel for Last-Event-ID resume; 0 keeps none, so that every resume
    /// across an event gets `missedevents`.
    #[arg(long, env = "REDISSE_HISTORY_SIZE", default_value_t = config::DEFAULT_HISTORY_SIZE)]
    pub history_size: usize,
    /// How long a long-polling stream stays open after its first event.
    #[arg(long, env = "REDISSE_POLLING_DELAY", default_value = "1", value_parser = parse_duration, allow_negative_numbers = true)]
    pub polling_delay: Duration,
    /// The internal listener: POST /publish without a credential, /metrics, /status, /health,
    /// /livez, the stats, no event streams of channels. HOST:PORT, unix:PATH, or `none`.
    /// Whoever reaches it may publish: keep it on loopback or a private network.
    #[arg(long, env = "REDISSE_INTERNAL_ADDRESS", value_name = "ADDR", default_value = DEFAULT_INTERNAL_ADDRESS, value_parser = parse_internal_address)]
    pub internal_address: InternalAddress,
    /// Lets POST /publish through the public listener with `Authorization: Bearer <token>`.
    #[arg(
        long,
        env = "REDISSE_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub publish_token: Option<String>,
    /// Subscribers need a JWT signed with this HMAC secret (with --jwt-algorithm HS256, HS384
    /// or HS512); a JWT's `redisse.publish` claim also lets it publish.
    #[arg(
        long,
        env = "REDISSE_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        conflicts_with = "jwt_public_key"
    )]
    pub jwt_secret: Option<String>,
    /// Subscribers need a JWT verified with this PEM public key (RSA, EC or Ed25519).
    #[arg(long, env = "REDISSE_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// The one JWT algorithm accepted (required with a key): HS256 HS384 HS512 RS256 RS384
    /// RS512 PS256 ES256 ES384 EdDSA.
    #[arg(long, env = "REDISSE_JWT_ALGORITHM", value_name = "ALG")]
    pub jwt_algorithm: Option<String>,
    /// Cookie that carries the JWT when there is no Authorization header.
    #[arg(long, env = "REDISSE_JWT_COOKIE", value_name = "NAME", default_value = crate::config::DEFAULT_JWT_COOKIE)]
    pub jwt_cookie: String,
    /// Required `aud` of every JWT.
    #[arg(long, env = "REDISSE_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,
    /// Required `iss` of every JWT.
    #[arg(long, env = "REDISSE_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,
    /// Ask the application which channels each stream request may see: POST to this URL.
    #[arg(long, env = "REDISSE_AUTH_CALLBACK", value_name = "URL")]
    pub auth_callback: Option<String>,
    /// How long the auth callback may take (504 past it).
    #[arg(long, env = "REDISSE_AUTH_CALLBACK_TIMEOUT", default_value = "2", value_parser = parse_duration, allow_negative_numbers = true)]
    pub auth_callback_timeout: Duration,
    /// Reuse the auth callback's answer for identical requests for this long.
    #[arg(long, env = "REDISSE_AUTH_CALLBACK_CACHE", value_name = "DURATION", value_parser = parse_duration, allow_negative_numbers = true)]
    pub auth_callback_cache: Option<Duration>,
    /// An origin whose pages may connect (CORS), repeatable; `*` for every origin, without
    /// credentials.
    #[arg(
        long = "cors-origin",
        env = "REDISSE_CORS_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// How long a publish's Idempotency-Key is remembered: a retry with the same key and the
    /// same event within it answers the first id and publishes nothing.
    #[arg(long, env = "REDISSE_IDEMPOTENCY_WINDOW", value_name = "DURATION", default_value = "1h", value_parser = parse_duration, allow_negative_numbers = true)]
    pub idempotency_window: Duration,
    /// Idempotency keys the in-memory broker remembers at most (the oldest is forgotten first);
    /// Redis keeps each for its window.
    #[arg(long, env = "REDISSE_IDEMPOTENCY_MAX_KEYS", value_name = "N", default_value_t = config::DEFAULT_IDEMPOTENCY_MAX_KEYS)]
    pub idempotency_max_keys: usize,
    /// Open streams allowed at once.
    #[arg(long, env = "REDISSE_MAX_CONNECTIONS", default_value_t = config::DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Channels allowed on one connection.
    #[arg(long, env = "REDISSE_MAX_CHANNELS", default_value_t = config::DEFAULT_MAX_CHANNELS)]
    pub max_channels: usize,
    /// Channel subscriptions of all open streams together (a stream on 3 channels holds 3).
    #[arg(long, env = "REDISSE_MAX_SUBSCRIPTIONS", default_value_t = config::DEFAULT_MAX_SUBSCRIPTIONS)]
    pub max_subscriptions: usize,
    /// Bytes queued for one client before it is disconnected as slow.
    #[arg(long, env = "REDISSE_MAX_QUEUE_BYTES", default_value_t = config::DEFAULT_MAX_QUEUE_BYTES)]
    pub max_queue_bytes: usize,
    /// Largest POST /publish body.
    #[arg(long, env = "REDISSE_MAX_PUBLISH_BYTES", default_value_t = config::DEFAULT_MAX_PUBLISH_BYTES)]
    pub max_publish_bytes: usize,
    /// Largest request head (request line and headers).
    #[arg(long, env = "REDISSE_MAX_HEADER_BYTES", default_value_t = config::DEFAULT_MAX_HEADER_BYTES)]
    pub max_header_bytes: usize,
    /// Longest channel name, in bytes.
    #[arg(long, env = "REDISSE_MAX_CHANNEL_NAME_BYTES", default_value_t = config::DEFAULT_MAX_CHANNEL_NAME_BYTES)]
    pub max_channel_name_bytes: usize,
    /// Time allowed to send a complete request head.
    #[arg(long, env = "REDISSE_HEADER_READ_TIMEOUT", default_value = "10", value_parser = parse_duration, allow_negative_numbers = true)]
    pub header_read_timeout: Duration,
    /// Longest wait for connections to close after SIGTERM or SIGINT.
    #[arg(long, env = "REDISSE_SHUTDOWN_TIMEOUT", default_value = "10", value_parser = parse_duration, allow_negative_numbers = true)]
    pub shutdown_timeout: Duration,
    /// Worker threads; by default one per CPU available to the process (CPU quotas included).
    /// Fewer cost fewer thread wakeups at low event rates, on a machine shared with other work.
    #[arg(long, env = "REDISSE_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub threads: Option<u16>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `tracing`'s text lines (the default).
    Text,
    /// One JSON object per line: `timestamp`, `level`, `fields` (`message` among them),
    /// `target`, and the spans.
    Json,
}

/// Options of `redisse publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// The channel to publish on.
    pub channel: String,
    /// The event's data; read from standard input when absent (one trailing newline removed).
    pub data: Option<String>,
    /// The event's type.
    #[arg(short = 't', long = "type", default_value = crate::event::DEFAULT_EVENT_TYPE)]
    pub event_type: String,
    /// Publish straight to Redis at this URL.
    #[arg(long, env = "REDISSE_REDIS", value_name = "URL")]
    pub redis: Option<String>,
    /// PEM file of the CA that signed the rediss:// server's certificate, for --redis (or for
    /// rediss:// sentinels and primary, with --redis-sentinel; rediss:// nodes, with
    /// --redis-cluster).
    #[arg(long, env = "REDISSE_REDIS_TLS_CA", value_name = "FILE")]
    pub redis_tls_ca: Option<PathBuf>,
    /// Publish straight to the Redis primary these sentinels name (URLs, comma-separated),
    /// with --redis-master.
    #[arg(
        long,
        env = "REDISSE_REDIS_SENTINEL",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub redis_sentinel: Vec<String>,
    /// The primary's name as the sentinels know it, or a URL with that name as host and the
    /// primary's user, password and database, for --redis-sentinel.
    #[arg(long, env = "REDISSE_REDIS_MASTER", value_name = "NAME")]
    pub redis_master: Option<String>,
    /// Publish straight to a Redis Cluster: seed nodes' URLs, comma-separated (all redis://,
    /// or all rediss:// for TLS); the event gets the channel's next id.
    #[arg(
        long,
        env = "REDISSE_REDIS_CLUSTER",
        value_name = "URL,...",
        value_delimiter = ','
    )]
    pub redis_cluster: Vec<String>,
    /// Publish through a server's public POST /publish at this URL (http:// or https://),
    /// with the token. Without --server and --redis: the internal listener
    /// (REDISSE_INTERNAL_ADDRESS, else 127.0.0.1:8081), without a token.
    #[arg(long, env = "REDISSE_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// Bearer token (the server's --publish-token, or a JWT) sent with --server.
    #[arg(
        long,
        env = "REDISSE_PUBLISH_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    /// Events kept per channel when publishing to Redis (trims are recorded, so servers that keep
    /// more still tell resuming clients of the loss); 0 keeps none.
    #[arg(long, env = "REDISSE_HISTORY_SIZE", default_value_t = config::DEFAULT_HISTORY_SIZE)]
    pub history_size: usize,
    /// Publish at most once per KEY: a retry with the same key and the same event within the
    /// servers' idempotency window prints the first id and publishes nothing (1 to 256 visible
    /// ASCII characters).
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
    /// How long Redis remembers the key, with --redis (set it as the servers' is).
    #[arg(long, env = "REDISSE_IDEMPOTENCY_WINDOW", value_name = "DURATION", default_value = "1h", value_parser = parse_duration, allow_negative_numbers = true)]
    pub idempotency_window: Duration,
}

impl PublishArgs {
    /// `--redis` and `--server` are two ways to publish; when both have a value, the one given
    /// on the command line wins over the other's environment variable (a shell that exports
    /// `REDISSE_REDIS` for the server can still publish with `--server`). Both on the command
    /// line, or both from the environment, is an error. `--redis-tls-ca` is then checked as
    /// the server checks it when publishing to Redis, refused on the command line with
    /// `--server`, and ignored from the environment (where the server's settings may be).
    ///
    /// `--redis-sentinel` (with `--redis-master`) is a third way, held to the same rule: of the
    /// ways that have a value, those given on the command line win; more than one left is an
    /// error.
    pub fn resolve_target(&mut self, matches: &clap::ArgMatches) -> Result<(), String> {
        let explicit =
            |id: &str| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine);
        let given = [
            ("redis", self.redis.is_some()),
            ("redis_sentinel", !self.redis_sentinel.is_empty()),
            ("redis_cluster", !self.redis_cluster.is_empty()),
            ("server", self.server.is_some()),
        ];
        let chosen: Vec<&str> = given.iter().filter(|g| g.1).map(|g| g.0).collect();
        if chosen.len() > 1 {
            let on_line: Vec<&str> = chosen.iter().copied().filter(|id| explicit(id)).collect();
            if on_line.len() != 1 {
                return Err(
                    "--redis, --redis-sentinel, --redis-cluster and --server are ways to \
                            publish: one at a time (nor more than one of REDISSE_REDIS, \
                            REDISSE_REDIS_SENTINEL, REDISSE_REDIS_CLUSTER and REDISSE_SERVER)"
                        .into(),
                );
            }
            if on_line[0] != "redis" {
                self.redis = None;
            }
            if on_line[0] != "redis_sentinel" {
                self.redis_sentinel.clear();
            }
            if on_line[0] != "redis_cluster" {
                self.redis_cluster.clear();
            }
            if on_line[0] != "server" {
                self.server = None;
            }
        }
        if self.redis_sentinel.is_empty() {
            if explicit("redis_master") {
                return Err("--redis-master is for publishing through Sentinel, with \
                            --redis-sentinel"
                    .into());
            }
            self.redis_master = None;
        } else if self.redis_master.is_none() {
            return Err("--redis-sentinel needs --redis-master, the primary's name".into());
        }
        if self.redis.is_some() || self.redis_master.is_some() || !self.redis_cluster.is_empty() {
            check_redis_tls_ca(
                self.redis.as_deref(),
                self.redis_master.as_deref(),
                &self.redis_sentinel,
                &self.redis_cluster,
                self.redis_tls_ca.as_deref(),
            )
        } else if explicit("redis_tls_ca") {
            Err(
                "--redis-tls-ca is for publishing to Redis with --redis rediss://..., \
                 through TLS sentinels or to a cluster's rediss:// seeds"
                    .into(),
            )
        } else {
            self.redis_tls_ca = None;
            Ok(())
        }
    }
}

/// The internal listener's default address.
pub const DEFAULT_INTERNAL_ADDRESS: &str = "127.0.0.1:8081";

/// Where the internal listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InternalAddress {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A unix socket.
    Unix(PathBuf),
    /// No internal listener.
    None,
}

/// `HOST:PORT`, `unix:PATH` or `none`.
pub fn parse_internal_address(s: &str) -> Result<InternalAddress, String> {
    if s == "none" {
        return Ok(InternalAddress::None);
    }
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path (unix:/run/redisse/internal.sock)".into());
        }
        return Ok(InternalAddress::Unix(PathBuf::from(path)));
    }
    s.parse::<SocketAddr>()
        .map(InternalAddress::Tcp)
        .map_err(|_| {
            format!("{s:?} is not HOST:PORT (an IP address and a port), unix:PATH or none")
        })
}

/// `--redis-tls-ca` only with a `rediss://` URL (for `--redis`; through Sentinel, for
/// `rediss://` sentinels or a `rediss://` primary; `rediss://` seeds of a cluster), and a file of certificates (read here, so
/// that the error names the option; the library reads it again when it starts).
fn check_redis_tls_ca(
    redis: Option<&str>,
    master: Option<&str>,
    sentinels: &[String],
    cluster: &[String],
    ca: Option<&Path>,
) -> Result<(), String> {
    use crate::redis_url::{is_tls_url, sentinel_uses_tls};
    let Some(ca) = ca else {
        return Ok(());
    };
    match master {
        _ if !cluster.is_empty() && !cluster.iter().any(|s| is_tls_url(s)) => {
            return Err(
                "--redis-tls-ca is for TLS: with --redis-cluster, the seeds must \
                        be rediss:// URLs"
                    .into(),
            );
        }
        _ if !cluster.is_empty() => {}
        Some(master) if !sentinel_uses_tls(master, sentinels) => {
            return Err(
                "--redis-tls-ca is for TLS: with --redis-sentinel, the sentinels' URLs \
                        or --redis-master must be rediss:// URLs"
                    .into(),
            );
        }
        Some(_) => {}
        None if !redis.is_some_and(is_tls_url) => {
            return Err(
                "--redis-tls-ca is for a TLS Redis: --redis must be a rediss:// URL".into(),
            );
        }
        None => {}
    }
    #[cfg(feature = "redis")]
    crate::broker::redis::read_ca(ca).map_err(|e| format!("--redis-tls-ca: {e}"))?;
    // Without the Redis client, `--redis` itself is refused later.
    #[cfg(not(feature = "redis"))]
    let _ = ca;
    Ok(())
}

/// `15`, `0.5` (seconds) or `500ms`, `2m` (units).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{s:?} is not a positive number of seconds"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

impl ServeArgs {
    /// The library configuration these flags describe.
    pub fn to_config(&self) -> Result<Config, String> {
        if self.heartbeat.is_zero() {
            return Err("--heartbeat must be more than zero".into());
        }
        if self.idempotency_window < Duration::from_millis(1) {
            return Err("--idempotency-window must be at least a millisecond".into());
        }
        let jwt = match (&self.jwt_secret, &self.jwt_public_key, &self.jwt_algorithm) {
            (None, None, None) => None,
            (None, None, Some(_)) => {
                return Err("--jwt-algorithm needs --jwt-secret or --jwt-public-key".into());
            }
            (_, _, None) => {
                return Err("--jwt-secret and --jwt-public-key need --jwt-algorithm \
                            (the token never chooses its algorithm)"
                    .into());
            }
            (Some(secret), _, Some(alg)) => {
                Some(JwtSettings::hmac(secret.clone().into_bytes(), alg))
            }
            (None, Some(path), Some(alg)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    format!("--jwt-public-key: cannot read {}: {e}", path.display())
                })?;
                Some(JwtSettings::public_key_pem(pem, alg))
            }
        };
        let jwt = jwt.map(|mut j| {
            j = j.cookie(self.jwt_cookie.clone());
            if let Some(aud) = &self.jwt_audience {
                j = j.audience(aud.clone());
            }
            if let Some(iss) = &self.jwt_issuer {
                j = j.issuer(iss.clone());
            }
            j
        });
        if jwt.is_some() && self.auth_callback.is_some() {
            return Err("one subscriber authorization mode at a time: \
                        --jwt-secret/--jwt-public-key or --auth-callback, not both"
                .into());
        }
        let auth_callback = self.auth_callback.as_ref().map(|url| {
            let mut c = CallbackSettings::new(url.clone());
            c.timeout = self.auth_callback_timeout;
            c.cache = self.auth_callback_cache;
            c
        });
        check_redis_tls_ca(
            self.redis.as_deref(),
            self.redis_master.as_deref(),
            &self.redis_sentinel,
            &self.redis_cluster,
            self.redis_tls_ca.as_deref(),
        )?;
        Ok(Config {
            redis_url: self.redis.clone(),
            redis_tls_ca: self.redis_tls_ca.clone(),
            redis_sentinel: self
                .redis_master
                .as_ref()
                .map(|master| SentinelSettings::new(self.redis_sentinel.clone(), master.clone())),
            redis_cluster: (!self.redis_cluster.is_empty()).then(|| {
                self.redis_cluster
                    .iter()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
                    .collect()
            }),
            jwt,
            auth_callback,
            cors_origins: self
                .cors_origins
                .iter()
                .map(|o| o.trim().to_owned())
                .filter(|o| !o.is_empty())
                .collect(),
            heartbeat: self.heartbeat,
            history_size: self.history_size,
            polling_delay: self.polling_delay,
            publish_token: self.publish_token.clone().filter(|t| !t.is_empty()),
            idempotency_window: self.idempotency_window,
            idempotency_max_keys: self.idempotency_max_keys,
            max_connections: self.max_connections,
            max_channels: self.max_channels,
            max_subscriptions: self.max_subscriptions,
            max_queue_bytes: self.max_queue_bytes,
            max_publish_bytes: self.max_publish_bytes,
            max_header_bytes: self.max_header_bytes,
            max_channel_name_bytes: self.max_channel_name_bytes,
            header_read_timeout: self.header_read_timeout,
            shutdown_timeout: self.shutdown_timeout,
            verbose: self.verbose,
            ..Config::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_ca_needs_something_tls_to_trust_it_for() {
        let ca = Some(Path::new("/nonexistent/ca.pem"));
        let plain = ["redis://127.0.0.1:26379/".to_owned()];
        let tls = ["rediss://127.0.0.1:26380/".to_owned()];
        let e = check_redis_tls_ca(None, Some("mymaster"), &plain, &[], ca).unwrap_err();
        assert!(
            e.contains("--redis-sentinel") && e.contains("rediss://"),
            "{e}"
        );
        let e = check_redis_tls_ca(Some("redis://h/"), None, &[], &[], ca).unwrap_err();
        assert!(e.contains("--redis must be a rediss://"), "{e}");
        let e = check_redis_tls_ca(None, None, &[], &plain, ca).unwrap_err();
        assert!(
            e.contains("--redis-cluster") && e.contains("rediss://"),
            "{e}"
        );
        // Something is TLS: the file itself is read next (and here it is missing).
        for (redis, master, sentinels, cluster) in [
            (None, Some("mymaster"), &tls[..], &[][..]),
            (None, Some("rediss://mymaster"), &plain[..], &[][..]),
            (Some("rediss://h/"), None, &[][..], &[][..]),
            (None, None, &[][..], &tls[..]),
        ] {
            let e = check_redis_tls_ca(redis, master, sentinels, cluster, ca).unwrap_err();
            assert!(e.starts_with("--redis-tls-ca: "), "{e}");
        }
        assert_eq!(
            check_redis_tls_ca(None, Some("mymaster"), &plain, &[], None),
            Ok(())
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
