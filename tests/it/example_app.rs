//! The example application (`examples/chat`) in a real browser: the test builds the example,
//! starts it on a free port and drives its page in headless Chromium (`tests/browser/page.mjs`,
//! each visitor in a browser context of its own, so each has its own session cookie).
//!
//! It checks what the example is there to show: each visitor's one `EventSource` receives the
//! global channel and the visitor's own private channel, never another visitor's (not even
//! when the page asks for it in the query, nor when both visitors have the same name); the
//! page's form publishes through the application; and on Redis, a page whose application was SIGKILLed and restarted with the
//! same session secret reconnects by itself with `Last-Event-ID` and shows what was published
//! meanwhile, once each, in order, or shows its `missedevents` notice when more was published
//! meanwhile than history keeps. A screenshot of a live page goes to
//! `target/example-app.png`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::Duration;

use redisse::{Event, Publisher};

use crate::support::RedisServer;
use crate::support::pages::{PageState, Pages, Shown};
use crate::support::sse::{SseEvent, SseStream, client};

/// The example's history size (`config.history_size` in `examples/chat/main.rs`).
const HISTORY_SIZE: usize = 20;

/// How long a page may take to show something (a loaded 2-core machine, a browser reconnecting
/// after its default 3 s).
const PAGE_PATIENCE: Duration = Duration::from_secs(30);

/// Builds `examples/chat` once per test process (as `cargo build --example chat`) and returns
/// the executable's path.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let mut build = Command::new(env!("CARGO"));
        build
            .args([
                "build",
                "--example",
                "chat",
                "--message-format=json-render-diagnostics",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit());
        // What cargo set for this test process describes this package; build scripts that
        // watch such variables (ring's) would be rebuilt by this build, then again by the next
        // `cargo test`.
        for (name, _) in std::env::vars_os() {
            let name = name.to_string_lossy();
            let set_for_tests = ["CARGO_PKG_", "CARGO_CFG_", "CARGO_BIN_EXE_"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_MANIFEST_LINKS",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                    "CARGO_RUSTC_CURRENT_DIR",
                    "OUT_DIR",
                ]
                .contains(&&*name);
            if set_for_tests {
                build.env_remove(&*name);
            }
        }
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let out = build.output().expect("run cargo build --example chat");
        assert!(out.status.success(), "cargo build --example chat failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "chat")
            .find_map(|m| m["executable"].as_str().map(PathBuf::from))
            .expect("cargo build --example chat names the executable")
    })
}

/// The target directory the example was built in (`target/debug/examples/chat`).
fn target_dir() -> PathBuf {
    let binary = example_binary();
    binary
        .ancestors()
        .nth(3)
        .expect("the example is in target/<profile>/examples")
        .to_path_buf()
}

/// The example application, running.
struct ChatApp {
    port: u16,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ChatApp {
    /// Starts the example on `listen` (`127.0.0.1:0` for a free port), on Redis if given,
    /// with `secret` as its session secret.
    fn start(listen: &str, redis: Option<&str>, secret: &str) -> Self {
        let mut command = Command::new(example_binary());
        command.args(["--listen", listen]);
        if let Some(url) = redis {
            command.args(["--redis", url]);
        }
        let mut child = command
            .env("CHAT_SECRET", secret)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start examples/chat");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let lines = BufReader::new(child.stderr.take().unwrap());
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let port = rest.trim_end_matches('/').parse::<u16>().ok();
                    let _ = port_tx.send(port);
                }
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = port_rx
            .recv_timeout(Duration::from_secs(20))
            .ok()
            .flatten()
            .unwrap_or_else(|| panic!("examples/chat did not listen: {}", log.lock().unwrap()));
        ChatApp { port, child, log }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// SIGKILL, as a crash: nothing is closed cleanly.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A failing test shows the application's log.
impl Drop for ChatApp {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "examples/chat on port {}:\n{}",
                self.port,
                self.log.lock().unwrap()
            );
        }
    }
}

