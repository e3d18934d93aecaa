//! A small chat on redisse, embedded in an axum application: what the Ruby gem's example did,
//! with access control as a real application does it.
//!
//! ```text
//! cargo run --example chat                                   # in-memory broker
//! cargo run --example chat -- --redis redis://127.0.0.1:6379/ --listen 127.0.0.1:3000
//! ```
//!
//! Then open <http://127.0.0.1:3000/> in two browsers (or a normal and a private window). Each
//! visitor gets a random 128-bit id and a display name in a signed session cookie (the secret
//! is `CHAT_SECRET`, random when unset, so set it for sessions to survive a restart). The page
//! opens one `EventSource` on two channels, `global` and the visitor's own `visitor.<id>` (the
//! page learns its id from the HTML), and its form publishes to everyone or to one visitor by
//! name through `POST /send`. Names are not unique: a message to a name goes to the visitor
//! who most recently loaded the page or opened a stream with it (see `recent`).
//!
//! The session layer runs first and puts the [`Visitor`] in the request extensions; the channel
//! function reads it there and decides what the stream may see: the channels the page asks for
//! in the query, provided each is `global` or the visitor's own (403 otherwise), both when it
//! asks for none.
//!
//! Memory: with `history_size` 20 and a text of at most 500 bytes (at most about 3.1 KB once
//! JSON-escaped and framed), the in-memory broker keeps at most about 62 KB per channel, for
//! `global` and for each visitor who was sent a private message while among the last 10,000
//! seen; the broker never forgets a channel, so over the process's life that last part grows
//! with such visitors (on Redis, the same in Redis keys), which a real application bounds by
//! tying sessions to accounts or deleting the history of ended ones.

mod recent;
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

use crate::recent::Recent;
use crate::session::{Sessions, Visitor};

const PAGE: &str = include_str!("page.html");
const MAX_TEXT_BYTES: usize = 500;
const HISTORY_SIZE: usize = 20;

#[derive(Clone)]
struct App {
    sessions: Arc<Sessions>,
    recent: Arc<Recent>,
    publisher: Publisher,
}

fn private_channel(id: &str) -> String {
    format!("visitor.{id}")
}

/// The session layer: the visitor of a valid cookie goes into the request's extensions.
async fn authenticate(State(app): State<App>, mut req: Request, next: Next) -> Response {
    if let Some(visitor) = app.sessions.read(req.headers()) {
        req.extensions_mut().insert(visitor);
    }
    next.run(req).await
}

/// The channel function: from the session only, whatever the query asks for.
fn channels(recent: &Recent, parts: &Parts) -> Result<Vec<String>, Rejection> {
    let Some(visitor) = parts.extensions.get::<Visitor>() else {
        return Err(Rejection::unauthorized("no session: open the page first"));
    };
    recent.saw(visitor);
    let allowed = ["global".to_string(), private_channel(&visitor.id)];
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
    let (visitor, cookie) = match visitor {
        Some(Extension(visitor)) => (visitor, None),
        None => {
            let (visitor, cookie) = app.sessions.issue();
            (visitor, Some(cookie))
        }
    };
    app.recent.saw(&visitor);
    // Names come from fixed lists of plain words, ids are hex digits: nothing to escape.
    let html = Html(
        PAGE.replace("{{NAME}}", &visitor.name)
            .replace("{{ID}}", &visitor.id),
    );
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
    let Some(Extension(from)) = visitor else {
        return refuse(StatusCode::UNAUTHORIZED, "no session: open the page first");
    };
    // In bytes, which is what memory costs (500 letters, fewer with accents or emoji).
    let text = message.text.trim();
    if text.is_empty() || text.len() > MAX_TEXT_BYTES {
        return refuse(StatusCode::BAD_REQUEST, "write 1 to 500 bytes");
    }
    let to = message.to.trim();
    let (channel, kind) = match to {
        "" => ("global".to_string(), "global"),
        name => match app.recent.id_of(name) {
            Some(id) => (private_channel(&id), "private"),
            None => return refuse(StatusCode::BAD_REQUEST, "no visitor has that name"),
        },
    };
    let data = serde_json::json!({ "from": from.name, "text": text }).to_string();
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
    config.history_size = HISTORY_SIZE;
    // Fail now, rather than serve pages whose streams wait for a Redis that is not there.
    let redisse = Redisse::connect(config, Duration::from_secs(5)).await?;
    let app = App {
        sessions: Arc::new(Sessions::new(&secret)),
        recent: Arc::new(Recent::default()),
        publisher: redisse.publisher(),
    };
    let recent = app.recent.clone();
    let policy = move |parts: &Parts| std::future::ready(channels(&recent, parts));
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
