//! Helpers shared by the access-control tests (`jwt`, `auth_callback`, `cors`): the binary's
//! open-stream count, a refused stream request, a startup that must fail, and the binary
//! started with environment variables.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::binary::{LOOPBACK, Redisse};
use crate::support::sse::client;
use crate::support::{PATIENCE, SseStream};

/// Streams open now, from the internal listener's JSON stats.
pub async fn connected_on(internal_url: &str) -> u64 {
    let res = client()
        .get(internal_url)
        .header("accept", "application/json")
        .send()
        .await
        .expect("stats request");
    assert_eq!(res.status(), 200, "stats");
    let text = res.text().await.expect("stats body");
    let stats: serde_json::Value = serde_json::from_str(&text).expect("stats JSON");
    stats["connected"]
        .as_u64()
        .unwrap_or_else(|| panic!("no `connected` in {stats}"))
}

/// Streams open now on `r`.
pub async fn connected(r: &Redisse) -> u64 {
    connected_on(&r.internal_url("/")).await
}

/// Waits until exactly `n` streams are open on `r`.
pub async fn wait_connected(r: &Redisse, n: u64) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = connected(r).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams open: {now} instead of {n}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream request that must be refused with `status`: the answer is not an event stream and
/// ends (its whole body is read), and no stream is open afterwards. Returns the body.
pub async fn refused(r: &Redisse, path: &str, headers: &[(&str, &str)], status: u16) -> String {
    let mut req = client()
        .get(r.url(path))
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = tokio::time::timeout(PATIENCE, req.send())
        .await
        .expect("an answer in time")
        .expect("request");
    let got = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body = tokio::time::timeout(PATIENCE, res.text())
        .await
        .expect("a refusal's body ends (no stream)")
        .expect("body");
    assert_eq!(got, status, "{path} {headers:?}: {body}");
    assert!(
        !content_type.starts_with("text/event-stream"),
        "a refusal is not an event stream: {content_type}"
    );
    assert_eq!(connected(r).await, 0, "no stream open after a {status}");
    body
}

/// Opens a stream that must be served, and waits until it is live: a warm-up event makes the
/// counter exist, so the first event is `lastEventId`.
pub async fn live(r: &Redisse, path: &str, headers: &[(&str, &str)]) -> SseStream {
    r.publish("t.warm", "warm-up".into()).await;
    let mut s = SseStream::open(&r.url(path), headers).await;
    assert_eq!(
        s.status,
        200,
        "{path} {headers:?} refused: {:?}",
        String::from_utf8_lossy(&s.raw)
    );
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId", "first event: {first:?}");
    s
}

/// The binary with no `REDISSE_*` variable of the test's environment, and `env`.
fn command(args: &[&str], env: &[(&str, &str)]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_redisse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REDISSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs `redisse ARGS` to completion: (success, stdout, stderr).
pub async fn run(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(PATIENCE, command(args, &[]).output())
        .await
        .unwrap_or_else(|_| panic!("redisse {args:?} did not exit"))
        .expect("run redisse");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `redisse serve` with `args` must exit non-zero before serving; returns its standard error.
pub async fn fails_to_start(args: &[&str]) -> String {
    let mut all = LOOPBACK.to_vec();
    all.extend_from_slice(args);
    let (ok, _, stderr) = run(&all).await;
    assert!(!ok, "redisse {args:?} started: {stderr}");
    assert!(
        !stderr.contains(" listening on "),
        "redisse {args:?} listened before failing: {stderr}"
    );
    stderr
}

/// The binary started with environment variables: its public and internal base URLs.
pub struct WithEnv {
    pub base: String,
    pub internal: String,
    _child: tokio::process::Child,
}

impl WithEnv {
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut all = LOOPBACK.to_vec();
        all.extend_from_slice(args);
        let mut child = command(&all, env).spawn().expect("spawn redisse");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let (mut base, mut internal) = (None, None);
        let mut seen = String::new();
        while base.is_none() || internal.is_none() {
            let line = tokio::time::timeout(PATIENCE, lines.next_line())
                .await
                .expect("log lines in time")
                .expect("read the log")
                .unwrap_or_else(|| panic!("redisse exited: {seen}"));
            seen.push_str(&line);
            seen.push('\n');
            let url = line.split("http://").nth(1).map(|rest| {
                let addr: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':')
                    .collect();
                format!("http://{}", addr.trim_end_matches(':'))
            });
            if line.contains("internal listener") {
                internal = url;
            } else if line.contains(" listening on ") {
                base = url;
            }
        }
        // Keep reading, so that the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        WithEnv {
            base: base.unwrap(),
            internal: internal.unwrap(),
            _child: child,
        }
    }
}
