//! The axum-native way to open a stream: an extractor for what the client asks
//! ([`SseRequest`]) and [`Redisse::stream`], which turns it and the channels the application
//! chose into the stream response.
//!
//! The channel function ([`crate::ChannelPolicy`]) fits applications that decide from the
//! request head alone; with the extractor, a handler chooses channels with ordinary axum
//! extractors (`State`, `Extension<User>`, `Path`) beside it. Both paths share every rule:
//! the extractor refuses what the endpoint refuses before the channel function runs, and
//! [`Redisse::stream`] what it refuses after.

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response as AxumResponse};
use http::request::Parts;
use http::{Response, StatusCode};

use crate::channel::ChannelName;
use crate::event::LastEventId;
use crate::headers::Accepts;
use crate::instance::{Redisse, Shared};
use crate::metrics::Refusal;
use crate::query::StreamQuery;
use crate::refusal::Refused;
use crate::sse::SseBody;
use crate::stream::{StreamSpec, open};
use crate::transport::StreamSink;

/// What a stream request asks for: checked content negotiation, the parsed query, and the
/// client's position (`Last-Event-ID`, else `lastEventId`).
///
/// As an axum extractor it refuses a request that does not accept `text/event-stream` (406)
/// and a malformed query string (400), with a plain-text body that says why.
///
/// ```
/// use axum::{Extension, Router, extract::State, routing::get};
/// use redisse::{Config, Redisse, SseRequest};
///
/// #[derive(Clone)]
/// struct User(String);
///
/// async fn events(
///     State(redisse): State<Redisse>,
///     Extension(User(name)): Extension<User>,
///     request: SseRequest,
/// ) -> impl axum::response::IntoResponse {
///     redisse.stream(request, ["global".to_string(), format!("user.{name}")])
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let redisse = Redisse::new(Config::default())?;
/// let app: Router = Router::new().route("/events", get(events)).with_state(redisse);
/// # let _ = app; Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct SseRequest {
    query: StreamQuery,
    last: LastEventId,
    /// The value itself when it is not a plain number: on a Redis Cluster, a compound position
    /// (see `compound`).
    last_text: Option<Box<str>>,
    /// The server's, when it asked for the stream's handle.
    sink: Option<StreamSink>,
}

impl SseRequest {
    /// Reads a request head as the endpoint does, with its `Accept` header already read.
    pub(crate) fn from_head(parts: &Parts, accepts: Accepts) -> Result<Self, Refused> {
        if !accepts.event_stream {
            return Err(Refused::quiet(
                Refusal::NotAcceptable,
                StatusCode::NOT_ACCEPTABLE,
                "406 Not Acceptable\nThis resource can only be represented as text/event-stream.\n",
            ));
        }
        let query = StreamQuery::parse(parts.uri.query().unwrap_or(""))
            .map_err(|e| Refused::stream(Refusal::BadQuery, StatusCode::BAD_REQUEST, e))?;
        let (last, last_text) = last_event_id(&parts.headers, query.last_event_id.as_deref());
        let sink = parts.extensions.get::<StreamSink>().cloned();
        Ok(SseRequest {
            query,
            last,
            last_text,
            sink,
        })
    }

    /// The parsed query string: the channels it names, `polling`, `lastEventId`.
    pub fn query(&self) -> &StreamQuery {
        &self.query
    }

    /// Where the client says it is.
    pub fn last_event_id(&self) -> LastEventId {
        self.last
    }

    /// The parts: the query (moved, not copied), the position and the server's sink.
    pub(crate) fn into_parts(self) -> (StreamQuery, Position, Option<StreamSink>) {
        let position = Position {
            last: self.last,
            text: self.last_text,
        };
        (self.query, position, self.sink)
    }
}

/// Where a client says it is: the parsed value, and the text when it is not a plain number.
#[derive(Clone, Debug)]
pub(crate) struct Position {
    pub last: LastEventId,
    pub text: Option<Box<str>>,
}

