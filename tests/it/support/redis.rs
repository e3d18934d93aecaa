//! A private `redis-server` per test, on a free loopback port, that the test can stop, restart
//! on the same port, and whose pub/sub clients it can kill. It never touches the machine's own
//! Redis on the standard port. [`RedisServer::start_with`] adds options of the test's own, and
//! can serve TLS only (`--port 0 --tls-port`) with certificate files the test made, or TLS
//! beside a plain port that only the harness uses ([`RedisServer::start_tls_with_plain`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    /// The port clients use: plain TCP, or TLS when `tls` is set.
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Options after the usual ones.
    extra: Vec<String>,
    tls: Option<TlsFiles>,
    /// Beside a TLS port: a plain one, for the harness's own connections.
    plain_port: Option<u16>,
}

/// Why a server did not start.
enum Failure {
    /// Its port was taken between `free_port` and its bind.
    PortTaken,
    Other(String),
}

/// PEM files for a TLS-only server: its certificate and key, and the CA that signed them (which
/// the harness's own connections trust).
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// A free port for a Redis Cluster node: below 55536, with port + 10000 (its cluster bus) free
/// too. The system's free ports are from the ephemeral range, where the bus port would often
/// pass 65535 and the node would not start.
pub fn free_cluster_port() -> u16 {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        ^ std::process::id();
    for i in 0..1000u32 {
        let port = 20_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 35_000) as u16;
        let free = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
    panic!("no free port pair for a cluster node in 1000 tries")
}

impl RedisServer {
    /// Starts a server; fails the test with a clear message when `redis-server` is missing.
    pub fn start() -> Self {
        RedisServer::start_with(&[], None)
    }

    /// Starts a server with `extra` options after the usual ones and, with `tls`, on a TLS port
    /// only (`--port 0 --tls-port`, clients not asked for certificates); [`RedisServer::url`]
    /// is then a `rediss://` URL. Fails the test with a clear message when the server does not
    /// start (a `redis-server` built without TLS, an option it refuses), with its own log.
    pub fn start_with(extra: &[String], tls: Option<TlsFiles>) -> Self {
        RedisServer::start_on(free_port, extra, tls, false)
    }

    /// A server on a TLS port for its clients (redisse, replicas, sentinels) and on a plain
    /// port that only the harness connects to, to set up and inspect (a Sentinel setup over
    /// TLS: the harness keeps its plain connections, redisse's client is the TLS one).
    pub fn start_tls_with_plain(extra: &[String], tls: TlsFiles) -> Self {
        RedisServer::start_on(free_port, extra, Some(tls), true)
    }

    /// A single Redis Cluster node (`--cluster-enabled yes`, its own slots unassigned), on a
    /// port whose cluster bus port is free too.
    pub fn start_cluster_node() -> Self {
        let extra = ["--cluster-enabled".to_owned(), "yes".to_owned()];
        RedisServer::start_cluster_node_with(&extra)
    }

    /// [`RedisServer::start_cluster_node`] with `extra` options (which must enable the
    /// cluster).
    pub fn start_cluster_node_with(extra: &[String]) -> Self {
        RedisServer::start_on(free_cluster_port, extra, None, false)
    }

    /// [`RedisServer::start_cluster_node_with`] over TLS: clients, the cluster bus and
    /// replication on the TLS port (`extra` must enable `tls-cluster` and `tls-replication`),
    /// and a plain port beside it for the harness (see [`RedisServer::start_tls_with_plain`]).
    pub fn start_tls_cluster_node_with(extra: &[String], tls: TlsFiles) -> Self {
        RedisServer::start_on(free_cluster_port, extra, Some(tls), true)
    }

