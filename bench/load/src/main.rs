//! `redisse-load`: a load generator for SSE push servers, redisse and Nchan alike.
//!
//! It opens N SSE connections (from several loopback source addresses, so the ephemeral port
//! range is no limit), publishes M events at R per second over HTTP or straight to Redis, with
//! the send time in each event's data, and reports connections held, server memory per
//! connection, deliveries against what was expected (loss, duplicates, order), latency
//! percentiles, deliveries per second, and the CPU time of the server, the broker and itself.
//! Every phase has a time bound.
//!
//! ```text
//! redisse-load --target redisse --server 127.0.0.1:8080 --server-pid $PID --scenario fanout
//! redisse-load --target nchan --server 127.0.0.1:18080 --server-pid $(cat nginx.pid) \
//!     --scenario saturated --subscribers 2000
//! ```
//!
//! The storm scenario cuts every stream at once while events flow and has every subscriber
//! come back with `Last-Event-ID`: it reports how long until all are live again, the events
//! lost and received twice, and the server's peak memory and CPU meanwhile.
//!
//! Layout, bottom-up: `measure` (histogram, `/proc`), `parse` (chunked framing and SSE fields),
//! `subscriber` (the connections), `publisher` (pacing, HTTP and Redis), `storm` (the cut and
//! the reconnections), `report` (the output).

mod measure;
mod parse;
mod subscriber;
mod publisher;
mod storm;
mod report;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use clap::Parser;

use crate::publisher::{Schedule, Via};
use crate::subscriber::{Plan, Tally, Target};

/// Preset shapes of load; every number can be overridden by its own option.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// 19,000 connections on their own channels, held for a while: memory per connection.
    Idle,
    /// 10,000 subscribers of one channel, 10 events/s for 10 s.
    Fanout,
    /// 2,000 subscribers of one channel, 2,000 events as fast as possible.
    Saturated,
    /// 10,000 subscribers on their own channels, 2,000 events/s for 10 s.
    Routing,
    /// No subscriber, 20,000 events on 1,000 channels over 4 connections, as fast as possible.
    Publish,
    /// 10,000 subscribers on 40 channels, 200 events/s; after 3 s every stream is cut at once
    /// and every subscriber reconnects at once with `Last-Event-ID`.
    Storm,
}

/// Load generator for SSE servers (redisse, Nchan).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The server's protocol.
    #[arg(long, value_enum, default_value = "redisse")]
    target: Target,
    /// The server's address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    server: SocketAddr,
    /// Preset numbers for the options below.
    #[arg(long, value_enum, default_value = "fanout")]
    scenario: Scenario,
    /// SSE connections to open.
    #[arg(long)]
    subscribers: Option<usize>,
    /// Channels; subscriber i listens to channel i % channels.
    #[arg(long)]
    channels: Option<usize>,
    /// Events to publish; event i goes to channel i % channels.
    #[arg(long)]
    events: Option<u64>,
    /// Events per second; 0 publishes as fast as the server answers.
    #[arg(long)]
    rate: Option<f64>,
    /// Publishing connections.
    #[arg(long)]
    publishers: Option<usize>,
    /// Where to publish over HTTP, when not `--server` (redisse publishes without a credential
    /// on its internal listener).
    #[arg(long)]
    publish_server: Option<SocketAddr>,
    /// Publish straight to Redis at this URL (redisse's layout) instead of over HTTP.
    #[arg(long)]
    publish_redis: Option<String>,
    /// Bytes of event data (at least the sequence number and the time stamp).
    #[arg(long, default_value_t = 32)]
    payload: usize,
    /// Seconds to hold the connections idle before measuring memory.
    #[arg(long, default_value_t = 3.0)]
    settle: f64,
    /// Source addresses to spread the connections over (127.0.0.2 upwards).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=200))]
    sources: u8,
    /// Connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Worker threads for the subscribers.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Read buffer per connection, in bytes.
    #[arg(long, default_value_t = 16 * 1024)]
    read_buf: usize,
    /// Server processes (their children are included: give nginx's master).
    #[arg(long = "server-pid")]
    server_pids: Vec<u32>,
    /// Broker processes (redis-server), reported apart from the server.
    #[arg(long = "broker-pid")]
    broker_pids: Vec<u32>,
    /// Channel name prefix (default: unique per run).
    #[arg(long)]
    prefix: Option<String>,
    /// A label for the RESULT line.
    #[arg(long, default_value = "")]
    label: String,
    /// Upper bound on the whole run, in seconds.
    #[arg(long, default_value_t = 180.0)]
    max_time: f64,
    /// Seconds to wait for the last deliveries after the last event was published.
    #[arg(long, default_value_t = 10.0)]
    drain: f64,
    /// Storm: seconds of publishing before the cut.
    #[arg(long, default_value_t = 3.0)]
    cut_after: f64,
    /// Storm: seconds to wait for every subscriber to be live again after the cut.
    #[arg(long, default_value_t = 60.0)]
    storm_timeout: f64,
    /// Storm: seconds of publishing once every subscriber is live again.
    #[arg(long, default_value_t = 3.0)]
    after_live: f64,
    /// Storm: milliseconds before trying again after a failed reconnection.
    #[arg(long, default_value_t = 100)]
    retry_ms: u64,
    /// Storm: instead of dropping the client sockets, run this shell command at the cut: it
    /// stops the server and starts it again, and prints the new server's process id last.
    #[arg(long)]
    restart_command: Option<String>,
}

