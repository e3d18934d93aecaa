//! Safe publish retries: what an idempotency key is, what a publish with one is compared by,
//! and the bounded record of recent keys the in-memory broker and the test publisher keep.
//!
//! A publisher that did not get its reply (a lost connection, a killed Redis) cannot know
//! whether its event went out; with a key it may retry. The broker remembers each key for the
//! idempotency window with the id it gave and a fingerprint of what was published (the channel
//! and the event as subscribers receive it): the same key with the same event within the
//! window answers the first id and publishes nothing, the same key with another event is
//! refused (the key was reused by mistake: answering the first id would hide that the new event
//! never went out). Keys are global, not per channel, so that a key reused on another channel
//! is caught too. On Redis the record is a key beside the events, written by the publish script
//! (see `broker::redis`); in memory it is [`RecentKeys`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::event::Event;

/// The longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// Why a key is refused: it must be 1 to [`MAX_IDEMPOTENCY_KEY_BYTES`] visible ASCII
/// characters (`!` to `~`: no space, no control character), which fits an HTTP header as is,
/// a Redis key name and a log line.
pub(crate) fn check_key(key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err("the Idempotency-Key is empty".into());
    }
    if key.len() > MAX_IDEMPOTENCY_KEY_BYTES {
        return Err(format!(
            "the Idempotency-Key is longer than {MAX_IDEMPOTENCY_KEY_BYTES} bytes"
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the Idempotency-Key must be visible ASCII characters (! to ~, no space)".into(),
        );
    }
    Ok(())
}

/// A publish with a key: the key (checked) and the fingerprint of what it publishes.
#[derive(Clone, Debug)]
pub(crate) struct Keyed<'a> {
    pub key: &'a str,
    pub fingerprint: String,
}

impl<'a> Keyed<'a> {
    /// The key of a publish of `event` on `channel`; the key must have passed [`check_key`].
    pub fn new(key: &'a str, channel: &str, event: &Event) -> Self {
        Keyed {
            key,
            fingerprint: fingerprint(channel, event),
        }
    }
}

/// The first 128 bits of the SHA-256 of the channel and the event's SSE text (after its `id:`
/// line), in hex: two publishes compare equal when subscribers would receive the same event on
/// the same channel (an empty type and `message` are one). The channel is length-prefixed so
/// that no channel and text run into each other.
fn fingerprint(channel: &str, event: &Event) -> String {
    let mut hash = Sha256::new();
    hash.update((channel.len() as u64).to_be_bytes());
    hash.update(channel.as_bytes());
    hash.update(event.encode_tail());
    hash.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What a publish did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// It published the event with this id.
    Published(u64),
    /// Its key was used within the window for the same event, published with this id; nothing
    /// was published now.
    Replayed(u64),
    /// Its key was used within the window for another event, published with this id; nothing
    /// was published now.
    Conflict(u64),
}

/// One remembered key.
struct Entry {
    id: u64,
    fingerprint: String,
    expires: Instant,
}

/// The keys of the last window, at most `max`: past it the oldest is forgotten before its
/// window ends (counted, see [`RecentKeys::remember`]). Every key has the same window, so the
/// order of insertion is the order of expiry and a queue of the keys finds the expired ones.
pub(crate) struct RecentKeys {
    window: Duration,
    max: usize,
    entries: HashMap<Box<str>, Entry>,
    order: VecDeque<(Box<str>, Instant)>,
}

