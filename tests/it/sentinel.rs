//! Redis through Sentinel (`redis_sentinel`, `--redis-sentinel --redis-master`): the primary
//! found by asking the sentinels, and a failover (the primary killed with SIGKILL, its replica
//! promoted) survived with no event lost that the new primary's history holds, and
//! `missedevents` for what it does not.

use std::sync::Arc;
use std::time::Duration;

use redisse::config::SentinelSettings;
use redisse::{Config, Event, Publisher};
use tokio::time::{Instant, sleep};

use crate::startup::fails_to_start;
use crate::support::binary::Redisse;
use crate::support::sentinel::{MASTER, SentinelSetup};
use crate::support::steps::id_of;
use crate::support::{PATIENCE, RedisServer, SseEvent, SseStream, TestServer};

fn config(setup: &SentinelSetup) -> Config {
    let mut config = Config::default();
    config.redis_sentinel = Some(SentinelSettings::new(setup.sentinel_list(), MASTER));
    config.redis_ping_interval = Duration::from_millis(500);
    config.redis_ping_timeout = Duration::from_millis(500);
    config
}

/// The history of `channel` on `redis`, as stored.
fn stored(redis: &RedisServer, channel: &str) -> Vec<String> {
    redis::cmd("ZRANGE")
        .arg(channel)
        .arg(0)
        .arg(-1)
        .query(&mut redis.con())
        .expect("ZRANGE")
}

/// The `data:` of each stored event.
fn data_of(stored: &[String]) -> Vec<&str> {
    stored
        .iter()
        .filter_map(|e| e.lines().find_map(|l| l.strip_prefix("data: ")))
        .collect()
}

/// Publishes `data` on `channel` with its own idempotency key, retrying while the broker
/// refuses (the primary is gone, or not yet found): a retry never publishes twice.
async fn publish_until_done(publisher: &Publisher, channel: &str, data: &str) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match publisher
            .publish_idempotent(channel, Event::new("m", data), &format!("k-{data}"))
            .await
        {
            Ok(p) => return p.id,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "publishing {data} still fails: {e}"
                );
                sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The `m` events of `stream` until `n` of them arrived, failing on a `missedevents`.
async fn take_events(stream: &mut SseStream, n: usize, wait: Duration) -> Vec<SseEvent> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match stream.next_within(left).await {
            crate::support::sse::Next::Event(e) if e.event == "m" => got.push(e),
            crate::support::sse::Next::Event(e) => {
                assert_ne!(e.event, "missedevents", "after {} events: {e:?}", got.len())
            }
            other => panic!("after {} of {n} events: {other:?}", got.len()),
        }
    }
    got
}

