//! One stream's body over several connections, when ids are per channel (a Redis Cluster).
//!
//! Such a stream is one connection per channel (see `stream::open_group`), each replayed and
//! deduplicated on its own by its channel's sequence, so everything `conn` does with ids holds
//! per channel. The group drains them all in each poll and writes what they queued with the
//! stream's compound `id:` (see `compound`): every event gets `id: H-s1-...-sn` with its own
//! channel's sequence moved forward, whatever `id:` line its frame carried (a frame read back
//! from history has its sequence's, a live frame none). A `lastEventId` hint of a connection
//! moves its channel's sequence up to the counter it gives (to it, after a `missedevents` of
//! that channel: the client's position may be past the counter), before any event of the poll
//! is written, and one hint with the whole compound is written after the poll's frames.
//!
//! Nothing but heartbeats is written until every connection has started, so that the stream
//! begins with all their preambles (one hint naming every channel's counter, and
//! `missedevents` before any event), or until [`START_WAIT`] after the first connection
//! started: a connection later than that (its channel's shard failing over) joins when it
//! starts, its channel named at the client's position until then, and its `missedevents`, if
//! due, comes before its events rather than first on the stream. In each poll,
//! `missedevents` goes before the events taken with it. A `missedevents` of a connection lets
//! its channel's sequence go back at that channel's next event (what follows it may be
//! everything retained, whose ids may be below the client's, as after a failover that lost
//! writes); one right after another, with no event between, is not written again: each
//! connection tells its own loss at its start, and the client needs to hear it once. The stream
//! is slow when any connection is, and ends when any ends (a shutdown or an expired grant ends
//! them all).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Context;
use std::time::Duration;

use bytes::BytesMut;

use crate::compound;
use crate::conn::{Batch, Conn, Drained};
use crate::event::{Frame, FrameKind};
use crate::hub::Registration;

/// How long a stream whose connections have not all started waits for the others once one
/// has: then it writes what those started have, and the others join when they start. A
/// connection starts within milliseconds unless its channel's shard is failing over (for
/// `cluster-node-timeout` and an election: seconds), which must not hold the other channels'
/// events that long.
pub(crate) const START_WAIT: Duration = Duration::from_secs(1);