/// A visitor without a browser, with a session of its own: publishes through the application's
/// `POST /send`, as the page's form does.
struct Sender {
    cookie: String,
    /// The name the application gave it, as events from it show.
    name: String,
    /// Its session's id, which names its private channel.
    id: String,
}

impl Sender {
    async fn visit(app: &ChatApp) -> Self {
        let res = client().get(app.url("/")).send().await.expect("GET /");
        assert_eq!(res.status(), 200);
        let cookie = res
            .headers()
            .get("set-cookie")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .expect("the first visit gets a session cookie")
            .to_owned();
        let page = res.text().await.unwrap_or_default();
        let attribute = |name: &str| {
            page.split(&format!("{name}=\""))
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_else(|| panic!("the page has {name}"))
                .to_owned()
        };
        Sender {
            cookie: cookie.clone(),
            name: attribute("data-name"),
            id: attribute("data-id"),
        }
    }

    /// Opens a stream on `query` with this session.
    async fn stream(&self, app: &ChatApp, query: &str) -> SseStream {
        SseStream::open(
            &app.url(&format!("/events{query}")),
            &[("cookie", &self.cookie)],
        )
        .await
    }

    /// Sends `text` to everyone (`to` empty) or to a visitor; returns the event's id.
    async fn send(&self, app: &ChatApp, to: &str, text: &str) -> String {
        let res = client()
            .post(app.url("/send"))
            .header("cookie", &self.cookie)
            .header("content-type", "application/json")
            .body(serde_json::json!({ "to": to, "text": text }).to_string())
            .send()
            .await
            .expect("POST /send");
        let status = res.status();
        let body = res.text().await.unwrap_or_default();
        assert_eq!(status, 200, "POST /send to {to:?}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("/send answers JSON");
        v["id"].as_u64().expect("/send answers an id").to_string()
    }
}

fn shown(id: &str, scope: &str, from: &str, text: &str) -> Shown {
    Shown {
        id: id.into(),
        scope: scope.into(),
        from: from.into(),
        text: text.into(),
    }
}

/// Opens the page for a new visitor and waits for its stream to open.
async fn open_visitor(pages: &mut Pages, app: &ChatApp) -> (usize, PageState) {
    let page = pages.open(&app.url("/")).await;
    let state = pages
        .wait_for(page, PAGE_PATIENCE, "the stream opens", |s| {
            s.state == "open"
        })
        .await;
    (page, state)
}

/// Two visitors whose names differ (a name is random: a new context again on the rare draw of
/// the same one).
async fn two_visitors(pages: &mut Pages, app: &ChatApp) -> [(usize, PageState); 2] {
    let (a, first) = open_visitor(pages, app).await;
    for _ in 0..5 {
        let (b, second) = open_visitor(pages, app).await;
        if second.name != first.name {
            return [(a, first), (b, second)];
        }
    }
    panic!("five new visitors all got the name {}", first.name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_visitor_gets_the_global_channel_and_only_their_own_private_one() {
    let app = ChatApp::start("127.0.0.1:0", None, "a test secret");
    let mut pages = Pages::start();
    let [(a, alice_page), (b, bob_page)] = two_visitors(&mut pages, &app).await;
    let (alice, bob) = (alice_page.name, bob_page.name);
    let sender = Sender::visit(&app).await;
    let from = sender.name.clone();

    let hello = sender.send(&app, "", "hello everyone").await;
    let (for_alice, for_bob) = (format!("just for {alice}"), format!("just for {bob}"));
    let to_alice = sender.send(&app, &alice, &for_alice).await;
    let to_bob = sender.send(&app, &bob, &for_bob).await;
    let last = sender.send(&app, "", "that is all").await;

    // Events reach a stream in the order they were published: once the last one is shown,
    // everything published before it that the page may see is shown too.
    let expect_a = vec![
        shown(&hello, "global", &from, "hello everyone"),
        shown(&to_alice, "private", &from, &for_alice),
        shown(&last, "global", &from, "that is all"),
    ];
    let expect_b = vec![
        shown(&hello, "global", &from, "hello everyone"),
        shown(&to_bob, "private", &from, &for_bob),
        shown(&last, "global", &from, "that is all"),
    ];
    for (page, expected) in [(a, &expect_a), (b, &expect_b)] {
        let state = pages
            .wait_for(page, PAGE_PATIENCE, "the last global event", |s| {
                s.events.iter().any(|e| e.id == last)
            })
            .await;
        assert_eq!(&state.events, expected, "page {page} ({})", state.name);
        assert_eq!(state.state, "open");
        assert_eq!(state.last_id, last);
        assert!(!state.missed);
    }

    // Asking for the other visitor's channel in the query is refused, alone or beside one's own
    // channels, and says nothing of that channel; the page's own request is served.
    let (alice_id, bob_id) = (alice_page.session_id, bob_page.session_id);
    for query in [
        format!("?visitor.{bob_id}"),
        format!("?global&visitor.{alice_id}&visitor.{bob_id}"),
        format!("?visitor.{bob}"),
    ] {
        let (status, body) = pages.fetch(a, &format!("/events{query}")).await;
        assert_eq!(status, 403, "alice asking for /events{query}: {body}");
        assert!(
            !body.contains(&bob_id) && !body.contains(&bob),
            "the refusal names the channel: {body}"
        );
    }
    let (status, _) = pages
        .fetch(a, &format!("/events?global&visitor.{alice_id}"))
        .await;
    assert_eq!(status, 200, "alice's own channels");
    // Without a session, no stream at all.
    let res = client()
        .get(app.url(&format!("/events?visitor.{bob_id}")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /events");
    assert_eq!(res.status(), 401);

    // The live page: events of both channels, the state and the last id.
    let screenshot = target_dir().join("example-app.png");
    pages.screenshot(a, &screenshot).await;
    let png = std::fs::read(&screenshot).expect("the screenshot is written");
    assert!(
        png.starts_with(b"\x89PNG"),
        "{} is a PNG",
        screenshot.display()
    );
    assert!(
        pages
            .console_errors
            .iter()
            .all(|e| e.contains("status of 403")),
        "console errors other than the refused fetches: {:?}",
        pages.console_errors
    );
    drop(app);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_form_publishes_to_everyone_or_to_one_visitor() {
    let app = ChatApp::start("127.0.0.1:0", None, "a test secret");
    let mut pages = Pages::start();
    let [(a, alice), (b, bob)] = two_visitors(&mut pages, &app).await;
    let (alice, bob) = (alice.name, bob.name);

    let status = pages.send(a, "", "hi all").await;
    let hi = status
        .strip_prefix("sent, id ")
        .unwrap_or_else(|| panic!("the form says {status:?}"))
        .to_owned();
    let status = pages.send(a, &bob, "psst, bob").await;
    let psst = status
        .strip_prefix("sent, id ")
        .unwrap_or_else(|| panic!("the form says {status:?}"))
        .to_owned();
    // A name no visitor can have is refused, and nothing is published.
    let status = pages.send(b, "nobody", "hello?").await;
    assert_eq!(status, "not sent: no visitor has that name");
    let status = pages.send(b, "", "bye").await;
    let bye = status
        .strip_prefix("sent, id ")
        .unwrap_or_else(|| panic!("the form says {status:?}"))
        .to_owned();

    let expected = [
        (
            a,
            vec![
                shown(&hi, "global", &alice, "hi all"),
                shown(&bye, "global", &bob, "bye"),
            ],
        ),
        (
            b,
            vec![
                shown(&hi, "global", &alice, "hi all"),
                shown(&psst, "private", &alice, "psst, bob"),
                shown(&bye, "global", &bob, "bye"),
            ],
        ),
    ];
    for (page, expected) in expected {
        let state = pages
            .wait_for(page, PAGE_PATIENCE, "bob's goodbye", |s| {
                s.events.iter().any(|e| e.id == bye)
            })
            .await;
        assert_eq!(state.events, expected, "page {page} ({})", state.name);
        assert_eq!(state.last_id, bye);
    }
    // The refused send's 400 is the only console error.
    assert!(
        pages
            .console_errors
            .iter()
            .all(|e| e.contains("status of 400")),
        "{:?}",
        pages.console_errors
    );
}

/// The example on Redis with a visitor's page open, one event from another visitor shown,
/// then the app killed (SIGKILL) and the page reconnecting.
struct Crashed {
    redis: RedisServer,
    secret: &'static str,
    /// Where the app listened, to start it again there.
    listen: String,
    pages: Pages,
    page: usize,
    /// The page's session id.
    session_id: String,
    sender: Sender,
    /// The id of the event shown before the crash.
    before: String,
}

impl Crashed {
    async fn after_one_event() -> Self {
        let redis = RedisServer::start();
        let secret = "the same secret across restarts";
        let mut app = ChatApp::start("127.0.0.1:0", Some(&redis.url()), secret);
        let listen = format!("127.0.0.1:{}", app.port);
        let mut pages = Pages::start();
        let (page, opened) = open_visitor(&mut pages, &app).await;
        let sender = Sender::visit(&app).await;
        let before = sender.send(&app, "", "before the crash").await;
        pages
            .wait_for(page, PAGE_PATIENCE, "the first event", |s| {
                s.last_id == before
            })
            .await;
        app.kill();
        pages
            .wait_for(page, PAGE_PATIENCE, "the page sees the app gone", |s| {
                s.state == "reconnecting"
            })
            .await;
        Crashed {
            redis,
            secret,
            listen,
            pages,
            page,
            session_id: opened.session_id,
            sender,
            before,
        }
    }

    /// The app started again where it was, with the same secret.
    fn restart(&self) -> ChatApp {
        ChatApp::start(&self.listen, Some(&self.redis.url()), self.secret)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_redis_the_page_resumes_after_the_app_is_killed_and_restarted() {
    let mut c = Crashed::after_one_event().await;
    let (page, sender, before) = (c.page, &c.sender, c.before.clone());
    // Meanwhile another process publishes (a worker of the application, straight into Redis).
    let worker =
        Publisher::redis_with_history(&c.redis.url(), HISTORY_SIZE).expect("a Redis publisher");
    let data = |text: &str| serde_json::json!({ "from": "a worker", "text": text }).to_string();
    let mut meanwhile = Vec::new();
    for (channel, kind, text) in [
        ("global".to_string(), "global", "while you were away"),
        (
            format!("visitor.{}", c.session_id),
            "private",
            "a private word",
        ),
        ("global".to_string(), "global", "and one more"),
    ] {
        let id = worker
            .publish(&channel, Event::new(kind, data(text)))
            .await
            .expect("publish into Redis");
        meanwhile.push(shown(&id.to_string(), kind, "a worker", text));
    }

    let app = c.restart();
    let last = meanwhile.last().unwrap().id.clone();
    let state = c
        .pages
        .wait_for(page, PAGE_PATIENCE, "the events published meanwhile", |s| {
            s.last_id == last
        })
        .await;
    assert_eq!(state.state, "open", "{state:#?}");
    // The sender's session survived the restart too (the same secret).
    let after = sender.send(&app, "", "after the restart").await;
    let state = c
        .pages
        .wait_for(page, PAGE_PATIENCE, "a live event after the restart", |s| {
            s.last_id == after
        })
        .await;
    let mut expected = vec![shown(&before, "global", &sender.name, "before the crash")];
    expected.extend(meanwhile);
    expected.push(shown(&after, "global", &sender.name, "after the restart"));
    assert_eq!(state.events, expected, "in order, each once");
    assert_eq!(state.state, "open");
    assert!(!state.missed, "nothing was lost: no missedevents notice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_says_when_events_it_missed_are_gone_from_history() {
    let mut c = Crashed::after_one_event().await;
    // More than the channel's history keeps: the oldest of them are gone.
    let worker =
        Publisher::redis_with_history(&c.redis.url(), HISTORY_SIZE).expect("a Redis publisher");
    let mut ids = Vec::new();
    for n in 0..HISTORY_SIZE + 5 {
        let data = serde_json::json!({ "from": "a worker", "text": format!("event {n}") });
        let id = worker
            .publish("global", Event::new("global", data.to_string()))
            .await
            .expect("publish into Redis");
        ids.push(id.to_string());
    }

    let _app = c.restart();
    let last = ids.last().unwrap().clone();
    let state = c
        .pages
        .wait_for(c.page, PAGE_PATIENCE, "the events retained", |s| {
            s.last_id == last
        })
        .await;
    assert!(state.missed, "the missedevents notice shows: {state:#?}");
    let shown_ids: Vec<&str> = state.events.iter().map(|e| e.id.as_str()).collect();
    let mut expected = vec![c.before.as_str()];
    expected.extend(ids[5..].iter().map(String::as_str));
    assert_eq!(shown_ids, expected, "the events history kept, in order");
    assert_eq!(state.state, "open");
}

/// Names are drawn from 23,040: among a few hundred sessions two share one (a certainty within
/// 3,000: the chance of none is below e^-190). The name grants nothing: each reads only its own
/// id's channel, and a message to the name goes to the one seen last.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_visitor_with_the_same_name_cannot_read_the_others_private_channel() {
    let app = ChatApp::start("127.0.0.1:0", None, "a test secret");
    let mut by_name = std::collections::HashMap::new();
    let (first, second) = loop {
        assert!(
            by_name.len() < 3000,
            "3,000 sessions and no two names alike"
        );
        let visitor = Sender::visit(&app).await;
        if let Some(earlier) = by_name.remove(&visitor.name) {
            break (earlier, visitor);
        }
        by_name.insert(visitor.name.clone(), visitor);
    };
    let name = first.name.clone();
    assert_eq!(second.name, name);
    assert_ne!(first.id, second.id, "one name, two sessions");

    // The second may not open the first's private channel, nor the first the second's.
    for (reader, other) in [(&second, &first), (&first, &second)] {
        let stream = reader.stream(&app, &format!("?visitor.{}", other.id)).await;
        assert_eq!(
            stream.status, 403,
            "{name} reading the other {name}'s channel"
        );
    }

    // Both open their own streams, the second last: a message to the name is the second's. (A
    // fresh stream starts with the `lastEventId` position once anything was published: then it
    // is subscribed. Or with `hello` itself, when the dispatcher offered it to the stream after
    // the stream had registered: an event offered live during the setup is new to the stream,
    // and no hint follows a replay. Either way it is subscribed.)
    let hello = first.send(&app, "", "hello").await;
    let started = |e: SseEvent| {
        assert!(
            e.event == "lastEventId" || (e.event == "global" && e.id.as_deref() == Some(&hello)),
            "a fresh stream's first event: {e:?}"
        );
    };
    let mut first_stream = first.stream(&app, "").await;
    assert_eq!(first_stream.status, 200);
    started(first_stream.next().await);
    let mut second_stream = second.stream(&app, "").await;
    assert_eq!(second_stream.status, 200);
    started(second_stream.next().await);
    let private = first.send(&app, &name, "to the latest of that name").await;
    let after = first.send(&app, "", "and to everyone").await;
    let got = second_stream.take(2).await;
    assert_eq!(
        got.iter()
            .map(|e| (e.id.as_deref().unwrap_or(""), e.event.as_str()))
            .collect::<Vec<_>>(),
        [(private.as_str(), "private"), (after.as_str(), "global")]
    );
    let got = first_stream.next().await;
    assert_eq!(
        (got.id.as_deref(), got.event.as_str()),
        (Some(after.as_str()), "global"),
        "the first got only the global message"
    );
}
