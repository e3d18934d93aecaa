//! The startup check of a Redis broker: is there a Redis that answers, with these credentials?
//!
//! Once running, the broker survives any outage (the subscriber reconnects for ever), which is
//! right for an outage and wrong for a typo: a wrong host, port or password would otherwise
//! start a server that logs a warning every two seconds and serves nothing. So before anything
//! listens, [`wait_until_answered`] opens a real connection with the client the subscriber uses
//! (same URL, password, TLS and protocol) and sends a PING, retrying for a bounded time what
//! may pass by itself (a Redis still starting: refused, closed, loading, a name not yet in the
//! DNS) and failing at once on what will not (a wrong password, a server that is not Redis, a
//! certificate that does not verify). The error names the cause in one sentence; it never
//! contains a password (the server is named by `redis_url::describe`, and the client's errors
//! carry no URL). Through Sentinel the primary is first asked of the sentinels, and a sentinel
//! that does not know it yet is waited for.

use std::time::Duration;

use redis::{AsyncConnectionConfig, ConnectionAddr, ErrorKind, RedisError, ServerErrorKind, Value};
use tokio::time::Instant;

use super::primary::Primary;
use crate::backoff::Backoff;

/// Pauses between attempts: short, since a Redis that is starting answers within moments.
const MIN_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// Why the check failed.
#[derive(Debug)]
pub(crate) struct Unanswered {
    /// One sentence, without the server's name: "connection refused".
    pub cause: String,
    /// Whether waiting longer could have helped (the last attempt's failure may pass by
    /// itself); `false` for a wrong password or a server that is not Redis.
    pub transient: bool,
}

impl Unanswered {
    pub(crate) fn transient(cause: impl Into<String>) -> Self {
        Unanswered {
            cause: cause.into(),
            transient: true,
        }
    }

    pub(crate) fn fatal(cause: impl Into<String>) -> Self {
        Unanswered {
            cause: cause.into(),
            transient: false,
        }
    }
}

/// Waits at most `timeout` for the primary to answer a PING on a new connection; through
/// Sentinel, once a sentinel named it. A sentinel that does not know the name yet (a Sentinel
/// still starting) is waited for like a Redis that is starting.
pub(crate) async fn wait_until_answered(
    primary: &Primary,
    timeout: Duration,
) -> Result<(), Unanswered> {
    let deadline = Instant::now() + timeout;
    let mut backoff = Backoff::new(MIN_PAUSE, MAX_PAUSE);
    let mut last: Option<Unanswered> = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(last.unwrap_or_else(|| Unanswered::transient("no answer")));
        }
        let failure = match tokio::time::timeout(remaining, attempt(primary, remaining)).await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(failure)) => failure,
            // Cut short by the deadline: the attempt before it says more (refused, say).
            Err(_) => last
                .take()
                .unwrap_or_else(|| Unanswered::transient("no answer")),
        };
        if !failure.transient {
            return Err(failure);
        }
        last = Some(failure);
        let pause = backoff
            .next_delay()
            .min(deadline.saturating_duration_since(Instant::now()));
        tokio::time::sleep(pause).await;
    }
}

