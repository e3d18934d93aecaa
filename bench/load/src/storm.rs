//! The storm scenario: while events flow, every subscriber's stream is cut at the same instant
//! and every subscriber comes back at once with `Last-Event-ID`, as browsers do after a deploy
//! or an outage. They reconnect immediately, without waiting for a `retry:` (the worst case), and
//! a failed attempt (refused, or a stream the server ends) is tried again after a short fixed
//! delay, also without jitter.
//!
//! The cut is the client's (every subscriber drops its socket), or with a restart command the
//! server's: the command stops the server and starts it again (a deploy), and the subscribers
//! come back when their streams end. Only a server whose history survives a restart (on Redis)
//! can resume them all.
//!
//! Each subscriber keeps the set of sequence numbers it received on its channel. At the end, the
//! events whose publish the server accepted on that channel and that the subscriber never
//! received are `lost`; those received more than once are `duplicates`. A subscriber is *back*
//! when the response head of its new stream arrives, and *live* when that stream delivers an
//! event published after that head (not a replay): the storm is over when every subscriber that
//! held a stream at the cut is live again. Meanwhile the server's memory is sampled for its peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::measure::{self, Histogram};
use crate::parse::{Body, Field, payload};
use crate::publisher::Outcome;
use crate::subscriber::{self, Plan};

/// Longest id kept for `Last-Event-ID` (redisse's are decimal numbers, Nchan's `time:tag`).
const MAX_ID_BYTES: usize = 128;

/// Where the run is; every subscriber watches it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Run,
    /// Drop the stream now and reconnect.
    Cut,
    /// Account for what was received and stop.
    Finish,
}

/// What the subscribers of a storm share.
pub struct Storm {
    pub phase: watch::Sender<Phase>,
    /// When the cut was ordered, in ns since the start (0 before).
    pub cut_ns: AtomicU64,
    /// The publishers' record: which sequence numbers each channel accepted.
    pub outcome: Arc<Outcome>,
    /// The highest sequence number a channel can have.
    pub max_seq: u64,
    /// Wait after a failed reconnection attempt.
    pub retry: Duration,
    /// Reconnection stops here.
    pub deadline: Instant,
    /// The server is restarted at the cut (by this shell command, which prints the new server's
    /// process id last): subscribers keep their streams until the server ends them.
    pub restart: Option<String>,
    pub counts: Counts,
}

/// Counters of the storm, summed over subscribers.
#[derive(Default)]
pub struct Counts {
    /// Subscribers that held a stream when the cut came.
    pub at_cut: AtomicU64,
    /// Subscribers that did not (they never connected, or the server ended their stream).
    pub not_at_cut: AtomicU64,
    /// Subscribers live again after the cut.
    pub live: AtomicU64,
    /// Cut → the response head of the stream that went live, in ns.
    pub back: Histogram,
    /// Cut → the first live event.
    pub live_after: Histogram,
    /// Connection attempts after the cut that failed (refused, timed out, not 200, ended).
    pub failed_attempts: AtomicU64,
    /// Subscribers that could not reconnect before the deadline.
    pub gave_up: AtomicU64,
    /// `missedevents` events received.
    pub missed_events: AtomicU64,
    pub duplicates: AtomicU64,
    pub lost: AtomicU64,
    /// Sequence numbers out of range, and ids too long or not printable (not used to resume).
    pub bad: AtomicU64,
    /// Subscribers done with their accounting.
    pub finished: AtomicU64,
}

/// The sequence numbers one subscriber received, `1..=max`.
pub struct Received {
    bits: Vec<u64>,
    duplicates: u64,
}

impl Received {
    pub fn new(max: u64) -> Self {
        Received {
            bits: vec![0; (max / 64 + 1) as usize],
            duplicates: 0,
        }
    }

    /// Records `seq`: `Some(true)` the first time, `Some(false)` for a duplicate, `None` when out
    /// of range.
    pub fn record(&mut self, seq: u64) -> Option<bool> {
        let word = self.bits.get_mut((seq / 64) as usize).filter(|_| seq > 0)?;
        let bit = 1 << (seq % 64);
        let new = *word & bit == 0;
        *word |= bit;
        if !new {
            self.duplicates += 1;
        }
        Some(new)
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// How many of `accepted` were never received.
    pub fn lost(&self, accepted: impl Iterator<Item = u64>) -> u64 {
        accepted
            .filter(|&seq| {
                let word = self.bits.get((seq / 64) as usize).copied().unwrap_or(0);
                word & (1 << (seq % 64)) == 0
            })
            .count() as u64
    }
}

/// A subscriber's last event id, as a browser keeps it: an `id:` field counts once its event is
/// complete (the blank line), an empty one forgets the id.
#[derive(Default)]
pub struct LastId {
    pending: Option<Vec<u8>>,
    last: Option<String>,
}

impl LastId {
    /// Takes one field; false for an id that cannot be sent back (too long, not printable
    /// ASCII), which is then ignored.
    pub fn on_field(&mut self, field: Field<'_>) -> bool {
        match field {
            Field::Id(v)
                if v.len() > MAX_ID_BYTES || !v.iter().all(|b| (b' '..=b'~').contains(b)) =>
            {
                return false;
            }
            Field::Id(v) => self.pending = Some(v.to_vec()),
            Field::End => {
                if let Some(id) = self.pending.take() {
                    // Printable ASCII, checked above.
                    self.last = (!id.is_empty()).then(|| String::from_utf8_lossy(&id).into_owned());
                }
            }
            _ => {}
        }
        true
    }

