//! Where the Redis primary is: at one address (`redis_url`), or wherever Sentinel says.
//!
//! With Sentinel the primary moves: a failover promotes a replica, and the old primary, if it
//! comes back, is a replica that refuses writes. So nothing keeps a connection to an address for
//! good. The subscriber asks [`Primary::resolve`] for the primary's client at each
//! (re)connection: the sentinels are asked in turn by the `redis` crate's own Sentinel client,
//! which also checks that the server it names says `ROLE master`. It then points the command
//! connections there ([`Commands::point_at`]) before it refills, so that streams' reads and
//! publishes follow the primary too. (Sentinel, when it reconfigures a server, closes that
//! server's normal and pub/sub clients, so a subscriber left on a demoted primary is told by
//! its disconnection.) Between a primary's death and the next resolution, a publish fails on
//! the dead address: it is sent once more when the sentinels already name another primary,
//! else the publisher is told and may retry; nothing is written. A demoted primary that is
//! still up is left within a second: see [`Commands`].
//!
//! The primary's name may be given as a URL (`redis://alice:secret@mymaster/2`, `rediss://`
//! for TLS) whose host is the name and whose user, password and database are the primary's;
//! the sentinels' URLs carry the sentinels' own passwords.
//!
//! With a CA of its own (`redis_tls_ca`), every TLS connection of the setup (the sentinels'
//! when their URLs are `rediss://`, the primary's when its URL is) must chain to that CA. The
//! crate's plain Sentinel client has no place for a CA, so that case is its `SentinelClient`,
//! built with the CA for both sides; that builder takes one user and password for every
//! sentinel, so their URLs must agree on them (they do in any usual setup: the sentinels share
//! their `requirepass`).

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::sentinel::{
    Sentinel, SentinelClient, SentinelClientBuilder, SentinelNodeConnectionInfo, SentinelServerType,
};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, ProtocolVersion, TlsMode};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;

use super::{client_from_info, command_connection, install_crypto_provider};
use crate::error::BrokerError;
use crate::redis_url::sentinel_uses_tls;

/// The primary of a broker.
pub(crate) enum Primary {
    /// `redis_url`: always this client (RESP3).
    Fixed(redis::Client),
    /// Asked of the sentinels at each resolution.
    Sentinel(SentinelPrimary),
}

/// The sentinels and the primary's name and connection settings.
pub(crate) struct SentinelPrimary {
    /// The crate's client keeps a connection to each sentinel it asked (`&mut self`).
    sentinel: Mutex<Finder>,
    name: String,
    node: SentinelNodeConnectionInfo,
}

/// How the sentinels are asked.
enum Finder {
    /// With the system's roots for any TLS connection.
    Plain(Sentinel),
    /// Trusting the CA given (see the module documentation).
    Trusting(Box<SentinelClient>),
}

impl Primary {
    /// A primary found through the `sentinels` (URLs) under `master` (a name, or a URL whose
    /// host is the name: see the module documentation); with `ca` (PEM certificates), every
    /// TLS connection among them must chain to it.
    pub fn sentinel(
        sentinels: &[String],
        master: &str,
        ca: Option<&[u8]>,
    ) -> Result<Self, redis::RedisError> {
        let (name, node) = master_settings(master)?;
        if sentinel_uses_tls(master, sentinels) {
            // The crate connects to them over TLS before any client of ours exists.
            install_crypto_provider();
        }
        let finder = match ca {
            None => Finder::Plain(Sentinel::build(sentinels.to_vec())?),
            Some(pem) => Finder::Trusting(Box::new(trusting(sentinels, &name, master, pem)?)),
        };
        Ok(Primary::Sentinel(SentinelPrimary {
            sentinel: Mutex::new(finder),
            name,
            node,
        }))
    }

    /// The primary's client now, RESP3 (see `super::client`): the fixed one, or the one the
    /// first sentinel that knows the name points at, checked to be a primary.
    pub async fn resolve(&self) -> Result<redis::Client, redis::RedisError> {
        match self {
            Primary::Fixed(client) => Ok(client.clone()),
            Primary::Sentinel(s) => {
                let found = match &mut *s.sentinel.lock().await {
                    Finder::Plain(sentinel) => {
                        sentinel.async_master_for(&s.name, Some(&s.node)).await?
                    }
                    // The address it gives carries the CA (its TLS parameters), which the
                    // client made from it keeps.
                    Finder::Trusting(client) => client.async_get_client().await?,
                };
                client_from_info(found.get_connection_info().clone(), None, true)
            }
        }
    }

