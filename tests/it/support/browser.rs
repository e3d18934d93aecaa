//! A real browser for the CORS tests: `tests/browser/eventsource.mjs` (puppeteer-core driving the
//! system Chromium) opens `EventSource`s in pages, one browser for a test's jobs, and reports
//! what each page saw; a page server here gives the pages their origin.
//!
//! Nothing is skipped: without `node`, `tests/browser/node_modules` or Chromium, the test fails
//! and says which command installs what is missing (`.ci/run` runs them).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// `EventSource.readyState` values.
pub const OPEN: u8 = 1;
pub const CLOSED: u8 = 2;

/// Slack on top of a job's own timeout before the test gives up on the Node process (the
/// browser's start and shutdown; the script's own watchdog fires 30 s past the timeout).
const SLACK: Duration = Duration::from_secs(40);

pub fn browser_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser")
}

pub fn chromium() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// The puppeteer-core version tests/browser/package.json pins.
fn wanted_version(dir: &Path) -> String {
    let wanted: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("package.json"))
            .expect("read tests/browser/package.json"),
    )
    .expect("tests/browser/package.json is JSON");
    wanted["dependencies"]["puppeteer-core"]
        .as_str()
        .expect("tests/browser/package.json pins puppeteer-core")
        .to_owned()
}

/// The puppeteer-core version installed in tests/browser/node_modules.
fn installed_version(dir: &Path) -> Option<String> {
    std::fs::read_to_string(dir.join("node_modules/puppeteer-core/package.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<Value>(&text).ok())
        .and_then(|pkg| pkg["version"].as_str().map(str::to_owned))
}

/// Fails the test, with the command that fixes it, when a tool the browser tests need is missing.
pub fn require_tools() {
    let node = std::process::Command::new("node")
        .arg("--version")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "the browser tests need Node.js (`node` on PATH, 18 or later) to run \
                 tests/browser/eventsource.mjs: {e}; install it with `apt-get install -y nodejs npm`"
            )
        });
    let version = String::from_utf8_lossy(&node.stdout);
    let major: u32 = version
        .trim()
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    assert!(
        node.status.success() && major >= 18,
        "the browser tests need Node.js 18 or later, `node --version` says {version:?}"
    );

    // The npm packages are installed here when missing or stale (`npm ci`, once per test
    // process), so that README's test command works on a machine with Node.js and Chromium.
    static NPM: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut checked = NPM.lock().unwrap_or_else(|e| e.into_inner());
    if !*checked {
        let dir = browser_dir();
        if installed_version(&dir).as_deref() != Some(wanted_version(&dir).as_str()) {
            let status = std::process::Command::new("npm")
                .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
                .current_dir(&dir)
                .status()
                .unwrap_or_else(|e| {
                    panic!("the browser tests need npm to install tests/browser's packages: {e}; install it with `apt-get install -y npm`")
                });
            assert!(status.success(), "`npm ci` in tests/browser failed");
        }
        let (wanted, installed) = (wanted_version(&dir), installed_version(&dir));
        assert_eq!(
            installed.as_deref(),
            Some(wanted.as_str()),
            "tests/browser/node_modules has puppeteer-core {installed:?}, package.json pins \
             {wanted}: run `npm ci --prefix tests/browser`"
        );
        *checked = true;
    }
    drop(checked);

    let chromium = chromium();
    assert!(
        chromium.is_file(),
        "the browser tests need Chromium at {} (or the path in $CHROMIUM): install it with \
         `apt-get install -y chromium`",
        chromium.display()
    );
}

/// A blank HTML page at `/`, on a free loopback port: the page the `EventSource` runs in.
pub struct PageServer {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl PageServer {
    /// Starts the page server, after checking that the browser tests' tools are there.
    pub async fn start() -> Self {
        require_tools();
        // The icon link keeps the browser from asking for /favicon.ico (a 404 in the console).
        let page = axum::response::Html(
            "<!doctype html><html><head><meta charset=\"utf-8\"><link rel=\"icon\" href=\"data:,\">\
             <title>redisse browser test</title></head><body></body></html>",
        );
        let app = axum::Router::new().route("/", axum::routing::get(move || async move { page }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the page server");
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("page server");
        });
        PageServer { port, task }
    }