    /// The value for `Last-Event-ID`, if any.
    pub fn get(&self) -> Option<&str> {
        self.last.as_deref()
    }
}

/// One subscriber's state across its connections.
struct Client {
    received: Received,
    last_id: LastId,
    /// When the current stream's head arrived (ns since the start).
    head_ns: u64,
    live: bool,
    new_deliveries: u64,
}

impl Client {
    fn on_field(&mut self, storm: &Storm, plan: &Plan, now_ns: u64, field: Field<'_>) {
        if !self.last_id.on_field(field) {
            storm.counts.bad.fetch_add(1, Relaxed);
        }
        match field {
            Field::Event(b"missedevents") => {
                storm.counts.missed_events.fetch_add(1, Relaxed);
            }
            Field::Data(data) => {
                let Some((seq, sent)) = payload(data) else {
                    if !data.is_empty() {
                        plan.tally.bad_data.fetch_add(1, Relaxed);
                    }
                    return;
                };
                match self.received.record(seq) {
                    Some(true) => {
                        self.new_deliveries += 1;
                        plan.tally.latency.record(now_ns.saturating_sub(sent), 1);
                    }
                    Some(false) => {}
                    None => {
                        storm.counts.bad.fetch_add(1, Relaxed);
                    }
                }
                let cut = storm.cut_ns.load(Relaxed);
                if !self.live && cut > 0 && self.head_ns > cut && sent > self.head_ns {
                    self.live = true;
                    let c = &storm.counts;
                    c.back.record(self.head_ns - cut, 1);
                    c.live_after.record(now_ns.saturating_sub(cut), 1);
                    c.live.fetch_add(1, Relaxed);
                }
            }
            _ => {}
        }
    }

    /// Feeds bytes read from the stream, then adds the new deliveries to the tally.
    fn feed(&mut self, storm: &Storm, plan: &Plan, body: &mut Body, bytes: &[u8]) {
        let now = plan.start.elapsed().as_nanos() as u64;
        body.feed(bytes, &mut |f| self.on_field(storm, plan, now, f));
        if self.new_deliveries > 0 {
            plan.tally.delivered.fetch_add(self.new_deliveries, Relaxed);
            plan.tally.last_delivery_ns.fetch_max(now, Relaxed);
            self.new_deliveries = 0;
        }
    }
}

/// One storm subscriber: connects like the others (holding `permit` meanwhile), reads, drops
/// its stream at the cut and reconnects with its last id, until the finish, when it adds what it
/// lost and received twice to the counts.
pub async fn subscriber(
    plan: Arc<Plan>,
    storm: Arc<Storm>,
    index: usize,
    (channel, name): (usize, String),
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let source = subscriber::source(&plan, index);
    let mut phase = storm.phase.subscribe();
    let mut client = Client {
        received: Received::new(storm.max_seq),
        last_id: LastId::default(),
        head_ns: 0,
        live: false,
        new_deliveries: 0,
    };
    let connected = subscriber::connect(&plan, source, &name, None).await;
    drop(permit);
    let mut conn: Option<(TcpStream, Body)> = match connected {
        Ok((stream, mut body, rest)) => {
            plan.tally.open.fetch_add(1, Relaxed);
            client.head_ns = plan.start.elapsed().as_nanos() as u64;
            client.feed(&storm, &plan, &mut body, &rest);
            Some((stream, body))
        }
        Err(e) => {
            if plan.tally.failed.fetch_add(1, Relaxed) < 5 {
                eprintln!("subscriber {index}: {e}");
            }
            storm.counts.not_at_cut.fetch_add(1, Relaxed);
            storm.counts.finished.fetch_add(1, Relaxed);
            return;
        }
    };
    let mut cut_seen = false;
    let mut buf = vec![0u8; plan.read_buf];
    loop {
        let now_phase = *phase.borrow_and_update();
        if now_phase == Phase::Finish {
            break;
        }
        if now_phase == Phase::Cut && !cut_seen {
            cut_seen = true;
            if conn.is_some() {
                storm.counts.at_cut.fetch_add(1, Relaxed);
            }
            if storm.restart.is_none() && conn.take().is_some() {
                plan.tally.open.fetch_sub(1, Relaxed);
            }
        }
        let Some((stream, body)) = conn.as_mut() else {
            // Cut (or ended by the server): come back with the last id.
            conn = reconnect(&plan, &storm, &mut phase, &mut client, source, &name).await;
            if conn.is_none() {
                break;
            }
            continue;
        };
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(n) if n > 0 => client.feed(&storm, &plan, body, &buf[..n]),
                _ => {
                    plan.tally.open.fetch_sub(1, Relaxed);
                    plan.tally.closed.fetch_add(1, Relaxed);
                    conn = None;
                    if storm.cut_ns.load(Relaxed) == 0 {
                        // Ended by the server before the cut: counted, not resumed.
                        storm.counts.not_at_cut.fetch_add(1, Relaxed);
                        break;
                    }
                    if !cut_seen {
                        // The restart ended it before this task saw the cut.
                        cut_seen = true;
                        storm.counts.at_cut.fetch_add(1, Relaxed);
                    }
                }
            },
            changed = phase.changed() => if changed.is_err() { break },
        }
    }
    drop(conn);
    wait_for_finish(&mut phase).await;
    let c = &storm.counts;
    c.lost.fetch_add(
        client.received.lost(storm.outcome.accepted[channel].iter()),
        Relaxed,
    );
    c.duplicates
        .fetch_add(client.received.duplicates(), Relaxed);
    c.finished.fetch_add(1, Relaxed);
}

