//! A small chat on redisse, embedded in an axum application: what the Ruby gem's example did,
//! with access control as a real application does it.
//!
//! ```text
//! cargo run --example chat                                   # in-memory broker
//! cargo run --example chat -- --redis redis://127.0.0.1:6379/ --listen 127.0.0.1:3000
//! ```
//!
//! Then open <http://127.0.0.1:3000/> in two browsers (or a normal and a private window). Each
//! visitor gets a name in a signed session cookie (the secret is `CHAT_SECRET`, random when
//! unset, so set it for sessions to survive a restart). The page opens one `EventSource` on two
//! channels, `global` and the visitor's own `visitor.<name>`, and its form publishes to everyone
//! or to one visitor by name through `POST /send`.
//!
//! The session layer runs first and puts the [`Visitor`] in the request extensions; the channel
//! function reads it there and decides what the stream may see: the channels the page asks for
//! in the query, provided each is `global` or the visitor's own (403 otherwise), both when it
//! asks for none.

mod session;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use http::StatusCode;
use http::header::{CACHE_CONTROL, SET_COOKIE};
use http::request::Parts;
use redisse::server::{Listener, Tcp};
use redisse::{Config, Event, Publisher, Redisse, Rejection, StreamQuery};
use serde::Deserialize;

use crate::session::{Sessions, Visitor, is_name};

const PAGE: &str = include_str!("page.html");
const MAX_TEXT_CHARS: usize = 500;

#[derive(Clone)]
struct App {
    sessions: Arc<Sessions>,
    publisher: Publisher,
}

fn private_channel(name: &str) -> String {
    format!("visitor.{name}")
}

/// The session layer: the visitor of a valid cookie goes into the request's extensions.
async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    if let Some(visitor) = app.sessions.read(req.headers()) {
        req.extensions_mut().insert(visitor);
    }
    next.run(req).await
}

/// The channel function: from the session only, whatever the query asks for.
fn channels(parts: &Parts) -> Result<Vec<String>, Rejection> {
    let Some(Visitor(name)) = parts.extensions.get::<Visitor>() else {
        return Err(Rejection::unauthorized("no session: open the page first"));
    };
    let allowed = ["global".to_string(), private_channel(name)];
    let asked = parts
        .extensions
        .get::<StreamQuery>()
        .map(|q| q.channels.as_slice())
        .unwrap_or_default();
    if asked.is_empty() {
        return Ok(allowed.to_vec());
    }
    if asked.iter().all(|c| allowed.iter().any(|a| **a == **c)) {
        Ok(asked.iter().map(|c| c.to_string()).collect())
    } else {
        Err(Rejection::forbidden(
            "you may listen to the global channel and your own",
        ))
    }
}

/// The page; a first visit gets its name and session cookie here.
async fn page(State(app): State<App>, visitor: Option<Extension<Visitor>>) -> Response {
    let (Visitor(name), cookie) = match visitor {
        Some(Extension(visitor)) => (visitor, None),
        None => {
            let (visitor, cookie) = app.sessions.issue();
            (visitor, Some(cookie))
        }
    };
    // Names come from fixed lists of plain words: nothing to escape.
    let html = Html(PAGE.replace("{{NAME}}", &name));
    let mut response = ([(CACHE_CONTROL, "no-store")], html).into_response();
    if let Some(cookie) = cookie.and_then(|c| c.parse().ok()) {
        response.headers_mut().insert(SET_COOKIE, cookie);
    }
    response
}

/// What the page's form sends: `to` is empty for everyone, else a visitor's name.
#[derive(Deserialize)]
struct Message {
    to: String,
    text: String,
}

fn refuse(status: StatusCode, error: &str) -> Response {
    (status, Json(serde_json::json!({ "error": error }))).into_response()
}

/// Publishes the form's message. It takes JSON only, which a page of another site cannot send
/// without a CORS preflight that this application never allows, so the session cookie alone
/// cannot be used to post from elsewhere.
async fn send(
    State(app): State<App>,
    visitor: Option<Extension<Visitor>>,
    Json(message): Json<Message>,
) -> Response {
    let Some(Extension(Visitor(from))) = visitor else {
        return refuse(StatusCode::UNAUTHORIZED, "no session: open the page first");
    };
    let text = message.text.trim();
    if text.is_empty() || text.chars().count() > MAX_TEXT_CHARS {
        return refuse(StatusCode::BAD_REQUEST, "write 1 to 500 characters");
    }
    let to = message.to.trim();
    let (channel, kind) = match to {
        "" => ("global".to_string(), "global"),
        name if is_name(name) => (private_channel(name), "private"),
        _ => return refuse(StatusCode::BAD_REQUEST, "no visitor has that name"),
    };
    let data = serde_json::json!({ "from": from, "text": text }).to_string();
    match app
        .publisher
        .publish(&channel, Event::new(kind, data))
        .await
    {
        Ok(id) => Json(serde_json::json!({ "id": id })).into_response(),
        Err(e) => {
            eprintln!("chat: publishing to {channel} failed: {e}");
            refuse(StatusCode::SERVICE_UNAVAILABLE, "not published, try again")
        }
    }
}

struct Args {
    listen: SocketAddr,
    redis: Option<String>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        redis: None,
    };
    let mut argv = std::env::args().skip(1);
    while let Some(flag) = argv.next() {
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => args.listen = value.parse().map_err(|e| format!("--listen: {e}"))?,
            "--redis" => args.redis = Some(value),
            _ => return Err(format!("unknown flag {flag} (--listen ADDR, --redis URL)")),
        }
    }
    Ok(args)
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("chat: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let args = parse_args()?;
    let secret = match std::env::var("CHAT_SECRET") {
        Ok(secret) if !secret.is_empty() => secret.into_bytes(),
        _ => {
            eprintln!("chat: CHAT_SECRET is not set: sessions end when the process does");
            session::random_secret().to_vec()
        }
    };
    let mut config = Config::default();
    config.redis_url = args.redis;
    // Fail now, rather than serve pages whose streams wait for a Redis that is not there.
    let redisse = Redisse::connect(config, Duration::from_secs(5)).await?;
    let app = App {
        sessions: Arc::new(Sessions::new(&secret)),
        publisher: redisse.publisher(),
    };
    let policy = |parts: &Parts| std::future::ready(channels(parts));
    let router = Router::new()
        .route("/", get(page))
        .route_service("/events", redisse.endpoint(policy))
        .route("/send", post(send))
        .layer(DefaultBodyLimit::max(4096))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app);

    let listener = Tcp::bind(args.listen).await?;
    eprintln!("chat: listening on http://{}/", listener.local_addr()?);
    // On Ctrl-C, streams end with a `retry:` and the pages reconnect to the next process.
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    redisse::server::serve(listener, redisse.clone(), router, shutdown).await?;
    Ok(())
}
