//! The SSE request's query string: channels, long polling and `lastEventId`.
//!
//! The query is split on `&` and each item is form-decoded whole (`+` is a space, `%XX` a byte),
//! as the gem does, so `?a=b` names the channel `a=b`. `polling` and `polling=<anything>` turn on
//! long polling, `lastEventId=<v>` gives a position, a bare `lastEventId` is ignored,
//! `authorization=<token>` (a subscriber's JWT, read by the JWT policy) is never a channel, and
//! every other item is a channel. Empty and repeated channel names are dropped (the gem kept them).
//! Unlike the gem, a malformed percent-escape or a name that is not UTF-8 is refused with a
//! clear error instead of an internal error.

use std::sync::Arc;

/// What a stream request's query string asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamQuery {
    /// The channels named in the query, in order, without empty or repeated names.
    pub channels: Vec<Arc<str>>,
    /// `polling` was given: close the stream shortly after the first event.
    pub polling: bool,
    /// The raw `lastEventId` value, when one was given with `=`.
    pub last_event_id: Option<String>,
}

/// Why a query string was refused (answered with 400).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum QueryError {
    /// A `%` not followed by two hexadecimal digits.
    #[error("invalid percent-encoding in the query string")]
    BadPercentEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("the query string does not decode to UTF-8")]
    NotUtf8,
}

impl StreamQuery {
    /// The query item that carries a subscriber's token: never a channel name (a token must
    /// not become a Redis key nor reach a log line).
    pub(crate) const AUTHORIZATION_PREFIX: &'static str = "authorization=";

    /// Parses a raw query string (without the `?`).
    ///
    /// ```
    /// use redisse::StreamQuery;
    /// let q = StreamQuery::parse("a&b=c&polling&lastEventId=42&a&&d+e").unwrap();
    /// let names: Vec<&str> = q.channels.iter().map(|c| &**c).collect();
    /// assert_eq!(names, ["a", "b=c", "d e"]);
    /// assert!(q.polling);
    /// assert_eq!(q.last_event_id.as_deref(), Some("42"));
    /// ```
    pub fn parse(query: &str) -> Result<Self, QueryError> {
        let mut out = StreamQuery::default();
        for item in query.split('&') {
            let item = form_decode(item)?;
            if item == "polling" || item.starts_with("polling=") {
                out.polling = true;
            } else if let Some(value) = item.strip_prefix("lastEventId=") {
                out.last_event_id = Some(value.to_owned());
            } else if item.is_empty()
                || item == "lastEventId"
                || item == "authorization"
                || item.starts_with(Self::AUTHORIZATION_PREFIX)
            {
                continue;
            } else if !out.channels.iter().any(|c| **c == *item) {
                out.channels.push(Arc::from(item));
            }
        }
        Ok(out)
    }
}

/// Decodes one `application/x-www-form-urlencoded` component strictly.
pub(crate) fn form_decode(input: &str) -> Result<String, QueryError> {
    if !input.contains(['%', '+']) {
        return Ok(input.to_owned());
    }
    let bytes = input.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .ok_or(QueryError::BadPercentEncoding)?;
                let hi = hex_value(hex[0]).ok_or(QueryError::BadPercentEncoding)?;
                let lo = hex_value(hex[1]).ok_or(QueryError::BadPercentEncoding)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

/// Encodes a string as a form component: alphanumerics and `*-._` stay, a space becomes `+`,
/// everything else `%XX` (what Ruby's `URI.encode_www_form` does).
pub(crate) fn form_encode(input: &str) -> String {
    let mut out = String::with_capacity(input.len());
    for &b in input.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'*' | b'-' | b'.' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(q: &str) -> Vec<String> {
        StreamQuery::parse(q)
            .unwrap()
            .channels
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn items_are_channels_except_the_reserved_ones() {
        assert_eq!(names(""), Vec::<String>::new());
        assert_eq!(names("a=b"), ["a=b"]);
        assert_eq!(names("a&&b&a&"), ["a", "b"]);
        assert_eq!(names("lastEventId&x"), ["x"]);
        assert_eq!(names("polling=yes&x"), ["x"]);
        assert_eq!(names("pollingx"), ["pollingx"]);
        assert_eq!(names("caf%C3%A9+au+lait"), ["café au lait"]);
        assert_eq!(names("%26amp"), ["&amp"]);
    }

    #[test]
    fn the_last_event_id_keeps_its_raw_value() {
        let q = StreamQuery::parse("lastEventId=&x").unwrap();
        assert_eq!(q.last_event_id.as_deref(), Some(""));
        let q = StreamQuery::parse("lastEventId=1&lastEventId=abc&x").unwrap();
        assert_eq!(q.last_event_id.as_deref(), Some("abc"));
        assert!(!q.polling);
    }

    #[test]
    fn refuses_bad_escapes_and_non_utf8() {
        assert_eq!(
            StreamQuery::parse("a%2"),
            Err(QueryError::BadPercentEncoding)
        );
        assert_eq!(
            StreamQuery::parse("a%zz"),
            Err(QueryError::BadPercentEncoding)
        );
        assert_eq!(StreamQuery::parse("%ff"), Err(QueryError::NotUtf8));
    }

    #[test]
    fn encoding_round_trips() {
        for s in ["plain", "a b&c=d", "café", "100%", "*-._~"] {
            assert_eq!(form_decode(&form_encode(s)).unwrap(), s);
        }
        assert_eq!(form_encode("a b~"), "a+b%7E");
    }
}
