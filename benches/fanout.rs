//! Fan-out cost in process, through the public API: one event published to 1, 100 and 10,000
//! open streams of one channel.
//!
//! The `AllocProfiler` columns are the point: allocations per iteration must not grow with the
//! number of subscribers, since the event is encoded once and every subscriber's queue gets a
//! clone of the same `Bytes`. Each iteration publishes one event and waits until the dispatcher
//! has offered it to every stream (the first stream's body yields it); reading the frame from
//! the other streams' bodies happens between iterations, outside the measurement.
//!
//! `open_stream_during_fanout` measures how long opening and closing a stream takes while
//! another thread keeps a 10,000-stream fan-out going (the registry lock is held during a
//! fan-out). On this 2-core machine it showed no difference between holding the lock and a
//! copy-on-write list (see BENCHMARKS.md): the outliers come from CPU contention.
//!
//! `deliver_to_every_stream` also reads the event from every body inside the measurement: the
//! whole cost of a delivery in process, what a per-delivery metric adds to.
//!
//! Run with `cargo bench --bench fanout`. It also prints the size of the per-connection values
//! that the library and hyper keep for every open stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::Body as _;
use redisse::{Config, Event, QueryChannels, Redisse, SseBody};
use tower::ServiceExt;

#[global_allocator]
static ALLOC: divan::AllocProfiler = divan::AllocProfiler::system();

fn main() {
    print_sizes();
    divan::main();
}

/// The streams of one benchmark: a runtime, an instance, and `n` open bodies on channel `bench`.
struct Streams {
    rt: tokio::runtime::Runtime,
    redisse: Redisse,
    bodies: Vec<SseBody>,
}

impl Streams {
    fn open(n: usize) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let redisse = rt
            .block_on(async { Redisse::new(Config::default()) })
            .expect("instance");
        let endpoint = redisse.endpoint(QueryChannels);
        let bodies = rt.block_on(async {
            let mut bodies = Vec::with_capacity(n);
            for _ in 0..n {
                let req = http::Request::get("/?bench")
                    .header(http::header::ACCEPT, "text/event-stream")
                    .body(())
                    .expect("request");
                let res = endpoint.clone().oneshot(req).await.expect("infallible");
                assert_eq!(res.status(), 200);
                bodies.push(res.into_body());
            }
            // Let every stream's setup task finish (in memory: no broker round trip).
            while redisse.connections() < n {
                tokio::task::yield_now().await;
            }
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            bodies
        });
        let mut streams = Streams {
            rt,
            redisse,
            bodies,
        };
        // A warm-up event, read from every stream: each stream's setup task has then finished
        // (a stream yields nothing before), so none of their work lands in a measurement.
        streams.publish_one();
        for body in &mut streams.bodies[1..] {
            while !poll_data(body) {
                streams.rt.block_on(tokio::task::yield_now());
            }
        }
        streams.drain_all();
        streams
    }

    /// Publishes one event and returns once the dispatcher has offered it to every stream.
    fn publish_one(&mut self) {
        let publisher = self.redisse.publisher();
        let first = &mut self.bodies[0];
        self.rt.block_on(async {
            publisher
                .publish("bench", Event::message("benchmark event"))
                .await
                .expect("publish");
            // One dispatcher task offers the event to all streams in one go: when the first
            // body has it, every body has it.
            while !poll_data(first) {
                tokio::task::yield_now().await;
            }
        });
    }

    /// Takes what is queued on every stream, so queues stay short from one iteration to the next.
    fn drain_all(&mut self) {
        for body in &mut self.bodies[1..] {
            while poll_data(body) {}
        }
    }
}

/// Polls a body once; true when it yielded data.
fn poll_data(body: &mut SseBody) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    matches!(
        Pin::new(body).poll_frame(&mut cx),
        Poll::Ready(Some(Ok(frame))) if frame.is_data()
    )
}

