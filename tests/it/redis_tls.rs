//! Redis over TLS and with ACL users (docs/redis-layout.md): the binary and `redisse publish` reach
//! a `redis-server --tls-port` whose certificate comes from a CA the test makes (`--redis-tls-ca`),
//! refuse a server signed by another CA without panicking, log in as an ACL user, and never write a
//! password to their logs, not even when it is wrong.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redisse::{Config, Event, PublishError, Publisher, Redisse as Instance};
use tokio::process::Command;

use crate::support::binary::{LOOPBACK, Redisse};
use crate::support::redis::TlsFiles;
use crate::support::sse::client;
use crate::support::{PATIENCE, RedisServer, SseStream, TestServer};

/// A CA and a certificate it signed for 127.0.0.1, as PEM files (`ca.pem`, `cert.pem`,
/// `key.pem`) in a temp dir.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    pub(crate) fn new() -> Self {
        Pki::for_names(&["127.0.0.1", "localhost"])
    }

    /// [`Pki::new`] with a server certificate valid for `names` alone.
    pub(crate) fn for_names(names: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = rcgen::KeyPair::generate().expect("CA key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "redisse test CA");
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).expect("CA certificate");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let key = rcgen::KeyPair::generate().expect("server key");
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &issuer).expect("server certificate");
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
        Pki { dir }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn ca(&self) -> String {
        self.path("ca.pem").display().to_string()
    }

    pub(crate) fn files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.path("cert.pem"),
            key: self.path("key.pem"),
            ca: self.path("ca.pem"),
        }
    }
}

/// A `redis-server` on a TLS port only, with a certificate from `pki`'s CA.
fn tls_redis(pki: &Pki) -> RedisServer {
    RedisServer::start_with(&[], Some(pki.files()))
}

