//! The HTTP headers the endpoint and the server read: content negotiation (`Accept`, parsed
//! once per request) and `Connection: close`.

use http::header;

/// What a request's `Accept` header lists, among the media types the endpoint serves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Accepts {
    /// `text/event-stream`: a stream request.
    pub event_stream: bool,
    /// `application/json`: the gem's stats.
    pub json: bool,
}

impl Accepts {
    /// Reads every `Accept` header once (parameters and case ignored; `q=0` excludes).
    pub fn parse(headers: &http::HeaderMap) -> Self {
        let mut out = Accepts::default();
        let ranges = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','));
        for range in ranges {
            let mut params = range.split(';');
            let kind = params.next().unwrap_or("").trim();
            let refused = params.any(|p| {
                let p = p.trim();
                p.len() > 2
                    && p[..2].eq_ignore_ascii_case("q=")
                    && p[2..].trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
            });
            if refused {
                continue;
            }
            if kind.eq_ignore_ascii_case("text/event-stream") {
                out.event_stream = true;
            } else if kind.eq_ignore_ascii_case("application/json") {
                out.json = true;
            }
        }
        out
    }

    /// The request's: what an earlier step left in the extensions ([`Accepts::keep`]) while the
    /// request still carries the header it read (a layer may have rewritten it), else parsed.
    pub fn get(extensions: &http::Extensions, headers: &http::HeaderMap) -> Self {
        let raw = single_accept(headers);
        if let (Some(parsed), Some(raw)) = (extensions.get::<ParsedAccept>(), &raw)
            && parsed.raw == *raw
        {
            return parsed.accepts;
        }
        Accepts::parse(headers)
    }

    /// [`Accepts::get`], and leaves the result in the extensions for the steps after this one
    /// (the server's head reader and the standalone routes do, before the endpoint).
    pub fn keep(extensions: &mut http::Extensions, headers: &http::HeaderMap) -> Self {
        let accepts = Accepts::get(extensions, headers);
        if let Some(raw) = single_accept(headers) {
            extensions.insert(ParsedAccept { raw, accepts });
        }
        accepts
    }
}

/// An `Accept` header and what it lists, kept in a request's extensions.
#[derive(Clone, Debug)]
struct ParsedAccept {
    raw: Option<http::HeaderValue>,
    accepts: Accepts,
}

/// The request's `Accept` header when it has at most one (`Some(None)`: none); `None` when it
/// has several, which are parsed each time (rare, and not worth a copy of each).
fn single_accept(headers: &http::HeaderMap) -> Option<Option<http::HeaderValue>> {
    let mut values = headers.get_all(header::ACCEPT).iter();
    let first = values.next().cloned();
    values.next().is_none().then_some(first)
}

/// The headers of every stream response, the "come back later" answer included.
pub(crate) fn stream_headers() -> [(header::HeaderName, http::HeaderValue); 3] {
    use http::HeaderValue;
    [
        (
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (
            header::HeaderName::from_static("x-accel-buffering"),
            HeaderValue::from_static("no"),
        ),
    ]
}

/// Whether these headers (of a request or a response) ask to close the connection after the
/// response.
pub(crate) fn wants_close(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("close"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn accepts(v: &str) -> Accepts {
        let mut h = http::HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
        Accepts::parse(&h)
    }

    #[test]
    fn accept_matching() {
        assert!(accepts("text/event-stream").event_stream);
        assert!(accepts("Text/Event-Stream; charset=utf-8").event_stream);
        assert!(accepts("text/html, text/event-stream;q=0.5").event_stream);
        assert!(!accepts("text/event-stream;q=0").event_stream);
        assert!(!accepts("*/*").event_stream);
        assert!(!accepts("text/event-streams").event_stream);
        let both = accepts("application/json, text/event-stream");
        assert!(both.json && both.event_stream);
        assert!(!accepts("application/json;q=0").json);
    }

    #[test]
    fn several_accept_headers_are_read_and_parsed_once() {
        let mut h = http::HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("text/html"));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let mut ext = http::Extensions::new();
        assert!(Accepts::keep(&mut ext, &h).event_stream);
        assert!(
            ext.get::<ParsedAccept>().is_none(),
            "several headers are not kept"
        );
    }

    #[test]
    fn a_parsed_accept_is_reused_only_for_the_same_header() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let mut ext = http::Extensions::new();
        assert!(Accepts::keep(&mut ext, &h).event_stream);
        // The stored result is what is read back for the same header...
        let stored = ext.get::<ParsedAccept>().cloned().unwrap();
        ext.insert(ParsedAccept {
            accepts: Accepts::default(),
            ..stored
        });
        assert!(!Accepts::keep(&mut ext, &h).event_stream);
        // ...and a layer that rewrites the header gets it parsed again.
        h.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let again = Accepts::keep(&mut ext, &h);
        assert!(again.json && !again.event_stream);
    }

    #[test]
    fn connection_close_is_found_among_tokens() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Close"),
        );
        assert!(wants_close(&h));
        h.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        assert!(!wants_close(&h));
    }
}
