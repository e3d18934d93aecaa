//! Which event ids a connection has delivered: the highest, and a window of the 64 ids below it.
//!
//! Ids are the order, but not always the order of arrival: the Ruby gem publishes with `INCR`
//! then `PUBLISH`, two round trips, so when two gem publishers race, the lower id can arrive
//! second. A connection that kept only its highest id would drop that late event for good. With
//! the window, an event up to [`LATE_WINDOW`] ids behind the highest that this connection has not
//! delivered is still delivered, without its `id:` line: the browser's last event id stays the
//! highest, so a resume from it neither repeats the late event nor skips anything after it.
//! Further behind, or already delivered (or at or below the position the stream started from),
//! an event is dropped as before. Ids are global across channels, so the gaps in a connection's
//! window are mostly other channels' events, which never come.

/// How far behind the highest id delivered a late event is still delivered.
pub(crate) const LATE_WINDOW: u64 = 64;

/// What to do with an offered id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    /// Newer than everything delivered: deliver it as it is.
    New,
    /// Within the window and not delivered yet: deliver it without its `id:` line.
    Late,
    /// Delivered already, covered by the starting position, or too late.
    Seen,
}

/// The delivered ids of one connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Seen {
    last: u64,
    /// Bit `i`: id `last - 1 - i` was delivered (or is at or below the starting position).
    below: u64,
}

impl Seen {
    /// A connection whose client has everything up to `position` (and nothing after).
    pub fn at(position: u64) -> Self {
        Seen {
            last: position,
            below: u64::MAX,
        }
    }

    /// The highest id delivered (or the position).
    pub fn last(&self) -> u64 {
        self.last
    }

    /// Whether `id` needs no delivery any more.
    pub fn has(&self, id: u64) -> bool {
        if id >= self.last {
            return id == self.last;
        }
        let back = self.last - id - 1;
        back >= LATE_WINDOW || self.below & (1 << back) != 0
    }

    /// Records `id` as delivered and says how.
    pub fn offer(&mut self, id: u64) -> Offer {
        if id > self.last {
            self.advance(id);
            return Offer::New;
        }
        if self.has(id) {
            return Offer::Seen;
        }
        self.below |= 1 << (self.last - id - 1);
        Offer::Late
    }

    /// Moves the highest id to `id` (a page of history read up to it): the ids between stay
    /// undelivered, so that a late one among them may still come.
    pub fn advance(&mut self, id: u64) {
        if id <= self.last {
            return;
        }
        let shift = id - self.last;
        // The old highest moves to bit `shift - 1`.
        self.below = match shift {
            s if s > LATE_WINDOW => 0,
            LATE_WINDOW => 1 << (LATE_WINDOW - 1),
            s => (self.below << s) | (1 << (s - 1)),
        };
        self.last = id;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_id_in_the_window_is_delivered_once() {
        let mut seen = Seen::at(5);
        assert_eq!(seen.offer(5), Offer::Seen);
        assert_eq!(seen.offer(4), Offer::Seen, "at or below the position");
        assert_eq!(seen.offer(7), Offer::New);
        assert_eq!(seen.offer(6), Offer::Late);
        assert_eq!(seen.offer(6), Offer::Seen);
        assert_eq!(seen.offer(7), Offer::Seen);
        assert_eq!(
            seen.offer(5),
            Offer::Seen,
            "the old position stays delivered"
        );
        assert_eq!(seen.offer(8), Offer::New);
        assert_eq!(seen.last(), 8);
    }

    #[test]
    fn too_late_is_dropped_and_jumps_keep_the_window_right() {
        let mut seen = Seen::at(0);
        assert_eq!(seen.offer(100), Offer::New);
        assert_eq!(seen.offer(100 - LATE_WINDOW), Offer::Late);
        assert_eq!(
            seen.offer(100 - LATE_WINDOW - 1),
            Offer::Seen,
            "past the window"
        );
        seen.advance(100 + LATE_WINDOW);
        assert_eq!(
            seen.offer(100),
            Offer::Seen,
            "the old highest, now at the window's edge"
        );
        assert_eq!(seen.offer(101), Offer::Late);
        seen.advance(10_000);
        assert_eq!(seen.offer(9_999), Offer::Late);
        assert_eq!(seen.offer(100 + LATE_WINDOW), Offer::Seen);
    }
}
