//! The real `redisse` binary, started on a free port (`-p 0`, the port read from its first log
//! line) with its internal listener on another (`--internal-address 127.0.0.1:0` unless the
//! test gives one, the port read from the log line that names it), its standard error
//! captured.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use super::sse::client;

/// Both listeners on free loopback ports, for tests that run the binary themselves.
pub const LOOPBACK: [&str; 6] = [
    "-a",
    "127.0.0.1",
    "-p",
    "0",
    "--internal-address",
    "127.0.0.1:0",
];

/// The `redisse` binary, running.
pub struct Redisse {
    pub port: u16,
    /// The internal listener's port, when it listens on TCP.
    pub internal_port: Option<u16>,
    child: Child,
    stderr: Arc<Mutex<String>>,
    /// The thread that copies standard error into `stderr`, until the process closes it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Redisse {
    pub fn start(extra: &[&str]) -> Self {
        Redisse::start_on(0, extra)
    }

    /// [`Redisse::start`] on this port of the public listener (0: a free one), such as the
    /// port of a server that was stopped, to start it again where its clients come back; with
    /// `--ssl` its first log line names `https://` (read all the same).
    pub fn start_on(port: u16, extra: &[&str]) -> Self {
        let internal_given = extra.iter().any(|a| a.starts_with("--internal-address"));
        let internal: &[&str] = if internal_given {
            &[]
        } else {
            &["--internal-address", "127.0.0.1:0"]
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(internal)
            .args(extra)
            .env("NO_COLOR", "1")
            .env_remove("REDISSE_REDIS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the redisse binary");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let (internal_tx, internal_rx) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let log = stderr.clone();
        let reader = std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                let port = line
                    .split("://127.0.0.1:")
                    .nth(1)
                    .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse::<u16>().ok());
                if line.contains("internal listener") {
                    let _ = internal_tx.send(port);
                } else if line.contains(" listening on ") {
                    let _ = port_tx.send(port);
                }
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(10))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("no listening line: {}", stderr.lock().unwrap()));
        let internal_port = internal_rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no internal listener line: {}", stderr.lock().unwrap()));
        Redisse {
            child,
            port,
            internal_port,
            stderr,
            reader: Some(reader),
        }
    }

    /// A URL on the public listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// A URL on the internal listener (which must listen on TCP).
    pub fn internal_url(&self, path: &str) -> String {
        let port = self
            .internal_port
            .expect("this test's binary has no internal listener on TCP");
        format!("http://127.0.0.1:{port}{path}")
    }

    /// Publishes one event through the internal listener (`event_type` as `?type=`); its id.
    pub async fn publish_event(&self, channel: &str, event_type: Option<&str>, data: &str) -> u64 {
        let mut url = self.internal_url(&format!("/publish/{channel}"));
        if let Some(t) = event_type {
            url.push_str(&format!("?type={t}"));
        }
        let res = client()
            .post(&url)
            .body(data.to_owned())
            .send()
            .await
            .expect("publish");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "publish to {url}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("publish answers JSON");
        v["id"].as_u64().expect("publish answers an id")
    }

    /// The value of an unlabelled metric in `GET /metrics` on the internal listener (fails
    /// the test when it is missing).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = client()
            .get(self.internal_url("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("the metrics' text");
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([name, &self.child.id().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill {name} failed");
    }

    /// Waits for the process to exit; `None` if it is still running after `wait`.
    pub fn exit_within(&mut self, wait: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Everything it wrote is in the log once the copy has read to the end.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The status of `GET /health` on the public listener.
    pub async fn health(&self) -> u16 {
        client()
            .get(self.url("/health"))
            .send()
            .await
            .expect("GET /health")
            .status()
            .as_u16()
    }

    /// `/health` in a word: `ok` (200 `ok`), `degraded` (200, a Redis Cluster shard recovering
    /// while the others serve), else its status code (`503`).
    pub async fn readiness(&self) -> String {
        let res = client()
            .get(self.url("/health"))
            .send()
            .await
            .expect("GET /health");
        let status = res.status().as_u16();
        let body = res.text().await.expect("the body of /health");
        match (status, body.as_str()) {
            (200, "ok\n") => "ok".into(),
            (200, b) if b.starts_with("degraded: ") => "degraded".into(),
            (200, b) => panic!("/health said 200 {b:?}"),
            (s, _) => s.to_string(),
        }
    }

    /// Waits until [`Redisse::readiness`] says `want` (fails the test after its patience).
    pub async fn readiness_becomes(&self, want: &str) {
        self.readiness_within(want, super::PATIENCE).await;
    }

    /// [`Redisse::readiness_becomes`], waiting up to `patience`.
    pub async fn readiness_within(&self, want: &str, patience: Duration) {
        self.health_until(&want.to_owned(), patience, || self.readiness())
            .await;
    }

    /// Waits until `/health` answers `status` (fails the test after its patience).
    pub async fn health_becomes(&self, status: u16) {
        self.health_until(&status, super::PATIENCE, || self.health())
            .await;
    }

    /// Probes `/health` with `probe` until it says `want`, for `patience` at most.
    async fn health_until<T, F>(&self, want: &T, patience: Duration, probe: impl Fn() -> F)
    where
        T: PartialEq + std::fmt::Display,
        F: std::future::Future<Output = T>,
    {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let got = probe().await;
            if got == *want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "/health stays {got}, not {want}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes through the internal listener (see [`Redisse::publish_event`]).
    pub async fn publish(&self, channel: &str, data: String) {
        self.publish_event(channel, None, &data).await;
    }
}

impl Drop for Redisse {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
