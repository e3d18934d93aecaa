//! Channel names, validated once for every path that takes one: the names a stream request
//! listens to (after the channel function), `POST /publish/<channel>`, and [`crate::Publisher`].
//!
//! A channel name is any non-empty UTF-8 string up to the instance's length limit. Names are
//! Redis keys and pub/sub channels verbatim (the gem's layout), so no other character is
//! special; what a client may not name comes from the limit alone, and a publisher is held to
//! the same rules as a subscriber, so nobody publishes to a name no client could listen to.

use std::sync::Arc;

/// Why a channel name is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum InvalidChannel {
    /// The name is empty.
    #[error("the channel name is empty")]
    Empty,
    /// The name is longer than the limit (`Config::max_channel_name_bytes`).
    #[error("the channel name is longer than {max} bytes")]
    TooLong {
        /// The limit, in bytes.
        max: usize,
    },
}

/// A channel name that passed the checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChannelName(Arc<str>);

impl ChannelName {
    /// Checks `name` against the rules and a length limit of `max_bytes`.
    pub fn new(name: &str, max_bytes: usize) -> Result<Self, InvalidChannel> {
        ChannelName::check(name, max_bytes)?;
        Ok(ChannelName(Arc::from(name)))
    }

    /// The same checks without keeping the name (publishing needs no copy of it).
    pub fn check(name: &str, max_bytes: usize) -> Result<(), InvalidChannel> {
        if name.is_empty() {
            return Err(InvalidChannel::Empty);
        }
        if name.len() > max_bytes {
            return Err(InvalidChannel::TooLong { max: max_bytes });
        }
        Ok(())
    }

    /// The name, shared.
    pub fn into_shared(self) -> Arc<str> {
        self.0
    }

    #[cfg(test)]
    fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_non_empty_and_bounded() {
        assert_eq!(ChannelName::new("", 8), Err(InvalidChannel::Empty));
        assert_eq!(
            ChannelName::new("12345678", 8).unwrap().as_str(),
            "12345678"
        );
        assert_eq!(
            ChannelName::new("123456789", 8),
            Err(InvalidChannel::TooLong { max: 8 })
        );
        // The limit is in bytes, not characters.
        assert!(ChannelName::new("ééééé", 8).is_err());
        assert!(ChannelName::new("a b\u{1F600}=&", 64).is_ok());
    }
}