impl RecentKeys {
    pub fn new(window: Duration, max: usize) -> Self {
        RecentKeys {
            window,
            max: max.max(1),
            entries: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Forgets the keys whose window ended.
    fn expire(&mut self, now: Instant) {
        while let Some((_, expires)) = self.order.front() {
            if *expires > now {
                break;
            }
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((key, expires)) = self.order.pop_front()
            && self.entries.get(&key).is_some_and(|e| e.expires == expires)
        {
            self.entries.remove(&key);
        }
    }

    /// What a publish with `keyed` finds: `Some(Replayed)` or `Some(Conflict)` when its key is
    /// remembered, `None` when it should publish.
    pub fn check(&mut self, keyed: &Keyed<'_>, now: Instant) -> Option<Outcome> {
        self.expire(now);
        let entry = self.entries.get(keyed.key)?;
        Some(if entry.fingerprint == keyed.fingerprint {
            Outcome::Replayed(entry.id)
        } else {
            Outcome::Conflict(entry.id)
        })
    }

    /// Remembers `keyed` for the window with the `id` it published; returns how many keys were
    /// forgotten before their window ended to make room (0 or 1).
    pub fn remember(&mut self, keyed: &Keyed<'_>, id: u64, now: Instant) -> u64 {
        self.expire(now);
        let mut evicted = 0;
        while self.entries.len() >= self.max {
            self.forget_oldest();
            evicted += 1;
        }
        let expires = now + self.window;
        let key: Box<str> = keyed.key.into();
        self.order.push_back((key.clone(), expires));
        self.entries.insert(
            key,
            Entry {
                id,
                fingerprint: keyed.fingerprint.clone(),
                expires,
            },
        );
        evicted
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed<'a>(key: &'a str, data: &str) -> Keyed<'a> {
        Keyed::new(key, "ch", &Event::message(data))
    }

    #[test]
    fn keys_are_visible_ascii_within_the_bound() {
        assert!(check_key("order-42_x.y:z/~!").is_ok());
        assert!(check_key(&"k".repeat(MAX_IDEMPOTENCY_KEY_BYTES)).is_ok());
        for bad in [
            String::new(),
            "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1),
            "a b".into(),
            "a\tb".into(),
            "a\nb".into(),
            "caf\u{e9}".into(),
            "\u{7f}".into(),
        ] {
            let err = check_key(&bad).unwrap_err();
            assert!(err.contains("Idempotency-Key"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn a_fingerprint_tells_events_and_channels_apart() {
        let base = Keyed::new("k", "ch", &Event::new("t", "x")).fingerprint;
        assert_eq!(base.len(), 32);
        assert_eq!(
            base,
            Keyed::new("k", "ch", &Event::new("t", "x")).fingerprint
        );
        assert_ne!(
            base,
            Keyed::new("k", "ch", &Event::new("t", "y")).fingerprint
        );
        assert_ne!(
            base,
            Keyed::new("k", "ch", &Event::new("u", "x")).fingerprint
        );
        assert_ne!(
            base,
            Keyed::new("k", "ch2", &Event::new("t", "x")).fingerprint
        );
        // What subscribers receive is compared: an empty type is `message`.
        assert_eq!(
            Keyed::new("k", "ch", &Event::new("", "x")).fingerprint,
            Keyed::new("k", "ch", &Event::message("x")).fingerprint
        );
    }

    #[test]
    fn a_key_answers_within_its_window_and_is_forgotten_after() {
        let mut recent = RecentKeys::new(Duration::from_secs(10), 100);
        let t0 = Instant::now();
        assert_eq!(recent.check(&keyed("a", "x"), t0), None);
        assert_eq!(recent.remember(&keyed("a", "x"), 7, t0), 0);
        let later = t0 + Duration::from_secs(9);
        assert_eq!(
            recent.check(&keyed("a", "x"), later),
            Some(Outcome::Replayed(7))
        );
        assert_eq!(
            recent.check(&keyed("a", "other"), later),
            Some(Outcome::Conflict(7))
        );
        assert_eq!(recent.check(&keyed("b", "x"), later), None);
        let after = t0 + Duration::from_secs(10);
        assert_eq!(recent.check(&keyed("a", "x"), after), None);
        assert_eq!(recent.len(), 0);
        // Used again after its window, it is a new key.
        recent.remember(&keyed("a", "x"), 9, after);
        assert_eq!(
            recent.check(&keyed("a", "x"), after),
            Some(Outcome::Replayed(9))
        );
    }

    #[test]
    fn past_its_bound_the_oldest_key_is_forgotten_and_counted() {
        let mut recent = RecentKeys::new(Duration::from_secs(60), 3);
        let now = Instant::now();
        let keys: Vec<String> = (0..5).map(|i| format!("k{i}")).collect();
        let evicted: u64 = keys
            .iter()
            .enumerate()
            .map(|(i, k)| recent.remember(&keyed(k, "x"), i as u64, now))
            .sum();
        assert_eq!((evicted, recent.len()), (2, 3));
        assert_eq!(recent.check(&keyed("k0", "x"), now), None);
        assert_eq!(recent.check(&keyed("k1", "x"), now), None);
        assert_eq!(
            recent.check(&keyed("k4", "x"), now),
            Some(Outcome::Replayed(4))
        );
        assert_eq!(recent.order.len(), 3, "the queue is bounded as the map is");
    }
}
