//! Stream positions when ids are per channel (Redis Cluster): one sequence per channel, written
//! as one compound `id:`.
//!
//! On a cluster each channel's events take their ids from a sequence kept in the channel's own
//! hash slot, since one script can only touch one slot: ids are ordered within a channel and
//! mean nothing across channels. A stream on several channels therefore tells its client where
//! it stands in each of them, as Nchan does with its multi-channel message ids: the `id:` of
//! every event is `H-s1-s2-...-sn`, where `s1..sn` are the sequences of the last event sent of
//! each of the stream's channels in bytewise order of their names (0 when none was sent yet), and
//! `H` is eight hex digits of a hash of that list of names (FNV-1a, 32 bits, over each name and a
//! newline). A browser sends the whole text back as `Last-Event-ID`; [`positions`] turns it into
//! one position per channel, or tells that it cannot be used: a plain number, another channel
//! list, a malformed text. The hash is not a secret nor a check against forgery (a client can
//! only claim positions in its own channels, and any position is safe to claim); it tells a
//! reconnection with another channel list from one with the same list.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::event::{LastEventId, MAX_EVENT_ID};

/// FNV-1a, 32 bits: small, stable across versions and languages.
pub(crate) fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for &b in bytes {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The hash of a stream's channel list, sorted as [`sorted`] sorts it.
pub(crate) fn list_hash(sorted: &[Arc<str>]) -> u32 {
    let mut joined = Vec::with_capacity(sorted.iter().map(|c| c.len() + 1).sum());
    for channel in sorted {
        joined.extend_from_slice(channel.as_bytes());
        joined.push(b'\n');
    }
    fnv1a32(&joined)
}

/// The channels in the order their positions are written: bytewise.
pub(crate) fn sorted(channels: &[Arc<str>]) -> Vec<Arc<str>> {
    let mut sorted = channels.to_vec();
    sorted.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    sorted
}

/// The compound id of positions `seqs` (one per channel, in sorted order).
pub(crate) fn format(hash: u32, seqs: &[u64]) -> String {
    let mut out = String::with_capacity(9 + seqs.len() * 8);
    let _ = write!(out, "{hash:08x}");
    for seq in seqs {
        let _ = write!(out, "-{seq}");
    }
    out
}

/// One position per channel (in sorted order) from what the client sent: `last` as parsed, and
/// the text itself when it was not a plain number. Without a position, none for each channel;
/// a compound id of this very channel list, its positions (a 0 is a position before every
/// event: the client had none of that channel yet); anything else (a plain number, another
/// list, a malformed or out-of-range value) is an unknown position for each channel, so the
/// stream tells `missedevents` and starts from now.
pub(crate) fn positions(
    last: LastEventId,
    text: Option<&str>,
    sorted: &[Arc<str>],
) -> Vec<LastEventId> {
    let n = sorted.len();
    match (last, text) {
        (LastEventId::None, _) => vec![LastEventId::None; n],
        (LastEventId::Unknown, Some(text)) => {
            parse(text, sorted).unwrap_or_else(|| vec![LastEventId::Unknown; n])
        }
        _ => vec![LastEventId::Unknown; n],
    }
}

fn parse(text: &str, sorted: &[Arc<str>]) -> Option<Vec<LastEventId>> {
    let mut parts = text.split('-');
    let hash = parts.next()?;
    if hash.len() != 8 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    if u32::from_str_radix(hash, 16).ok()? != list_hash(sorted) {
        return None;
    }
    let mut out = Vec::with_capacity(sorted.len());
    for part in parts {
        if out.len() == sorted.len() || part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let seq: u64 = part.parse().ok()?;
        if seq > MAX_EVENT_ID {
            return None;
        }
        out.push(LastEventId::At(seq));
    }
    (out.len() == sorted.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<Arc<str>> {
        names.iter().map(|n| Arc::from(*n)).collect()
    }

    #[test]
    fn fnv1a32_matches_the_published_test_vectors() {
        // From the FNV reference (draft-eastlake-fnv): "" and "a" and "foobar".
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
    }

    #[test]
    fn channels_sort_bytewise_and_the_hash_covers_the_names_and_their_order() {
        let s = sorted(&list(&["b", "a", "B"]));
        assert_eq!(s, list(&["B", "a", "b"]));
        assert_eq!(list_hash(&list(&["a", "b"])), fnv1a32(b"a\nb\n"));
        assert_ne!(list_hash(&list(&["a", "b"])), list_hash(&list(&["ab"])));
    }

    #[test]
    fn a_compound_id_round_trips_to_one_position_per_channel() {
        let chans = list(&["a", "b", "c"]);
        let text = format(list_hash(&chans), &[3, 0, 12]);
        assert_eq!(text, format!("{:08x}-3-0-12", fnv1a32(b"a\nb\nc\n")));
        assert_eq!(
            positions(LastEventId::Unknown, Some(&text), &chans),
            vec![LastEventId::At(3), LastEventId::At(0), LastEventId::At(12)]
        );
    }

    #[test]
    fn what_is_not_a_compound_id_of_this_list_is_an_unknown_position() {
        let chans = list(&["a", "b"]);
        let h = list_hash(&chans);
        let unknown = vec![LastEventId::Unknown; 2];
        let other = format(list_hash(&list(&["a", "c"])), &[1, 2]);
        for bad in [
            other.as_str(),
            &format(h, &[1]),
            &format(h, &[1, 2, 3]),
            &format!("{h:08x}-1-"),
            &format!("{h:08x}-1-x"),
            &format!("{h:08x}-1-+2"),
            &format!("{h:08x}-1-9223372036854775808"),
            &format!("{h:08X}x-1-2"),
            "",
            "zz",
        ] {
            assert_eq!(
                positions(LastEventId::Unknown, Some(bad), &chans),
                unknown,
                "{bad}"
            );
        }
        // Uppercase hex is the same number.
        assert_eq!(
            positions(LastEventId::Unknown, Some(&format!("{h:08X}-1-2")), &chans),
            vec![LastEventId::At(1), LastEventId::At(2)]
        );
        // A plain number is an id of a single Redis, not a position here.
        assert_eq!(positions(LastEventId::At(5), None, &chans), unknown);
        assert_eq!(
            positions(LastEventId::None, None, &chans),
            vec![LastEventId::None; 2]
        );
    }
}
