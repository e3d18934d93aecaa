//! The redisse binary: --help, options, exit statuses, the first log line (README,
//! "Configuration").

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStderr, Command};

use crate::support::{Backend, PATIENCE, SseStream};

/// The binary with no `REDISSE_*` variable from the test's environment.
fn redisse() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_redisse"));
    for (k, _) in std::env::vars() {
        if k.starts_with("REDISSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs to completion: (success, exit code, stdout, stderr).
async fn run(args: &[&str]) -> (bool, Option<i32>, String, String) {
    let mut cmd = redisse();
    cmd.args(args);
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("redisse {args:?} did not exit"))
        .unwrap();
    (
        out.status.success(),
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Collapses the help's line wrapping.
fn unwrap_help(help: &str) -> String {
    help.split('\n')
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The help's options: (header line, description joined on one line).
fn option_blocks(help: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut in_options = false;
    for line in help.lines() {
        if line == "Options:" {
            in_options = true;
            continue;
        }
        if !in_options || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        if line.trim_start().starts_with('-') && indent < 10 {
            blocks.push((line.trim().to_owned(), String::new()));
        } else if let Some((_, description)) = blocks.last_mut() {
            description.push(' ');
            description.push_str(line.trim());
        }
    }
    blocks
}

#[tokio::test]
async fn help_documents_every_option_with_its_environment_variable() {
    let (ok, _, help, _) = run(&["--help"]).await;
    assert!(ok);
    let blocks = option_blocks(&help);
    assert!(blocks.len() > 20, "{help}");
    for (option, env) in [
        ("--address", "REDISSE_ADDRESS"),
        ("--port", "REDISSE_PORT"),
        ("--socket", "REDISSE_SOCKET"),
        ("--redis", "REDISSE_REDIS"),
        ("--redis-connect-timeout", "REDISSE_REDIS_CONNECT_TIMEOUT"),
        ("--stdout", "REDISSE_STDOUT"),
        ("--log", "REDISSE_LOG_FILE"),
        ("--verbose", "REDISSE_VERBOSE"),
        ("--pid", "REDISSE_PID"),
        ("--ssl", "REDISSE_SSL"),
        ("--ssl-key", "REDISSE_SSL_KEY"),
        ("--ssl-cert", "REDISSE_SSL_CERT"),
        ("--heartbeat", "REDISSE_HEARTBEAT"),
        ("--history-size", "REDISSE_HISTORY_SIZE"),
        ("--polling-delay", "REDISSE_POLLING_DELAY"),
        ("--publish-token", "REDISSE_PUBLISH_TOKEN"),
        ("--internal-address", "REDISSE_INTERNAL_ADDRESS"),
        ("--jwt-secret", "REDISSE_JWT_SECRET"),
        ("--jwt-public-key", "REDISSE_JWT_PUBLIC_KEY"),
        ("--jwt-algorithm", "REDISSE_JWT_ALGORITHM"),
        ("--jwt-cookie", "REDISSE_JWT_COOKIE"),
        ("--jwt-audience", "REDISSE_JWT_AUDIENCE"),
        ("--jwt-issuer", "REDISSE_JWT_ISSUER"),
        ("--auth-callback", "REDISSE_AUTH_CALLBACK"),
        ("--auth-callback-timeout", "REDISSE_AUTH_CALLBACK_TIMEOUT"),
        ("--auth-callback-cache", "REDISSE_AUTH_CALLBACK_CACHE"),
        ("--cors-origin", "REDISSE_CORS_ORIGINS"),
        ("--max-connections", "REDISSE_MAX_CONNECTIONS"),
        ("--max-channels", "REDISSE_MAX_CHANNELS"),
        ("--max-subscriptions", "REDISSE_MAX_SUBSCRIPTIONS"),
        ("--max-queue-bytes", "REDISSE_MAX_QUEUE_BYTES"),
        ("--max-publish-bytes", "REDISSE_MAX_PUBLISH_BYTES"),
        ("--max-header-bytes", "REDISSE_MAX_HEADER_BYTES"),
        ("--max-channel-name-bytes", "REDISSE_MAX_CHANNEL_NAME_BYTES"),
        ("--threads", "REDISSE_THREADS"),
    ] {
        let (_, description) = blocks
            .iter()
            .find(|(header, _)| header.split([' ', ',']).any(|w| w == option))
            .unwrap_or_else(|| panic!("{option} missing from --help:\n{help}"));
        // Secrets name their variable without its value (`[env: NAME]`), others with it.
        assert!(
            description.contains(&format!("[env: {env}="))
                || description.contains(&format!("[env: {env}]")),
            "{option} does not name {env}: {description:?}"
        );
    }
    // Every option names a variable, except --help and --version.
    for (header, description) in &blocks {
        if header.contains("--help") || header.contains("--version") {
            continue;
        }
        assert!(
            description.contains("[env: REDISSE_"),
            "no variable for {header}: {description}"
        );
    }
    // Short forms and defaults.
    for (short, long, default) in [
        ("-a", "--address", Some("0.0.0.0")),
        ("-p", "--port", Some("8080")),
        ("-S", "--socket", None),
        ("-s", "--stdout", None),
        ("-l", "--log", None),
        ("-v", "--verbose", None),
        ("-P", "--pid", None),
        (" ", "--heartbeat", Some("15")),
        (" ", "--history-size", Some("100")),
        (" ", "--polling-delay", Some("1")),
        (" ", "--redis-connect-timeout", Some("5")),
        (" ", "--max-channels", Some("1024")),
        (" ", "--max-queue-bytes", Some("1048576")),
        (" ", "--max-publish-bytes", Some("1048576")),
        (" ", "--max-header-bytes", Some("65536")),
        (" ", "--max-channel-name-bytes", Some("1024")),
        (" ", "--internal-address", Some("127.0.0.1:8081")),
    ] {
        let (header, description) = blocks
            .iter()
            .find(|(header, _)| header.split([' ', ',']).any(|w| w == long))
            .unwrap();
        if short != " " {
            assert!(header.starts_with(&format!("{short}, {long}")), "{header}");
        }
        if let Some(d) = default {
            assert!(
                description.contains(&format!("[default: {d}]")),
                "{long}: {description}"
            );
        }
    }
}

/// The help shows the value of an option's variable when it is set, except for secrets.
#[tokio::test]
async fn help_never_shows_the_value_of_a_secret_variable() {
    let mut cmd = redisse();
    cmd.arg("--help")
        .env("REDISSE_PUBLISH_TOKEN", "token-5e1c")
        .env("REDISSE_JWT_SECRET", "secret-77ad")
        .env("REDISSE_HEARTBEAT", "7");
    let out = cmd.output().await.unwrap();
    assert!(out.status.success());
    let help = unwrap_help(&String::from_utf8_lossy(&out.stdout));
    assert!(!help.contains("token-5e1c"), "{help}");
    assert!(!help.contains("secret-77ad"), "{help}");
    assert!(help.contains("[env: REDISSE_PUBLISH_TOKEN]"), "{help}");
    assert!(help.contains("[env: REDISSE_JWT_SECRET]"), "{help}");
    // A variable that is no secret shows its value (the check above is not vacuous).
    assert!(help.contains("[env: REDISSE_HEARTBEAT=7]"), "{help}");
    let mut cmd = redisse();
    cmd.args(["publish", "--help"])
        .env("REDISSE_PUBLISH_TOKEN", "token-5e1c");
    let out = cmd.output().await.unwrap();
    let help = unwrap_help(&String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success());
    assert!(!help.contains("token-5e1c"), "{help}");
    assert!(help.contains("--token"), "{help}");
}

#[tokio::test]
async fn publish_help_documents_its_options() {
    let (ok, _, help, _) = run(&["publish", "--help"]).await;
    assert!(ok);
    let flat = unwrap_help(&help);
    for part in [
        "CHANNEL",
        "[DATA]",
        "--type",
        "--server",
        "--redis",
        "REDISSE_REDIS",
        "--token",
        "REDISSE_PUBLISH_TOKEN",
        "REDISSE_INTERNAL_ADDRESS",
        "standard input",
    ] {
        assert!(
            flat.contains(part),
            "{part} missing from publish --help:\n{help}"
        );
    }
}

#[tokio::test]
async fn bad_options_exit_non_zero_with_a_message() {
    for (args, expected) in [
        (&["--bogus"][..], "--bogus"),
        (&["--port", "http"][..], "--port"),
        (&["--port", "70000"][..], "--port"),
        (&["--address", "not-an-ip"][..], "--address"),
        (&["--heartbeat", "soon"][..], "--heartbeat"),
        (&["--heartbeat", "0"][..], "--heartbeat"),
        (&["--polling-delay=-1"][..], "--polling-delay"),
        (&["--heartbeat", "-1"][..], "not a positive number"),
        (&["--max-queue-bytes", "lots"][..], "--max-queue-bytes"),
        (&["--threads", "0"][..], "--threads"),
        (&["--ssl-cert", "cert.pem"][..], "--ssl"),
        (&["--max-queue-bytes", "0"][..], "max_queue_bytes"),
        (&["--threads", "many"][..], "--threads"),
        (&["serve", "extra-argument"][..], "extra-argument"),
        (&["publish"][..], "CHANNEL"),
        (
            &[
                "publish",
                "ch",
                "x",
                "--redis",
                "redis://h/",
                "--server",
                "http://h/",
            ][..],
            "--server",
        ),
    ] {
        let (ok, code, stdout, stderr) = run(args).await;
        assert!(!ok, "{args:?} succeeded");
        assert_ne!(code, Some(0), "{args:?}");
        assert!(code.is_some(), "{args:?} was killed by a signal: {stderr}");
        assert!(
            stderr.contains(expected),
            "{args:?}: stderr does not mention {expected}: {stderr}"
        );
        assert_eq!(stdout, "", "{args:?}");
    }
}

#[tokio::test]
async fn a_port_that_cannot_be_bound_exits_non_zero() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let (ok, code, _, stderr) = run(&["-a", "127.0.0.1", "-p", &port]).await;
    assert!(!ok);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("cannot listen on 127.0.0.1:"), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
    drop(taken);
}

/// A running server and its standard error.
struct Running {
    child: Child,
    stderr: BufReader<ChildStderr>,
    first_line: String,
    /// The second line, which names the internal listener.
    internal_line: String,
}

impl Running {
    /// The internal listener's `127.0.0.1:PORT`, as `REDISSE_INTERNAL_ADDRESS` names it.
    fn internal_address(&self) -> String {
        format!("127.0.0.1:{}", port_of(&self.internal_line))
    }
}

/// Starts the server; its internal listener on a free port (`--internal-address 127.0.0.1:0`)
/// unless the arguments or the environment name one (the default port would be shared by
/// every test). Reads the first two log lines.
async fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut cmd = redisse();
    let internal_given = args.iter().any(|a| a.starts_with("--internal-address"))
        || env.iter().any(|(k, _)| *k == "REDISSE_INTERNAL_ADDRESS");
    // After the subcommand, when there is one.
    let (command, args) = match args.split_first() {
        Some((&"serve", rest)) => (&args[..1], rest),
        _ => (&[][..], args),
    };
    cmd.args(command);
    if !internal_given {
        cmd.args(["--internal-address", "127.0.0.1:0"]);
    }
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn redisse");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut first_line = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_line(&mut first_line))
        .await
        .expect("a first log line in time")
        .unwrap();
    let mut internal_line = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_line(&mut internal_line))
        .await
        .expect("a second log line in time")
        .unwrap();
    assert!(
        internal_line.contains("internal listener"),
        "the second line names the internal listener: {first_line:?} {internal_line:?}"
    );
    Running {
        child,
        stderr,
        first_line,
        internal_line,
    }
}

/// The port in a log line's `http://127.0.0.1:PORT`.
fn port_of(line: &str) -> u16 {
    let at = line
        .find("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let digits: String = line[at + "http://127.0.0.1:".len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// Threads of a process whose name (truncated to 15 bytes by the kernel) starts with `prefix`.
fn threads_named(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the process's threads")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with(prefix))
        .count()
}

#[tokio::test]
async fn threads_sets_the_number_of_worker_threads() {
    for (args, env, expected) in [
        (&["--threads", "1"][..], &[][..], 1),
        (&[][..], &[("REDISSE_THREADS", "3")][..], 3),
    ] {
        let mut all = vec!["-a", "127.0.0.1", "-p", "0"];
        all.extend_from_slice(args);
        let mut r = start(&all, env).await;
        let pid = r.child.id().expect("pid");
        // A thread takes its name once it runs: wait for the count to settle.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let mut count = threads_named(pid, "redisse-worker");
        while count < expected && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            count = threads_named(pid, "redisse-worker");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        count = threads_named(pid, "redisse-worker");
        assert_eq!(count, expected, "{args:?} {env:?}");
        r.child.kill().await.unwrap();
    }
}

#[tokio::test]
async fn the_first_log_line_names_the_in_memory_broker_and_the_address() {
    let r = start(&["-a", "127.0.0.1", "-p", "0"], &[]).await;
    let line = &r.first_line;
    assert!(line.contains("in-memory"), "{line:?}");
    assert!(port_of(line) > 0, "{line:?}");
    assert!(
        !line.contains('\u{1b}'),
        "terminal escape codes in a log that is not a terminal: {line:?}"
    );
}

#[tokio::test]
async fn the_port_comes_from_redisse_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = start(&["-a", "127.0.0.1"], &[("REDISSE_PORT", &port.to_string())]).await;
    assert_eq!(port_of(&r.first_line), port, "{:?}", r.first_line);
    // It is the public listener's port only.
    assert_ne!(port_of(&r.internal_line), port, "{:?}", r.internal_line);
    // The command line wins over the environment.
    let r = start(&["-a", "127.0.0.1", "-p", "0"], &[("REDISSE_PORT", "1")]).await;
    assert_ne!(port_of(&r.first_line), 1, "{:?}", r.first_line);
}

#[tokio::test]
async fn the_first_log_line_names_redis_without_its_password() {
    // Nothing listens on port 1: `--redis-connect-timeout 0` starts without waiting for Redis,
    // and the line is written before the broker connects. The server is named as the Redis
    // client parsed the URL: user, host, port and database. (That a failed start names it
    // without its password too is tests/it/startup.rs.)
    for (url, described) in [
        (
            "redis://:hunter2@127.0.0.1:1/",
            "Redis redis://127.0.0.1:1/0 broker",
        ),
        (
            "redis://user:hunter2@127.0.0.1:1/0",
            "Redis redis://user@127.0.0.1:1/0 broker",
        ),
    ] {
        let r = start(
            &[
                "-a",
                "127.0.0.1",
                "-p",
                "0",
                "--redis",
                url,
                "--redis-connect-timeout",
                "0",
            ],
            &[],
        )
        .await;
        let line = &r.first_line;
        assert!(
            !line.contains("hunter2"),
            "the password is in the log: {line:?}"
        );
        assert!(line.contains(described), "{line:?}");
        port_of(line);
    }
    // Through the environment too.
    let r = start(
        &["-a", "127.0.0.1", "-p", "0"],
        &[
            ("REDISSE_REDIS", "redis://:hunter2@127.0.0.1:1/"),
            ("REDISSE_REDIS_CONNECT_TIMEOUT", "0"),
        ],
    )
    .await;
    assert!(
        r.first_line.contains("redis://127.0.0.1:1/0") && !r.first_line.contains("hunter2"),
        "{:?}",
        r.first_line
    );
}

#[tokio::test]
async fn logs_go_to_stdout_with_dash_s() {
    let mut cmd = redisse();
    cmd.args(["-a", "127.0.0.1", "-p", "0", "--stdout"])
        .args(["--internal-address", "127.0.0.1:0"]);
    let mut child = cmd.spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stdout.read_line(&mut line))
        .await
        .expect("a log line on stdout")
        .unwrap();
    assert!(line.contains("in-memory"), "{line:?}");
    assert!(
        !line.contains('\u{1b}'),
        "terminal escape codes in a pipe: {line:?}"
    );
    port_of(&line);
}

/// `redisse publish` with the arguments; returns the printed id.
async fn cli_publish(args: &[&str]) -> u64 {
    cli_publish_env(args, &[]).await
}

/// `redisse publish` with the arguments and environment variables; returns the printed id.
async fn cli_publish_env(args: &[&str], env: &[(&str, &str)]) -> u64 {
    let mut cmd = redisse();
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(PATIENCE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("redisse {args:?} did not exit"))
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "redisse {args:?}: {stderr}");
    stdout
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("not an id: {stdout:?}"))
}