    /// The page's origin under this host name: `localhost` is another site than redisse's
    /// `127.0.0.1`; `127.0.0.1` is the same site on another port (another origin all the same).
    pub fn origin(&self, host: &str) -> String {
        format!("http://{host}:{}", self.port)
    }

    pub fn url(&self, host: &str) -> String {
        format!("{}/", self.origin(host))
    }
}

impl Drop for PageServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What `eventsource.mjs` is asked to do (its header comment has the fields).
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Job {
    page: String,
    url: String,
    with_credentials: bool,
    cookies: Vec<Value>,
    types: Vec<String>,
    events: usize,
    timeout_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    fetch: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    urls: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll: Option<Value>,
}

impl Job {
    /// An `EventSource` on `url` in the page at `page`, without credentials, listening to
    /// `message` events, watched for at most 20 s (a run that gets its events ends at once).
    pub fn new(page: String, url: String) -> Self {
        Job {
            page,
            url,
            with_credentials: false,
            cookies: Vec::new(),
            types: vec!["message".into()],
            events: 0,
            timeout_ms: 20_000,
            fetch: None,
            urls: None,
            poll: None,
        }
    }

    /// One `EventSource` per URL, all in the one page at `page` (results in
    /// [`Outcome::by_source`]).
    pub fn several(page: String, urls: Vec<String>) -> Self {
        let mut job = Job::new(page, urls[0].clone());
        job.urls = Some(urls);
        job
    }

    /// Long polling instead of an `EventSource`: the page `fetch()`es the job's URL (which
    /// names `polling`) in a loop, each request `pause` after the previous one ended, with
    /// `lastEventId=` the last id received (results in [`Outcome::polls`]).
    pub fn long_polling(mut self, pause: Duration) -> Self {
        self.poll = Some(serde_json::json!({ "pauseMs": pause.as_millis() as u64 }));
        self
    }

    pub fn with_credentials(mut self) -> Self {
        self.with_credentials = true;
        self
    }

    /// A cookie set (through the DevTools protocol) for the `EventSource`'s URL before the page
    /// opens.
    pub fn cookie(mut self, name: &str, value: &str) -> Self {
        self.cookies
            .push(serde_json::json!({ "name": name, "value": value, "url": self.url }));
        self
    }

    pub fn types(mut self, types: &[&str]) -> Self {
        self.types = types.iter().map(|t| t.to_string()).collect();
        self
    }

    /// Instead of an `EventSource`, `fetch()` the stream with these request headers (credentials
    /// as [`Job::with_credentials`] says): a header that is not CORS-safelisted, such as
    /// `Last-Event-ID` or `Authorization`, makes the browser send a preflight first.
    pub fn fetch_with_headers(mut self, headers: &[(&str, &str)]) -> Self {
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect();
        self.fetch = Some(serde_json::json!({ "headers": headers }));
        self
    }

    /// Stop once this many events arrived.
    pub fn events(mut self, n: usize) -> Self {
        self.events = n;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout_ms = timeout.as_millis() as u64;
        self
    }

