//! `redisse publish CHANNEL [DATA]`: publish one event straight to Redis or through a server's
//! `POST /publish`, and print its id.

use std::io::Read;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use super::args::PublishArgs;
use crate::event::Event;
use crate::query::form_encode;

pub(super) async fn run(args: PublishArgs) -> Result<(), String> {
    let data = match &args.data {
        Some(d) => d.clone(),
        None => read_stdin()?,
    };
    let event = Event::new(args.event_type.clone(), data);
    event.validate().map_err(|e| e.to_string())?;
    let id = match &args.redis {
        #[cfg(feature = "redis")]
        Some(url) => {
            let ca = args.redis_tls_ca.as_deref();
            let publisher =
                crate::publish::Publisher::redis_with_tls_ca(url, args.history_size, ca)
                    .map_err(|e| e.to_string())?;
            publisher
                .publish(&args.channel, event)
                .await
                .map_err(|e| e.to_string())?
        }
        #[cfg(not(feature = "redis"))]
        Some(_) => {
            return Err(
                "--redis: this build of redisse has no Redis support (cargo feature `redis`)"
                    .into(),
            );
        }
        None => {
            let server = match &args.server {
                Some(server) => server.clone(),
                None => format!("http://127.0.0.1:{}", default_port()?),
            };
            publish_http(&server, &args.channel, &event, args.token.as_deref()).await?
        }
    };
    println!("{id}");
    Ok(())
}

/// The server's port when `--server` is not given: `REDISSE_PORT`, as the server reads it, else
/// 8080.
fn default_port() -> Result<u16, String> {
    match std::env::var("REDISSE_PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("REDISSE_PORT={port:?} is not a port number")),
        Err(_) => Ok(8080),
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

async fn publish_http(
    server: &str,
    channel: &str,
    event: &Event,
    token: Option<&str>,
) -> Result<u64, String> {
    let base = server.trim_end_matches('/');
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| format!("--server {server:?}: only http:// URLs are supported"))?;
    // `http://host:port/prefix` (a server mounted under a path): connect to `host:port`.
    let authority = rest.split('/').next().unwrap_or(rest);
    let uri = format!(
        "{base}/publish/{}?type={}",
        path_segment(channel),
        form_encode(event.event_type())
    );
    let stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("cannot connect to {authority}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority} failed: {e}"))?;
    tokio::spawn(conn);
    let mut req = http::Request::post(uri)
        .header(http::header::HOST, authority)
        .header(http::header::CONTENT_TYPE, "text/plain; charset=utf-8");
    if let Some(token) = token {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let req = req
        .body(Full::new(Bytes::from(event.data().to_owned())))
        .map_err(|e| e.to_string())?;
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
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