/// The data of the events of `before`, then of `after`.
fn data_in_order(before: &[SseEvent], after: &[SseEvent]) -> Vec<String> {
    before.iter().chain(after).map(|e| e.data.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_loses_no_event_that_history_holds() {
    let mut setup = SentinelSetup::start();
    let first_primary = setup.primary().port();
    let server = TestServer::start(config(&setup)).await;
    let mut stream = server.live_stream("/?a&b").await;
    for i in 0..10 {
        let channel = if i % 2 == 0 { "a" } else { "b" };
        publish_until_done(&server.redisse.publisher(), channel, &i.to_string()).await;
    }
    let before = take_events(&mut stream, 10, PATIENCE).await;
    setup.wait_synced();

    // Publishing goes on through the failover; the primary dies under it.
    let publishing = {
        let publisher = server.redisse.publisher();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 10..40 {
                let channel = if i % 2 == 0 { "a" } else { "b" };
                ids.push(publish_until_done(&publisher, channel, &i.to_string()).await);
                sleep(Duration::from_millis(100)).await;
            }
            ids
        })
    };
    sleep(Duration::from_millis(300)).await;
    let took = tokio::task::spawn_blocking(move || {
        let took = setup.kill_primary_and_wait_failover();
        (setup, took)
    });
    let (setup, took) = took.await.expect("failover");
    assert_ne!(setup.primary().port(), first_primary);
    let ids = publishing.await.expect("publisher");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in order: {ids:?}");

    let after = take_events(&mut stream, 30, Duration::from_secs(60)).await;
    let data = data_in_order(&before, &after);
    let expected: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    assert_eq!(
        data, expected,
        "every event once, in order (failover took {took:?})"
    );
    let seen: Vec<u64> = after.iter().map(id_of).collect();
    assert_eq!(
        seen, ids,
        "the ids the publisher was given, as the stream saw them"
    );

    // A client resuming from before the failover reads the rest from the new primary.
    let from = before[4].id.clone().expect("an id");
    let mut resumed = server.stream("/?a&b", &[("last-event-id", &from)]).await;
    let replay = take_events(&mut resumed, 35, PATIENCE).await;
    let replayed: Vec<String> = replay.iter().map(|e| e.data.clone()).collect();
    assert_eq!(replayed, expected[5..].to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_the_promoted_replica_never_got_are_missedevents() {
    let mut setup = SentinelSetup::start();
    let server = TestServer::start(config(&setup)).await;
    let mut stream = server.live_stream("/?a").await;
    for i in 0..5 {
        publish_until_done(&server.redisse.publisher(), "a", &i.to_string()).await;
    }
    take_events(&mut stream, 5, PATIENCE).await;
    setup.wait_synced();
    // The replica stops for a moment (shorter than the sentinels' down-after) and the primary
    // drops its link (what it already sent waits in the replica's socket), then acknowledges
    // three more events it will never pass on.
    setup.replica().freeze();
    let dropped: i64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("replica")
        .query(&mut setup.primary().con())
        .expect("CLIENT KILL TYPE replica");
    assert_eq!(dropped, 1, "the replica's link");
    let mut acknowledged_last = 0;
    for i in 5..8 {
        acknowledged_last =
            publish_until_done(&server.redisse.publisher(), "a", &i.to_string()).await;
    }
    take_events(&mut stream, 3, PATIENCE).await;
    setup.kill_primary();
    setup.replica().unfreeze();
    let _setup = tokio::task::spawn_blocking(move || {
        setup.wait_failover();
        setup
    })
    .await
    .expect("failover");
    // The stream is told that events may be lost, then gets every event the new primary
    // holds (as after any data loss, docs/history.md), then what comes next.
    match stream.next_within(Duration::from_secs(60)).await {
        crate::support::sse::Next::Event(e) if e.event == "missedevents" => {}
        crate::support::sse::Next::Event(e) => panic!("before missedevents: {e:?}"),
        other => panic!("no missedevents: {other:?}"),
    }
    let retained = take_events(&mut stream, 5, PATIENCE).await;
    let retained: Vec<&str> = retained.iter().map(|e| e.data.as_str()).collect();
    assert_eq!(retained, ["0", "1", "2", "3", "4"], "what the replica had");
    let id = publish_until_done(&server.redisse.publisher(), "a", "after").await;
    let next = take_events(&mut stream, 1, PATIENCE).await;
    assert_eq!(next[0].data, "after");
    assert_eq!(next[0].id.as_deref(), Some(id.to_string().as_str()));
    // Ids never go backwards: the lost events' ids are not given again.
    assert!(id > acknowledged_last, "{id} after {acknowledged_last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_finds_the_primary_through_sentinel_and_names_an_unknown_one() {
    let setup = SentinelSetup::start();
    let urls = setup.sentinel_urls();
    let redisse = Redisse::start(&["--redis-sentinel", &urls, "--redis-master", MASTER]);
    let id = redisse.publish_event("news", None, "hello").await;
    let stored = stored(setup.primary(), "news");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(
        stored[0].starts_with(&format!("id: {id}\n")) && stored[0].contains("data: hello\n"),
        "{stored:?}"
    );
    assert!(
        redisse
            .log()
            .contains("redis primary found through Sentinel"),
        "{}",
        redisse.log()
    );

    // A name no sentinel knows: refused once the wait is over, saying why.
    let stderr = fails_to_start(&[
        "--redis-sentinel",
        &urls,
        "--redis-master",
        "nosuch",
        "--redis-connect-timeout",
        "1",
    ])
    .await;
    assert!(
        stderr.contains("no sentinel names that primary"),
        "{stderr}"
    );
    assert!(stderr.contains("nosuch"), "{stderr}");
    // Both ways to name Redis at once, or a sentinel without the primary's name: refused.
    let both = crate::auth_support::fails_to_start(&[
        "--redis-sentinel",
        &urls,
        "--redis-master",
        MASTER,
        "--redis",
        "redis://127.0.0.1:1/",
    ])
    .await;
    assert!(both.contains("--redis"), "{both}");
    let nameless = crate::auth_support::fails_to_start(&["--redis-sentinel", &urls]).await;
    assert!(nameless.contains("--redis-master"), "{nameless}");
}

/// The Rust publisher through Sentinel follows a failover, then a switch-over that leaves the
/// old primary up as a replica (which refuses writes): with retries under idempotency keys,
/// every event lands once, in order, in the last primary's history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_through_sentinel_follows_a_failover_and_a_switch_over() {
    let mut setup = SentinelSetup::start();
    let publisher =
        Publisher::redis_sentinel(&setup.sentinel_list(), MASTER, 100).expect("a publisher");
    let mut ids = vec![publish_until_done(&publisher, "p", "0").await];
    setup.wait_synced();
    setup = tokio::task::spawn_blocking(move || {
        setup.kill_primary_and_wait_failover();
        setup
    })
    .await
    .expect("failover");
    ids.push(publish_until_done(&publisher, "p", "1").await);
    setup = tokio::task::spawn_blocking(move || {
        setup.restart_old_primary();
        setup.switch_over();
        setup
    })
    .await
    .expect("switch-over");
    // The publisher's connection is to the demoted primary, which is up and a replica now.
    ids.push(publish_until_done(&publisher, "p", "2").await);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    let stored = stored(setup.primary(), "p");
    let data = data_of(&stored);
    assert_eq!(data, ["0", "1", "2"], "{stored:?}");
}

/// A switch-over (`SENTINEL FAILOVER`) under a server: the old primary stays up, accepting
/// writes until the sentinels demote it. Within a second of the sentinels naming the new one
/// (`primary::RECHECK`), the server writes there and its subscriber moves there, and every event
/// published through it reaches the stream once. (A write in that second may still go to the
/// old primary and be lost when it is demoted: the server then says `missedevents`, as
/// `writes_the_promoted_replica_never_got_are_missedevents` shows for a failover.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_over_moves_the_server_to_the_new_primary() {
    let mut setup = SentinelSetup::start();
    let server = TestServer::start(config(&setup)).await;
    let mut stream = server.live_stream("/?a").await;
    publish_until_done(&server.redisse.publisher(), "a", "0").await;
    setup.wait_synced();
    let setup = tokio::task::spawn_blocking(move || {
        setup.switch_over();
        setup
    })
    .await
    .expect("switch-over");
    sleep(Duration::from_millis(1100)).await;
    for i in 1..6 {
        publish_until_done(&server.redisse.publisher(), "a", &i.to_string()).await;
        sleep(Duration::from_millis(200)).await;
    }
    let got: Vec<String> = take_events(&mut stream, 6, Duration::from_secs(30))
        .await
        .into_iter()
        .map(|e| e.data)
        .collect();
    assert_eq!(got, ["0", "1", "2", "3", "4", "5"]);
    stream.expect_silence(Duration::from_millis(300)).await;
    let stored = stored(setup.primary(), "a");
    assert_eq!(
        stored.len(),
        6,
        "the new primary holds every event: {stored:?}"
    );
}

/// `redisse publish` with `args`, without the environment's Redis settings: its exit status,
/// standard output and standard error.
async fn cli(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_redisse"))
            .arg("publish")
            .args(args)
            .env_remove("REDISSE_REDIS")
            .env_remove("REDISSE_REDIS_SENTINEL")
            .env_remove("REDISSE_REDIS_MASTER")
            .env_remove("REDISSE_SERVER")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("redisse publish {args:?} did not exit"))
    .expect("run redisse publish");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redisse_publish_writes_to_the_primary_sentinel_names() {
    let setup = SentinelSetup::start();
    let urls = setup.sentinel_urls();
    let (ok, stdout, stderr) = cli(&[
        "news",
        "hello",
        "--redis-sentinel",
        &urls,
        "--redis-master",
        MASTER,
        "--idempotency-key",
        "k1",
    ])
    .await;
    assert!(ok, "{stderr}");
    let id: u64 = stdout.trim().parse().expect("an id");
    let stored = stored(setup.primary(), "news");
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with(&format!("id: {id}\n")), "{stored:?}");

    // Without the primary's name, or with another way to publish on the line: refused.
    let (ok, _, stderr) = cli(&["news", "x", "--redis-sentinel", &urls]).await;
    assert!(!ok && stderr.contains("--redis-master"), "{stderr}");
    let (ok, _, stderr) = cli(&[
        "news",
        "x",
        "--redis-sentinel",
        &urls,
        "--redis-master",
        MASTER,
        "--redis",
        "redis://127.0.0.1:1/",
    ])
    .await;
    assert!(!ok && stderr.contains("one at a time"), "{stderr}");
    let (ok, _, stderr) = cli(&["news", "x", "--redis-master", MASTER]).await;
    assert!(!ok && stderr.contains("--redis-sentinel"), "{stderr}");
    let stored: i64 = redis::cmd("ZCARD")
        .arg("news")
        .query(&mut setup.primary().con())
        .expect("ZCARD");
    assert_eq!(stored, 1, "a refused publish wrote nothing");
}