    /// Starts a server on a port from `pick` (another one when it was taken meanwhile), and
    /// with `plain` on a plain port for the harness beside its TLS one.
    fn start_on(pick: fn() -> u16, extra: &[String], tls: Option<TlsFiles>, plain: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: pick(),
            dir,
            child: None,
            extra: extra.to_vec(),
            tls,
            plain_port: plain.then(free_port),
        };
        // The free port may be taken again between `free_port` and the server's bind (by
        // another test's server or connection): then the server exits, and another port is
        // tried. A restart keeps its port, so there a lost port fails the test.
        for _ in 0..3 {
            match server.try_spawn() {
                Ok(()) => return server,
                Err(Failure::PortTaken) => {
                    server.port = pick();
                    server.plain_port = plain.then(free_port);
                }
                Err(Failure::Other(e)) => panic!("{e}"),
            }
        }
        panic!("redis-server found no free port in 3 tries")
    }

    fn spawn(&mut self) {
        match self.try_spawn() {
            Ok(()) => {}
            Err(Failure::PortTaken) => panic!("port {} was taken meanwhile", self.port),
            Err(Failure::Other(e)) => panic!("{e}"),
        }
    }

    fn try_spawn(&mut self) -> Result<(), Failure> {
        let port = self.port.to_string();
        let plain = self.plain_port.map_or("0".to_owned(), |p| p.to_string());
        let mut command = Command::new("redis-server");
        match &self.tls {
            None => command.args(["--port", &port]),
            Some(tls) => command
                .args(["--port", &plain, "--tls-port", &port])
                .arg("--tls-cert-file")
                .arg(&tls.cert)
                .arg("--tls-key-file")
                .arg(&tls.key)
                .arg("--tls-ca-cert-file")
                .arg(&tls.ca)
                .args(["--tls-auth-clients", "no"]),
        };
        let log = std::fs::File::create(self.log_path()).expect("create the redis log file");
        let child = command
            .args(["--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on the PATH \
                     (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        self.wait_ready()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// Waits for this server's PING answer, checked to come from our process (plain
    /// servers), or for its log's ready line (TLS servers, which the harness does not connect
    /// to: the TLS client under test is redisse's).
    fn wait_ready(&mut self) -> Result<(), Failure> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pid = self.child.as_ref().map(Child::id);
        let mut last_error = String::new();
        loop {
            if self.tls.is_some() && self.plain_port.is_none() {
                let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
                if log.contains("Ready to accept connections") {
                    return Ok(());
                }
            } else {
                match self.client().get_connection() {
                    Ok(mut con) => match redis::cmd("INFO").arg("server").query::<String>(&mut con)
                    {
                        Ok(info) => {
                            let theirs = info.lines().find_map(|l| {
                                l.trim().strip_prefix("process_id:")?.parse::<u32>().ok()
                            });
                            if theirs == pid {
                                return Ok(());
                            }
                            last_error = format!(
                                "port {} is another server's",
                                self.plain_port.unwrap_or(self.port)
                            );
                        }
                        Err(e) => last_error = e.to_string(),
                    },
                    Err(e) => last_error = e.to_string(),
                }
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let log_path = self.log_path();
            let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
            if exited.is_some() && log().contains("Address already in use") {
                self.child = None;
                return Err(Failure::PortTaken);
            }
            if exited.is_some() || Instant::now() >= deadline {
                self.stop();
                let hint = if self.tls.is_some() {
                    " (TLS: is this redis-server built with TLS support? Debian's is)"
                } else {
                    ""
                };
                return Err(Failure::Other(format!(
                    "redis-server did not start on port {}{hint}: exit {exited:?}, \
                     last error {last_error:?}, its log:\n{}",
                    self.port,
                    log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn client(&self) -> redis::Client {
        if let Some(plain) = self.plain_port {
            return redis::Client::open(format!("redis://127.0.0.1:{plain}/")).expect("client");
        }
        assert!(
            self.tls.is_none(),
            "the harness connects to plain servers only; use redisse's client for TLS"
        );
        redis::Client::open(self.url()).expect("client")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain port beside the TLS one, that only the harness uses (see
    /// [`RedisServer::start_tls_with_plain`]).
    pub fn plain_port(&self) -> Option<u16> {
        self.plain_port
    }

    /// `redis://127.0.0.1:PORT/`, or `rediss://` for a TLS server.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/", self.port)
    }

    /// Whether the server runs (it was not stopped, or was started again).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (as a crash would: nothing is saved) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port, empty (it keeps nothing on disk).
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Saves the data (`SAVE`) and kills the server, as a restart of a Redis with persistence
    /// begins. [`RedisServer::start_again`] brings it back with that data.
    pub fn save_and_stop(&mut self) {
        self.save_and_stop_after(Duration::ZERO);
    }

    /// Saves the data, lets the server run on for `lag`, then kills it: what it acknowledged
    /// meanwhile is lost when [`RedisServer::start_again`] brings the save back, as with a
    /// crash between two snapshots.
    pub fn save_and_stop_after(&mut self, lag: Duration) {
        let _: () = redis::cmd("SAVE").query(&mut self.con()).expect("SAVE");
        std::thread::sleep(lag);
        self.stop();
    }

    /// Starts the stopped server again on the same port, with the data of the last
    /// [`RedisServer::save_and_stop`] if there was one (then forgotten, so that a later
    /// [`RedisServer::restart`] starts empty as documented).
    pub fn start_again(&mut self) {
        self.stop();
        self.spawn();
        let _ = std::fs::remove_file(self.dir.path().join("dump.rdb"));
    }

    /// Freezes the server (`SIGSTOP`): its sockets stay open but nothing answers, as with a
    /// half-open connection or a stalled host. [`RedisServer::unfreeze`] lets it go on.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (`SIGCONT`).
    pub fn unfreeze(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("a running redis-server").id();
        let status = Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// A synchronous connection, or `None` when the server refuses or drops it for now (a
    /// server being reconfigured by Sentinel closes its clients).
    pub fn try_con(&self) -> Option<redis::Connection> {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(2))
            .ok()
    }

    /// Whether this replica is linked to its primary (`master_link_status:up`) and has
    /// replicated up to `offset` (its `slave_repl_offset`), as `INFO replication` says; `false`
    /// when it does not answer.
    pub fn replicated_up_to(&self, offset: i64) -> bool {
        let info = self.replication_info();
        info.contains("master_link_status:up")
            && field(&info, "slave_repl_offset:").is_some_and(|o| o >= offset)
    }

    /// How far this primary's replication stream has gone (`master_repl_offset`): once a
    /// replica reaches it ([`RedisServer::replicated_up_to`]), it has every write made before.
    /// (`WAIT 1` on a connection of its own cannot tell: it waits for that connection's writes,
    /// and it made none, so it answers at once with a replica still behind.) `None` when the
    /// server does not answer.
    pub fn replication_offset(&self) -> Option<i64> {
        field(&self.replication_info(), "master_repl_offset:")
    }

    /// `INFO replication`, or nothing when the server does not answer.
    pub fn replication_info(&self) -> String {
        self.try_con()
            .and_then(|mut c| redis::cmd("INFO").arg("replication").query(&mut c).ok())
            .unwrap_or_default()
    }

    /// A synchronous connection, for setting up and inspecting data.
    pub fn con(&self) -> redis::Connection {
        self.client()
            .get_connection()
            .expect("connect to the test redis")
    }

    /// Takes the next id from the gem's counter, as a foreign publisher does.
    pub fn next_id(&self) -> u64 {
        redis::cmd("INCR")
            .arg("redisse:lastEventId")
            .query(&mut self.con())
            .expect("INCR")
    }

    /// `PUBLISH`es a raw payload, as another Redis client may.
    pub fn publish_raw(&self, channel: &str, payload: &str) {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut self.con())
            .expect("PUBLISH");
    }

    /// `ZADD`s a raw payload to a channel's history with score `id`.
    pub fn store_raw(&self, channel: &str, id: u64, payload: &str) {
        let _: i64 = redis::cmd("ZADD")
            .arg(channel)
            .arg(id)
            .arg(payload)
            .query(&mut self.con())
            .expect("ZADD");
    }

    /// `CLIENT KILL TYPE pubsub`: drops every subscriber connection.
    pub fn kill_pubsub_clients(&self) -> u64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.con())
            .expect("CLIENT KILL")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The number after `name` on a line of an `INFO` section.
fn field(info: &str, name: &str) -> Option<i64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}