    /// Whether the primary may move (Sentinel), so that connections must follow it.
    pub fn moves(&self) -> bool {
        matches!(self, Primary::Sentinel(_))
    }
}

/// Splits `master` into the name the sentinels know and the settings of the primary's
/// connection.
fn master_settings(
    master: &str,
) -> Result<(String, SentinelNodeConnectionInfo), redis::RedisError> {
    let node = SentinelNodeConnectionInfo::default();
    if !master.contains("://") {
        return Ok((master.to_owned(), node));
    }
    let info = master.into_connection_info()?;
    let (name, tls) = match info.addr() {
        ConnectionAddr::Tcp(host, _) => (host.clone(), None),
        ConnectionAddr::TcpTls { host, insecure, .. } => (host.clone(), Some(tls_mode(*insecure))),
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "the primary's URL must be redis://[user:password@]name[/db] or rediss://",
            )));
        }
    };
    // `resolve` makes the resolved client RESP3 (`client_from_info`), the protocol of the
    // subscriber's connection and of the command connections made from it.
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(ProtocolVersion::RESP2);
    let mut node = node.set_redis_connection_info(settings);
    if let Some(tls) = tls {
        node = node.set_tls_mode(tls);
    }
    Ok((name, node))
}

/// The TLS mode of a `rediss://` URL, insecure or not (`#insecure`).
fn tls_mode(insecure: bool) -> TlsMode {
    if insecure {
        TlsMode::Insecure
    } else {
        TlsMode::Secure
    }
}

/// The crate's Sentinel client trusting `ca` (PEM) for the TLS connections among `sentinels`
/// and the primary `master` (its URL, or a plain name, see [`master_settings`]).
fn trusting(
    sentinels: &[String],
    name: &str,
    master: &str,
    ca: &[u8],
) -> Result<SentinelClient, redis::RedisError> {
    let invalid =
        |why: &'static str| redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, why));
    let infos = sentinels
        .iter()
        .map(|url| url.as_str().into_connection_info())
        .collect::<Result<Vec<ConnectionInfo>, _>>()?;
    let is_tls = |info: &ConnectionInfo| matches!(info.addr(), ConnectionAddr::TcpTls { .. });
    let tls_sentinels = infos.iter().filter(|i| is_tls(i)).count();
    if tls_sentinels != 0 && tls_sentinels != infos.len() {
        return Err(invalid(
            "with a TLS CA, the sentinels' URLs must be all rediss:// or all redis://",
        ));
    }
    let credentials = |info: &ConnectionInfo| {
        let settings = info.redis_settings();
        (
            settings.username().map(str::to_owned),
            settings.password().map(str::to_owned),
        )
    };
    let (user, password) = infos.first().map(credentials).unwrap_or_default();
    if infos
        .iter()
        .any(|i| credentials(i) != (user.clone(), password.clone()))
    {
        return Err(invalid(
            "with a TLS CA, every sentinel's URL must carry the same user and password",
        ));
    }
    let primary = match master.contains("://") {
        true => Some(master.into_connection_info()?),
        false => None,
    };
    if tls_sentinels == 0 && !primary.as_ref().is_some_and(is_tls) {
        return Err(invalid(
            "a TLS CA is for TLS: the sentinels' URLs or the primary's must be rediss://",
        ));
    }
    let certs = || redis::TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.to_vec()),
    };
    let mut builder = SentinelClientBuilder::new(
        infos.iter().map(|i| i.addr().clone()),
        name,
        SentinelServerType::Master,
    )?;
    if tls_sentinels != 0 {
        builder = builder.set_client_to_sentinel_certificates(certs());
    }
    if let Some(user) = &user {
        builder = builder.set_client_to_sentinel_username(user);
    }
    if let Some(password) = &password {
        builder = builder.set_client_to_sentinel_password(password);
    }
    // The primary's settings, as `master_settings` reads them for the plain client.
    builder = builder.set_client_to_redis_protocol(ProtocolVersion::RESP2);
    if let Some(info) = &primary {
        let settings = info.redis_settings();
        builder = builder.set_client_to_redis_db(settings.db());
        if let Some(user) = settings.username() {
            builder = builder.set_client_to_redis_username(user);
        }
        if let Some(password) = settings.password() {
            builder = builder.set_client_to_redis_password(password);
        }
        if let ConnectionAddr::TcpTls { insecure, .. } = info.addr() {
            builder = builder
                .set_client_to_redis_tls_mode(tls_mode(*insecure))
                .set_client_to_redis_certificates(certs());
        }
    }
    builder.build()
}