/// Runs `redisse ARGS` to its end: (success, stdout, stderr).
async fn run(args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        PATIENCE,
        Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("REDISSE_REDIS")
            .env_remove("REDISSE_SERVER")
            .env_remove("REDISSE_REDIS_TLS_CA")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("redisse exits in time")
    .expect("run the redisse binary");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `redisse publish` that must succeed; returns the printed id.
async fn cli_publish(args: &[&str]) -> u64 {
    let (ok, stdout, stderr) = run(args).await;
    assert!(ok, "redisse {args:?} failed: {stderr}");
    stdout
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {stdout:?}"))
}

/// Waits for a log line of `server` containing every one of `words`; returns it.
async fn log_line(server: &Redisse, words: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let log = server.log();
        if let Some(line) = log.lines().find(|l| words.iter().all(|w| l.contains(w))) {
            return line.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no log line with {words:?}; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the binary, which must fail to start (the startup check, tests/it/startup.rs): its
/// standard error, checked to name no listener.
async fn start_fails(args: &[&str]) -> String {
    let mut all = LOOPBACK.to_vec();
    all.extend_from_slice(args);
    let (ok, _, stderr) = run(&all).await;
    assert!(!ok, "{args:?} started");
    assert!(stderr.starts_with("redisse: cannot start: "), "{stderr}");
    assert!(!stderr.contains("listening"), "{stderr}");
    stderr
}

/// The process is still running and nothing panicked.
fn alive_without_panic(server: &mut Redisse) {
    assert_eq!(
        server.exit_within(Duration::ZERO),
        None,
        "redisse exited; log:\n{}",
        server.log()
    );
    assert!(!server.log().contains("panicked"), "{}", server.log());
}

/// A live stream on `channels` of the binary: a warm-up event published through it makes the
/// counter exist, so the stream's first event is `lastEventId`.
async fn live_stream(server: &Redisse, channels: &str) -> SseStream {
    server.publish("test.warmup", String::new()).await;
    let mut s = SseStream::open(&server.url(&format!("/?{channels}")), &[]).await;
    assert_eq!(s.status, 200);
    assert_eq!(s.next().await.event, "lastEventId");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_and_the_cli_speak_tls_to_redis_with_a_private_ca() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let url = redis.url();
    assert!(url.starts_with("rediss://"), "{url}");
    let ca = pki.ca();
    let mut server = Redisse::start(&["--redis", &url, "--redis-tls-ca", &ca]);
    let first = log_line(&server, &["listening"]).await;
    assert!(
        first.contains(&format!("Redis rediss://127.0.0.1:{}/0", redis.port())),
        "{first}"
    );
    server.health_becomes(200).await;
    let mut s = live_stream(&server, "global").await;

    // `redisse publish` straight to Redis over TLS.
    let id = cli_publish(&[
        "publish",
        "global",
        "via the cli",
        "--redis",
        &url,
        "--redis-tls-ca",
        &ca,
    ])
    .await;
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some(id.to_string()), "via the cli")
    );
    // The same with the CA from the environment.
    let (ok, stdout, stderr) = {
        let out = Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args(["publish", "global", "via the environment", "--redis", &url])
            .env("REDISSE_REDIS_TLS_CA", &ca)
            .env_remove("REDISSE_SERVER")
            .output()
            .await
            .expect("run redisse publish");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert!(ok, "{stderr}");
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some(stdout.trim().to_owned()), "via the environment")
    );
    // The library's publisher, in this process.
    let publisher = Publisher::redis_with_tls_ca(&url, 100, Some(&pki.path("ca.pem")))
        .expect("a TLS publisher");
    let id = publisher
        .publish("global", Event::message("via the library"))
        .await
        .expect("publish over TLS");
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some(id.to_string()), "via the library")
    );
    // And through the server's POST /publish, which writes to the same Redis over TLS.
    server.publish("global", "via the server".into()).await;
    assert_eq!(s.next().await.data, "via the server");
    alive_without_panic(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_instance_speaks_tls_with_config_redis_tls_ca() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let mut config = Config::default();
    config.redis_url = Some(redis.url());
    config.redis_tls_ca = Some(pki.path("ca.pem"));
    let server = TestServer::start(config).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !server.redisse.is_broker_up() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis over TLS never up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut s = server.live_stream("/?news").await;
    let id = server
        .redisse
        .publisher()
        .publish("news", Event::message("tls"))
        .await
        .expect("publish");
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), "tls"));
}

