//! Shared test helpers: a real `redis-server` the tests start and stop themselves, an
//! in-process Redisse server on a free port, an SSE client that keeps the raw bytes, and a TCP
//! tap that records what passes between a client and a server.

pub mod binary;
pub mod browser;
pub mod cert;
pub mod cluster;
pub mod logs;
pub mod pages;
pub mod raw;
pub mod redis;
pub mod sentinel;
pub mod server;
pub mod sse;
pub mod steps;
pub mod tap;

use std::time::Duration;

pub use self::redis::RedisServer;
pub use server::TestServer;
pub use sse::{SseEvent, SseStream};

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The two brokers every behaviour test runs against.
pub enum Backend {
    Memory,
    Redis(RedisServer),
}

impl Backend {
    pub fn memory() -> Self {
        Backend::Memory
    }

    pub fn redis() -> Self {
        Backend::Redis(RedisServer::start())
    }

    /// A config on this broker, with short timings suited to tests.
    pub fn config(&self) -> redisse::Config {
        let mut config = redisse::Config::default();
        if let Backend::Redis(r) = self {
            config.redis_url = Some(r.url());
            config.redis_ping_interval = Duration::from_millis(500);
            config.redis_ping_timeout = Duration::from_millis(500);
        }
        config
    }

    pub fn redis_server(&self) -> &RedisServer {
        match self {
            Backend::Redis(r) => r,
            Backend::Memory => panic!("this test needs the Redis backend"),
        }
    }
}

/// Declares one `#[tokio::test]` per broker: `NAME::memory` and `NAME::redis`, both calling
/// `async fn NAME(backend: Backend)` defined in the same module.
#[macro_export]
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn memory() {
                super::$name($crate::support::Backend::memory()).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::support::Backend::redis()).await
            }
        }
    )*};
}
