//! What packaging/ ships works: the systemd unit passes `systemd-analyze verify` with the built
//! binary as its `ExecStart` and keeps its hardening (`systemd-analyze security`), the binary
//! makes no system call that the unit's `SystemCallFilter=` lines would kill it for (run under
//! `strace` through a Redis-backed stream, a publish, a resume, the pages and a SIGTERM: no
//! systemd runs the unit here), and the container recipe's health check tells a live server
//! from a dead or failing one when run against the real binary. (The container image itself is not built here: no container
//! registry is reachable from the machines that run the tests.)

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::binary::Redisse;
use crate::support::sse::client;
use crate::support::{RedisServer, SseStream};

const UNIT: &str = include_str!("../../packaging/redisse.service");
const CONTAINERFILE: &str = include_str!("../../packaging/Containerfile");
/// Where the unit expects the binary.
const UNIT_BINARY: &str = "/usr/local/bin/redisse";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

fn systemd_analyze(args: &[&str]) -> Output {
    assert!(
        Path::new(SYSTEMD_ANALYZE).exists(),
        "{SYSTEMD_ANALYZE} is needed by this test: apt-get install systemd"
    );
    Command::new(SYSTEMD_ANALYZE)
        .args(args)
        .output()
        .expect("run systemd-analyze")
}

/// The unit with the built binary in place of `/usr/local/bin/redisse` (verify checks that
/// `ExecStart` is executable), written as `redisse.service` in a fresh directory.
fn unit_with_built_binary() -> (tempfile::TempDir, String) {
    assert!(
        UNIT.contains(&format!("ExecStart={UNIT_BINARY} ")),
        "packaging/redisse.service no longer runs {UNIT_BINARY}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redisse.service");
    std::fs::write(
        &path,
        UNIT.replace(UNIT_BINARY, env!("CARGO_BIN_EXE_redisse")),
    )
    .unwrap();
    (dir, path.to_str().unwrap().to_owned())
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let (_dir, path) = unit_with_built_binary();
    let out = systemd_analyze(&["verify", &path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // verify exits 0 on unknown keys and unparsable values, which it only warns about: any
    // line it prints is a fault of the unit.
    assert!(
        out.status.success() && stderr.trim().is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify: {}\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_systemd_unit_keeps_its_hardening() {
    let (_dir, path) = unit_with_built_binary();
    let out = systemd_analyze(&["security", "--offline=yes", &path]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let level: f64 = stdout
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for redisse.service: ")
                .nth(1)
        })
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no exposure level in systemd-analyze security's output:\n{stdout}{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // 1.2 when written (0 is the best, 10 an unprotected service; systemd calls below 2 "OK").
    assert!(
        level <= 2.0,
        "the unit's exposure level rose to {level}:\n{stdout}"
    );
}

/// The system calls of a `systemd-analyze syscall-filter` set (`@system-service`), its nested
/// sets expanded.
fn syscall_set(name: &str) -> BTreeSet<String> {
    let out = systemd_analyze(&["syscall-filter", name]);
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut set = BTreeSet::new();
    for item in text.lines().skip(1).map(str::trim) {
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            set.extend(syscall_set(item));
        } else {
            set.insert(item.to_owned());
        }
    }
    set
}

/// What the unit's `SystemCallFilter=` lines allow: the union of its allow lists, less every
/// `~` list, as systemd applies them.
fn unit_allowed_syscalls() -> BTreeSet<String> {
    let (mut allowed, mut denied) = (BTreeSet::new(), BTreeSet::new());
    for line in UNIT.lines() {
        let Some(items) = line.strip_prefix("SystemCallFilter=") else {
            continue;
        };
        let (target, items) = match items.strip_prefix('~') {
            Some(rest) => (&mut denied, rest),
            None => (&mut allowed, items),
        };
        for item in items.split_whitespace() {
            if item.starts_with('@') {
                target.extend(syscall_set(item));
            } else {
                target.insert(item.to_owned());
            }
        }
    }
    assert!(
        !allowed.is_empty(),
        "the unit has no SystemCallFilter allow list"
    );
    allowed.difference(&denied).cloned().collect()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stays_within_the_units_system_call_filter() {
    let allowed = unit_allowed_syscalls();
    let strace_found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        strace_found,
        "`strace` is needed by this test: apt-get install strace"
    );
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace");
    let (port, internal) = (free_port(), free_port());
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-o"])
        .arg(&trace)
        .arg(env!("CARGO_BIN_EXE_redisse"))
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--internal-address", &format!("127.0.0.1:{internal}")])
        .args(["--redis", &redis.url(), "--heartbeat", "0.2"])
        .env_remove("REDISSE_REDIS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start strace");
    let public = format!("http://127.0.0.1:{port}");
    let internal = format!("http://127.0.0.1:{internal}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client()
        .get(format!("{internal}/health"))
        .send()
        .await
        .is_ok_and(|r| r.status() == 200)
    {
        assert!(Instant::now() < deadline, "the traced binary did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish = |data: &'static str| {
        let url = format!("{internal}/publish/news?type=t");
        async move {
            let res = client().post(url).body(data).send().await.unwrap();
            assert_eq!(res.status(), 200);
        }
    };
    publish("warm-up").await;
    let mut stream = SseStream::open(&format!("{public}/?news&alerts"), &[]).await;
    let hint = stream.next().await;
    assert_eq!(hint.event, "lastEventId");
    publish("live").await;
    assert_eq!(stream.next().await.data, "live");
    let last = hint.id.unwrap();
    let mut resumed =
        SseStream::open(&format!("{public}/?news"), &[("Last-Event-ID", &last)]).await;
    assert_eq!(resumed.next().await.data, "live", "the replay");
    tokio::time::sleep(Duration::from_millis(500)).await; // heartbeats
    for page in [format!("{internal}/metrics"), format!("{public}/livez")] {
        assert_eq!(client().get(page).send().await.unwrap().status(), 200);
    }
    // SIGTERM to the server (strace's child), then wait for both to exit.
    let pid = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id()))
        .unwrap_or_default();
    let pid = pid
        .split_whitespace()
        .next()
        .expect("the traced server's pid");
    assert!(
        Command::new("kill")
            .args(["-TERM", pid])
            .status()
            .unwrap()
            .success()
    );
    drop((stream, resumed));
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "the traced server exited with {status}");

    let used: BTreeSet<String> = std::fs::read_to_string(&trace)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let call = line.split_once(' ')?.1.trim_start();
            let name = &call[..call.find('(')?];
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                .then(|| name.to_owned())
        })
        .collect();
    for expected in ["accept4", "epoll_wait", "write"] {
        assert!(
            used.contains(expected),
            "no {expected} in the trace: {used:?}"
        );
    }
    let killed: Vec<&String> = used.difference(&allowed).collect();
    assert!(
        killed.is_empty(),
        "the unit's SystemCallFilter would kill the server on {killed:?} (used: {used:?})"
    );
}