/// The resolved numbers of a run.
#[derive(Debug)]
pub struct Shape {
    pub scenario: &'static str,
    pub subscribers: usize,
    pub channels: usize,
    pub events: u64,
    pub rate: f64,
    pub publishers: usize,
}

impl Args {
    fn shape(&self) -> Shape {
        let (name, subs, chans, events, rate, pubs) = match self.scenario {
            Scenario::Idle => ("idle", 19_000, 0, 0, 0.0, 1),
            Scenario::Fanout => ("fanout", 10_000, 1, 100, 10.0, 1),
            Scenario::Saturated => ("saturated", 2_000, 1, 2_000, 0.0, 1),
            Scenario::Routing => ("routing", 10_000, 0, 20_000, 2_000.0, 4),
            Scenario::Publish => ("publish", 0, 1_000, 20_000, 0.0, 4),
            // Events: enough for the whole storm at the rate; publishing stops earlier.
            Scenario::Storm => ("storm", 10_000, 40, 0, 200.0, 1),
        };
        let rate = self.rate.unwrap_or(rate);
        let events = match self.scenario {
            Scenario::Storm if rate > 0.0 => {
                (rate * (self.cut_after + self.storm_timeout + self.after_live)).ceil() as u64
            }
            _ => events,
        };
        let subscribers = self.subscribers.unwrap_or(subs);
        // 0 in the table: one channel per subscriber.
        let chans = if chans == 0 {
            subscribers.max(1)
        } else {
            chans
        };
        let name = match self.restart_command {
            Some(_) if name == "storm" => "storm-restart",
            _ => name,
        };
        Shape {
            scenario: name,
            subscribers,
            channels: self.channels.unwrap_or(chans).max(1),
            events: self.events.unwrap_or(events),
            rate,
            publishers: self.publishers.unwrap_or(pubs).max(1),
        }
    }
}

