//! Where a channel's keys live on a Redis Cluster: one hash slot per channel, chosen by a tag.
//!
//! A Lua script may only touch keys of one slot, and the gem's layout puts every channel's
//! history beside one global counter, which no slot can hold for all channels. So on a cluster
//! each channel has keys of its own, all with the same hash tag `{T}`, where `T` is the low 16
//! bits of the FNV-1a (32-bit) hash of the channel's UTF-8 name, in four lowercase hex digits:
//! a channel's history, sequence, trimmed watermark, data-loss floor and idempotency records
//! then share its slot, and any program, in any language, finds them from the name alone. The
//! history key is also the shard channel its events are `SPUBLISH`ed on. The layout is written
//! down in docs/redis-layout.md ("Redis Cluster layout").

use crate::compound::fnv1a32;

/// The hash tag of `channel`: `format!("{:04x}", fnv1a32(channel) & 0xffff)`.
pub(crate) fn tag(channel: &str) -> String {
    format!("{:04x}", fnv1a32(channel.as_bytes()) & 0xffff)
}

/// The prefix of every key of `channel`: `redisse:{T}:`.
fn prefix(channel: &str) -> String {
    format!("redisse:{{{}}}:", tag(channel))
}

/// The channel's history (a sorted set, score = its sequence, member = the stored frame), and
/// the shard channel its events are published on.
pub(crate) fn history_key(channel: &str) -> String {
    format!("{}c:{channel}", prefix(channel))
}

/// The channel's sequence (`INCR`).
pub(crate) fn sequence_key(channel: &str) -> String {
    format!("{}id:{channel}", prefix(channel))
}

/// The hash of trimmed watermarks of the channels that share the tag (field = history key).
pub(crate) fn trimmed_key(channel: &str) -> String {
    format!("{}trimmed", prefix(channel))
}

/// The channel's data-loss floor.
pub(crate) fn floor_key(channel: &str) -> String {
    format!("{}lostBelow:{channel}", prefix(channel))
}

/// The record of an idempotency key used on `channel` (keys are per channel on a cluster).
pub(crate) fn idempotency_key(channel: &str, key: &str) -> String {
    format!("{}idempotency:{channel}:{key}", prefix(channel))
}

/// The user's channel of a shard channel (a history key), if it is one: the prefix must be
/// the one the rest's name gives.
pub(crate) fn channel_of(shard_channel: &str) -> Option<&str> {
    let rest = shard_channel.strip_prefix("redisse:{")?;
    let (tag_part, rest) = rest.split_at_checked(4)?;
    let channel = rest.strip_prefix("}:c:")?;
    (tag(channel) == tag_part).then_some(channel)
}

/// The CRC16 (XMODEM: polynomial 0x1021, initial value 0) Redis Cluster hashes keys with.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The hash slot of every key of `channel` (that of its tag).
pub(crate) fn slot(channel: &str) -> u16 {
    crc16(tag(channel).as_bytes()) % 16384
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_the_low_half_of_fnv1a32_in_hex() {
        // The tags of published FNV-1a values (`compound`'s tests check those), and others
        // computed with python.
        assert_eq!(tag(""), "9dc5");
        assert_eq!(tag("a"), "292c");
        assert_eq!(tag("global"), "06ae");
        assert_eq!(tag("chat:42"), "7a25");
        // Over the UTF-8 bytes.
        assert_eq!(tag("été"), "8817");
    }

    #[test]
    fn every_key_of_a_channel_is_in_its_slot() {
        assert_eq!(history_key("global"), "redisse:{06ae}:c:global");
        assert_eq!(sequence_key("global"), "redisse:{06ae}:id:global");
        assert_eq!(trimmed_key("global"), "redisse:{06ae}:trimmed");
        assert_eq!(floor_key("global"), "redisse:{06ae}:lostBelow:global");
        assert_eq!(
            idempotency_key("global", "k1"),
            "redisse:{06ae}:idempotency:global:k1"
        );
        // Braces in the name do not move the tag (the first {...} counts).
        assert_eq!(
            history_key("{x}"),
            format!("redisse:{{{}}}:c:{{x}}", tag("{x}"))
        );
        // The CRC16 of Redis Cluster (its check value), and slots computed with python.
        assert_eq!(crc16(b"123456789"), 0x31c3);
        assert_eq!(slot("global"), 8180);
        assert_eq!(slot("chat:42"), 5278);
        assert_eq!(slot(""), 8378);
    }

    #[test]
    fn a_shard_channel_names_its_channel_only_with_the_right_tag() {
        assert_eq!(channel_of("redisse:{06ae}:c:global"), Some("global"));
        assert_eq!(channel_of("redisse:{06ae}:c:chat:42"), None);
        assert_eq!(channel_of(&history_key("chat:42")), Some("chat:42"));
        assert_eq!(channel_of(&history_key("été")), Some("été"));
        assert_eq!(channel_of("redisse:{06ae}:id:global"), None);
        assert_eq!(channel_of("redisse:{06a"), None);
        assert_eq!(channel_of("global"), None);
    }
}
