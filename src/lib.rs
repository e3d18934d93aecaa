//! Redisse: a Server-Sent Events server and library.
//!
//! A browser opens **one** `EventSource` connection and receives events from **several
//! channels**; the application decides which channels a request may see and publishes events
//! through an API; a broker carries the events between publishers and any number of server
//! processes and keeps a short history per channel, so that a client that reconnects with
//! `Last-Event-ID` resumes where it left off. The broker is Redis, in the exact layout of the
//! Ruby gem [Redisse](https://github.com/tigerlily/redisse) (so a Ruby application keeps
//! publishing with the gem), or an in-memory broker for a single process.
//!
//! ```no_run
//! use redisse::{Config, Event, Redisse, Rejection};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let redisse = Redisse::new(Config::default())?;
//!     // Which channels a request may see, from the request head after your tower layers.
//!     let policy = |_parts: &http::request::Parts| async {
//!         Ok::<_, Rejection>(vec!["global".to_string()])
//!     };
//!     let app = axum::Router::new().route_service("/events", redisse.endpoint(policy));
//!     let publisher = redisse.publisher();
//!     tokio::spawn(async move { publisher.publish("global", Event::message("hi")).await });
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     axum::serve(listener, app).await?;
//!     Ok(())
//! }
//! ```
//!
//! # Two ways to choose channels
//!
//! A channel function ([`ChannelPolicy`]) mounted with [`Redisse::endpoint`], as above, or an
//! ordinary axum handler that takes an [`SseRequest`] beside its own extractors and answers
//! with [`Redisse::stream`].
//!
//! # Features
//!
//! * `redis` (default): the Redis broker and `Publisher::redis`. Without it, the in-memory
//!   broker only.
//! * `tls` (default): HTTPS in the server (`server::serve_with_tls`, `Tls`), with rustls.
//! * `cli` (default): the `redisse` command line (`cli::run`) and binary.
//!
//! # Layout
//!
//! Modules are declared bottom-up in `lib.rs`: each imports only modules declared before it,
//! so there is no circle (`tests/it/layering.rs` checks it). Following an event from publisher
//! to socket:
//!
//! * Foundations: `channel` (the one validated channel name), `config` ([`Config`], every
//!   default a named constant), `error` ([`Error`], [`BrokerError`]), `event` ([`Event`],
//!   [`LastEventId`], the SSE encoding done once per event, and the encoded `Frame`),
//!   `idempotency` (publish retries: the key, the fingerprint, the in-memory record), `stored`
//!   (a payload read from Redis: exactly one event, or refused), `logtext` (others' text made
//!   safe for a log line), `headers`
//!   (`Accept` parsed once, `Connection: close`), `query` ([`StreamQuery`]), `backoff` (the
//!   jittered backoff of every retry loop).
//! * `transport`: the contract between the endpoint and the server, below both: every stream
//!   comes with a `StreamHandle` (left in the request's `StreamSink` when the server put one
//!   there, else in the response's extensions), which a server blocked writing to a client
//!   watches to close it once its queue overflowed.
//! * `dispatch`: the messages between the brokers and the hub, with the cursor of the highest
//!   id delivered; `history`: a channel's history snapshot and the rule that decides
//!   `missedevents`; `metrics`: the counters, as the gem's JSON stats and Prometheus text;
//!   `refusal`: a refused request, counted, logged and answered in one place; [`auth`]: access
//!   control (JWT and auth-callback channel policies, channel patterns, publish credentials,
//!   CORS), over `outbound`, the HTTP client for what the server asks of others.
//! * `conn`: one connection's bounded queue; a full queue makes a live client slow (a stream
//!   not started yet, or a resume after an outage, replays from history instead). `resume`: the
//!   replay plan after `Last-Event-ID`.
//! * `broker`: the in-memory broker, and `broker::redis` (ids, history, delivery in the gem's
//!   layout), which starts and owns its supervised pub/sub subscriber.
//!   `replay`: a replay read in pages at the client's pace (after `Last-Event-ID`, or when a
//!   refill after a Redis outage is larger than a stream's queue).
//! * `hub`: the registry of local connections by channel and the dispatcher that fans events
//!   out without ever waiting for a client. `instance`: [`Redisse`], the handle that starts
//!   the broker, the hub and their tasks.
//! * `sse`: [`SseBody`], the body that drains a queue; `stream`: opening a stream (register,
//!   wait for the broker, replay, go live).
//! * `policy` ([`ChannelPolicy`], [`Rejection`]), `extract` ([`SseRequest`], [`Redisse::stream`]),
//!   `endpoint` ([`SseEndpoint`], the endpoint as a `tower` service), `publish` ([`Publisher`]),
//!   `redirect` ([`RedirectEndpoint`], nginx X-Accel-Redirect), `routes` (the standalone
//!   router: the endpoint, `/publish`, `/metrics`, `/health`).
//! * `tls` (feature `tls`) and [`server`]: the transport for any axum `Router` on any axum
//!   `Listener`: socket options, request-head limits, graceful shutdown, streams written on the
//!   bare socket on plain connections (`server::plain`), everything else by hyper, and slow
//!   clients closed on both paths (`server::slow`; over HTTP/2 only the slow stream is reset,
//!   `server::h2_streams`).
//! * `cli` (feature `cli`): the `redisse` command line.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms, missing_docs)]

