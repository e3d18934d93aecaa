//! The floor of one Redis round trip per event: what a process pays in CPU to write a command to
//! Redis and read its reply, one at a time at a paced rate, with nothing else to do.
//!
//! The Redis broker takes every event's id from Redis, so each event costs the server at least
//! this round trip on top of what the in-memory broker does. This program measures it alone, on
//! the server's own runtime shape (tokio, two worker threads): a raw TCP socket, `PING` written,
//! `+PONG` read, `--count` times at `--rate` per second, and the process's own CPU time (user and
//! kernel, from `/proc/self/stat`) before and after. Run beside `bench/compare.sh`'s routing
//! scenario, it tells how much of the Redis broker's extra cost per event no client code can
//! remove; `--ticks-only` measures the same pacing without the round trip, to take off (see
//! BENCHMARKS.md, "The Redis path against memory, round two").
//!
//! ```sh
//! redis-server --port 17500 --save '' &
//! cargo run --release -p redisse-load --bin redis-rtt -- --redis 127.0.0.1:17500 --rate 2000 --count 20000
//! cargo run --release -p redisse-load --bin redis-rtt -- --redis 127.0.0.1:17500 --rate 2000 --count 20000 --ticks-only
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Parser)]
struct Args {
    /// The Redis server's address (host:port).
    #[arg(long, default_value = "127.0.0.1:6379")]
    redis: String,
    /// Round trips per second (0: as fast as answered).
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Round trips to make.
    #[arg(long, default_value_t = 20000)]
    count: u64,
    /// The reference: the same paced wakeups with no round trip, so that what the pacing
    /// itself costs can be taken off.
    #[arg(long)]
    ticks_only: bool,
    /// Make each round trip through the `redis` crate's connection manager (as the server's
    /// Redis broker does: a multiplexed connection whose own task writes the command and reads
    /// the reply) instead of on the raw socket; the difference is what the client's hops cost.
    #[arg(long)]
    redis_crate: bool,
}

/// This process's user and kernel CPU time, in seconds (USER_HZ is 100 in /proc's ABI).
fn own_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let field = |n: usize| {
        rest.split(' ')
            .nth(n)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 100.0
    };
    (field(11), field(12))
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        // The round trips run on a spawned task, as a request handler does on a worker.
        tokio::spawn(run(args))
            .await
            .map_err(std::io::Error::other)?
    })
}

async fn run(args: Args) -> std::io::Result<()> {
    let mut manager = if args.redis_crate {
        let client = redis::Client::open(format!("redis://{}", args.redis))
            .map_err(std::io::Error::other)?;
        Some(
            redis::aio::ConnectionManager::new(client)
                .await
                .map_err(std::io::Error::other)?,
        )
    } else {
        None
    };
    let mut con = TcpStream::connect(&args.redis).await?;
    con.set_nodelay(true)?;
    let mut buf = [0u8; 64];
    let period = (args.rate > 0).then(|| Duration::from_secs_f64(1.0 / args.rate as f64));
    let mut ticks = period.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    let (user0, sys0) = own_cpu();
    let started = Instant::now();
    for _ in 0..args.count {
        if let Some(t) = &mut ticks {
            t.tick().await;
        }
        if args.ticks_only {
            continue;
        }
        if let Some(manager) = &mut manager {
            let pong: String = redis::cmd("PING")
                .query_async(manager)
                .await
                .map_err(std::io::Error::other)?;
            if pong != "PONG" {
                return Err(std::io::Error::other(format!("unexpected reply {pong:?}")));
            }
            continue;
        }
        con.write_all(b"PING\r\n").await?;
        let mut got = 0;
        while !buf[..got].ends_with(b"\r\n") {
            let n = con.read(&mut buf[got..]).await?;
            if n == 0 {
                return Err(std::io::Error::other("redis closed the connection"));
            }
            got += n;
        }
        if &buf[..got] != b"+PONG\r\n" {
            return Err(std::io::Error::other(format!(
                "unexpected reply {:?}",
                String::from_utf8_lossy(&buf[..got])
            )));
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (user1, sys1) = own_cpu();
    let cpu = (user1 - user0) + (sys1 - sys0);
    let per = cpu / args.count as f64 * 1e6;
    println!(
        "RESULT mode={} round_trips={} rate={} elapsed_s={elapsed:.2} cpu_s={cpu:.2} kernel_pct={:.0} cpu_us_per_round_trip={per:.1}",
        if args.ticks_only {
            "ticks"
        } else if args.redis_crate {
            "ping-redis-crate"
        } else {
            "ping"
        },
        args.count,
        args.rate,
        if cpu > 0.0 {
            (sys1 - sys0) / cpu * 100.0
        } else {
            0.0
        }
    );
    Ok(())
}
