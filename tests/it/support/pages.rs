//! Pages of an application driven in headless Chromium one command at a time, by
//! `tests/browser/page.mjs` (puppeteer-core, the same tools as [`super::browser`]): open a page
//! in a browser context of its own, read what the chat example's page shows, submit its form,
//! `fetch()` from it, take a screenshot.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::browser::{browser_dir, chromium, require_tools};

/// The longest a command may take (the browser's start comes with the first one).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(45);

/// One event as the chat page lists it.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Shown {
    pub id: String,
    pub scope: String,
    pub from: String,
    pub text: String,
}

/// What the chat page shows.
#[derive(Deserialize, Debug, Clone)]
#[serde(rename_all = "camelCase")]
pub struct PageState {
    pub name: String,
    /// The session's id, which names the visitor's private channel.
    pub session_id: String,
    pub state: String,
    pub last_id: String,
    pub missed: bool,
    #[allow(dead_code)] // shown in failure messages
    pub send_status: String,
    pub events: Vec<Shown>,
}

/// `page.mjs` running, with its browser.
pub struct Pages {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
    /// Console errors the pages reported so far.
    pub console_errors: Vec<String>,
}

impl Pages {
    pub fn start() -> Self {
        require_tools();
        let dir = browser_dir();
        let mut child = Command::new("node")
            .arg(dir.join("page.mjs"))
            .current_dir(&dir)
            .env("CHROMIUM", chromium())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start node tests/browser/page.mjs");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let log = stderr.clone();
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        Pages {
            child,
            stdin,
            stdout,
            stderr,
            next_id: 0,
            console_errors: Vec::new(),
        }
    }

    async fn command(&mut self, mut command: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        command["id"] = json!(id);
        let line = format!("{command}\n");
        let answer = async {
            self.stdin.write_all(line.as_bytes()).await.ok()?;
            loop {
                let line = self.stdout.next_line().await.ok()??;
                let answer: Value = serde_json::from_str(&line).ok()?;
                if answer["id"] == json!(id) {
                    return Some(answer);
                }
            }
        };
        let answer = tokio::time::timeout(COMMAND_TIMEOUT, answer).await;
        let log = || self.stderr.lock().unwrap().clone();
        let answer = match answer {
            Ok(Some(answer)) => answer,
            Ok(None) => panic!(
                "page.mjs ended or wrote something else on {command}; log:\n{}",
                log()
            ),
            Err(_) => panic!(
                "page.mjs did not answer {command} in {COMMAND_TIMEOUT:?}; log:\n{}",
                log()
            ),
        };
        if let Some(errors) = answer["consoleErrors"].as_array() {
            self.console_errors
                .extend(errors.iter().filter_map(|e| e.as_str().map(str::to_owned)));
        }
        assert!(
            answer["ok"] == json!(true),
            "page.mjs: {command} failed: {}; log:\n{}",
            answer["error"],
            log()
        );
        answer
    }

    /// Opens `url` in a new browser context and returns the page's number.
    pub async fn open(&mut self, url: &str) -> usize {
        let answer = self.command(json!({ "cmd": "open", "url": url })).await;
        answer["page"].as_u64().expect("a page number") as usize
    }

    pub async fn state(&mut self, page: usize) -> PageState {
        let answer = self.command(json!({ "cmd": "state", "page": page })).await;
        serde_json::from_value(answer).expect("a page state")
    }

    /// Polls the page until `done` holds, for at most `patience`; fails with the last state.
    pub async fn wait_for(
        &mut self,
        page: usize,
        patience: Duration,
        what: &str,
        done: impl Fn(&PageState) -> bool,
    ) -> PageState {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let state = self.state(page).await;
            if done(&state) {
                return state;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "page {page}: {what}: not within {patience:?}; it shows {state:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Submits the page's form and returns its status line.
    pub async fn send(&mut self, page: usize, to: &str, text: &str) -> String {
        let answer = self
            .command(json!({ "cmd": "send", "page": page, "to": to, "text": text }))
            .await;
        answer["status"].as_str().unwrap_or_default().to_owned()
    }

    /// `fetch()`es `url` from the page as a stream request: the status and a refusal's body.
    pub async fn fetch(&mut self, page: usize, url: &str) -> (u16, String) {
        let answer = self
            .command(json!({ "cmd": "fetch", "page": page, "url": url }))
            .await;
        let status = answer["status"].as_u64().expect("a status") as u16;
        (
            status,
            answer["body"].as_str().unwrap_or_default().to_owned(),
        )
    }

    pub async fn screenshot(&mut self, page: usize, path: &Path) {
        self.command(json!({ "cmd": "screenshot", "page": page, "path": path }))
            .await;
    }
}

/// Closing standard input ends page.mjs, which closes its browser; a `kill_on_drop` SIGKILL
/// would leave Chromium running in its own process group, so a SIGTERM comes first.
impl Drop for Pages {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
