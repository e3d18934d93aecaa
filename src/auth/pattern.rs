//! Channel grants: the channel names and prefix patterns a token or a callback allows.
//!
//! An entry is a channel name (`global`), a prefix pattern (`user.42.*`: `user.42.` followed by
//! at least one character, so `user.42.x` but not `user.42`, `user.42.` nor `user.420`) or `*`
//! alone (every channel). Matching a name is one prefix or equality comparison per entry, so it
//! is linear in the name's length for each entry, whatever the name: no pattern engine, and no
//! input that makes it slow.

/// A set of channel names and prefix patterns.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChannelPatterns {
    /// Exact names, in the order given.
    exact: Vec<String>,
    /// Prefixes of `prefix*` entries (with the trailing dot or whatever precedes the `*`).
    prefixes: Vec<String>,
    /// `*` alone.
    any: bool,
}

impl ChannelPatterns {
    /// Reads entries: a trailing `*` makes a prefix pattern, `*` alone matches every channel,
    /// and an empty entry matches nothing.
    pub fn new<I, S>(entries: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut patterns = ChannelPatterns::default();
        for entry in entries {
            let entry = entry.as_ref();
            if entry == "*" {
                patterns.any = true;
            } else if let Some(prefix) = entry.strip_suffix('*') {
                patterns.prefixes.push(prefix.to_owned());
            } else if !entry.is_empty() {
                patterns.exact.push(entry.to_owned());
            }
        }
        patterns
    }

    /// Whether `channel` is covered.
    pub fn covers(&self, channel: &str) -> bool {
        self.any
            || self.exact.iter().any(|e| e == channel)
            || self
                .prefixes
                .iter()
                .any(|p| channel.len() > p.len() && channel.starts_with(p.as_str()))
    }

    /// The exact names (what a request that names no channel listens to).
    pub fn names(&self) -> &[String] {
        &self.exact
    }

    /// Whether nothing is covered.
    pub fn is_empty(&self) -> bool {
        !self.any && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_patterns_need_one_more_character() {
        let p = ChannelPatterns::new(["user.42.*", "global"]);
        assert!(p.covers("user.42.x"));
        assert!(p.covers("user.42.feed.more"));
        assert!(!p.covers("user.42"));
        assert!(!p.covers("user.42."));
        assert!(!p.covers("user.420"));
        assert!(!p.covers("user.4"));
        assert!(p.covers("global"));
        assert!(!p.covers("global2"));
        assert!(!p.covers("glob"));
        assert_eq!(p.names(), ["global".to_string()]);
    }

    #[test]
    fn star_alone_covers_everything_and_empty_entries_nothing() {
        assert!(ChannelPatterns::new(["*"]).covers("anything"));
        let none = ChannelPatterns::new([""]);
        assert!(none.is_empty());
        assert!(!none.covers(""));
        assert!(!none.covers("a"));
        // `a*` covers `ab` but not `a`; a star inside a name is an ordinary character.
        let p = ChannelPatterns::new(["a*", "b*c"]);
        assert!(p.covers("ab") && !p.covers("a"));
        assert!(p.covers("b*c") && !p.covers("bxc"));
    }
}
