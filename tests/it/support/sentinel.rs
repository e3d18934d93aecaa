//! A private Redis Sentinel setup per test, on free loopback ports: a primary, one replica and
//! three sentinels (quorum 2) watching them under one name, with short timings (a primary is
//! declared down after a second), so that a test can kill the primary and wait for the replica
//! to be promoted. Everything is torn down when it is dropped; the machine's own Redis is never
//! touched.
//!
//! [`SentinelSetup::start_tls`] makes the same setup over TLS: the servers and the sentinels
//! listen on TLS ports, the replica replicates and the sentinels watch over TLS
//! (`tls-replication yes`), so every address the sentinels give is a TLS one; each also
//! listens on a plain port that only the harness's own checks use.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::redis::{RedisServer, TlsFiles};

/// The name the sentinels know the primary by.
pub const MASTER: &str = "redisse-test";

/// How long a failover may take: the sentinels see the primary down after a second, agree,
/// elect a leader and promote the replica within a few more.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

pub struct SentinelSetup {
    /// The two data servers; `primary` is the index of the one the sentinels last named.
    servers: Vec<RedisServer>,
    primary: usize,
    sentinels: Vec<SentinelProcess>,
}

struct SentinelProcess {
    /// The plain port (the harness's).
    port: u16,
    /// The TLS port (redisse's), in a TLS setup.
    tls_port: Option<u16>,
    child: Child,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl SentinelSetup {
    /// Starts the primary, its replica (waiting for its first sync) and three sentinels, and
    /// waits until every sentinel names the primary and knows the replica and the other two.
    pub fn start() -> Self {
        SentinelSetup::start_on(None)
    }

    /// [`SentinelSetup::start`] over TLS, with certificates from `tls` (see the module
    /// documentation); [`SentinelSetup::sentinel_urls`] are then `rediss://` URLs.
    pub fn start_tls(tls: TlsFiles) -> Self {
        SentinelSetup::start_on(Some(tls))
    }

    fn start_on(tls: Option<TlsFiles>) -> Self {
        let server = |extra: &[String]| match &tls {
            None => RedisServer::start_with(extra, None),
            Some(files) => {
                let mut extra = extra.to_vec();
                extra.extend(["--tls-replication".into(), "yes".into()]);
                RedisServer::start_tls_with_plain(&extra, files.clone())
            }
        };
        let primary = server(&[]);
        let replica = server(&[
            "--replicaof".into(),
            "127.0.0.1".into(),
            primary.port().to_string(),
        ]);
        let mut setup = SentinelSetup {
            servers: vec![primary, replica],
            primary: 0,
            sentinels: Vec::new(),
        };
        setup.wait_synced();
        for _ in 0..3 {
            setup.sentinels.push(SentinelProcess::start(
                setup.servers[0].port(),
                tls.as_ref(),
            ));
        }
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        for s in &setup.sentinels {
            loop {
                let known = s.query_master().map(|(_, port)| port);
                let others = s.info_field("num-other-sentinels");
                let replicas = s.info_field("num-slaves");
                if known == Some(setup.servers[0].port())
                    && others.as_deref() == Some("2")
                    && replicas.as_deref() == Some("1")
                {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel on {} did not see the setup: master {known:?}, others {others:?}, \
                     replicas {replicas:?}; its log:\n{}",
                    s.port,
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        setup
    }

    /// The sentinels' URLs, comma-separated, as `--redis-sentinel` takes them.
    pub fn sentinel_urls(&self) -> String {
        self.sentinel_list().join(",")
    }

    pub fn sentinel_list(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| match s.tls_port {
                None => format!("redis://127.0.0.1:{}/", s.port),
                Some(port) => format!("rediss://127.0.0.1:{port}/"),
            })
            .collect()
    }

    /// The sentinels' plain URLs (in a TLS setup, their plain ports: the harness's).
    pub fn plain_sentinel_list(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}/", s.port))
            .collect()
    }

    /// The server the sentinels last named primary.
    pub fn primary(&self) -> &RedisServer {
        &self.servers[self.primary]
    }

    /// The other server.
    pub fn replica(&self) -> &RedisServer {
        &self.servers[1 - self.primary]
    }

    /// Waits until the replica's link to the primary is up and it has every write the
    /// primary made so far (its replication offset reached the primary's, read first: see
    /// [`RedisServer::replication_offset`]), so that a promotion loses nothing.
    pub fn wait_synced(&self) {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        let mut written = None;
        loop {
            // Connections may be refused or dropped meanwhile (Sentinel reconfiguring a
            // server closes its clients): then it is not synced yet.
            written = written.or_else(|| self.primary().replication_offset());
            if written.is_some_and(|w| self.replica().replicated_up_to(w)) {
                return;
            }
            let info = self.replica().replication_info();
            assert!(
                Instant::now() < deadline,
                "the replica ({}) did not sync with the primary ({}): {info}; a sentinel's log:\n{}",
                self.replica().port(),
                self.primary().port(),
                self.sentinels[0].log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the primary (SIGKILL, as a crash) and waits until the sentinels name the replica
    /// and it says `ROLE master`. Returns how long the failover took.
    pub fn kill_primary_and_wait_failover(&mut self) -> Duration {
        let started = Instant::now();
        self.kill_primary();
        self.wait_failover();
        started.elapsed()
    }

    /// Starts the killed server again (empty, as a primary of its own: the sentinels then
    /// make it a replica of the new primary) and waits until it has synced.
    pub fn restart_old_primary(&mut self) {
        self.servers[1 - self.primary].start_again();
        self.wait_synced();
    }

    /// A failover the sentinels are asked for (`SENTINEL FAILOVER`): the primary stays up and
    /// is demoted, as in a planned switch. Waits as [`SentinelSetup::wait_failover`].
    pub fn switch_over(&mut self) {
        let _: () = redis::cmd("SENTINEL")
            .arg("failover")
            .arg(MASTER)
            .query(&mut self.sentinels[0].con().expect("a sentinel connection"))
            .expect("SENTINEL FAILOVER");
        self.wait_failover();
    }

    /// Kills the primary (SIGKILL) and waits for its exit.
    pub fn kill_primary(&mut self) {
        self.servers[self.primary].stop();
    }

    /// Waits until the sentinels name the replica and it says `ROLE master`; it is then the
    /// primary.
    pub fn wait_failover(&mut self) {
        let old = self.primary().port();
        let new = self.replica().port();
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let named = self
                .sentinels
                .iter()
                .filter(|s| s.query_master().map(|(_, p)| p) == Some(new))
                .count();
            let role: Option<Vec<redis::Value>> = self
                .replica()
                .try_con()
                .and_then(|mut c| redis::cmd("ROLE").query(&mut c).ok());
            let is_master = matches!(
                role.as_deref().and_then(|r| r.first()),
                Some(redis::Value::BulkString(b)) if b == b"master"
            );
            // And the failover is over for every sentinel (no `failover_in_progress` flag):
            // a server that comes back during one may be taken for the primary again.
            let settled = self
                .sentinels
                .iter()
                .all(|s| s.info_field("flags").as_deref() == Some("master"));
            if named == self.sentinels.len() && is_master && settled {
                self.primary = 1 - self.primary;
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no failover from {old} to {new} within {FAILOVER_PATIENCE:?}: {named} \
                 sentinels name it, master: {is_master}; a sentinel's log:\n{}",
                self.sentinels[0].log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl SentinelProcess {
    fn start(primary_port: u16, tls: Option<&TlsFiles>) -> Self {
        for _ in 0..3 {
            let port = free_port();
            let tls_port = tls.map(|_| free_port());
            let dir = tempfile::tempdir().expect("temp dir");
            let conf = dir.path().join("sentinel.conf");
            let tls_conf = match (tls, tls_port) {
                (Some(files), Some(tls_port)) => format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\n\
                     tls-ca-cert-file {}\ntls-auth-clients no\ntls-replication yes\n",
                    files.cert.display(),
                    files.key.display(),
                    files.ca.display()
                ),
                _ => String::new(),
            };
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {dir}\n{tls_conf}\
                     sentinel monitor {MASTER} 127.0.0.1 {primary_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 5000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir = dir.path().display()
                ),
            )
            .expect("write sentinel.conf");
            let log = std::fs::File::create(dir.path().join("sentinel.log")).expect("log file");
            let child = Command::new("redis-server")
                .arg(&conf)
                .arg("--sentinel")
                .stdout(log)
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot start redis-server --sentinel ({e}): these tests need \
                         redis-server on the PATH (Debian: apt-get install redis-server)"
                    )
                });
            let mut s = SentinelProcess {
                port,
                tls_port,
                child,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            let pid = s.child.id();
            loop {
                // Ours, not another test's sentinel that got the port first.
                if s.query_master().is_some() && s.process_id() == Some(pid) {
                    return s;
                }
                if let Ok(Some(_)) = s.child.try_wait() {
                    if s.log().contains("Address already in use") {
                        break;
                    }
                    panic!("redis-server --sentinel exited; its log:\n{}", s.log());
                }
                assert!(
                    Instant::now() < deadline,
                    "sentinel on {port} did not answer; its log:\n{}",
                    s.log()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        panic!("no free port for a sentinel in 3 tries")
    }

    fn con(&self) -> Option<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port))
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()
    }

    /// The process id the sentinel on this port says it has.
    fn process_id(&self) -> Option<u32> {
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut self.con()?)
            .ok()?;
        info.lines()
            .find_map(|l| l.trim().strip_prefix("process_id:")?.parse().ok())
    }

    /// The primary this sentinel names.
    fn query_master(&self) -> Option<(String, u16)> {
        let (host, port): (String, String) = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(MASTER)
            .query(&mut self.con()?)
            .ok()?;
        Some((host, port.parse().ok()?))
    }

    /// A field of `SENTINEL MASTER <name>`.
    fn info_field(&self, field: &str) -> Option<String> {
        let fields: Vec<String> = redis::cmd("SENTINEL")
            .arg("master")
            .arg(MASTER)
            .query(&mut self.con()?)
            .ok()?;
        fields
            .chunks(2)
            .find(|kv| kv[0] == field)
            .and_then(|kv| kv.get(1).cloned())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for SentinelProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