/// `redisse publish CHANNEL DATA [more]` through `r`'s internal listener (the default target,
/// named by `REDISSE_INTERNAL_ADDRESS`); returns the printed id.
async fn publish_internal(r: &Running, channel: &str, data: &str, more: &[&str]) -> u64 {
    let mut args = vec!["publish", channel, data];
    args.extend_from_slice(more);
    let internal = r.internal_address();
    cli_publish_env(&args, &[("REDISSE_INTERNAL_ADDRESS", &internal)]).await
}

#[tokio::test]
async fn a_started_server_serves_events_published_with_the_cli() {
    let r = start(&["-a", "127.0.0.1", "-p", "0", "--heartbeat", "200ms"], &[]).await;
    let base = format!("http://127.0.0.1:{}", port_of(&r.first_line));
    let warm = publish_internal(&r, "test.warmup", "", &[]).await;
    let mut s = SseStream::open(&format!("{base}/?global&other"), &[]).await;
    assert_eq!(s.status, 200);
    let first = s.next().await;
    assert_eq!(
        (first.event.as_str(), first.id),
        ("lastEventId", Some(warm.to_string()))
    );
    let id = publish_internal(&r, "global", "hello\nworld", &["--type", "greet"]).await;
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("greet", "hello\nworld")
    );
    // The heartbeat option is applied.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while s.comments.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no heartbeat with --heartbeat 200ms"
        );
        let _ = s.next_within(Duration::from_millis(100)).await;
    }
    assert_eq!(s.comments[0], "hb");
    drop(r.stderr);
}