/// Why [`SseRequest`] refused a request: answers with the status and a plain-text reason.
#[derive(Debug)]
pub struct SseRejection(Response<String>);

impl SseRejection {
    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.0.status()
    }
}

impl IntoResponse for SseRejection {
    fn into_response(self) -> AxumResponse {
        self.0.into_response()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for SseRequest {
    type Rejection = SseRejection;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, SseRejection> {
        let accepts = Accepts::get(&parts.extensions, &parts.headers);
        SseRequest::from_head(parts, accepts).map_err(|r| SseRejection(r.respond_uncounted()))
    }
}

impl Redisse {
    /// The response to `request` listening to `channels`: the stream (200), or 404 when no
    /// channel is left once empty and repeated names are dropped, or 400 past a channel limit.
    /// Refusals are counted in the metrics like the endpoint's.
    pub fn stream<I>(&self, request: SseRequest, channels: I) -> Response<SseBody>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let (query, last, sink) = request.into_parts();
        open_stream(&self.shared, query.polling, last, sink, channels, None)
    }
}

/// Validates the channels and opens the stream (shared by the endpoint and [`Redisse::stream`]).
pub(crate) fn open_stream<I>(
    shared: &Arc<Shared>,
    polling: bool,
    position: Position,
    sink: Option<StreamSink>,
    channels: I,
    expires: Option<std::time::SystemTime>,
) -> Response<SseBody>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let channels = match validate(shared, channels) {
        Ok(c) => c,
        Err(refused) => return refused.respond(&shared.metrics).map(SseBody::full),
    };
    if channels.is_empty() {
        let refused = Refused::quiet(
            Refusal::NotAcceptable,
            StatusCode::NOT_FOUND,
            "404 Not Found\n",
        );
        return refused.respond(&shared.metrics).map(SseBody::full);
    }
    open(
        shared,
        StreamSpec {
            channels,
            polling,
            last: position.last,
            last_text: position.text,
            expires,
            sink,
        },
    )
}

/// Drops empty and repeated names and applies the channel limits.
fn validate<I>(shared: &Shared, names: I) -> Result<Vec<Arc<str>>, Refused>
where
    I: IntoIterator,
    I::Item: AsRef<str>,
{
    let config = &shared.config;
    let mut channels: Vec<Arc<str>> = Vec::new();
    for name in names {
        let name = name.as_ref();
        if name.is_empty() || channels.iter().any(|c| **c == *name) {
            continue;
        }
        let name = ChannelName::new(name, config.max_channel_name_bytes).map_err(|_| {
            let msg = format!(
                "a channel name is longer than {} bytes",
                config.max_channel_name_bytes
            );
            Refused::stream(Refusal::ChannelNameTooLong, StatusCode::BAD_REQUEST, msg)
        })?;
        channels.push(name.into_shared());
        if channels.len() > config.max_channels {
            let msg = format!(
                "more than {} channels on one connection",
                config.max_channels
            );
            return Err(Refused::stream(
                Refusal::MaxChannels,
                StatusCode::BAD_REQUEST,
                msg,
            ));
        }
    }
    Ok(channels)
}

/// The position from `Last-Event-ID`, else the `lastEventId` query parameter, with the text
/// when it is not a plain number (bounded by the request head's own limits).
fn last_event_id(
    headers: &http::HeaderMap,
    query: Option<&str>,
) -> (LastEventId, Option<Box<str>>) {
    let text = match headers.get("last-event-id") {
        Some(value) => match value.to_str() {
            Ok(v) => v.trim(),
            Err(_) => return (LastEventId::Unknown, None),
        },
        None => match query {
            Some(q) => q,
            None => return (LastEventId::None, None),
        },
    };
    match LastEventId::parse(text) {
        LastEventId::Unknown => (LastEventId::Unknown, Some(text.into())),
        last => (last, None),
    }
}