fn main() {
    let args = Args::parse();
    let shape = args.shape();
    let nofile = measure::raise_nofile();
    if shape.subscribers as u64 + 64 > nofile {
        eprintln!(
            "warning: {} connections need more file descriptors than the limit ({nofile})",
            shape.subscribers
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let report = rt.block_on(run(&args, &shape));
    report::print(&args.label, args.target, &shape, &report);
    // Closing every connection at once is the server's business, not ours: do not wait.
    rt.shutdown_background();
}

/// Everything measured in one run.
pub struct Report {
    pub server_pids: Vec<u32>,
    pub connect_secs: f64,
    pub mem_before: measure::Memory,
    pub mem_held: measure::Memory,
    pub plan: Arc<Plan>,
    pub outcome: Option<Arc<publisher::Outcome>>,
    pub publish_secs: f64,
    pub server_cpu: f64,
    /// The part of `server_cpu` spent in the kernel (system time).
    pub server_sys_cpu: f64,
    pub broker_cpu: f64,
    pub client_cpu: f64,
    /// Times the server's threads went to sleep during the run ([`measure::sleeps`]); `None`
    /// when the server was restarted meanwhile.
    pub server_sleeps: Option<u64>,
    /// The same for the `--broker-pid` processes.
    pub broker_sleeps: u64,
    pub timed_out: bool,
    /// The storm scenario's own figures.
    pub storm: Option<(Arc<storm::Storm>, storm::Summary)>,
}

async fn run(args: &Args, shape: &Shape) -> Report {
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.max_time);
    let server_pids = measure::with_children(&args.server_pids);
    let prefix = args
        .prefix
        .clone()
        .unwrap_or_else(|| format!("L{}", std::process::id()));
    let channels: Arc<Vec<String>> = Arc::new(
        (0..shape.channels)
            .map(|c| format!("{prefix}-c{c}"))
            .collect(),
    );
    let mut per_channel = vec![0u64; shape.channels];
    for i in 0..shape.subscribers {
        per_channel[i % shape.channels] += 1;
    }
    let plan = Arc::new(Plan {
        target: args.target,
        server: args.server,
        sources: args.sources,
        read_buf: args.read_buf,
        start,
        tally: Tally::default(),
    });
    let outcome = Arc::new(publisher::Outcome::new(shape.channels, shape.events));
    let storm = (args.scenario == Scenario::Storm).then(|| {
        Arc::new(storm::Storm {
            phase: tokio::sync::watch::Sender::new(storm::Phase::Run),
            cut_ns: Default::default(),
            outcome: outcome.clone(),
            max_seq: shape.events.div_ceil(shape.channels as u64),
            retry: Duration::from_millis(args.retry_ms),
            deadline,
            restart: args.restart_command.clone(),
            counts: Default::default(),
        })
    });
    let mem_before = measure::memory(&server_pids);
    let connect_secs = connect(args, shape, (&plan, storm.as_ref()), &channels, deadline).await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let mem_held = measure::memory(&server_pids);
    // The server's CPU through a tracker: a restarted server's first process counts until it exits.
    let mut server_cpu = measure::CpuTracker::default();
    let cpu = |tracker: &mut measure::CpuTracker, pids: &[u32]| {
        tracker.sample(pids);
        let (user, system) = tracker.total();
        (
            user + system,
            measure::cpu_seconds(&args.broker_pids),
            measure::own_cpu_seconds(),
            system,
            (measure::sleeps(pids), measure::sleeps(&args.broker_pids)),
        )
    };
    let before = cpu(&mut server_cpu, &server_pids);
    let t0 = Instant::now();
    let mut timed_out = false;
    let mut storm_summary = None;
    let outcome = if shape.events > 0 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let schedule = Schedule {
            via: match &args.publish_redis {
                Some(url) => Via::Redis(url.clone()),
                None => Via::Http(args.target, args.publish_server.unwrap_or(args.server)),
            },
            events: shape.events,
            rate: shape.rate,
            connections: shape.publishers,
            channels: channels.clone(),
            subscribers: Arc::new(per_channel),
            payload_bytes: args.payload,
            start,
            deadline,
            stop: stop.clone(),
            keep_going: storm.is_some(),
        };
        let publishing = {
            let outcome = outcome.clone();
            tokio::task::spawn_blocking(move || publisher::run(schedule, outcome))
        };
        if let Some(storm) = &storm {
            let summary = storm::cut_and_watch(
                &plan,
                storm,
                (shape.subscribers as u64, &server_pids),
                &mut server_cpu,
                (
                    Duration::from_secs_f64(args.cut_after),
                    Duration::from_secs_f64(args.storm_timeout),
                ),
            )
            .await;
            storm_summary = Some(summary);
            tokio::time::sleep(Duration::from_secs_f64(args.after_live)).await;
            stop.store(true, Relaxed);
        }
        let outcome = publishing.await.expect("publisher");
        timed_out = !drain(
            &plan,
            &outcome,
            Duration::from_secs_f64(args.drain),
            deadline,
        )
        .await;
        Some(outcome)
    } else {
        None
    };
    let publish_secs = t0.elapsed().as_secs_f64();
    let pids_now = match storm_summary.as_ref().and_then(|s| s.restarted.as_ref()) {
        Some(&(pid, _)) => measure::with_children(&[pid]),
        None => server_pids.clone(),
    };
    let after = cpu(&mut server_cpu, &pids_now);
    // A restarted server's new process counts from zero: no figure then.
    let server_sleeps = (pids_now == server_pids).then(|| after.4.0.saturating_sub(before.4.0));
    if let Some(storm) = &storm {
        storm::finish(storm, shape.subscribers as u64, Duration::from_secs(10)).await;
    }
    Report {
        server_pids,
        connect_secs,
        mem_before,
        mem_held,
        plan,
        outcome,
        publish_secs,
        server_cpu: after.0 - before.0,
        server_sys_cpu: after.3 - before.3,
        broker_cpu: after.1 - before.1,
        client_cpu: after.2 - before.2,
        server_sleeps,
        broker_sleeps: after.4.1.saturating_sub(before.4.1),
        timed_out,
        storm: storm.zip(storm_summary),
    }
}

/// Opens the subscribers, `connect_concurrency` at a time; returns the seconds it took.
async fn connect(
    args: &Args,
    shape: &Shape,
    (plan, storm): (&Arc<Plan>, Option<&Arc<storm::Storm>>),
    channels: &Arc<Vec<String>>,
    deadline: Instant,
) -> f64 {
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    for i in 0..shape.subscribers {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (plan, c) = (plan.clone(), i % shape.channels);
        match storm {
            Some(storm) => {
                let channel = (c, channels[c].clone());
                tokio::spawn(storm::subscriber(plan, storm.clone(), i, channel, permit))
            }
            None => tokio::spawn(subscriber::run(plan, i, channels[c].clone(), permit)),
        };
        if Instant::now() >= deadline {
            break;
        }
    }
    let tally = &plan.tally;
    while tally.open.load(Relaxed) + tally.failed.load(Relaxed) < shape.subscribers as u64
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t0.elapsed().as_secs_f64()
}

/// Waits until every expected delivery arrived, or `quiet` passed without any, or the deadline.
/// Returns whether everything expected arrived.
async fn drain(
    plan: &Plan,
    outcome: &publisher::Outcome,
    quiet: Duration,
    deadline: Instant,
) -> bool {
    let tally = &plan.tally;
    let mut last = (tally.delivered.load(Relaxed), Instant::now());
    loop {
        let delivered = tally.delivered.load(Relaxed);
        if delivered >= outcome.expected.load(Relaxed) {
            return true;
        }
        if delivered != last.0 {
            last = (delivered, Instant::now());
        }
        if last.1.elapsed() >= quiet || Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