/// A command connection (not pub/sub) to the primary, shared by its users and replaced when
/// the primary moves. Before the first resolution (Sentinel) there is none: a command waits
/// for it a little ([`FIRST_PRIMARY_WAIT`]: a publish made as the server starts is not refused
/// for being early), then fails saying so.
///
/// Through Sentinel, a command also asks the sentinels again when the last answer is older than
/// [`RECHECK`]: in a switch-over the old primary stays up and keeps accepting writes until the
/// sentinels get round to demoting it (seconds), and a write it takes then is lost when it
/// becomes a replica. So once the sentinels name the new primary, writes go there within a
/// second, at the cost of one resolution a second while commands flow.
#[derive(Clone)]
pub(crate) struct Commands {
    current: Arc<watch::Sender<Option<Current>>>,
    /// Through Sentinel: where to ask when there is no primary yet, when it refused, and
    /// every [`RECHECK`].
    follows: Option<Arc<Primary>>,
    /// When the sentinels were last asked (or the connection last pointed).
    checked: Arc<std::sync::Mutex<Instant>>,
    /// Held by the one caller that asks the sentinels again; the others wait for its answer.
    rechecking: Arc<Mutex<()>>,
    /// How many times the sentinels were asked (under `rechecking`): a caller that must have
    /// an answer asked after it came (`force`) takes one that another caller got meanwhile.
    asked: Arc<std::sync::atomic::AtomicU64>,
}

/// How long a command waits for the first primary to be found.
const FIRST_PRIMARY_WAIT: Duration = Duration::from_secs(2);

/// How old the sentinels' last answer may be before a command asks again.
pub(crate) const RECHECK: Duration = Duration::from_secs(1);

/// How long a command waits for that answer before it goes on with the connection it has.
/// Longer than the client's connect timeout (1 s), which is how long it takes to pass over
/// sentinels that do not answer (a host gone: it asks three at once): with a wait as long as
/// that timeout, the answer of the sentinels listed after them came too late, every time.
const RECHECK_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone)]
struct Current {
    /// The address it connects to, as the client displays it.
    addr: String,
    con: ConnectionManager,
}

impl Commands {
    /// Connections to `client`'s server (lazy: connects on first use, reconnects by itself).
    pub fn to(client: &redis::Client) -> Result<Self, BrokerError> {
        let commands = Commands::new(None);
        commands.point_at(client)?;
        Ok(commands)
    }

    /// Connections to wherever `primary` is: none until it is first resolved, by the first
    /// command or by whoever calls [`Commands::point_at`].
    pub fn following(primary: Arc<Primary>) -> Self {
        Commands::new(Some(primary))
    }

    fn new(follows: Option<Arc<Primary>>) -> Self {
        Commands {
            current: Arc::new(watch::Sender::new(None)),
            follows,
            checked: Arc::new(std::sync::Mutex::new(Instant::now())),
            rechecking: Arc::new(Mutex::new(())),
            asked: Arc::new(std::sync::atomic::AtomicU64::new(0)),
        }
    }

    /// The address the connection goes to, as the client displays it (`None` before the
    /// first resolution).
    pub fn addr(&self) -> Option<String> {
        self.current.borrow().as_ref().map(|c| c.addr.clone())
    }

    fn checked_long_ago(&self) -> bool {
        self.checked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .elapsed()
            >= RECHECK
    }