    fn timeout_duration(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// One event as the page's listener saw it.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    #[serde(rename = "type")]
    pub event_type: String,
    pub data: String,
    pub last_event_id: String,
    pub origin: String,
}

/// The script's result line.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    pub opened: bool,
    pub messages: Vec<Message>,
    pub ready_state: u8,
    #[allow(dead_code)] // shown in failure messages
    pub ready_state_name: String,
    /// The `error` events: the `readyState` each left.
    pub errors: Vec<Value>,
    /// Console errors, the network stack's included (CORS refusals show there).
    pub console_errors: Vec<String>,
    #[allow(dead_code)] // shown in failure messages
    pub failed_requests: Vec<Value>,
    /// Whether the run ended on its timeout (not on its events or a CLOSED error).
    pub timed_out: bool,
    #[allow(dead_code)] // shown in failure messages
    pub elapsed_ms: u64,
    /// Every `open` event: a reconnection opens again.
    #[serde(default)]
    pub opens: Vec<Value>,
    /// How the page's stream requests were answered (protocol, connection id), as the DevTools
    /// protocol's `Network.responseReceived` saw them.
    #[serde(default)]
    pub responses: Vec<Response>,
    /// With [`Job::several`]: each URL's messages.
    #[serde(default)]
    pub by_source: Vec<Vec<Message>>,
    /// With [`Job::long_polling`]: each request.
    #[serde(default)]
    pub polls: Vec<Poll>,
}

/// One stream request's response, as the browser saw it.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    #[allow(dead_code)] // shown in failure messages
    pub url: String,
    pub status: u16,
    /// `h2` for HTTP/2, `http/1.1`...
    pub protocol: Option<String>,
    /// The connection it came on (requests on one HTTP/2 connection share it).
    pub connection_id: Option<f64>,
    /// `EventSource` or `Fetch`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// One long-polling request.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct Poll {
    pub url: String,
    pub status: Option<u16>,
    /// The ids of the events it received.
    pub ids: Vec<String>,
    #[allow(dead_code)] // shown in failure messages
    pub requested_ms: Option<u64>,
    #[allow(dead_code)] // shown in failure messages
    pub ended_ms: Option<u64>,
    pub error: Option<String>,
}

impl Outcome {
    /// Whether a console error says the browser's CORS check blocked a response.
    pub fn blocked_by_cors(&self) -> bool {
        self.console_errors
            .iter()
            .any(|e| e.contains("has been blocked by CORS policy"))
    }
}

/// How the `EventSource` started.
#[derive(Debug, PartialEq, Eq)]
pub enum Start {
    /// The `open` event came.
    Opened,
    /// An `error` event came first, leaving this `readyState`.
    Failed { ready_state: u8 },
    /// The run ended without either.
    Ended,
}

/// `eventsource.mjs` running a test's jobs at once in one browser (each an `EventSource`, or a
/// `fetch()` read the same way, in a browser context of its own).
pub struct BrowserRun {
    jobs: Vec<Job>,
    child: Child,
    progress: Vec<mpsc::UnboundedReceiver<Value>>,
    stderr: Arc<Mutex<String>>,
    stdout: tokio::task::JoinHandle<String>,
}

impl BrowserRun {
    pub fn start(jobs: &[Job]) -> Self {
        BrowserRun::start_trusting(jobs, &[])
    }

