//! HTTPS (`--ssl --ssl-key --ssl-cert`, README "Configuration"): the binary serves streams and
//! publishing over TLS with a certificate made for the test, and refuses to start with unusable
//! files.

use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::support::PATIENCE;
use crate::support::cert::Certificate;

/// A TLS client that trusts the test's certificate.
fn connector(cert: &Certificate) -> TlsConnector {
    let mut roots = RootCertStore::empty();
    roots
        .add(cert.der.clone())
        .expect("trust the test certificate");
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Sends `request` over TLS and returns the connection for reading.
async fn tls_request(
    cert: &Certificate,
    port: u16,
    request: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = connector(cert)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    tls.write_all(request.as_bytes()).await.unwrap();
    tls
}

/// The binary serving HTTPS with the certificate files, its publish token `s3cret` and no
/// internal listener (its default port would collide between tests); its port, read from the
/// first log line.
async fn start_tls_server(cert_path: &str, key_path: &str) -> (tokio::process::Child, u16) {
    start_tls_server_with(cert_path, key_path, &[]).await
}

/// [`start_tls_server`] with more options.
async fn start_tls_server_with(
    cert_path: &str,
    key_path: &str,
    extra: &[&str],
) -> (tokio::process::Child, u16) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_redisse"))
        .args(["-a", "127.0.0.1", "-p", "0", "--ssl"])
        .args(["--ssl-cert", cert_path, "--ssl-key", key_path])
        .args(["--publish-token", "s3cret", "--internal-address", "none"])
        .args(extra)
        .env("NO_COLOR", "1")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn redisse");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    tokio::time::timeout(PATIENCE, stderr.read_line(&mut line))
        .await
        .expect("first log line")
        .unwrap();
    let at = line
        .find("https://127.0.0.1:")
        .expect("an https address in the first line");
    let port = line[at + 18..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap();
    // The rest of the log is drained, so that the server never blocks on a full pipe.
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut stderr, &mut tokio::io::sink()).await;
    });
    (child, port)
}

#[tokio::test]
async fn streams_and_publishing_work_over_tls() {
    let cert = Certificate::new();
    let (cert_path, key_path) = (cert.path("cert.pem"), cert.path("key.pem"));
    let (mut child, port) = start_tls_server(&cert_path, &key_path).await;

    let mut stream = tls_request(
        &cert,
        port,
        "GET /?secure HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n",
    )
    .await;
    // The stream is registered once its response head is out; what is published after that
    // reaches it.
    let mut received = Vec::new();
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the response head over TLS in time")
            .unwrap();
        assert!(n > 0, "stream closed before its head");
        received.extend_from_slice(&buf[..n]);
    }
    let body = "over tls";
    let mut publish = tls_request(
        &cert,
        port,
        &format!(
            "POST /publish/secure HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    let mut answer = String::new();
    tokio::time::timeout(PATIENCE, publish.read_to_string(&mut answer))
        .await
        .expect("publish answer")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let id: u64 = answer
        .rsplit_once("{\"id\":")
        .and_then(|(_, id)| id.strip_suffix('}'))
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no id in {answer}"));

    let expected = format!("id: {id}\nevent: message\ndata: over tls\n\n");
    let expected = expected.as_bytes();
    while !received.windows(expected.len()).any(|w| w == expected) {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf))
            .await
            .expect("the event over TLS in time")
            .unwrap();
        assert!(
            n > 0,
            "stream closed: {}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&received);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    child.kill().await.ok();
}

/// TLS connections are hyper's throughout: a head limit below hyper's 8 KiB buffer is still
/// the limit there (a 5 KB head with `--max-header-bytes 2048` was served), for streams and
/// other requests alike; a head within it is served.
#[tokio::test]
async fn a_head_limit_below_8_kib_is_enforced_over_tls() {
    let cert = Certificate::new();
    let (cert_path, key_path) = (cert.path("cert.pem"), cert.path("key.pem"));
    let (mut child, port) =
        start_tls_server_with(&cert_path, &key_path, &["--max-header-bytes", "2048"]).await;
    let big = "b".repeat(5000);
    for request in [
        format!("GET /?a HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\nX-Big: {big}\r\n\r\n"),
        format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n"),
    ] {
        let mut tls = tls_request(&cert, port, &request).await;
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
            .await
            .expect("an answer, then the connection closed")
            .ok();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    }
    let mut tls = tls_request(
        &cert,
        port,
        &format!(
            "GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Fits: {}\r\n\r\n",
            "f".repeat(1900)
        ),
    )
    .await;
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tls.read_to_end(&mut answer))
        .await
        .expect("an answer")
        .ok();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    child.kill().await.ok();
}

#[tokio::test]
async fn unusable_certificate_files_stop_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem").display().to_string();
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file").unwrap();
    let garbage = garbage.display().to_string();
    for (cert, key) in [(&missing, &missing), (&garbage, &garbage)] {
        let out = Command::new(env!("CARGO_BIN_EXE_redisse"))
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                "0",
                "--ssl",
                "--ssl-cert",
                cert,
                "--ssl-key",
                key,
                "--internal-address",
                "none",
            ])
            .output()
            .await
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("--ssl"), "{err}");
        assert!(
            err.contains(cert.as_str()),
            "the message names the file: {err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_redisse"))
        .args(["-p", "0", "--ssl", "--internal-address", "none"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success(), "--ssl without files is refused");
}

/// `redisse publish --server https://...` verifies the server against the system's roots
/// (here the test certificate, given as `SSL_CERT_FILE`, which the system-roots loader reads)
/// and sends the token; an untrusted certificate is refused with a message that says so.
#[tokio::test]
async fn redisse_publish_speaks_https_and_verifies_the_certificate() {
    let cert = Certificate::new();
    let (cert_path, key_path) = (cert.path("cert.pem"), cert.path("key.pem"));
    let (mut child, port) = start_tls_server(&cert_path, &key_path).await;
    let server = format!("https://localhost:{port}");
    let publish = |trust: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_redisse"));
        cmd.args([
            "publish", "secure", "hello", "--server", &server, "--token", "s3cret",
        ])
        .env_remove("REDISSE_REDIS")
        .env_remove("SSL_CERT_DIR")
        .kill_on_drop(true);
        match trust {
            Some(file) => cmd.env("SSL_CERT_FILE", file),
            None => cmd.env_remove("SSL_CERT_FILE"),
        };
        cmd.output()
    };
    let trusted = tokio::time::timeout(PATIENCE, publish(Some(&cert_path)))
        .await
        .expect("redisse publish exits in time")
        .unwrap();
    assert!(
        trusted.status.success(),
        "{}",
        String::from_utf8_lossy(&trusted.stderr)
    );
    let printed = String::from_utf8_lossy(&trusted.stdout);
    assert!(
        printed.trim().parse::<u64>().is_ok_and(|id| id > 0),
        "the id is printed: {printed:?}"
    );
    let untrusted = tokio::time::timeout(PATIENCE, publish(None))
        .await
        .expect("redisse publish exits in time")
        .unwrap();
    assert!(!untrusted.status.success());
    let err = String::from_utf8_lossy(&untrusted.stderr).to_lowercase();
    assert!(err.contains("certificate"), "{err}");
    child.kill().await.ok();
}