    /// Asks the sentinels where the primary is and points there, unless another caller did
    /// within [`RECHECK`] (`force` false) or asked them after this call began (`force` true:
    /// commands that failed together share one answer). One caller asks at a time; the others
    /// wait for its answer (at most [`RECHECK_WAIT`]), rather than write to a primary that may
    /// just have been replaced.
    async fn recheck(&self, force: bool) {
        use std::sync::atomic::Ordering::SeqCst;
        let Some(primary) = &self.follows else {
            return;
        };
        let asked_before = self.asked.load(SeqCst);
        let _one = self.rechecking.lock().await;
        let fresh = if force {
            // Asked under the lock, so that answer is in: it was asked after this call began.
            self.asked.load(SeqCst) != asked_before
        } else {
            !self.checked_long_ago()
        };
        if fresh {
            return;
        }
        self.asked.fetch_add(1, SeqCst);
        if let Ok(Ok(client)) = tokio::time::timeout(RECHECK_WAIT, primary.resolve()).await {
            let _ = self.point_at(&client);
        }
        *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
    }

    /// The connection to the primary as last resolved; through Sentinel, resolved now when
    /// there is none yet (waiting at most [`FIRST_PRIMARY_WAIT`]) or when the last resolution
    /// is older than [`RECHECK`].
    pub async fn get(&self) -> Result<ConnectionManager, BrokerError> {
        if self.follows.is_some() && self.checked_long_ago() {
            self.recheck(false).await;
        }
        if let Some(c) = &*self.current.borrow() {
            return Ok(c.con.clone());
        }
        let unknown = || {
            BrokerError::Protocol(
                "no Redis primary known yet (no sentinel has named one that answers)".into(),
            )
        };
        let mut known = self.current.subscribe();
        let resolved = async {
            // Another caller's resolution (or the subscriber's) may land first: whichever
            // does, serves.
            self.recheck(true).await;
            known
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|c| c.as_ref().map(|c| c.con.clone()))
        };
        tokio::time::timeout(FIRST_PRIMARY_WAIT, resolved)
            .await
            .ok()
            .flatten()
            .ok_or_else(unknown)
    }

    /// After a command failed with `e`: when it says that the server is not the primary any
    /// more (`READONLY`: a demoted primary) or cannot be reached, asks where the primary is
    /// now (Sentinel only). Returns whether the connection moved to another server, where a
    /// command that was refused before it ran may be sent again.
    pub async fn follow_after(&self, e: &redis::RedisError) -> bool {
        if self.follows.is_none() {
            return false;
        }
        let moved_away = is_readonly(e)
            || e.is_connection_refusal()
            || e.is_connection_dropped()
            || e.is_unrecoverable_error();
        if !moved_away {
            return false;
        }
        let before = self.addr();
        self.recheck(true).await;
        self.addr() != before
    }

    /// Connects to `client`'s server from now on, unless already there, with `client`'s own
    /// settings (the protocol too: RESP3 from [`Primary::resolve`], as the server's command
    /// connections always were). Returns whether it changed.
    pub fn point_at(&self, client: &redis::Client) -> Result<bool, BrokerError> {
        let info = client.get_connection_info();
        let addr = info.addr().to_string();
        if self
            .current
            .borrow()
            .as_ref()
            .is_some_and(|c| c.addr == addr)
        {
            // Just resolved there: the answer is fresh.
            *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
            return Ok(false);
        }
        let commands_client =
            client_from_info(info.clone(), None, false).map_err(BrokerError::redis)?;
        let con = command_connection(&commands_client)?;
        self.current.send_replace(Some(Current { addr, con }));
        *self.checked.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        Ok(true)
    }
}