async fn wait_for_finish(phase: &mut watch::Receiver<Phase>) {
    while *phase.borrow_and_update() != Phase::Finish {
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// Connects again with the last id until it works, the deadline passes or the run finishes.
async fn reconnect(
    plan: &Plan,
    storm: &Storm,
    phase: &mut watch::Receiver<Phase>,
    client: &mut Client,
    source: std::net::Ipv4Addr,
    name: &str,
) -> Option<(TcpStream, Body)> {
    loop {
        if *phase.borrow() == Phase::Finish || Instant::now() >= storm.deadline {
            storm.counts.gave_up.fetch_add(1, Relaxed);
            return None;
        }
        let attempt = subscriber::connect(plan, source, name, client.last_id.get());
        match tokio::time::timeout_at(storm.deadline.into(), attempt).await {
            Ok(Ok((stream, mut body, rest))) => {
                plan.tally.open.fetch_add(1, Relaxed);
                client.head_ns = plan.start.elapsed().as_nanos() as u64;
                client.feed(storm, plan, &mut body, &rest);
                return Some((stream, body));
            }
            _ => {
                storm.counts.failed_attempts.fetch_add(1, Relaxed);
                tokio::time::sleep(storm.retry).await;
            }
        }
    }
}

/// What the storm measured, besides the deliveries.
#[derive(Debug, Default)]
pub struct Summary {
    /// Server CPU per second of the steady phase before the cut.
    pub steady_cpu_per_s: f64,
    /// Server CPU from the cut until every subscriber was live (or the time-out).
    pub storm_cpu_s: f64,
    /// The load generator's own CPU meanwhile (it shares the machine).
    pub client_cpu_s: f64,
    /// Connections the kernel dropped meanwhile because a listen queue was full (machine-wide).
    pub listen_overflows: Option<u64>,
    /// Seconds from the cut until every subscriber was live (or the time-out).
    pub storm_s: f64,
    pub all_live: bool,
    pub rss_at_cut: u64,
    pub rss_peak: u64,
    /// With a restart: the new server's process id, and how long the command took.
    pub restarted: Option<(u32, f64)>,
}

/// Waits `cut_after` after the first publish, cuts (or restarts the server), and watches until
/// every subscriber that held a stream is live again (or `timeout`), sampling the server's
/// memory and CPU (into `cpu`, which keeps counting a server process that exited).
pub async fn cut_and_watch(
    plan: &Plan,
    storm: &Storm,
    (subscribers, server_pids): (u64, &[u32]),
    cpu: &mut measure::CpuTracker,
    (cut_after, timeout): (Duration, Duration),
) -> Summary {
    let outcome = &storm.outcome;
    let mut pids = server_pids.to_vec();
    let sum = |(user, system): (f64, f64)| user + system;
    while outcome.first_ns.load(Relaxed) == u64::MAX && Instant::now() < storm.deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cpu.sample(&pids);
    let steady_from = (Instant::now(), sum(cpu.total()));
    tokio::time::sleep(cut_after).await;
    cpu.sample(&pids);
    let cpu_at_cut = sum(cpu.total());
    let steady_cpu_per_s = (cpu_at_cut - steady_from.1) / steady_from.0.elapsed().as_secs_f64();
    let rss_at_cut = measure::memory(&pids).rss;
    let client_at_cut = measure::own_cpu_seconds();
    let overflows_at_cut = measure::listen_overflows();
    let cut = Instant::now();
    storm
        .cut_ns
        .store(plan.start.elapsed().as_nanos() as u64, Relaxed);
    storm.phase.send_replace(Phase::Cut);
    let mut restart = storm.restart.clone().map(|command| {
        tokio::task::spawn_blocking(move || {
            let out = std::process::Command::new("sh")
                .args(["-c", &command])
                .stderr(std::process::Stdio::inherit())
                .output();
            let text = out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            text.ok()
                .and_then(|t| t.split_whitespace().last()?.parse::<u32>().ok())
        })
    });
    let mut restarted = None;
    let end = (cut + timeout).min(storm.deadline);
    let mut rss_peak = rss_at_cut;
    let c = &storm.counts;
    let mut all_live = false;
    let mut rounds = 0u64;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
        if restart.as_ref().is_some_and(|r| r.is_finished())
            && let Some(done) = restart.take()
        {
            match done.await.ok().flatten() {
                Some(pid) => restarted = Some((pid, cut.elapsed().as_secs_f64())),
                None => eprintln!("the restart command printed no process id"),
            }
        }
        // nginx's master forks its workers after it listens: look for them again now and then.
        if let Some((pid, _)) = restarted
            && (pids.first() != Some(&pid) || rounds.is_multiple_of(10))
        {
            pids = measure::with_children(&[pid]);
        }
        rounds += 1;
        cpu.sample(&pids);
        rss_peak = rss_peak.max(measure::memory(&pids).rss);
        // Every subscriber saw the cut, and every one that held a stream is back and live.
        let at_cut = c.at_cut.load(Relaxed);
        if restart.is_none()
            && at_cut + c.not_at_cut.load(Relaxed) >= subscribers
            && c.live.load(Relaxed) + c.gave_up.load(Relaxed) >= at_cut
        {
            all_live = c.gave_up.load(Relaxed) == 0;
            break;
        }
    }
    cpu.sample(&pids);
    Summary {
        steady_cpu_per_s,
        storm_cpu_s: sum(cpu.total()) - cpu_at_cut,
        client_cpu_s: measure::own_cpu_seconds() - client_at_cut,
        listen_overflows: overflows_at_cut
            .zip(measure::listen_overflows())
            .map(|(before, after)| after.saturating_sub(before)),
        storm_s: cut.elapsed().as_secs_f64(),
        all_live,
        rss_at_cut,
        rss_peak,
        restarted,
    }
}

/// Tells every subscriber to account for its deliveries and waits for them (at most `limit`).
pub async fn finish(storm: &Storm, subscribers: u64, limit: Duration) {
    storm.phase.send_replace(Phase::Finish);
    let until = Instant::now() + limit;
    while storm.counts.finished.load(Relaxed) < subscribers && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_and_duplicates_against_what_was_accepted() {
        let mut r = Received::new(130);
        for seq in [1, 2, 3, 5, 64, 65, 128, 3, 5] {
            assert!(r.record(seq).is_some());
        }
        assert_eq!(r.record(0), None);
        assert_eq!(r.record(1_000), None);
        assert_eq!(r.duplicates(), 2);
        // 4 and 129 were accepted and never arrived.
        let accepted = [1, 2, 3, 4, 5, 64, 65, 128, 129];
        assert_eq!(r.lost(accepted.into_iter()), 2);
        assert_eq!(r.lost([1, 2, 3].into_iter()), 0);
    }

    #[test]
    fn the_last_id_counts_once_its_event_is_complete() {
        let mut id = LastId::default();
        assert_eq!(id.get(), None);
        id.on_field(Field::Id(b"12"));
        assert_eq!(id.get(), None, "the event is not complete yet");
        id.on_field(Field::Data(b"1 2"));
        id.on_field(Field::End);
        assert_eq!(id.get(), Some("12"));
        // Cut in the middle of the next event: resume after 12, not 13.
        id.on_field(Field::Id(b"13"));
        id.on_field(Field::Data(b"2 3"));
        assert_eq!(id.get(), Some("12"));
        id.on_field(Field::End);
        assert_eq!(id.get(), Some("13"));
        // Nchan's ids, a comment's blank line, then an id that must not reach a header.
        id.on_field(Field::Id(b"1701:0"));
        id.on_field(Field::End);
        id.on_field(Field::End);
        assert_eq!(id.get(), Some("1701:0"));
        assert!(!id.on_field(Field::Id(b"14\rX-Injected: 1")));
        assert!(!id.on_field(Field::Id(&[b'7'; 200])));
        id.on_field(Field::End);
        assert_eq!(id.get(), Some("1701:0"));
        // An empty id forgets it, as in a browser.
        id.on_field(Field::Id(b""));
        id.on_field(Field::End);
        assert_eq!(id.get(), None);
    }
}