#[tokio::test]
async fn a_started_server_on_redis_serves_events_published_straight_to_redis() {
    let backend = Backend::redis();
    let url = backend.redis_server().url();
    let r = start(&["-a", "127.0.0.1", "-p", "0", "--redis", &url], &[]).await;
    assert!(r.first_line.contains(&url), "{:?}", r.first_line);
    let base = format!("http://127.0.0.1:{}", port_of(&r.first_line));
    let warm = cli_publish(&["publish", "test.warmup", "", "--redis", &url]).await;
    let mut s = SseStream::open(&format!("{base}/?global"), &[]).await;
    assert_eq!(s.status, 200);
    let first = s.next().await;
    assert_eq!(
        (first.event.as_str(), first.id),
        ("lastEventId", Some(warm.to_string()))
    );
    let id = cli_publish(&["publish", "global", "via redis", "--redis", &url]).await;
    let e = s.next().await;
    assert_eq!(e.id, Some(id.to_string()));
    assert_eq!(
        (e.event.as_str(), e.data.as_str()),
        ("message", "via redis")
    );
    // And through the server's internal POST /publish, which writes to the same Redis.
    let id2 = publish_internal(&r, "global", "via http", &[]).await;
    assert_eq!(id2, id + 1);
    assert_eq!(s.next().await.data, "via http");
}

