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
//! Layout: `parse` (chunked framing and `data:` lines), `subscriber` (the connections),
//! `publisher` (pacing, HTTP and Redis), `measure` (histogram, `/proc`), `report` (the output).

mod measure;
mod parse;
mod publisher;
mod report;
mod subscriber;

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
        };
        let subscribers = self.subscribers.unwrap_or(subs);
        // 0 in the table: one channel per subscriber.
        let chans = if chans == 0 {
            subscribers.max(1)
        } else {
            chans
        };
        Shape {
            scenario: name,
            subscribers,
            channels: self.channels.unwrap_or(chans).max(1),
            events: self.events.unwrap_or(events),
            rate: self.rate.unwrap_or(rate),
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
    pub timed_out: bool,
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
    let mem_before = measure::memory(&server_pids);
    let connect_secs = connect(args, shape, &plan, &channels, deadline).await;
    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let mem_held = measure::memory(&server_pids);
    let cpu = || {
        let (user, system) = measure::cpu_split(&server_pids);
        (
            user + system,
            measure::cpu_seconds(&args.broker_pids),
            measure::own_cpu_seconds(),
            system,
        )
    };
    let before = cpu();
    let t0 = Instant::now();
    let mut timed_out = false;
    let outcome = if shape.events > 0 {
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
        };
        let outcome = tokio::task::spawn_blocking(move || publisher::run(schedule))
            .await
            .expect("publisher");
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
    let after = cpu();
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
        timed_out,
    }
}

/// Opens the subscribers, `connect_concurrency` at a time; returns the seconds it took.
async fn connect(
    args: &Args,
    shape: &Shape,
    plan: &Arc<Plan>,
    channels: &Arc<Vec<String>>,
    deadline: Instant,
) -> f64 {
    let t0 = Instant::now();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.connect_concurrency.max(1)));
    for i in 0..shape.subscribers {
        let Ok(permit) = gate.clone().acquire_owned().await else {
            break;
        };
        let (plan, channel) = (plan.clone(), channels[i % shape.channels].clone());
        tokio::spawn(subscriber::run(plan, i, channel, permit));
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