/// Publishes `data` on `channel` through `process`'s internal listener with an idempotency
/// key, retrying while it answers 503 (the primary is being replaced); the id.
pub(crate) async fn publish_through(process: &Redisse, channel: &str, data: &str) -> u64 {
    let url = process.internal_url(&format!("/publish/{channel}?type=m"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = crate::support::sse::client()
            .post(&url)
            .header("idempotency-key", format!("h-{data}"))
            .body(data.to_owned())
            .send()
            .await;
        if let Ok(res) = res {
            let status = res.status().as_u16();
            let body = res.text().await.unwrap_or_default();
            if status == 200 {
                let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
                return v["id"].as_u64().expect("an id");
            }
            assert_eq!(status, 503, "publish {data}: {body}");
        }
        assert!(Instant::now() < deadline, "publishing {data} still fails");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Three processes on the primary Sentinel names, a stream on each and publishers on all
/// three, through a failover: every stream gets every acknowledged event once, in id order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_ride_out_a_failover_together() {
    let mut setup = SentinelSetup::start();
    let urls = setup.sentinel_urls();
    let args = ["--redis-sentinel", urls.as_str(), "--redis-master", MASTER];
    let processes: Vec<Redisse> = (0..3).map(|_| Redisse::start(&args)).collect();
    publish_through(&processes[0], "warm", "w").await;
    let mut streams = Vec::new();
    for p in &processes {
        let mut s = SseStream::open(&p.url("/?a&b"), &[]).await;
        assert_eq!(s.next().await.event, "lastEventId");
        streams.push(s);
    }
    let processes = Arc::new(processes);
    let publishing = {
        let processes = processes.clone();
        tokio::spawn(async move {
            let mut published = Vec::new();
            for i in 0..45 {
                let channel = ["a", "b"][i % 2];
                let id = publish_through(&processes[i % 3], channel, &format!("e{i}")).await;
                published.push((id, format!("e{i}")));
                sleep(Duration::from_millis(60)).await;
            }
            published
        })
    };
    sleep(Duration::from_millis(600)).await;
    setup.wait_synced();
    let _setup = tokio::task::spawn_blocking(move || {
        setup.kill_primary_and_wait_failover();
        setup
    })
    .await
    .expect("failover");
    let mut published = publishing.await.expect("publishers");
    published.sort();
    let want: Vec<String> = published.iter().map(|(_, d)| d.clone()).collect();
    for (i, s) in streams.iter_mut().enumerate() {
        let got = take_events(s, want.len(), Duration::from_secs(60)).await;
        let ids: Vec<u64> = got.iter().map(id_of).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "process {i}: {ids:?}");
        let data: Vec<String> = got.into_iter().map(|e| e.data).collect();
        assert_eq!(data, want, "process {i}");
        s.expect_silence(Duration::from_millis(300)).await;
    }
}

/// A sentinel on a host that is gone: a listener whose queue is full and that never accepts,
/// so that the kernel drops new connections' SYNs and a client waits out its connect timeout.
/// Its URL, and what must live as long as it is used.
async fn gone_sentinel() -> (String, GoneHost) {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind("127.0.0.1:0".parse().expect("an address"))
        .expect("bind");
    let listener = socket.listen(0).expect("listen");
    let addr = listener.local_addr().expect("its port");
    let mut queued = Vec::new();
    while let Ok(Ok(c)) = tokio::time::timeout(
        Duration::from_millis(300),
        tokio::net::TcpStream::connect(addr),
    )
    .await
    {
        queued.push(c);
    }
    (format!("redis://{addr}/"), (listener, queued))
}

/// The listener of [`gone_sentinel`] and the connections that fill its queue.
type GoneHost = (tokio::net::TcpListener, Vec<tokio::net::TcpStream>);

/// Sentinels that do not answer (their hosts gone) listed before the ones that do: the Rust
/// publisher, which has no subscriber to find the primary for it, still finds it through the
/// others, and follows a failover there. The client passes over three sentinels that do not
/// answer in its connect timeout (1 s: it asks three at once), so a command must wait longer
/// than that for the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_finds_and_follows_the_primary_past_sentinels_that_do_not_answer() {
    let mut setup = SentinelSetup::start();
    let mut sentinels = Vec::new();
    let mut gone = Vec::new();
    for _ in 0..3 {
        let (url, held) = gone_sentinel().await;
        sentinels.push(url);
        gone.push(held);
    }
    sentinels.extend(setup.sentinel_list());
    let publisher = Publisher::redis_sentinel(&sentinels, MASTER, 100).expect("a publisher");
    // The first publishes: the first waits for the primary to be found.
    let mut refused = Vec::new();
    for i in 0..3 {
        if let Err(e) = publisher.publish("q", Event::message(i.to_string())).await {
            refused.push(e.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "publishes refused past sentinels that do not answer: {refused:?}"
    );
    setup.wait_synced();
    setup = tokio::task::spawn_blocking(move || {
        setup.kill_primary_and_wait_failover();
        setup
    })
    .await
    .expect("failover");
    // The primary is gone: publishes are refused until the publisher has asked the sentinels.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let last = match publisher
            .publish_idempotent("q", Event::message("after"), "q-after")
            .await
        {
            Ok(_) => break,
            Err(e) => e.to_string(),
        };
        assert!(
            Instant::now() < deadline,
            "no publish to the promoted replica within 30 s: {last}"
        );
        sleep(Duration::from_millis(100)).await;
    }
    let stored = stored(setup.primary(), "q");
    let data = data_of(&stored);
    assert_eq!(data, ["0", "1", "2", "after"], "{stored:?}");
    drop(gone);
}

/// Sentinels and servers on TLS only for redisse (a private CA, `--redis-tls-ca`): the primary
/// is found through `rediss://` sentinels and reached over TLS, by the embedded server, the
/// binary, the library's publisher and `redisse publish`; a failover to the TLS replica loses
/// nothing. Without the CA, the publisher cannot reach the primary and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_private_ca_the_primary_is_found_and_a_failover_loses_nothing() {
    let pki = crate::redis_tls::Pki::new();
    let mut setup = SentinelSetup::start_tls(pki.files());
    let sentinels = setup.sentinel_list();
    assert!(
        sentinels.iter().all(|s| s.starts_with("rediss://")),
        "{sentinels:?}"
    );
    let master = format!("rediss://{MASTER}");
    let mut config = config(&setup);
    config.redis_sentinel = Some(SentinelSettings::new(sentinels.clone(), master.as_str()));
    config.redis_tls_ca = Some(pki.path("ca.pem"));
    let server = TestServer::start(config).await;
    let mut stream = server.live_stream("/?a").await;
    for i in 0..5 {
        publish_until_done(&server.redisse.publisher(), "a", &i.to_string()).await;
    }
    let before = take_events(&mut stream, 5, PATIENCE).await;

    // Without the CA the sentinels' certificates are not trusted: nothing is published (the
    // primary's alone: `plain_sentinels_and_a_tls_primary_check_the_primary_against_the_ca`).
    let untrusting = Publisher::redis_sentinel(&sentinels, &master, 100).expect("a publisher");
    let refused = untrusting.publish("a", Event::new("m", "never")).await;
    assert!(refused.is_err(), "published without the CA: {refused:?}");

    // The failover, with the TLS replica promoted.
    setup.wait_synced();
    let first_primary = setup.primary().port();
    let setup = tokio::task::spawn_blocking(move || {
        setup.kill_primary_and_wait_failover();
        setup
    })
    .await
    .expect("failover");
    assert_ne!(setup.primary().port(), first_primary);
    for i in 5..8 {
        publish_until_done(&server.redisse.publisher(), "a", &i.to_string()).await;
    }
    // The library's publisher and the command line, both trusting the CA.
    let publisher =
        Publisher::redis_sentinel_with_tls_ca(&sentinels, &master, 100, Some(&pki.path("ca.pem")))
            .expect("a TLS publisher through Sentinel");
    publish_until_done(&publisher, "a", "8").await;
    // The options the command line and the binary take alike.
    let (urls, ca) = (setup.sentinel_urls(), pki.ca());
    let options = [
        "--redis-sentinel",
        urls.as_str(),
        "--redis-master",
        master.as_str(),
        "--redis-tls-ca",
        ca.as_str(),
    ];
    let mut args = vec!["a", "9", "-t", "m"];
    args.extend(options);
    let (ok, stdout, stderr) = cli(&args).await;
    assert!(ok, "redisse publish over TLS sentinels: {stderr}");
    let after = take_events(&mut stream, 5, Duration::from_secs(60)).await;
    let data = data_in_order(&before, &after);
    let expected: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(
        data, expected,
        "every event once, in order, across the failover"
    );
    assert_eq!(
        after.last().and_then(|e| e.id.clone()),
        Some(stdout.trim().to_owned())
    );

    // The binary, on the same settings from its command line.
    let binary = Redisse::start(&options);
    binary.health_becomes(200).await;
    let from = before[0].id.clone().expect("an id");
    let mut s = SseStream::open(&binary.url("/?a"), &[("last-event-id", &from)]).await;
    assert_eq!(s.status, 200);
    let replayed = take_events(&mut s, 9, PATIENCE).await;
    let replayed: Vec<String> = replayed.iter().map(|e| e.data.clone()).collect();
    assert_eq!(
        replayed,
        expected[1..],
        "the binary reads the history over TLS"
    );
}

