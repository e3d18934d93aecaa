//! `redisse publish CHANNEL [DATA]`: publish one event straight to Redis, through a server's
//! internal listener (the default: `REDISSE_INTERNAL_ADDRESS`, else 127.0.0.1:8081, no
//! credential), or through its public `POST /publish` (`--server URL`, `http://` or
//! `https://`, with the token), and print its id. With `--idempotency-key` (the
//! `Idempotency-Key` header, or the key of the Redis publish script), a retry prints the first
//! id and publishes nothing.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::args::{DEFAULT_INTERNAL_ADDRESS, InternalAddress, PublishArgs, parse_internal_address};
use crate::event::Event;
use crate::query::form_encode;

pub(super) async fn run(args: PublishArgs) -> Result<(), String> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => read_stdin()?,
    };
    let event = Event::new(args.event_type.clone(), data);
    event.validate().map_err(|e| e.to_string())?;
    let key = args.idempotency_key.as_deref();
    if let Some(key) = key {
        crate::idempotency::check_key(key).map_err(|e| format!("--idempotency-key: {e}"))?;
    }
    if args.idempotency_window < std::time::Duration::from_millis(1) {
        return Err("--idempotency-window must be at least a millisecond".into());
    }
    #[cfg(feature = "redis")]
    let straight = match (&args.redis_master, &args.redis) {
        _ if !args.redis_cluster.is_empty() => {
            Some(crate::publish::Publisher::redis_cluster_with_tls_ca(
                &args.redis_cluster,
                args.history_size,
                args.redis_tls_ca.as_deref(),
            ))
        }
        (Some(master), _) => Some(crate::publish::Publisher::redis_sentinel_with_tls_ca(
            &args.redis_sentinel,
            master,
            args.history_size,
            args.redis_tls_ca.as_deref(),
        )),
        (None, Some(url)) => Some(crate::publish::Publisher::redis_with_tls_ca(
            url,
            args.history_size,
            args.redis_tls_ca.as_deref(),
        )),
        (None, None) => None,
    };
    #[cfg(not(feature = "redis"))]
    let straight: Option<Result<crate::publish::Publisher, String>> =
        match (&args.redis_master, &args.redis) {
            (None, None) if args.redis_cluster.is_empty() => None,
            _ => {
                return Err(
                "--redis, --redis-sentinel, --redis-cluster: this build of redisse has no Redis \
                            support (cargo feature `redis`)"
                    .into(),
            );
            }
        };
    let id = match straight {
        Some(publisher) => {
            let publisher = publisher
                .map_err(|e| e.to_string())?
                .with_idempotency_window(args.idempotency_window);
            match key {
                Some(key) => publisher
                    .publish_idempotent(&args.channel, event, key)
                    .await
                    .map(|p| p.id),
                None => publisher.publish(&args.channel, event).await,
            }
            .map_err(|e| e.to_string())?
        }
        None => match &args.server {
            Some(server) => {
                let auth = Auth {
                    token: args.token.as_deref(),
                    key,
                };
                publish_url(server, &args.channel, &event, auth).await?
            }
            None => match internal_address()? {
                InternalAddress::Tcp(addr) => {
                    let auth = Auth { token: None, key };
                    publish_url(&format!("http://{addr}"), &args.channel, &event, auth).await?
                }
                #[cfg(unix)]
                InternalAddress::Unix(path) => {
                    publish_unix(&path, &args.channel, &event, key).await?
                }
                #[cfg(not(unix))]
                InternalAddress::Unix(_) => {
                    return Err("unix sockets need a unix system".into());
                }
                InternalAddress::None => {
                    return Err(
                        "REDISSE_INTERNAL_ADDRESS is none: publish with --server URL \
                                and a token, or with --redis URL"
                            .into(),
                    );
                }
            },
        },
    };
    println!("{id}");
    Ok(())
}