// Listed bottom-up, by layer: each module imports only modules above it in this list (the
// order is kept as written: rustfmt.toml turns off rustfmt's sorting of `mod` lines).

// Foundations: nothing of the crate below them.
mod backoff;
mod channel;
mod redis_url;
pub mod config;
mod error;
mod event;
mod compound;
mod headers;
mod idempotency;
mod logtext;
pub mod metrics;
mod outbound;
mod query;
#[cfg(any(feature = "redis", fuzzing))]
mod stored;
mod tasks;
#[cfg(feature = "tls")]
mod tls;
mod transport;

// What the brokers, the hub and the endpoint share.
mod dispatch;
mod history;
mod policy;
mod refusal;
pub mod auth;

// One connection's queue, and its replay plan.
mod seen;
mod conn;
mod resume;

// The brokers, replay in pages, the hub, and the instance that starts them.
mod broker;
mod replay;
mod hub;
mod instance;

// Streams: opening one, and its body.
mod merge;
mod sse;
mod stream;

// The HTTP surface: the extractor, the endpoint, publishing, the standalone routes.
mod extract;
mod endpoint;
mod publish;
mod redirect;
// The internal listener's status page, below the routes that serve it.
mod status;

mod routes;

// The transport for any router, and the command line.
pub mod server;
#[cfg(feature = "cli")]
pub mod cli;

pub use config::Config;
pub use endpoint::SseEndpoint;
pub use error::{BrokerError, Error};
pub use event::{DEFAULT_EVENT_TYPE, Event, InvalidEvent, LastEventId, MAX_EVENT_ID};
pub use extract::{SseRejection, SseRequest};
pub use idempotency::MAX_IDEMPOTENCY_KEY_BYTES;
pub use instance::Redisse;
pub use policy::{ChannelPolicy, Grant, QueryChannels, Rejection};
pub use publish::{Publication, PublishError, PublishedEvent, Publisher, TestRecorder};
pub use query::{QueryError, StreamQuery};
pub use redirect::RedirectEndpoint;
pub use sse::{SlowClient, SseBody};
#[cfg(feature = "tls")]
pub use tls::Tls;

/// The README's Rust examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// So are those of docs/access-control.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/access-control.md")]
pub struct AccessControlDoctests;

/// And those of docs/publishing.md.
#[cfg(doctest)]
#[doc = include_str!("../docs/publishing.md")]
pub struct PublishingDoctests;

/// What the `fuzz/` targets and the integration tests need beyond the public API. Hidden and
/// outside any compatibility promise: it may change in any release.
#[doc(hidden)]
pub mod fuzzing {
    /// Decodes one `application/x-www-form-urlencoded` component strictly.
    pub fn form_decode(input: &str) -> Result<String, crate::QueryError> {
        crate::query::form_decode(input)
    }

    /// Encodes a string as a form component, as Ruby's `URI.encode_www_form` does.
    pub fn form_encode(input: &str) -> String {
        crate::query::form_encode(input)
    }

    /// The id of a payload stored in Redis or received by pub/sub and the bytes sent for it,
    /// `None` when it is not exactly one SSE event.
    #[cfg(fuzzing)]
    pub fn parse_stored(payload: &[u8]) -> Option<(u64, bytes::Bytes)> {
        crate::stored::parse_stored(payload.to_vec()).ok()
    }

    /// How the standalone server sorts a plain connection's first bytes: `None` while the head
    /// is incomplete, `Some(None)` for hyper, `Some(Some(len))` for a stream request.
    #[cfg(fuzzing)]
    pub fn request_head(bytes: &[u8]) -> Option<Option<usize>> {
        crate::server::decide_request_head(bytes)
    }
}