    /// [`BrowserRun::start`] with Chromium accepting these PEM certificates for HTTPS (by
    /// their public keys, without a CA).
    pub fn start_trusting(jobs: &[Job], certificates: &[String]) -> Self {
        require_tools();
        let dir = browser_dir();
        let input = serde_json::json!({ "jobs": jobs, "trustCertificates": certificates });
        let mut child = Command::new("node")
            .arg(dir.join("eventsource.mjs"))
            .arg(input.to_string())
            .current_dir(&dir)
            .env("CHROMIUM", chromium())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start node tests/browser/eventsource.mjs");
        let (senders, progress): (Vec<_>, Vec<_>) =
            jobs.iter().map(|_| mpsc::unbounded_channel()).unzip();
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let parsed = serde_json::from_str::<Value>(&line).ok();
                let job = parsed
                    .as_ref()
                    .filter(|v| v.get("progress").is_some())
                    .and_then(|v| v["job"].as_u64())
                    .and_then(|i| senders.get(i as usize));
                match (job, parsed) {
                    (Some(tx), Some(v)) => {
                        let _ = tx.send(v);
                    }
                    _ => {
                        let mut log = log.lock().unwrap();
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let stdout = tokio::spawn(async move {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text).await;
            text
        });
        BrowserRun {
            jobs: jobs.to_vec(),
            child,
            progress,
            stderr,
            stdout,
        }
    }

    fn limit(&self) -> Duration {
        self.jobs
            .iter()
            .map(Job::timeout_duration)
            .max()
            .unwrap_or_default()
            + SLACK
    }

    /// Waits for job `job`'s `EventSource` to open or fail, or for the run to end.
    pub async fn started(&mut self, job: usize) -> Start {
        let limit = self.limit();
        let progress = &mut self.progress[job];
        let wait = async {
            while let Some(p) = progress.recv().await {
                match p["progress"].as_str() {
                    Some("open") => return Start::Opened,
                    Some("error") => {
                        return Start::Failed {
                            ready_state: p["readyState"].as_u64().unwrap_or(99) as u8,
                        };
                    }
                    _ => {}
                }
            }
            Start::Ended
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(start) => start,
            Err(_) => panic!(
                "the browser reported neither open nor error within {limit:?} for {:?}; its \
                 log:\n{}",
                self.jobs[job],
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Waits for job `job`'s next progress line that `wanted` accepts, skipping the others;
    /// fails the test, with `what`, if none comes within the run's limit or the run ends.
    pub async fn progress_until(
        &mut self,
        job: usize,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let limit = self.limit();
        let progress = &mut self.progress[job];
        let wait = async {
            while let Some(p) = progress.recv().await {
                if wanted(&p) {
                    return Some(p);
                }
            }
            None
        };
        match tokio::time::timeout(limit, wait).await {
            Ok(Some(p)) => p,
            Ok(None) => panic!(
                "job {job}'s run ended before {what}; its log:\n{}",
                self.stderr.lock().unwrap()
            ),
            Err(_) => panic!(
                "no {what} within {limit:?} for job {job}; its log:\n{}",
                self.stderr.lock().unwrap()
            ),
        }
    }

    /// Waits until job `job` received `count` events in all.
    pub async fn messages_reach(&mut self, job: usize, count: u64) {
        self.progress_until(job, &format!("{count} events"), |p| {
            p["progress"] == "message" && p["count"].as_u64() >= Some(count)
        })
        .await;
    }

    /// Waits for the run to end and returns each job's result, in order; panics if the script
    /// failed.
    pub async fn outcomes(mut self) -> Vec<Outcome> {
        let limit = self.limit();
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for node"),
            Err(_) => {
                // Dropping the run stops node and its browser.
                panic!(
                    "node tests/browser/eventsource.mjs still running after {limit:?}; its log:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
        };
        let stdout = (&mut self.stdout).await.unwrap_or_default();
        // The stderr reader may still be draining; give it a moment for the log below.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let log = self.stderr.lock().unwrap().clone();
        assert!(
            status.success(),
            "node tests/browser/eventsource.mjs failed ({status}) for {:?}\nstdout: {stdout}\n\
             stderr:\n{log}",
            self.jobs
        );
        #[derive(Deserialize)]
        struct Results {
            results: Vec<Outcome>,
        }
        let line = stdout.lines().last().unwrap_or("");
        let results: Results = serde_json::from_str(line).unwrap_or_else(|e| {
            panic!("eventsource.mjs printed no result ({e}): {stdout:?}\nstderr:\n{log}")
        });
        assert_eq!(results.results.len(), self.jobs.len(), "one result per job");
        results.results
    }
}

/// A run dropped before its end (a failing assertion) stops node with SIGTERM, on which
/// puppeteer kills its Chromium: a SIGKILL would leave the browser running (it is started in
/// a process group of its own), for good if nothing else ended it.
impl Drop for BrowserRun {
    fn drop(&mut self) {
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.start_kill();
    }
}