/// Whether `e` is a replica refusing a write: `READONLY`, or (Redis before 7, where a script's
/// error comes back wrapped as `ERR`) an error that says so.
pub(crate) fn is_readonly(e: &redis::RedisError) -> bool {
    e.code() == Some("READONLY") || e.to_string().contains("READONLY You can't write")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_is_named_alone_or_by_a_url_with_its_settings() {
        let (name, _) = master_settings("mymaster").unwrap();
        assert_eq!(name, "mymaster");
        let (name, node) = master_settings("redis://alice:secret@cache-main/2").unwrap();
        assert_eq!(name, "cache-main");
        let text = format!("{node:?}");
        assert!(text.contains("db: 2"), "{text}");
        let (name, node) = master_settings("rediss://cache-main").unwrap();
        assert_eq!(name, "cache-main");
        assert!(format!("{node:?}").contains("Secure"));
        assert!(master_settings("unix:///run/redis.sock").is_err());
    }

    #[test]
    fn a_ca_through_sentinel_needs_one_kind_of_sentinel_url_and_one_password() {
        let ca = b"not read here";
        let err = |sentinels: &[&str], master: &str| {
            let sentinels: Vec<String> = sentinels.iter().map(|s| s.to_string()).collect();
            match Primary::sentinel(&sentinels, master, Some(ca)) {
                Ok(_) => String::new(),
                Err(e) => e.to_string(),
            }
        };
        let e = err(&["rediss://a:26380/", "redis://b:26379/"], "m");
        assert!(e.contains("all rediss:// or all redis://"), "{e}");
        let e = err(&["rediss://:one@a:26380/", "rediss://:two@b:26380/"], "m");
        assert!(e.contains("the same user and password"), "{e}");
        let e = err(&["redis://a:26379/"], "redis://m");
        assert!(e.contains("must be rediss://"), "{e}");
        // Shared credentials, TLS sentinels, a TLS primary: built (nothing connects yet).
        assert_eq!(
            err(&["rediss://:pw@a:26380/", "rediss://:pw@b:26380/"], "m"),
            ""
        );
        assert_eq!(err(&["redis://a:26379/"], "rediss://alice:pw@m/1"), "");
    }

    #[test]
    fn commands_wait_for_the_first_primary_then_fail_clearly() {
        // Sentinels that are not there: nothing resolves by itself.
        let nowhere = Primary::sentinel(&["redis://127.0.0.1:1/".into()], "m", None).unwrap();
        let commands = Commands::following(Arc::new(nowhere));
        let a = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let b = redis::Client::open("redis://127.0.0.1:2/").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let e = commands.get().await.err().map(|e| e.to_string());
            let e = e.unwrap_or_default();
            assert!(e.contains("no Redis primary known yet"), "{e}");
            // A command made before the primary is found waits for it.
            let waiting = tokio::spawn({
                let commands = commands.clone();
                async move { commands.get().await.is_ok() }
            });
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(commands.point_at(&a).unwrap());
            assert!(waiting.await.unwrap());
            assert!(!commands.point_at(&a).unwrap());
            assert!(commands.point_at(&b).unwrap());
            assert!(commands.get().await.is_ok());
        });
    }

    /// Commands that all failed at once on a primary that is gone ask the sentinels once for
    /// all of them (once more at most, for those that failed while the first answer was on its
    /// way), not once each in turn: with sentinels or a primary that are slow to answer, the
    /// last of them would otherwise wait a resolution for each one before it.
    #[test]
    fn failures_at_once_share_one_question_to_the_sentinels() {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        // A sentinel that accepts connections and never answers, counting them: each
        // question to it is a new connection (the client keeps none that did not answer).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let acceptor = std::thread::spawn({
            let (accepted, stop) = (accepted.clone(), stop.clone());
            move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((socket, _)) => {
                            accepted.fetch_add(1, Ordering::Relaxed);
                            held.push(socket);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
            }
        });
        let silent = Primary::sentinel(&[format!("redis://127.0.0.1:{port}/")], "m", None).unwrap();
        let commands = Commands::following(Arc::new(silent));
        let gone = redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let moved = rt.block_on(async {
            assert!(commands.point_at(&gone).unwrap());
            let failed: Vec<_> = (0..6)
                .map(|_| {
                    let (commands, refused) = (commands.clone(), refused.clone());
                    tokio::spawn(async move { commands.follow_after(&refused).await })
                })
                .collect();
            let mut moved = Vec::new();
            for f in failed {
                moved.push(f.await.unwrap());
            }
            moved
        });
        stop.store(true, Ordering::Relaxed);
        acceptor.join().unwrap();
        assert_eq!(moved, [false; 6], "nothing named another primary");
        let asked = accepted.load(Ordering::Relaxed);
        assert!(
            asked <= 2,
            "six commands refused at once asked the sentinels {asked} times"
        );
    }
}