/// The connections of a stream other than its first, and where the client stands.
pub(crate) struct Group {
    /// The connections after the first, in the order of `seqs` (from the second on).
    pub rest: Vec<Registration>,
    hash: u32,
    /// The sequence the client has of each channel, in sorted channel order.
    seqs: Vec<u64>,
    /// Per channel: a `missedevents` came from its connection, so its next event sets its
    /// sequence even when lower.
    rewind: Vec<bool>,
    /// A `missedevents` was written and no event since.
    missed_pending: bool,
    /// A connection gave a `lastEventId` hint that is not written yet (it waits until every
    /// connection started).
    hint_pending: bool,
    /// The frames taken from one connection (kept to reuse its allocation).
    scratch: Vec<Frame>,
    /// The frames taken in one poll, with the index of their connection.
    pending: Vec<(usize, Frame)>,
    /// Every connection has started, or [`START_WAIT`] passed since one did (see
    /// [`Group::drain`]).
    started: bool,
    /// Runs from when a first connection started while others had not.
    start_wait: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Group {
    /// A group whose client starts at `seqs` (0 where it has no position yet).
    pub fn new(rest: Vec<Registration>, hash: u32, seqs: Vec<u64>) -> Self {
        Group {
            rest,
            hash,
            rewind: vec![false; seqs.len()],
            seqs,
            missed_pending: false,
            hint_pending: false,
            scratch: Vec::new(),
            pending: Vec::new(),
            started: false,
            start_wait: None,
        }
    }

    /// The group's `i`-th connection (0 is the stream's own, `first`).
    fn conn<'a>(&'a self, first: &'a Arc<Conn>, i: usize) -> &'a Arc<Conn> {
        if i == 0 {
            first
        } else {
            &self.rest[i - 1].conn
        }
    }

    /// What to write next from all the connections, `first` being the stream's own; at most
    /// about `max_batch_bytes` from each. Until every connection started, or [`START_WAIT`]
    /// after one did, only heartbeats and the end are written: so a stream's first frames are
    /// its connections' preambles, with `missedevents` before any event, unless a connection
    /// is that late (its shard failing over). (A started connection waits meanwhile with its
    /// queue bounded as ever; live events are held by the dispatcher during an outage anyway.)
    pub fn drain(
        &mut self,
        first: &Arc<Conn>,
        cx: &mut Context<'_>,
        max_batch_bytes: usize,
    ) -> Drained {
        let n = self.rest.len() + 1;
        // Across the rounds of the loop: what the connections gave in an earlier round (a long
        // poll's first event, the arrival time) still counts for the write.
        let mut batch = Batch::empty();
        loop {
            let (mut took, mut heartbeat, mut waiting) = (false, false, false);
            let mut retry = None;
            for i in 0..n {
                let conn = self.conn(first, i).clone();
                // Before every connection started, a started one is not drained (its frames
                // stay in its bounded queue); the others are, for their heartbeats and ends.
                if !self.started && conn.is_started() {
                    continue;
                }
                waiting |= !self.started;
                let mut frames = std::mem::take(&mut self.scratch);
                frames.clear();
                match conn.drain_frames(cx, max_batch_bytes, &mut frames) {
                    Drained::Slow => return Drained::Slow,
                    Drained::Retry(ms) => retry = retry.or(Some(ms)),
                    Drained::Heartbeat => heartbeat = true,
                    Drained::Nothing => {}
                    Drained::Frames(taken) => {
                        // (Before every connection started: one that started just now.)
                        took = true;
                        batch.real |= taken.real;
                        batch.arrived = match (batch.arrived, taken.arrived) {
                            (Some(a), Some(b)) => Some(a.min(b)),
                            (a, b) => a.or(b),
                        };
                        self.pending.extend(frames.drain(..).map(|f| (i, f)));
                    }
                }
                self.scratch = frames;
            }
            if !self.started {
                if !waiting || (0..n).all(|i| self.conn(first, i).is_started()) {
                    // Every connection started: their queues are drained from now on.
                    self.started = true;
                    self.start_wait = None;
                    continue;
                }
                if (0..n).any(|i| self.conn(first, i).is_started()) {
                    let wait = self
                        .start_wait
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep(START_WAIT)));
                    if wait.as_mut().poll(cx).is_ready() {
                        // Those started go on; the others join when they start.
                        self.started = true;
                        self.start_wait = None;
                        continue;
                    }
                }
                return match (retry, heartbeat) {
                    (Some(ms), _) => Drained::Retry(ms),
                    (None, true) => Drained::Heartbeat,
                    (None, false) => Drained::Nothing,
                };
            }
            let mut out = BytesMut::new();
            // Losses first: what this poll took of every connection follows them. Then the
            // positions the hints give (a connection's hint is in its preamble, before its
            // events), so that an event of one channel does not name 0 for another channel
            // whose hint came in the same poll. Then the events. A loss lets its channel's
            // position go back where it stands in its connection's order, not before the
            // events that connection queued ahead of it.
            let pending = std::mem::take(&mut self.pending);
            for (_, frame) in pending
                .iter()
                .filter(|(_, f)| f.kind == FrameKind::MissedEvents)
            {
                self.write_missed(frame, &mut out, &mut batch);
            }
            for kind in [FrameKind::LastEventId, FrameKind::Event] {
                for (i, frame) in &pending {
                    if frame.kind == FrameKind::MissedEvents {
                        self.rewind[*i] = true;
                    } else if frame.kind == kind {
                        self.write(*i, frame, &mut out, &mut batch);
                    }
                }
            }
            self.pending = pending;
            self.pending.clear();
            if self.hint_pending {
                self.hint_pending = false;
                out.extend_from_slice(b"id: ");
                out.extend_from_slice(compound::format(self.hash, &self.seqs).as_bytes());
                out.extend_from_slice(b"\nevent: lastEventId\ndata: \n\n");
                batch.frames += 1;
            }
            if !out.is_empty() {
                batch.bytes = out.freeze();
                return Drained::Frames(batch);
            }
            // Frames were taken but none written (a repeated `missedevents`): the connections
            // that gave them registered no waker, so look again.
            if took {
                continue;
            }
            return match (retry, heartbeat) {
                (Some(ms), _) => Drained::Retry(ms),
                (None, true) => Drained::Heartbeat,
                (None, false) => Drained::Nothing,
            };
        }
    }

    /// Writes a `missedevents`, unless one was written with no event since.
    fn write_missed(&mut self, frame: &Frame, out: &mut BytesMut, batch: &mut Batch) {
        if !self.missed_pending {
            self.missed_pending = true;
            out.extend_from_slice(&frame.bytes);
            batch.frames += 1;
            batch.missed += 1;
        }
    }

    /// Writes one frame of the `i`-th channel (a `lastEventId` hint is only taken note of).
    fn write(&mut self, i: usize, frame: &Frame, out: &mut BytesMut, batch: &mut Batch) {
        match frame.kind {
            FrameKind::LastEventId => {
                // After a `missedevents` of its channel the hint is where the channel is now,
                // even below the client's claim (a position past the counter).
                if let Some(counter) = hinted_counter(&frame.bytes) {
                    self.seqs[i] = if self.rewind[i] {
                        counter
                    } else {
                        self.seqs[i].max(counter)
                    };
                }
                self.hint_pending = true;
            }
            // Written before the poll's other frames (see `write_missed`).
            FrameKind::MissedEvents => {}
            FrameKind::Event => {
                let tail = frame.without_id();
                if frame.id > self.seqs[i] || (self.rewind[i] && frame.id > 0) {
                    self.rewind[i] = false;
                    self.seqs[i] = frame.id;
                    out.extend_from_slice(b"id: ");
                    out.extend_from_slice(compound::format(self.hash, &self.seqs).as_bytes());
                    out.extend_from_slice(b"\n");
                }
                out.extend_from_slice(&tail.bytes);
                self.missed_pending = false;
                batch.frames += 1;
            }
        }
    }

    /// Why one of the connections ended, if one did.
    pub fn end_reason(&self, first: &Arc<Conn>) -> Option<crate::conn::EndReason> {
        (0..=self.rest.len()).find_map(|i| self.conn(first, i).end_reason())
    }
}