/// The internal listener, as the server reads it: `REDISSE_INTERNAL_ADDRESS`, else the default.
fn internal_address() -> Result<InternalAddress, String> {
    match std::env::var("REDISSE_INTERNAL_ADDRESS") {
        Ok(addr) => {
            parse_internal_address(&addr).map_err(|e| format!("REDISSE_INTERNAL_ADDRESS: {e}"))
        }
        Err(_) => parse_internal_address(DEFAULT_INTERNAL_ADDRESS),
    }
}

fn read_stdin() -> Result<String, String> {
    let mut data = String::new();
    std::io::stdin()
        .read_to_string(&mut data)
        .map_err(|e| format!("cannot read the data from standard input: {e}"))?;
    if data.ends_with('\n') {
        data.pop();
        if data.ends_with('\r') {
            data.pop();
        }
    }
    Ok(data)
}

/// Percent-encodes a path segment (a space is `%20` in a path).
fn path_segment(s: &str) -> String {
    form_encode(s).replace('+', "%20")
}

/// What a publish request carries beside the event: the bearer token, the idempotency key.
#[derive(Clone, Copy)]
struct Auth<'a> {
    token: Option<&'a str>,
    key: Option<&'a str>,
}

/// The request to `POST <base>/publish/<channel>?type=<type>`.
fn request(
    base: &str,
    host: Option<&str>,
    channel: &str,
    event: &Event,
    auth: Auth<'_>,
) -> Result<http::Request<Full<Bytes>>, String> {
    let uri = format!(
        "{}/publish/{}?type={}",
        base.trim_end_matches('/'),
        path_segment(channel),
        form_encode(event.event_type())
    );
    let mut req =
        http::Request::post(uri).header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Some(host) = host {
        req = req.header(http::header::HOST, host);
    }
    if let Some(token) = auth.token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if let Some(key) = auth.key {
        req = req.header("idempotency-key", key);
    }
    req.body(Full::new(Bytes::from(event.data().to_owned())))
        .map_err(|e| format!("cannot build the request: {e}"))
}

/// Publishes through an `http://` or `https://` server.
async fn publish_url(
    server: &str,
    channel: &str,
    event: &Event,
    auth: Auth<'_>,
) -> Result<u64, String> {
    if !crate::outbound::supports(server) {
        return Err(if server.starts_with("https://") {
            format!("--server {server:?}: this build of redisse has no TLS (feature `tls`)")
        } else {
            format!("--server {server:?}: only http:// and https:// URLs are supported")
        });
    }
    let req = request(server, None, channel, event, auth)?;
    let client = crate::outbound::client()?;
    let res = client
        .request(req)
        .await
        .map_err(|e| format!("cannot publish to {server}: {}", error_chain(&e)))?;
    answer(res).await
}

/// Publishes through a unix socket (the internal listener on `unix:PATH`).
#[cfg(unix)]
async fn publish_unix(
    path: &std::path::Path,
    channel: &str,
    event: &Event,
    key: Option<&str>,
) -> Result<u64, String> {
    let stream = tokio::net::UnixStream::connect(path)
        .await
        .map_err(|e| format!("cannot connect to unix:{}: {e}", path.display()))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake on unix:{} failed: {e}", path.display()))?;
    tokio::spawn(conn);
    let auth = Auth { token: None, key };
    let req = request("", Some("localhost"), channel, event, auth)?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    answer(res).await
}

/// The error and its causes, for a one-line message.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}

/// The id from a `{"id": N}` answer, or the server's refusal.
async fn answer<B>(res: http::Response<B>) -> Result<u64, String>
where
    B: http_body::Body,
    B::Error: std::fmt::Display,
{
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("cannot read the response: {e}"))?
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    if !status.is_success() {
        return Err(format!("the server answered {status}: {}", text.trim()));
    }
    #[derive(serde::Deserialize)]
    struct Published {
        id: u64,
    }
    serde_json::from_str::<Published>(&text)
        .map(|p| p.id)
        .map_err(|e| format!("unexpected answer {text:?}: {e}"))
}
