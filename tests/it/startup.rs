//! Misconfiguration fails loudly: the binary checks what it can before it listens, waits a
//! bounded time (`--redis-connect-timeout`) for Redis to answer a PING, and otherwise exits
//! non-zero with one line naming the cause (host not resolved, connection refused, wrong
//! password, not a Redis server, no answer), never a password, and never a "listening" line
//! first. Once started, a Redis outage is survived (here with the binary; the library's outage
//! behaviour is tests/it/outage.rs).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::support::binary::{LOOPBACK, Redisse};
use crate::support::sse::client;
use crate::support::{PATIENCE, RedisServer};

/// Runs the binary on free ports with `args`, which must make it fail; returns its standard
/// error after checking the exit status, that nothing listened, and that it says why in one
/// line.
pub(crate) async fn fails_to_start(args: &[&str]) -> String {
    let started = Instant::now();
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(LOOPBACK)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("REDISSE_REDIS")
            .env_remove("REDISSE_REDIS_CONNECT_TIMEOUT")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("redisse {args:?} did not exit within {PATIENCE:?}"))
    .expect("run the redisse binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && out.status.code().is_some(),
        "{args:?}: exit {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("listening"),
        "{args:?}: logged listening before failing:\n{stderr}"
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{args:?}: not one line:\n{stderr}");
    assert!(lines[0].starts_with("redisse: "), "{args:?}: {stderr}");
    eprintln!("{args:?}: exited after {:?}: {stderr}", started.elapsed());
    stderr
}

/// A loopback port nothing listens on (bound, then released).
fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A TCP server on loopback that answers every connection with `reply` (after reading what
/// the client sent first) and closes it, or with `None` accepts and never answers. Runs until
/// the test process ends.
fn fake_server(reply: Option<&'static [u8]>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut con in listener.incoming().map_while(Result::ok) {
            match reply {
                Some(reply) => {
                    let mut buf = [0u8; 1024];
                    let _ = con.read(&mut buf);
                    let _ = con.write_all(reply);
                }
                None => held.push(con),
            }
        }
    });
    port
}

#[tokio::test]
async fn an_unresolvable_redis_host_stops_the_start() {
    let err = fails_to_start(&[
        "--redis",
        "redis://:hunter2@redisse-test-host.invalid:6379/",
        "--redis-connect-timeout",
        "1s",
    ])
    .await;
    assert!(err.contains("cannot resolve"), "{err}");
    assert!(err.contains("redisse-test-host.invalid"), "{err}");
    assert!(!err.contains("hunter2"), "a password in the message: {err}");
}