/// The counter a `lastEventId` frame gives (its `id:` line).
fn hinted_counter(bytes: &[u8]) -> Option<u64> {
    let rest = bytes.strip_prefix(b"id: ")?;
    let end = rest.iter().position(|&b| b == b'\n')?;
    std::str::from_utf8(&rest[..end]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    /// A group on channels `a` and `b` of a fresh hub, both connections live from `seqs`.
    fn group(seqs: [u64; 2], max_bytes: usize) -> (Arc<Conn>, Group) {
        let (a, b, g) = unstarted(seqs, max_bytes);
        for (conn, seq) in [(&a, seqs[0]), (&b, seqs[1])] {
            conn.start(vec![], vec![], seq, 0);
        }
        assert_eq!(g.rest[0].hub.connections(), 1, "a group is one stream");
        (a, g)
    }

    /// Two connections on `a` and `b` of a fresh hub, not started, in a group whose client
    /// claims `seqs`.
    fn unstarted(seqs: [u64; 2], max_bytes: usize) -> (Arc<Conn>, Arc<Conn>, Group) {
        let metrics = Arc::new(Metrics::default());
        let hub = Arc::new(Hub::new(metrics, None, false, max_bytes, 100));
        let a = Conn::per_channel(1, Arc::from("a"), max_bytes, None, false);
        let b = Conn::per_channel(2, Arc::from("b"), max_bytes, None, true);
        hub.register(&a, &a.channels).unwrap();
        hub.register(&b, &b.channels).unwrap();
        let hash = compound::list_hash(&[Arc::from("a"), Arc::from("b")]);
        let rest = vec![Registration {
            hub,
            conn: b.clone(),
        }];
        (a, b, Group::new(rest, hash, seqs.to_vec()))
    }

    fn text(first: &Arc<Conn>, group: &mut Group) -> String {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match group.drain(first, &mut cx, 1 << 16) {
            Drained::Frames(b) => String::from_utf8(b.bytes.to_vec()).unwrap(),
            Drained::Heartbeat => "heartbeat".into(),
            Drained::Nothing => String::new(),
            Drained::Slow => "slow".into(),
            Drained::Retry(ms) => format!("retry {ms}"),
        }
    }

    fn id(seqs: &[u64]) -> String {
        let hash = compound::list_hash(&[Arc::from("a"), Arc::from("b")]);
        compound::format(hash, seqs)
    }

    #[test]
    fn each_event_carries_every_channels_position() {
        let (a, mut g) = group([4, 9], 1 << 20);
        // A frame read back from history has its own sequence's `id:` line; a live one none.
        a.push(
            &Frame::event(5, Bytes::from_static(b"id: 5\ndata: x\n\n")),
            false,
        );
        g.rest[0]
            .conn
            .push(&Frame::live(10, Bytes::from_static(b"data: y\n\n")), false);
        assert_eq!(
            text(&a, &mut g),
            format!(
                "id: {}\ndata: x\n\nid: {}\ndata: y\n\n",
                id(&[5, 9]),
                id(&[5, 10])
            )
        );
        // Already delivered in its channel: dropped by that channel's connection.
        a.push(&Frame::live(5, Bytes::from_static(b"data: x\n\n")), false);
        assert_eq!(text(&a, &mut g), "");
    }

    #[test]
    fn hints_become_one_compound_hint_and_a_repeated_missedevents_is_written_once() {
        let (a, mut g) = group([0, 0], 1 << 20);
        a.push(&Frame::missed_events(), false);
        a.push(&Frame::last_event_id(7), false);
        g.rest[0].conn.push(&Frame::missed_events(), false);
        g.rest[0].conn.push(&Frame::last_event_id(3), false);
        assert_eq!(
            text(&a, &mut g),
            format!(
                "event: missedevents\ndata: \n\nid: {}\nevent: lastEventId\ndata: \n\n",
                id(&[7, 3])
            )
        );
        // After an event, a new loss is told again; what follows it (everything retained, as
        // after a reset of that channel's connection) moves its sequence back.
        a.push(&Frame::live(8, Bytes::from_static(b"data: z\n\n")), false);
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\ndata: z\n\n", id(&[8, 3]))
        );
        g.rest[0].conn.reset(Frame::missed_events());
        g.rest[0].conn.push(
            &Frame::event(2, Bytes::from_static(b"id: 2\ndata: w\n\n")),
            true,
        );
        a.push(&Frame::live(9, Bytes::from_static(b"data: v\n\n")), false);
        // The loss first, then what this poll took, in each connection's order.
        assert_eq!(
            text(&a, &mut g),
            format!(
                "event: missedevents\ndata: \n\nid: {}\ndata: v\n\nid: {}\ndata: w\n\n",
                id(&[9, 3]),
                id(&[9, 2])
            )
        );
    }

    #[test]
    fn a_loss_moves_its_channel_back_after_what_its_connection_queued_before_it() {
        let (a, mut g) = group([3, 6], 1 << 20);
        let b = g.rest[0].conn.clone();
        // b queued 7, then lost writes: a reset, and what b retains again (2).
        b.push(
            &Frame::live(7, Bytes::from_static(b"data: seven\n\n")),
            false,
        );
        b.reset(Frame::missed_events());
        b.push(
            &Frame::event(2, Bytes::from_static(b"id: 2\ndata: two\n\n")),
            true,
        );
        assert_eq!(
            text(&a, &mut g),
            format!(
                "event: missedevents\ndata: \n\nid: {}\ndata: seven\n\nid: {}\ndata: two\n\n",
                id(&[3, 7]),
                id(&[3, 2])
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_hint_waits_until_every_connection_started() {
        let (a, b, mut g) = unstarted([0, 0], 1 << 20);
        a.start(vec![Frame::last_event_id(4)], vec![], 4, 0);
        assert_eq!(text(&a, &mut g), "", "b has not started");
        b.start(vec![Frame::last_event_id(9)], vec![], 9, 0);
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\nevent: lastEventId\ndata: \n\n", id(&[4, 9]))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_later_than_the_start_wait_joins_when_it_starts() {
        let (a, b, mut g) = unstarted([4, 7], 1 << 20);
        a.start(vec![Frame::last_event_id(5)], vec![], 5, 0);
        assert_eq!(text(&a, &mut g), "", "b has not started");
        tokio::time::advance(START_WAIT / 2).await;
        assert_eq!(text(&a, &mut g), "", "b has not started, within the wait");
        tokio::time::advance(START_WAIT / 2).await;
        // `a` goes on, `b` named where the client stands.
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\nevent: lastEventId\ndata: \n\n", id(&[5, 7]))
        );
        a.push(&Frame::live(6, Bytes::from_static(b"data: x\n\n")), false);
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\ndata: x\n\n", id(&[6, 7]))
        );
        // `b` starts, having lost events: its `missedevents`, then its counter.
        b.start(
            vec![Frame::missed_events(), Frame::last_event_id(3)],
            vec![],
            3,
            0,
        );
        assert_eq!(
            text(&a, &mut g),
            format!(
                "event: missedevents\ndata: \n\nid: {}\nevent: lastEventId\ndata: \n\n",
                id(&[6, 3])
            )
        );
        b.push(&Frame::live(4, Bytes::from_static(b"data: y\n\n")), false);
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\ndata: y\n\n", id(&[6, 4]))
        );
    }

    #[test]
    fn a_hint_after_missedevents_moves_its_channel_back_to_the_counter() {
        // The client claims 50 of `a`, whose counter is 3 now (past it: the plan tells the
        // loss, replays nothing and hints 3). Its id must say 3: with 50, a client that comes
        // back once `a` passed 50 would skip 4..=50 without being told.
        let (a, b, mut g) = unstarted([50, 9], 1 << 20);
        a.start(
            vec![Frame::missed_events(), Frame::last_event_id(3)],
            vec![],
            3,
            0,
        );
        b.start(vec![Frame::last_event_id(9)], vec![], 9, 0);
        assert_eq!(
            text(&a, &mut g),
            format!(
                "event: missedevents\ndata: \n\nid: {}\nevent: lastEventId\ndata: \n\n",
                id(&[3, 9])
            )
        );
        a.push(&Frame::live(4, Bytes::from_static(b"data: x\n\n")), false);
        assert_eq!(
            text(&a, &mut g),
            format!("id: {}\ndata: x\n\n", id(&[4, 9]))
        );
    }

    #[test]
    fn events_name_the_counter_another_channel_hinted_in_the_same_poll() {
        // `a` resumes with an event read back (a stream without a position that got a live
        // event while it started); `b` starts at its counter, 3. The event's id must name 3
        // for `b`: with 0, a client that left after it would get `b`'s whole history.
        let (a, b, mut g) = unstarted([0, 0], 1 << 20);
        a.start(
            vec![],
            vec![Frame::event(6, Bytes::from_static(b"id: 6\ndata: x\n\n"))],
            5,
            0,
        );
        b.start(vec![Frame::last_event_id(3)], vec![], 3, 0);
        assert_eq!(
            text(&a, &mut g),
            format!(
                "id: {}\ndata: x\n\nid: {}\nevent: lastEventId\ndata: \n\n",
                id(&[6, 3]),
                id(&[6, 3])
            )
        );
    }

    #[test]
    fn one_slow_connection_makes_the_stream_slow() {
        let (a, mut g) = group([0, 0], 64);
        let big = Bytes::from(vec![b'x'; 100]);
        g.rest[0].conn.push(&Frame::live(1, big), false);
        assert_eq!(text(&a, &mut g), "slow");
    }

    #[test]
    fn heartbeats_are_one_per_poll() {
        let (a, mut g) = group([0, 0], 1 << 20);
        a.heartbeat();
        g.rest[0].conn.heartbeat();
        assert_eq!(text(&a, &mut g), "heartbeat");
        assert_eq!(text(&a, &mut g), "");
    }
}
