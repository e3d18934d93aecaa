//! The output: readable lines, then one `RESULT key=value ...` line for scripts.

use std::sync::atomic::Ordering::Relaxed;

use crate::subscriber::Target;
use crate::{Report, Shape};

/// Prints the report of one run.
pub fn print(label: &str, target: Target, shape: &Shape, r: &Report) {
    let t = &r.plan.tally;
    let open = t.open.load(Relaxed);
    let delivered = t.delivered.load(Relaxed);
    let per_conn = |after: u64, before: u64| {
        if open == 0 {
            0.0
        } else {
            after.saturating_sub(before) as f64 / open as f64 / 1024.0
        }
    };
    let rss_kib = per_conn(r.mem_held.rss, r.mem_before.rss);
    let pss_kib = per_conn(r.mem_held.pss, r.mem_before.pss);
    let ms = |ns: u64| ns as f64 / 1e6;
    let mut kv: Vec<(&str, String)> = vec![
        ("label", label.to_owned()),
        ("target", format!("{target:?}").to_lowercase()),
        ("scenario", shape.scenario.to_owned()),
        ("subscribers", shape.subscribers.to_string()),
        ("channels", shape.channels.to_string()),
        ("held", open.to_string()),
        ("failed", t.failed.load(Relaxed).to_string()),
        ("closed", t.closed.load(Relaxed).to_string()),
        ("connect_s", format!("{:.2}", r.connect_secs)),
        ("server_procs", r.server_pids.len().to_string()),
        ("rss_before_mib", mib(r.mem_before.rss)),
        ("rss_held_mib", mib(r.mem_held.rss)),
        ("rss_kib_per_conn", format!("{rss_kib:.2}")),
        ("pss_kib_per_conn", format!("{pss_kib:.2}")),
    ];
    if let Some(o) = &r.outcome {
        let published = o.published.load(Relaxed);
        let expected = o.expected.load(Relaxed);
        let first = o.first_ns.load(Relaxed);
        let span = |end: u64| (end.saturating_sub(first) as f64 / 1e9).max(1e-9);
        let last_delivery = t.last_delivery_ns.load(Relaxed);
        let per = |cpu: f64, n: u64| if n == 0 { 0.0 } else { cpu * 1e6 / n as f64 };
        let h = &t.latency;
        kv.extend([
            ("events", shape.events.to_string()),
            ("rate", format!("{}", shape.rate)),
            ("published", published.to_string()),
            ("publish_errors", o.errors.load(Relaxed).to_string()),
            (
                "publish_per_s",
                format!("{:.0}", published as f64 / span(o.last_ns.load(Relaxed))),
            ),
            (
                "publish_rtt_p50_ms",
                format!("{:.3}", ms(o.round_trip.quantile(0.5))),
            ),
            (
                "publish_rtt_p99_ms",
                format!("{:.3}", ms(o.round_trip.quantile(0.99))),
            ),
            ("expected", expected.to_string()),
            ("delivered", delivered.to_string()),
            ("missing", expected.saturating_sub(delivered).to_string()),
            ("extra", delivered.saturating_sub(expected).to_string()),
            ("out_of_order", t.out_of_order.load(Relaxed).to_string()),
            ("gaps", t.gaps.load(Relaxed).to_string()),
            ("bad_data", t.bad_data.load(Relaxed).to_string()),
            ("complete", (!r.timed_out).to_string()),
            ("p50_ms", format!("{:.3}", ms(h.quantile(0.5)))),
            ("p99_ms", format!("{:.3}", ms(h.quantile(0.99)))),
            ("p999_ms", format!("{:.3}", ms(h.quantile(0.999)))),
            ("max_ms", format!("{:.3}", ms(h.quantile(1.0)))),
            (
                "deliveries_per_s",
                format!("{:.0}", delivered as f64 / span(last_delivery)),
            ),
            ("window_s", format!("{:.2}", r.publish_secs)),
            ("server_cpu_s", format!("{:.2}", r.server_cpu)),
            (
                "server_kernel_pct",
                if r.server_cpu > 0.0 {
                    format!("{:.0}", 100.0 * r.server_sys_cpu / r.server_cpu)
                } else {
                    String::new()
                },
            ),
            ("broker_cpu_s", format!("{:.2}", r.broker_cpu)),
            ("client_cpu_s", format!("{:.2}", r.client_cpu)),
            (
                "server_us_per_delivery",
                format!("{:.3}", per(r.server_cpu, delivered)),
            ),
            (
                "server_us_per_event",
                format!("{:.3}", per(r.server_cpu, published)),
            ),
            (
                "broker_us_per_event",
                format!("{:.3}", per(r.broker_cpu, published)),
            ),
            (
                "server_broker_us_per_event",
                format!("{:.3}", per(r.server_cpu + r.broker_cpu, published)),
            ),
            (
                "server_sleeps_per_event",
                r.server_sleeps.map_or_else(String::new, |n| {
                    format!("{:.2}", n as f64 / published.max(1) as f64)
                }),
            ),
            (
                "broker_sleeps_per_event",
                format!("{:.2}", r.broker_sleeps as f64 / published.max(1) as f64),
            ),
            (
                "client_us_per_delivery",
                format!("{:.3}", per(r.client_cpu, delivered)),
            ),
        ]);
    }
    if let Some((storm, summary)) = &r.storm {
        let c = &storm.counts;
        let at_cut = c.at_cut.load(Relaxed);
        let quantile = |h: &crate::measure::Histogram, q: f64| format!("{:.1}", ms(h.quantile(q)));
        kv.extend([
            ("at_cut", at_cut.to_string()),
            ("live_again", c.live.load(Relaxed).to_string()),
            ("gave_up", c.gave_up.load(Relaxed).to_string()),
            ("all_live", summary.all_live.to_string()),
            ("storm_s", format!("{:.2}", summary.storm_s)),
            (
                "restart_s",
                summary
                    .restarted
                    .as_ref()
                    .map_or(String::new(), |(_, s)| format!("{s:.2}")),
            ),
            ("back_p50_ms", quantile(&c.back, 0.5)),
            ("back_p99_ms", quantile(&c.back, 0.99)),
            ("back_max_ms", quantile(&c.back, 1.0)),
            ("live_p50_ms", quantile(&c.live_after, 0.5)),
            ("live_p99_ms", quantile(&c.live_after, 0.99)),
            ("live_max_ms", quantile(&c.live_after, 1.0)),
            ("lost", c.lost.load(Relaxed).to_string()),
            ("duplicates", c.duplicates.load(Relaxed).to_string()),
            ("missed_events", c.missed_events.load(Relaxed).to_string()),
            (
                "failed_attempts",
                c.failed_attempts.load(Relaxed).to_string(),
            ),
            ("bad_fields", c.bad.load(Relaxed).to_string()),
            ("accounted", c.finished.load(Relaxed).to_string()),
            ("rss_at_cut_mib", mib(summary.rss_at_cut)),
            ("rss_peak_mib", mib(summary.rss_peak)),
            ("storm_server_cpu_s", format!("{:.2}", summary.storm_cpu_s)),
            ("storm_client_cpu_s", format!("{:.2}", summary.client_cpu_s)),
            (
                "listen_overflows",
                summary
                    .listen_overflows
                    .map_or(String::new(), |n| n.to_string()),
            ),
            (
                "steady_server_cpu_pct",
                format!("{:.0}", 100.0 * summary.steady_cpu_per_s),
            ),
        ]);
    }
    for (k, v) in &kv {
        println!("{k:>28}: {v}");
    }
    let line: Vec<String> = kv
        .iter()
        .map(|(k, v)| format!("{k}={}", if v.is_empty() { "-" } else { v }))
        .collect();
    println!("RESULT {}", line.join(" "));
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}