#[divan::bench(args = [1, 100, 10_000], sample_size = 1, sample_count = 300)]
fn publish_one_event(bencher: divan::Bencher<'_, '_>, subscribers: usize) {
    let mut streams = Streams::open(subscribers);
    let streams = std::cell::RefCell::new(&mut streams);
    bencher
        .with_inputs(|| streams.borrow_mut().drain_all())
        .bench_local_values(|()| streams.borrow_mut().publish_one());
}

/// One event published and read from every stream's body: the dispatcher's offers and every
/// body's poll (what a server does per delivery: counting, timing, handing the frame on), the
/// per-delivery cost that `publish_one_event` leaves outside its measurement.
#[divan::bench(args = [100, 10_000], sample_size = 1, sample_count = 200)]
fn deliver_to_every_stream(bencher: divan::Bencher<'_, '_>, subscribers: usize) {
    let mut streams = Streams::open(subscribers);
    let streams = std::cell::RefCell::new(&mut streams);
    bencher
        .with_inputs(|| streams.borrow_mut().drain_all())
        .bench_local_values(|()| {
            let mut streams = streams.borrow_mut();
            streams.publish_one();
            for body in &mut streams.bodies[1..] {
                while !poll_data(body) {}
            }
        });
}

/// Opening and closing one stream (two registry changes) while another thread publishes to
/// 10,000 streams of another channel back to back: how long a registration waits for a fan-out.
#[divan::bench(sample_size = 1, sample_count = 500)]
fn open_stream_during_fanout(bencher: divan::Bencher<'_, '_>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redisse = rt
        .block_on(async { Redisse::new(Config::default()) })
        .expect("instance");
    let endpoint = redisse.endpoint(QueryChannels);
    let request = |query: &str| {
        http::Request::get(format!("/?{query}"))
            .header(http::header::ACCEPT, "text/event-stream")
            .body(())
            .expect("request")
    };
    let mut bodies: Vec<SseBody> = rt.block_on(async {
        let mut bodies = Vec::new();
        for _ in 0..10_000 {
            let res = endpoint
                .clone()
                .oneshot(request("busy"))
                .await
                .expect("infallible");
            bodies.push(res.into_body());
        }
        bodies
    });
    let stop = Arc::new(AtomicBool::new(false));
    let busy = {
        let (stop, handle, publisher) = (stop.clone(), rt.handle().clone(), redisse.publisher());
        std::thread::spawn(move || {
            while !stop.load(Relaxed) {
                handle
                    .block_on(publisher.publish("busy", Event::message("busy")))
                    .expect("publish");
                while !poll_data(&mut bodies[0]) && !stop.load(Relaxed) {
                    std::thread::yield_now();
                }
                for body in &mut bodies[1..] {
                    while poll_data(body) {}
                }
            }
        })
    };
    bencher.bench_local(|| {
        rt.block_on(async {
            let res = endpoint.clone().oneshot(request("other")).await;
            drop(res);
        })
    });
    stop.store(true, Relaxed);
    busy.join().expect("busy thread");
}

/// Sizes of what every open stream keeps, printed once before the benchmarks.
fn print_sizes() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let (stream, _) = accepted.expect("accept");
        let redisse = Redisse::new(Config::default()).expect("instance");
        let router = redisse.router();
        let svc = tower::service_fn(move |req: http::Request<hyper::body::Incoming>| {
            router.clone().oneshot(req)
        });
        let conn = Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(svc))
            .into_owned();
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let watched = graceful.watch(conn);
        println!(
            "per-stream sizes: SseBody {} B (its stream state is boxed apart), hyper connection \
             future (auto h1/h2, as server.rs spawns it) {} B; hyper also allocates an 8 KiB read \
             buffer and an 8 KiB write buffer per HTTP/1 connection",
            std::mem::size_of::<SseBody>(),
            std::mem::size_of_val(&watched),
        );
    });
}
