//! What packaging/ ships works: the systemd unit passes `systemd-analyze verify` with the built
//! binary as its `ExecStart` and keeps its hardening (`systemd-analyze security`), and the
//! container recipe's health check tells a live server from a dead or failing one when run
//! against the real binary. (The container image itself is not built here: no container
//! registry is reachable from the machines that run the tests.)

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

use crate::support::binary::Redisse;

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