#[tokio::test]
async fn the_library_refuses_an_unusable_ca_and_fails_without_panicking_on_an_unknown_one() {
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let mut config = Config::default();
    config.redis_url = Some(redis.url());
    config.redis_tls_ca = Some(garbage.clone());
    match Instance::new(config.clone()) {
        Err(redisse::Error::InvalidConfig(e)) => assert!(e.contains("redis_tls_ca"), "{e}"),
        other => panic!("not refused: {other:?}"),
    }
    config.redis_url = Some("redis://127.0.0.1:1/".into());
    config.redis_tls_ca = Some(pki.path("ca.pem"));
    match Instance::new(config) {
        Err(redisse::Error::InvalidConfig(e)) => assert!(e.contains("rediss://"), "{e}"),
        other => panic!("not refused: {other:?}"),
    }
    match Publisher::redis_with_tls_ca(&redis.url(), 100, Some(&garbage)) {
        Err(PublishError::InvalidConfig(e)) => assert!(e.contains("no certificate"), "{e}"),
        other => panic!("not refused: {other:?}"),
    }
    // Without a CA the system's roots are trusted, which do not know the test CA: publishing
    // fails, it does not panic (rustls has its crypto provider).
    let publisher = Publisher::redis(&redis.url()).expect("a publisher");
    let e = publisher
        .publish("global", Event::message("x"))
        .await
        .expect_err("the test CA is in no system store");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_unreachable_and_said_so() {
    let pki = Pki::new();
    let other = Pki::new();
    let redis = tls_redis(&pki);
    let err = start_fails(&["--redis", &redis.url(), "--redis-tls-ca", &other.ca()]).await;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    // Started without waiting for Redis, it keeps saying why.
    let mut server = Redisse::start(&[
        "--redis",
        &redis.url(),
        "--redis-tls-ca",
        &other.ca(),
        "--redis-connect-timeout",
        "0",
    ]);
    let line = log_line(&server, &["redis subscriber cannot connect"]).await;
    assert!(
        line.to_lowercase().contains("certificate"),
        "the line does not say why: {line}"
    );
    assert_eq!(server.health().await, 503);
    // A publish through the server fails (the broker is unreachable), it does not crash it.
    let res = client()
        .post(server.internal_url("/publish/global"))
        .body("lost")
        .send()
        .await
        .expect("POST /publish");
    assert!(res.status().is_server_error(), "{}", res.status());
    // `redisse publish` says why too.
    let (ok, _, stderr) = run(&[
        "publish",
        "global",
        "x",
        "--redis",
        &redis.url(),
        "--redis-tls-ca",
        &other.ca(),
    ])
    .await;
    assert!(!ok);
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    alive_without_panic(&mut server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_a_ca_trusts_the_system_roots_only() {
    // The test CA is in no system store: the start fails and says so; started without waiting
    // it says why Redis is unreachable (it used to refuse to start for another reason: "can't
    // connect with TLS, the feature is not enabled").
    let pki = Pki::new();
    let redis = tls_redis(&pki);
    let err = start_fails(&["--redis", &redis.url()]).await;
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let mut server = Redisse::start(&["--redis", &redis.url(), "--redis-connect-timeout", "0"]);
    let line = log_line(&server, &["redis subscriber cannot connect"]).await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert_eq!(server.health().await, 503);
    alive_without_panic(&mut server);
}

#[tokio::test]
async fn an_unusable_ca_file_or_a_ca_without_tls_stops_the_binary_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let key_only = dir.path().join("key.pem");
    let key = rcgen::KeyPair::generate().unwrap();
    std::fs::write(&key_only, key.serialize_pem()).unwrap();
    let pki = Pki::new();
    let tls_url = "rediss://127.0.0.1:1/";
    for (url, ca, expect) in [
        (tls_url, path(&missing), "--redis-tls-ca"),
        (tls_url, path(&garbage), "--redis-tls-ca"),
        (tls_url, path(&key_only), "--redis-tls-ca"),
        ("redis://127.0.0.1:1/", pki.ca(), "rediss://"),
    ] {
        for args in [
            vec!["-a", "127.0.0.1", "-p", "0", "--redis", url],
            vec!["publish", "global", "x", "--redis", url],
        ] {
            let mut args = args;
            args.extend(["--redis-tls-ca", &ca]);
            let (ok, _, stderr) = run(&args).await;
            assert!(!ok, "redisse {args:?} succeeded");
            let last = stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("redisse: ") && last.contains(expect),
                "redisse {args:?}: {stderr}"
            );
            assert!(!stderr.contains("panicked"), "{stderr}");
        }
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// A plain Redis with a unix socket, where the default user needs `DEFAULT_PW` and `alice`
/// (an ACL user) `ALICE_PW`.
struct AclRedis {
    redis: RedisServer,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

const ALICE_PW: &str = "s3cr3t-pw";
const DEFAULT_PW: &str = "d3fault-pw";

impl AclRedis {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("redis.sock");
        let redis = RedisServer::start_with(
            &[
                "--unixsocket".into(),
                path(&socket),
                "--unixsocketperm".into(),
                "700".into(),
            ],
            None,
        );
        let mut con = redis.con();
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("alice")
            .arg("on")
            .arg(format!(">{ALICE_PW}"))
            .arg("~*")
            .arg("&*")
            .arg("+@all")
            .query(&mut con)
            .expect("ACL SETUSER");
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("requirepass")
            .arg(DEFAULT_PW)
            .query(&mut con)
            .expect("CONFIG SET requirepass");
        AclRedis {
            redis,
            socket,
            _dir: dir,
        }
    }

    /// `redis://USERINFO@127.0.0.1:PORT/`.
    fn url(&self, userinfo: &str) -> String {
        format!("redis://{userinfo}@127.0.0.1:{}/", self.redis.port())
    }
}

/// No password of the test appears in `text`.
fn no_password(text: &str) {
    for pw in [ALICE_PW, DEFAULT_PW, "wr0ng-pw"] {
        assert!(!text.contains(pw), "a password in the logs:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_works_end_to_end_and_its_password_is_never_logged() {
    let acl = AclRedis::start();
    let url = acl.url(&format!("alice:{ALICE_PW}"));
    let server = Redisse::start(&["--redis", &url, "--verbose"]);
    let first = log_line(&server, &["listening"]).await;
    assert!(
        first.contains(&format!(
            "Redis redis://alice@127.0.0.1:{}/0",
            acl.redis.port()
        )),
        "{first}"
    );
    server.health_becomes(200).await;
    let mut s = live_stream(&server, "global").await;
    let id = cli_publish(&["publish", "global", "as alice", "--redis", &url]).await;
    let e = s.next().await;
    assert_eq!((e.id, e.data.as_str()), (Some(id.to_string()), "as alice"));
    server.publish("global", "through the server".into()).await;
    assert_eq!(s.next().await.data, "through the server");
    no_password(&server.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_of_the_default_user_and_of_unix_urls_are_never_logged() {
    let acl = AclRedis::start();
    let unix = format!("unix://{}?pass={DEFAULT_PW}", acl.socket.display());
    for (url, described) in [
        (
            acl.url(&format!(":{DEFAULT_PW}")),
            format!("Redis redis://127.0.0.1:{}/0", acl.redis.port()),
        ),
        (
            unix.clone(),
            format!("Redis unix://{} (db 0)", acl.socket.display()),
        ),
    ] {
        let server = Redisse::start(&["--redis", &url, "--verbose"]);
        let first = log_line(&server, &["listening"]).await;
        assert!(first.contains(&described), "{first}");
        server.health_becomes(200).await;
        let mut s = live_stream(&server, "global").await;
        server.publish("global", "hello".into()).await;
        assert_eq!(s.next().await.data, "hello");
        no_password(&server.log());
    }
    let (ok, stdout, stderr) = run(&["publish", "global", "x", "--redis", &unix]).await;
    assert!(ok, "{stderr}");
    no_password(&(stdout + &stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_said_so_without_being_logged() {
    let acl = AclRedis::start();
    let socket = acl.socket.display().to_string();
    for url in [
        acl.url("alice:wr0ng-pw"),
        acl.url(":wr0ng-pw"),
        format!("unix://{socket}?user=alice&pass=wr0ng-pw"),
    ] {
        let err = start_fails(&["--redis", &url]).await;
        assert!(err.contains("authentication failed"), "{err}");
        no_password(&err);
        // Started without waiting for Redis, it keeps saying why.
        let mut server = Redisse::start(&["--redis", &url, "--redis-connect-timeout", "0"]);
        let line = log_line(&server, &["redis subscriber cannot connect"]).await;
        assert!(
            line.contains("WRONGPASS") || line.to_lowercase().contains("auth"),
            "the line does not say why: {line}"
        );
        assert_eq!(server.health().await, 503);
        let res = client()
            .post(server.internal_url("/publish/global"))
            .body("x")
            .send()
            .await
            .expect("POST /publish");
        assert!(res.status().is_server_error(), "{}", res.status());
        // Whatever was logged about the failed publish is in the log by now.
        tokio::time::sleep(Duration::from_millis(200)).await;
        alive_without_panic(&mut server);
        no_password(&server.log());
        let (ok, stdout, stderr) = run(&["publish", "global", "x", "--redis", &url]).await;
        assert!(!ok);
        no_password(&(stdout + &stderr));
    }
}
