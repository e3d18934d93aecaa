//! What the tool measures besides deliveries: a lock-free latency histogram, and the CPU time
//! and memory of processes read from `/proc` (the server's, its children's, the broker's and
//! this process's own).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Values below this are exact (ns); above, each power of two has [`SUB`] buckets (< 1.6% error).
const EXACT: u64 = 128;
const SUB: u64 = 64;
const BUCKETS: usize = (EXACT + 58 * SUB) as usize;

/// A log-linear histogram of nanosecond values, filled from many tasks at once.
pub struct Histogram {
    counts: Box<[AtomicU64]>,
    max: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max: AtomicU64::new(0),
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let shift = u64::from(64 - v.leading_zeros()) - 7;
    (EXACT + (shift - 1) * SUB + ((v >> shift) - SUB)) as usize
}

fn lower_bound(i: usize) -> u64 {
    let i = i as u64;
    if i < EXACT {
        return i;
    }
    let shift = (i - EXACT) / SUB + 1;
    ((i - EXACT) % SUB + SUB) << shift
}

impl Histogram {
    /// Records `n` values of `v` ns.
    pub fn record(&self, v: u64, n: u64) {
        self.counts[index(v)].fetch_add(n, Relaxed);
        self.max.fetch_max(v, Relaxed);
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// The value at quantile `q` (0..=1), in ns (the middle of its bucket; exact for `q = 1`).
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        if q >= 1.0 {
            return self.max.load(Relaxed);
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Relaxed);
            if seen >= rank {
                let lo = lower_bound(i);
                let hi = lower_bound(i + 1);
                return (lo + (hi - lo) / 2).min(self.max.load(Relaxed));
            }
        }
        self.max.load(Relaxed)
    }
}

/// CPU time (user + system) of a set of processes, from `/proc/<pid>/stat`, in seconds.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let (user, system) = cpu_split(pids);
    user + system
}

/// User and system (kernel) CPU time of a set of processes, in seconds.
pub fn cpu_split(pids: &[u32]) -> (f64, f64) {
    pids.iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name (which may hold spaces) start at field 3.
            let rest = &stat[stat.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split(' ').collect();
            let user = f.get(11)?.parse::<u64>().ok()?;
            let system = f.get(12)?.parse::<u64>().ok()?;
            // USER_HZ is 100 on Linux for every architecture's /proc ABI.
            Some((user as f64 / 100.0, system as f64 / 100.0))
        })
        .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
}

/// CPU time of processes that may come and go (a server restarted during the run): the last
/// value read for each process is kept, so a process that exited still counts what it used
/// until its last sample.
#[derive(Debug, Default)]
pub struct CpuTracker {
    seen: std::collections::HashMap<u32, (f64, f64)>,
}

impl CpuTracker {
    /// Reads the CPU time of `pids` now.
    pub fn sample(&mut self, pids: &[u32]) {
        for &pid in pids {
            let (user, system) = cpu_split(&[pid]);
            if user + system > 0.0 || !self.seen.contains_key(&pid) {
                self.seen.insert(pid, (user, system));
            }
        }
    }

    /// User and system time of every process sampled so far, in seconds.
    pub fn total(&self) -> (f64, f64) {
        self.seen
            .values()
            .fold((0.0, 0.0), |(u, s), (du, ds)| (u + du, s + ds))
    }
}

/// How many times the threads of a set of processes went to sleep: their voluntary context
/// switches, summed over `/proc/<pid>/task/*/status`. Each is a wakeup to come, which on a
/// machine idle between events costs more than the work it wakes up for (BENCHMARKS.md, run
/// 17). A thread that exits meanwhile takes its count with it (tokio's workers live as long as
/// the server).
pub fn sleeps(pids: &[u32]) -> u64 {
    pids.iter()
        .flat_map(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/task"))
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .filter_map(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// This process's CPU time (all threads), in seconds.
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(&[std::process::id()])
}

/// Resident and proportional set sizes of a set of processes, in bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Memory {
    /// Sum of `VmRSS` (pages shared between the processes count once per process).
    pub rss: u64,
    /// Sum of `Pss` from `smaps_rollup` (shared pages divided among their users).
    pub pss: u64,
}

/// Reads the memory of `pids`.
pub fn memory(pids: &[u32]) -> Memory {
    let kib = |file: &str, key: &str| -> u64 {
        std::fs::read_to_string(file)
            .ok()
            .and_then(|text| {
                let line = text.lines().find(|l| l.starts_with(key))?;
                line[key.len()..]
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or(0)
            * 1024
    };
    pids.iter().fold(Memory::default(), |m, pid| Memory {
        rss: m.rss + kib(&format!("/proc/{pid}/status"), "VmRSS:"),
        pss: m.pss + kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:"),
    })
}

/// `pids` and all their descendants (nginx: the master and its workers).
pub fn with_children(pids: &[u32]) -> Vec<u32> {
    let mut all: Vec<u32> = pids.to_vec();
    let parents: Vec<(u32, u32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let ppid = stat[stat.rfind(')')? + 2..]
                .split(' ')
                .nth(1)?
                .parse()
                .ok()?;
            Some((pid, ppid))
        })
        .collect();
    let mut i = 0;
    while i < all.len() {
        let parent = all[i];
        for &(pid, ppid) in &parents {
            if ppid == parent && !all.contains(&pid) {
                all.push(pid);
            }
        }
        i += 1;
    }
    all
}

/// The kernel's count of connections dropped because a listen queue was full
/// (`TcpExt: ListenOverflows` in `/proc/net/netstat`; machine-wide). A dropped SYN is sent again
/// by the client's kernel after a second, so each one costs its client at least that.
pub fn listen_overflows() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (rows.next()?, rows.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Raises the soft limit on open files to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("warning: cannot raise RLIMIT_NOFILE: {e}");
            rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_that_sleeps_is_counted() {
        let me = [std::process::id()];
        let before = sleeps(&me);
        for _ in 0..5 {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let after = sleeps(&me);
        assert!(after >= before + 5, "{before} -> {after}");
        assert_eq!(sleeps(&[u32::MAX]), 0, "no such process");
    }

    #[test]
    fn buckets_are_monotonic_and_close() {
        for v in [
            0,
            1,
            127,
            128,
            129,
            1000,
            65_535,
            1 << 20,
            123_456_789,
            u64::MAX >> 8,
        ] {
            let i = index(v);
            assert!(lower_bound(i) <= v && v < lower_bound(i + 1), "{v}");
            assert!((lower_bound(i + 1) - lower_bound(i)) as f64 <= (v as f64 / 63.0).max(1.0));
        }
        let h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000, 1);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
    }

    #[test]
    fn listen_overflows_are_read_on_linux() {
        assert!(
            listen_overflows().is_some(),
            "no TcpExt ListenOverflows in /proc/net/netstat"
        );
    }
}
