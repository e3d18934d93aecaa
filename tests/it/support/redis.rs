//! A private `redis-server` per test, on a free loopback port, that the test can stop, restart
//! on the same port, and whose pub/sub clients it can kill. It never touches the machine's own
//! Redis on the standard port.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

impl RedisServer {
    /// Starts a server; fails the test with a clear message when `redis-server` is missing.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = RedisServer {
            port: free_port(),
            dir,
            child: None,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
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
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): these tests need it on the PATH \
                     (Debian: apt-get install redis-server)"
                )
            });
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = redis::Client::open(self.url()).expect("client");
        loop {
            if let Ok(mut con) = client.get_connection()
                && redis::cmd("PING").query::<String>(&mut con).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[allow(dead_code)] // part of the harness's API; no test needs the bare port yet
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
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
        let _: () = redis::cmd("SAVE").query(&mut self.con()).expect("SAVE");
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

    /// A synchronous connection, for setting up and inspecting data.
    pub fn con(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection()
            .expect("connect to the test redis")
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