/// Over TLS with a private CA, the primary's URL carries its ACL user, password and
/// database (`rediss://alice:pw@NAME/3`): the publisher's connection to the primary is made as
/// alice, on database 3 (the SentinelClient path copies them from the URL), and a wrong
/// password is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_ca_the_primary_urls_user_password_and_database_are_used() {
    let pki = crate::redis_tls::Pki::new();
    let setup = SentinelSetup::start_tls(pki.files());
    for server in [setup.primary(), setup.replica()] {
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "alice", "on", ">pw", "~*", "&*", "+@all"])
            .query(&mut server.con())
            .expect("ACL SETUSER");
    }
    let sentinels = setup.sentinel_list();
    let ca = pki.path("ca.pem");
    let wrong = Publisher::redis_sentinel_with_tls_ca(
        &sentinels,
        &format!("rediss://alice:wrong@{MASTER}/3"),
        100,
        Some(&ca),
    )
    .expect("a publisher");
    let refused = wrong.publish("a", Event::new("m", "never")).await;
    assert!(
        refused.is_err(),
        "published with a wrong password: {refused:?}"
    );
    let publisher = Publisher::redis_sentinel_with_tls_ca(
        &sentinels,
        &format!("rediss://alice:pw@{MASTER}/3"),
        100,
        Some(&ca),
    )
    .expect("a publisher");
    publish_until_done(&publisher, "a", "1").await;
    let clients: String = redis::cmd("CLIENT")
        .arg("LIST")
        .query(&mut setup.primary().con())
        .expect("CLIENT LIST");
    assert!(
        clients
            .lines()
            .any(|l| l.contains(" user=alice ") && l.contains(" db=3 ")),
        "{clients}"
    );
}

/// Plain sentinels and a TLS primary (`redis://` sentinels, `rediss://NAME`): the CA
/// is what the primary's certificate is checked against (without it, nothing is published).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_sentinels_and_a_tls_primary_check_the_primary_against_the_ca() {
    let pki = crate::redis_tls::Pki::new();
    let setup = SentinelSetup::start_tls(pki.files());
    let sentinels = setup.plain_sentinel_list();
    let master = format!("rediss://{MASTER}");
    let untrusting = Publisher::redis_sentinel(&sentinels, &master, 100).expect("a publisher");
    let refused = untrusting.publish("a", Event::new("m", "never")).await;
    assert!(refused.is_err(), "published without the CA: {refused:?}");
    let publisher =
        Publisher::redis_sentinel_with_tls_ca(&sentinels, &master, 100, Some(&pki.path("ca.pem")))
            .expect("a publisher");
    publish_until_done(&publisher, "a", "1").await;
    assert_eq!(data_of(&stored(setup.primary(), "a")), ["1"]);
}