#[tokio::test]
async fn a_refused_redis_port_stops_the_start_after_the_connect_timeout() {
    let port = closed_port();
    let url = format!("redis://:hunter2@127.0.0.1:{port}/");
    let started = Instant::now();
    let err = fails_to_start(&["--redis", &url, "--redis-connect-timeout", "1s"]).await;
    assert!(err.contains("connection refused"), "{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("--redis-connect-timeout"), "{err}");
    assert!(!err.contains("hunter2"), "a password in the message: {err}");
    // It waited for Redis (retrying) before giving up, and not much longer.
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_wrong_or_missing_redis_password_stops_the_start() {
    let redis = RedisServer::start();
    // Set once the harness has checked the server is ours (it connects without a password).
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("r1ght-pw")
        .query(&mut redis.con())
        .expect("CONFIG SET requirepass");
    let port = redis.port();
    for (url, code) in [
        (format!("redis://:wr0ng-pw@127.0.0.1:{port}/"), "WRONGPASS"),
        (
            format!("redis://alice:wr0ng-pw@127.0.0.1:{port}/"),
            "WRONGPASS",
        ),
        (format!("redis://127.0.0.1:{port}/"), "NOAUTH"),
    ] {
        let started = Instant::now();
        let err = fails_to_start(&["--redis", &url]).await;
        assert!(err.contains("authentication failed"), "{err}");
        assert!(err.contains(code), "{err}");
        assert!(
            !err.contains("wr0ng-pw"),
            "a password in the message: {err}"
        );
        // A wrong password is not worth waiting for.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}

#[tokio::test]
async fn a_port_that_is_not_redis_stops_the_start() {
    let port = fake_server(Some(
        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
    ));
    let started = Instant::now();
    let err = fails_to_start(&["--redis", &format!("redis://127.0.0.1:{port}/")]).await;
    assert!(err.contains("not a Redis server"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_redis_that_never_answers_stops_the_start_at_the_timeout() {
    let port = fake_server(None);
    let started = Instant::now();
    let err = fails_to_start(&[
        "--redis",
        &format!("redis://127.0.0.1:{port}/"),
        "--redis-connect-timeout",
        "1s",
    ])
    .await;
    assert!(err.contains("no answer"), "{err}");
    assert!(err.contains("--redis-connect-timeout"), "{err}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}

#[tokio::test]
async fn an_invalid_redis_url_stops_the_start() {
    let err = fails_to_start(&["--redis", "http://127.0.0.1:6379/"]).await;
    assert!(err.contains("invalid redis URL"), "{err}");
}

#[tokio::test]
async fn an_unwritable_pid_file_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("no-such-dir").join("redisse.pid");
    let err = fails_to_start(&["--pid", &pid.display().to_string()]).await;
    assert!(err.contains("cannot write the pid file"), "{err}");
}

/// A second instance given the same pid file that cannot start (its port is taken) leaves the
/// running instance's pid file as it was; the running one removes it when it ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_that_fails_leaves_the_pid_file_of_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("redisse.pid");
    let pid_arg = pid.display().to_string();
    let mut first = Redisse::start(&["--pid", &pid_arg]);
    let written = std::fs::read_to_string(&pid).expect("the pid file");
    assert_eq!(written.trim(), first.pid().to_string());
    let port = first.port.to_string();
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &port,
                "--internal-address",
                "127.0.0.1:0",
            ])
            .args(["--pid", &pid_arg])
            .env("NO_COLOR", "1")
            .output(),
    )
    .await
    .expect("the second instance exits")
    .expect("run the binary");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot listen"));
    let after = std::fs::read_to_string(&pid).expect("the pid file is still there");
    assert_eq!(after, written, "the first instance's pid file was changed");
    first.signal("-TERM");
    assert!(
        first.exit_within(PATIENCE).is_some(),
        "the first instance exits"
    );
    assert!(!pid.exists(), "removed by the instance that wrote it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_comes_up_within_the_timeout_is_waited_for() {
    let mut redis = RedisServer::start();
    redis.stop();
    let url = redis.url();
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        redis.start_again();
        redis
    });
    let started = Instant::now();
    let server = tokio::task::spawn_blocking(move || {
        Redisse::start(&["--redis", &url, "--redis-connect-timeout", "8s"])
    })
    .await
    .unwrap();
    let _redis = starter.join().unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "listened before Redis was up: {:?}",
        started.elapsed()
    );
    server.health_becomes(200).await;
    assert!(!server.log().contains("cannot connect"), "{}", server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_connect_timeout_starts_without_waiting_for_redis() {
    let url = format!("redis://127.0.0.1:{}/", closed_port());
    let mut server = tokio::task::spawn_blocking(move || {
        Redisse::start(&["--redis", &url, "--redis-connect-timeout", "0"])
    })
    .await
    .unwrap();
    server.health_becomes(503).await;
    let livez = client().get(server.url("/livez")).send().await.unwrap();
    assert_eq!(livez.status(), 200);
    assert_eq!(server.exit_within(Duration::from_millis(300)), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_started_a_redis_outage_is_survived() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut server = tokio::task::spawn_blocking(move || Redisse::start(&["--redis", &url]))
        .await
        .unwrap();
    server.health_becomes(200).await;
    redis.stop();
    server.health_becomes(503).await;
    let livez = client().get(server.url("/livez")).send().await.unwrap();
    assert_eq!(livez.status(), 200);
    assert_eq!(server.exit_within(Duration::from_millis(300)), None);
    redis.start_again();
    server.health_becomes(200).await;
}

/// A Redis Cluster node answers PING but would refuse every publish of the gem's layout
/// (CROSSSLOT): with `--redis`, the start says so instead (pointing to `--redis-cluster`), for a lone cluster-enabled node and for any node of a real cluster (three
/// primaries, three replicas), whose channels land on different primaries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_node_stops_the_start_saying_cluster_is_not_supported() {
    let node = RedisServer::start_cluster_node();
    let err = fails_to_start(&["--redis", &node.url()]).await;
    assert!(err.contains("a Redis Cluster node"), "{err}");
    assert!(err.contains("--redis-cluster"), "{err}");

    let cluster = tokio::task::spawn_blocking(crate::support::cluster::Cluster::start)
        .await
        .expect("a cluster");
    let shards: std::collections::HashSet<u16> = ["news", "chat", "orders", "alerts", "a", "b"]
        .iter()
        .map(|c| cluster.primary_of(cluster.slot(c)))
        .collect();
    assert!(
        shards.len() > 1,
        "the channels all on one primary: {shards:?}"
    );
    for i in [0, 5] {
        let err = fails_to_start(&["--redis", &cluster.node_url(i)]).await;
        assert!(err.contains("a Redis Cluster node"), "node {i}: {err}");
    }
}