/// The `HEALTHCHECK`'s command, as the container engine runs it (exec form: a JSON array).
fn healthcheck_command() -> Vec<String> {
    let joined = CONTAINERFILE.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK "))
        .expect("packaging/Containerfile has a HEALTHCHECK");
    let json = line
        .split_once(" CMD ")
        .expect("the HEALTHCHECK has a CMD")
        .1
        .trim();
    serde_json::from_str(json).expect("the HEALTHCHECK's CMD is a JSON array (exec form)")
}

/// Runs the health check with `REDISSE_PORT=port`, as in a container whose server listens there.
fn run_healthcheck(port: u16) -> bool {
    let command = healthcheck_command();
    assert_eq!(
        command[0], "bash",
        "the health check runs with bash, which the image has"
    );
    Command::new(&command[0])
        .args(&command[1..])
        .env("REDISSE_PORT", port.to_string())
        .output()
        .expect("run bash")
        .status
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_health_check_passes_on_a_live_server_only() {
    let server = Redisse::start(&[]);
    let port = server.port;
    assert!(
        tokio::task::spawn_blocking(move || run_healthcheck(port))
            .await
            .unwrap(),
        "the health check failed against a live server; log:\n{}",
        server.log()
    );
    drop(server);
    assert!(
        !tokio::task::spawn_blocking(move || run_healthcheck(port))
            .await
            .unwrap(),
        "the health check passed with no server on the port"
    );
}

#[test]
fn the_container_health_check_fails_on_a_503() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        let mut request = [0u8; 1024];
        let n = tcp.read(&mut request).unwrap();
        tcp.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&request[..n]).into_owned()
    });
    assert!(!run_healthcheck(port), "the health check passed on a 503");
    let request = answer.join().unwrap();
    assert!(
        request.starts_with("GET /livez HTTP/1.1\r\n"),
        "the health check asked {request:?}"
    );
}
