//! A Redisse server inside the test process: the public router on a free loopback port, and
//! (with [`TestServer::start`]) the internal router on another.

use std::net::SocketAddr;

use redisse::server::{Listener, Tcp, serve};
use redisse::{Config, Redisse};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::PATIENCE;
use super::sse::SseStream;

pub struct TestServer {
    pub addr: SocketAddr,
    /// The internal router's address, when it is served.
    pub internal_addr: Option<SocketAddr>,
    pub redisse: Redisse,
    stop: Option<watch::Sender<bool>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
    internal_task: Option<JoinHandle<std::io::Result<()>>>,
}

/// Completes when `stop` says so (or is dropped).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

impl TestServer {
    /// The standalone server (channels from the query string) with `config`.
    pub async fn start(config: Config) -> Self {
        let redisse = Redisse::new(config).expect("redisse instance");
        let router = redisse.router();
        let mut server = Self::start_router(redisse, router).await;
        let listener = Tcp::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        server.internal_addr = Some(listener.local_addr().expect("tcp addr"));
        let redisse = server.redisse.clone();
        let router = redisse.internal_router();
        let stop = server.stop.as_ref().expect("running").subscribe();
        server.internal_task = Some(tokio::spawn(serve(
            listener,
            redisse,
            router,
            stopped(stop),
        )));
        server
    }

    /// Serves `router` for `redisse`.
    pub async fn start_router(redisse: Redisse, router: axum::Router) -> Self {
        let listener = Tcp::bind("127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("tcp addr");
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(serve(listener, redisse.clone(), router, stopped(stop_rx)));
        TestServer {
            addr,
            internal_addr: None,
            redisse,
            stop: Some(stop),
            task: Some(task),
            internal_task: None,
        }
    }

    /// A URL of the public router.
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    /// A URL of the internal router (served by [`TestServer::start`]).
    pub fn internal_url(&self, path_and_query: &str) -> String {
        let addr = self
            .internal_addr
            .expect("this server has no internal router");
        format!("http://{addr}{path_and_query}")
    }

    /// Opens a stream with `Accept: text/event-stream` and the extra headers.
    pub async fn stream(&self, path_and_query: &str, headers: &[(&str, &str)]) -> SseStream {
        SseStream::open(&self.url(path_and_query), headers).await
    }

    /// Opens a stream without `Last-Event-ID` and waits until it is live: a warm-up event on a
    /// channel nobody listens to makes the counter exist, so the stream's first event is
    /// `lastEventId`, sent once replay is done and live events flow.
    pub async fn live_stream(&self, path_and_query: &str) -> SseStream {
        // A short name: it must fit the smallest channel-name limit a test sets.
        self.publish("t.warm", "warmup", "").await;
        let mut stream = self.stream(path_and_query, &[]).await;
        assert_eq!(stream.status, 200, "stream refused: {path_and_query}");
        let first = stream.next().await;
        assert_eq!(
            first.event, "lastEventId",
            "first event of a fresh stream: {first:?}"
        );
        stream
    }

    /// The value of an unlabelled metric in the instance's Prometheus text (fails the test
    /// when it is missing).
    pub fn metric(&self, name: &str) -> u64 {
        let text = self.redisse.metrics().render_prometheus();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the metrics:\n{text}"))
    }

    /// Publishes through the instance's Rust publisher.
    pub async fn publish(&self, channel: &str, event_type: &str, data: &str) -> u64 {
        self.redisse
            .publisher()
            .publish(channel, redisse::Event::new(event_type, data))
            .await
            .expect("publish")
    }

    /// Waits until exactly `n` streams are open (fails the test after [`PATIENCE`]).
    pub async fn wait_connections(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.redisse.connections() != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "streams open: {} instead of {n}",
                self.redisse.connections()
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    /// Triggers the graceful shutdown and waits for `serve` to return.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("serve");
        }
        if let Some(task) = self.internal_task.take() {
            task.await.expect("internal server task").expect("serve");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(true);
        }
    }
}