/// The primary's client (asked of the sentinels), then one connection and one PING, each
/// bounded by `remaining`.
async fn attempt(primary: &Primary, remaining: Duration) -> Result<(), Unanswered> {
    let client = primary.resolve().await.map_err(|e| {
        if e.kind() == ErrorKind::MasterNameNotFoundBySentinel {
            Unanswered::transient(format!("no sentinel names that primary ({})", one_line(&e)))
        } else {
            let mut why = classify(&e);
            why.cause = format!("Sentinel: {}", why.cause);
            why
        }
    })?;
    if let ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } =
        client.get_connection_info().addr()
    {
        // Resolved here first, so that a host the DNS does not know is said so.
        let resolved = tokio::net::lookup_host((host.as_str(), *port)).await;
        if let Err(e) = resolved {
            return Err(Unanswered::transient(format!(
                "cannot resolve the host {host}: {e}"
            )));
        }
    }
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(remaining))
        .set_response_timeout(Some(remaining));
    let mut con = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| classify(&e))?;
    let pong: Value = redis::cmd("PING")
        .query_async(&mut con)
        .await
        .map_err(|e| classify(&e))?;
    match pong {
        Value::SimpleString(s) if s == "PONG" => {}
        Value::BulkString(b) if b == b"PONG" => {}
        other => {
            return Err(Unanswered::fatal(format!(
                "not a Redis server (it answered PING with {other:?})"
            )));
        }
    }
    // A node of a Redis Cluster answers PING too, but refuses the publish script of the gem's
    // layout (its keys, the channel and the global counter, lie in different slots) with
    // CROSSSLOT on every publish: said at the start instead, pointing to the cluster broker. (A server that does not answer INFO, an ACL user
    // without it, is let through.)
    let info: Option<String> = redis::cmd("INFO")
        .arg("cluster")
        .query_async(&mut con)
        .await
        .ok();
    if info.is_some_and(|i| i.lines().any(|l| l.trim() == "cluster_enabled:1")) {
        return Err(Unanswered::fatal(
            "a Redis Cluster node: this setting needs one Redis primary (alone or with \
             Sentinel); for a Redis Cluster, give its nodes as seeds with --redis-cluster \
             (Config::redis_cluster)",
        ));
    }
    Ok(())
}

/// The client's error on one line (its parse errors span several).
fn one_line(e: &RedisError) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a failed connection or PING says about the server.
pub(crate) fn classify(e: &RedisError) -> Unanswered {
    let code = e.code().unwrap_or("");
    let text = one_line(e);
    match e.kind() {
        ErrorKind::AuthenticationFailed => {
            return Unanswered::fatal(format!("authentication failed ({text})"));
        }
        _ if code == "NOAUTH" || code == "WRONGPASS" => {
            return Unanswered::fatal(format!("authentication failed ({text})"));
        }
        ErrorKind::Parse | ErrorKind::UnexpectedReturnType => {
            return Unanswered::fatal(format!(
                "not a Redis server (its reply is not the Redis protocol: {text})"
            ));
        }
        ErrorKind::RESP3NotSupported => {
            return Unanswered::fatal(
                "a Redis older than 6.0, which lacks the RESP3 protocol redisse needs",
            );
        }
        ErrorKind::Server(ServerErrorKind::BusyLoading) => {
            return Unanswered::transient("Redis is loading its data");
        }
        _ => {}
    }
    if e.is_connection_refusal() {
        Unanswered::transient("connection refused")
    } else if e.is_timeout() {
        Unanswered::transient("no answer")
    } else if e.is_connection_dropped() {
        Unanswered::transient(format!(
            "the connection was closed without an answer ({text})"
        ))
    } else if network_not_up(e) {
        // As while a container's network comes up: worth waiting for.
        Unanswered::transient(format!("the network does not reach Redis ({text})"))
    } else {
        Unanswered::fatal(text)
    }
}

/// Whether `e` is an I/O error saying the network is not (yet) there. (The client keeps the
/// I/O error behind an `Arc`, its error's source.)
fn network_not_up(e: &RedisError) -> bool {
    use std::error::Error as _;
    use std::io::ErrorKind::{HostUnreachable, NetworkDown, NetworkUnreachable};
    type Shared = std::sync::Arc<dyn std::error::Error + Send + Sync>;
    let io = e.source().and_then(|s| match s.downcast_ref::<Shared>() {
        Some(inner) => inner.downcast_ref::<std::io::Error>(),
        None => s.downcast_ref::<std::io::Error>(),
    });
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            HostUnreachable | NetworkUnreachable | NetworkDown
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_network_that_is_not_up_yet_is_waited_for() {
        for kind in [
            std::io::ErrorKind::NetworkUnreachable,
            std::io::ErrorKind::HostUnreachable,
        ] {
            let e = RedisError::from(std::io::Error::new(kind, "no route"));
            let why = classify(&e);
            assert!(why.transient, "{kind:?}: {}", why.cause);
        }
        let e = RedisError::from(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            "denied",
        ));
        assert!(!classify(&e).transient);
    }
}