/// Polls `check` until it returns something, failing the test after `PATIENCE`.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One request over a new unix socket connection, `Connection: close`; the whole answer.
async fn unix_request(path: &std::path::Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut con = tokio::net::UnixStream::connect(path).await.unwrap();
    con.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, con.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

fn unix_publish(channel: &str, data: &str) -> String {
    format!(
        "POST /publish/{channel}?type=t HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Length: {}\r\n\r\n{data}",
        data.len()
    )
}

/// The public listener on a unix socket serves streams but, like on TCP, publishes nothing
/// without a credential (a peer on the socket is not trusted for being local); the internal
/// listener on another socket publishes.
#[tokio::test]
async fn a_unix_socket_serves_streams_and_publishing_is_on_the_internal_socket() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("redisse.sock");
    let internal = dir.path().join("internal.sock");
    let internal_arg = format!("unix:{}", internal.display());
    let r = start(
        &[
            "-S",
            path.to_str().unwrap(),
            "--internal-address",
            &internal_arg,
        ],
        &[],
    )
    .await;
    assert!(r.first_line.contains("in-memory"), "{:?}", r.first_line);
    assert!(
        r.first_line.contains(&format!("unix:{}", path.display())),
        "{:?}",
        r.first_line
    );
    assert!(
        r.internal_line.contains(&internal_arg),
        "{:?}",
        r.internal_line
    );
    // The public socket refuses to publish without a credential, and publishes nothing.
    let answer = unix_request(&path, &unix_publish("elsewhere", "refused")).await;
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nwww-authenticate: bearer\r\n"),
        "{answer}"
    );
    // The internal socket publishes; the warm-up goes to another channel, so that it cannot
    // reach the stream below (it may still be on its way to the dispatcher when the stream
    // registers). It is the instance's first event: the refused publish took no id, so the next
    // one is right after it.
    let answer = unix_request(&internal, &unix_publish("elsewhere", "warm-up")).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let warm: u64 = answer
        .rsplit_once(r#"{"id":"#)
        .and_then(|(_, id)| id.strip_suffix('}'))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {answer}"));
    let next = warm + 1;

    let mut stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    stream
        .write_all(b"GET /?global HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let mut read_until = async |got: &mut Vec<u8>, needle: &str| {
        while !String::from_utf8_lossy(got).contains(needle) {
            let n = tokio::time::timeout_at(deadline, stream.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(got)))
                .unwrap();
            assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    // Live once the lastEventId event is there.
    read_until(&mut got, "event: lastEventId").await;
    let answer = unix_request(&internal, &unix_publish("global", "over a socket")).await;
    assert!(answer.ends_with(&format!(r#"{{"id":{next}}}"#)), "{answer}");
    read_until(&mut got, "data: over a socket\n\n").await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    assert!(
        text.contains(&format!("id: {next}\nevent: t\ndata: over a socket\n\n")),
        "{text}"
    );
    // The internal socket serves no streams.
    let answer = unix_request(
        &internal,
        "GET /?global HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\
         Connection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}

#[tokio::test]
async fn pid_and_log_files_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let pid = dir.path().join("redisse.pid");
    let log = dir.path().join("redisse.log");
    let mut cmd = redisse();
    cmd.args(["--internal-address", "127.0.0.1:0"])
        .args(["-a", "127.0.0.1", "-p", "0", "-P"])
        .arg(&pid)
        .arg("-l")
        .arg(&log);
    let child = cmd.spawn().unwrap();
    let child_pid = child.id().unwrap();
    let written = eventually("the pid file", || {
        std::fs::read_to_string(&pid)
            .ok()
            .filter(|s| s.ends_with('\n'))
    })
    .await;
    assert_eq!(written, format!("{child_pid}\n"));
    let first = eventually("a log line in the file", || {
        std::fs::read_to_string(&log)
            .ok()
            .and_then(|s| s.lines().next().map(str::to_owned))
    })
    .await;
    assert!(first.contains("in-memory"), "{first:?}");
    assert!(!first.contains('\u{1b}'), "{first:?}");
    port_of(&first);
    drop(child);
}

/// Reads log lines until one satisfies `pred`; fails after `PATIENCE`.
async fn log_line_where(r: &mut Running, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout_at(deadline, r.stderr.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("no log line with {what}"))
            .unwrap();
        assert!(n > 0, "the log ended without {what}");
        if pred(&line) {
            return line;
        }
    }
}

#[tokio::test]
async fn verbose_logs_each_subscription_and_event_and_serve_is_the_default_command() {
    let mut r = start(&["serve", "-a", "127.0.0.1", "-p", "0", "--verbose"], &[]).await;
    assert!(r.first_line.contains("in-memory"), "{:?}", r.first_line);
    let base = format!("http://127.0.0.1:{}", port_of(&r.first_line));
    publish_internal(&r, "test.warmup", "", &[]).await;
    let mut s = SseStream::open(&format!("{base}/?verbose.channel"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    let line = log_line_where(&mut r, "the subscription", |l| {
        l.contains("verbose.channel") && l.to_lowercase().contains("subscrib")
    })
    .await;
    assert!(!line.is_empty());
    publish_internal(&r, "verbose.channel", "payload-7f3a", &[]).await;
    assert_eq!(s.next().await.data, "payload-7f3a");
    log_line_where(&mut r, "the event", |l| l.contains("payload-7f3a")).await;
}

#[tokio::test]
async fn without_verbose_events_are_not_logged() {
    let mut r = start(&["-a", "127.0.0.1", "-p", "0"], &[]).await;
    let base = format!("http://127.0.0.1:{}", port_of(&r.first_line));
    publish_internal(&r, "test.warmup", "", &[]).await;
    let mut s = SseStream::open(&format!("{base}/?quiet.channel"), &[]).await;
    assert_eq!(s.next().await.event, "lastEventId");
    publish_internal(&r, "quiet.channel", "payload-91c2", &[]).await;
    assert_eq!(s.next().await.data, "payload-91c2");
    // Stop the server: every log line it wrote is then readable, up to the end.
    drop(s);
    let pid = r.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    tokio::time::timeout(
        PATIENCE,
        tokio::io::AsyncReadExt::read_to_string(&mut r.stderr, &mut rest),
    )
    .await
    .expect("the server exits after SIGTERM")
    .unwrap();
    assert!(!rest.contains("payload-91c2"), "{rest}");
    assert!(!rest.contains("quiet.channel"), "{rest}");
}

/// Without `--server`, `redisse publish` posts to the internal listener that
/// `REDISSE_INTERNAL_ADDRESS` names, as the server listens on it (a shell set up for the
/// server publishes to it), without a token; `REDISSE_PORT` (the public port) plays no part.
#[tokio::test]
async fn publish_uses_redisse_internal_address_without_server() {
    let r = start(&["-a", "127.0.0.1", "-p", "0"], &[]).await;
    let port = port_of(&r.first_line);
    let base = format!("http://127.0.0.1:{port}");
    let internal = r.internal_address();
    // A warm-up on another channel makes the counter exist: the stream then starts with
    // `lastEventId` once it is live.
    let warm = crate::support::sse::client()
        .post(format!("http://{internal}/publish/warm"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let mut s = SseStream::open(&format!("{base}/?ch"), &[]).await;
    let first = s.next().await;
    assert_eq!(first.event, "lastEventId");
    let next = first.id.as_deref().unwrap().parse::<u64>().unwrap() + 1;
    let publish = async |env: &[(&str, &str)]| {
        let mut cmd = redisse();
        cmd.args(["publish", "ch", "via the env"]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        tokio::time::timeout(PATIENCE, cmd.output())
            .await
            .expect("publish exits")
            .unwrap()
    };
    let out = publish(&[
        ("REDISSE_INTERNAL_ADDRESS", &internal),
        ("REDISSE_PORT", "1"),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim_end(),
        next.to_string()
    );
    let e = s.next().await;
    assert_eq!(
        (e.id, e.data.as_str()),
        (Some(next.to_string()), "via the env")
    );
    // The public port in REDISSE_PORT is not a target: with the internal address pointing at
    // nothing, the publish fails instead of going there.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let out = publish(&[
        ("REDISSE_INTERNAL_ADDRESS", &closed),
        ("REDISSE_PORT", &port.to_string()),
    ])
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&closed),
        "the message names the target: {stderr}"
    );
    s.expect_silence(Duration::from_millis(200)).await;
    // An address that is not one, and `none`, are clear errors.
    let out = publish(&[("REDISSE_INTERNAL_ADDRESS", "eighty")]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // (clap reads the variable as the serve option's and names the option.)
    assert!(
        stderr.contains("REDISSE_INTERNAL_ADDRESS") || stderr.contains("--internal-address"),
        "{stderr}"
    );
    assert!(stderr.contains("eighty"), "{stderr}");
    let out = publish(&[("REDISSE_INTERNAL_ADDRESS", "none")]).await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--server"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "");
}
