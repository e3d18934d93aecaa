//! A private Redis Cluster per test: six nodes on free loopback ports (three primaries, three
//! replicas, made by `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`),
//! waited for until every node says `cluster_state:ok`, and stopped when it is dropped. Each
//! node's cluster bus listens on its port + 10000, so the ports are picked below 55536 with
//! that second port free too ([`super::redis::free_cluster_port`]).
//!
//! [`Cluster::start_tls`] makes the same cluster over TLS (`tls-cluster yes`, `tls-replication
//! yes`): redisse reaches every node on its TLS port, which the slot map names to TLS clients,
//! while the harness keeps plain connections on a second port of each node, to which the slot
//! map names the plain ports: the ports that the methods below take and return are then those.
//!
//! A test can also find where redisse keeps a channel in cluster mode (the tag rule of
//! docs/redis-layout.md: [`tag`], [`history_key`], [`Cluster::primary_of_channel`], and
//! [`Cluster::channels_on_distinct_primaries`] for names that land on different shards), kill
//! the primary that owns a slot (SIGKILL) and wait until its replica is promoted
//! ([`Cluster::kill_primary`], [`Cluster::wait_failover`]), cut a replica off its primary
//! first so that the promotion loses writes ([`Cluster::cut_replica`]), start a killed node
//! again ([`Cluster::restart`]), when it rejoins as a replica, and move a slot with its keys to
//! another primary while clients use it ([`Cluster::move_slot`]).

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::{RedisServer, TlsFiles};

/// How long a failover may take: with `--cluster-node-timeout 2000` the others mark a dead
/// primary failed after about two seconds, and its replica wins the election within a few more.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

/// The node timeout every node runs with, in milliseconds.
const NODE_TIMEOUT_MS: u32 = 2000;

pub struct Cluster {
    nodes: Vec<RedisServer>,
}

/// FNV-1a, 32 bits, over `bytes` (offset basis 0x811c9dc5, prime 0x01000193).
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5, |h: u32, &b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The hash tag of `channel` in cluster mode: the low 16 bits of its FNV-1a hash, as four
/// lowercase hex digits.
pub fn tag(channel: &str) -> String {
    format!("{:04x}", fnv1a32(channel.as_bytes()) & 0xffff)
}

/// The key of `channel`'s history in cluster mode (also its shard channel).
pub fn history_key(channel: &str) -> String {
    format!("redisse:{{{}}}:c:{channel}", tag(channel))
}

/// The key of `channel`'s sequence in cluster mode.
pub fn seq_key(channel: &str) -> String {
    format!("redisse:{{{}}}:id:{channel}", tag(channel))
}

impl Cluster {
    /// Starts the six nodes and makes them one cluster.
    pub fn start() -> Self {
        Cluster::start_with(None)
    }

    /// [`Cluster::start`] over TLS, with certificates from `tls` (see the module
    /// documentation); [`Cluster::seeds`] are then `rediss://` URLs.
    pub fn start_tls(tls: TlsFiles) -> Self {
        Cluster::start_with(Some(tls))
    }

    fn start_with(tls: Option<TlsFiles>) -> Self {
        let mut extra = vec![
            "--cluster-enabled".to_owned(),
            "yes".to_owned(),
            "--cluster-node-timeout".to_owned(),
            NODE_TIMEOUT_MS.to_string(),
        ];
        if tls.is_some() {
            extra.extend(["--tls-cluster", "yes", "--tls-replication", "yes"].map(String::from));
        }
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| match &tls {
                None => RedisServer::start_cluster_node_with(&extra),
                Some(tls) => RedisServer::start_tls_cluster_node_with(&extra, tls.clone()),
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &tls {
            // The nodes meet on their TLS ports, so that the bus is the TLS port's + 10000.
            create.arg("--tls").arg("--cacert").arg(&tls.ca);
        }
        let out = create
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run redis-cli ({e}): the cluster tests need it on the PATH \
                     (Debian: apt-get install redis-tools, which redis-server brings)"
                )
            });
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(30);
        for node in &cluster.nodes {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.con())
                    .unwrap_or_default();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node {} is not ready: {info}",
                    node.port()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // And every replica has its first copy, so that a failover right away loses nothing.
        for slot in [0, 8192, 16383] {
            cluster.wait_synced(slot);
        }
        cluster
    }

    /// Moves `slot` and its keys from its primary to the primary on port `to`, live, the way
    /// `redis-cli --cluster reshard` moves a slot: `to` importing it and its owner migrating it
    /// (meanwhile a command on a key already moved is sent on with `ASK`, and one on keys split
    /// between the two is refused with `TRYAGAIN`), its keys moved `pause` apart with `MIGRATE`,
    /// then every primary told its new owner (`SETSLOT ... NODE`). Waits until every node names
    /// the new owner.
    pub fn move_slot(&self, slot: u16, to: u16, pause: Duration) {
        let from = self.primary_of(slot);
        assert_ne!(from, to, "slot {slot} is on {to} already");
        let (from_id, to_id) = (self.node_id(from), self.node_id(to));
        let setslot = |port: u16, args: &[&str]| self.set_slot(slot, port, args);
        setslot(to, &["IMPORTING", &from_id]);
        setslot(from, &["MIGRATING", &to_id]);
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(1)
                .query(&mut self.node(from).con())
                .expect("CLUSTER GETKEYSINSLOT");
            if keys.is_empty() {
                break;
            }
            let _: redis::Value = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut self.node(from).con())
                .unwrap_or_else(|e| panic!("MIGRATE {keys:?} to {to}: {e}"));
            std::thread::sleep(pause);
        }
        let primaries: Vec<u16> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(RedisServer::port)
            .filter(|&p| {
                let role: Vec<redis::Value> = redis::cmd("ROLE")
                    .query(&mut self.node(p).con())
                    .unwrap_or_default();
                matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
            })
            .collect();
        setslot(to, &["NODE", &to_id]);
        setslot(from, &["NODE", &to_id]);
        for &p in primaries.iter().filter(|&&p| p != to && p != from) {
            setslot(p, &["NODE", &to_id]);
        }
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        while self.nodes.iter().filter(|n| n.is_running()).any(|n| {
            self.slot_owners(&mut n.con(), slot)
                .is_none_or(|(primary, _)| primary != to)
        }) {
            assert!(
                Instant::now() < deadline,
                "the nodes do not all name {to} as the owner of slot {slot}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The cluster id of the node on `port` (`CLUSTER MYID`).
    pub fn node_id(&self, port: u16) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.node(port).con())
            .expect("CLUSTER MYID")
    }

    /// `CLUSTER SETSLOT slot ARGS...` on the node on `port`.
    pub fn set_slot(&self, slot: u16, port: u16, args: &[&str]) {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(args)
            .query(&mut self.node(port).con())
            .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {args:?} on {port}: {e}"));
    }

    /// A node's URL (any node answers for the cluster, redirecting to the others).
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Every node's URL, comma-separated, as `--redis-cluster` takes its seeds.
    pub fn seeds(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(RedisServer::url).collect();
        urls.join(",")
    }

    /// The node on `port` (its TLS port or, over TLS, its plain one too).
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port || n.plain_port() == Some(port))
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    fn node_mut(&mut self, port: u16) -> &mut RedisServer {
        self.nodes
            .iter_mut()
            .find(|n| n.port() == port || n.plain_port() == Some(port))
            .unwrap_or_else(|| panic!("no node of this cluster on port {port}"))
    }

    /// A connection to a running node that accepts one.
    fn any_con(&self) -> redis::Connection {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .find_map(RedisServer::try_con)
            .expect("no node of the cluster accepts a connection")
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.any_con())
            .expect("CLUSTER KEYSLOT")
    }

    /// The slot of `channel`'s keys in cluster mode.
    pub fn slot_of_channel(&self, channel: &str) -> u16 {
        self.slot(&history_key(channel))
    }

    /// The port of the primary that serves `slot`, from `CLUSTER SLOTS`.
    pub fn primary_of(&self, slot: u16) -> u16 {
        self.primary_of_now(slot)
            .unwrap_or_else(|| panic!("no primary serves slot {slot}"))
    }

    /// The primary of `slot` as the first running node that answers names it, or `None` (no
    /// node answers, or none names one), for waits that poll while nodes are down.
    pub fn primary_of_now(&self, slot: u16) -> Option<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .filter_map(RedisServer::try_con)
            .find_map(|mut con| self.slot_owners(&mut con, slot))
            .map(|(primary, _)| primary)
    }

    /// The port of the primary that holds `channel`'s keys.
    pub fn primary_of_channel(&self, channel: &str) -> u16 {
        self.primary_of(self.slot_of_channel(channel))
    }

    /// The port of a replica of the primary that serves `slot`.
    /// `CLUSTER SLOTS` lists a replica only once the node asked knows it has synced, which
    /// may take a moment after it joined: this waits for one.
    pub fn replica_of_slot(&self, slot: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let owners = self.slot_owners(&mut self.any_con(), slot);
            if let Some(&replica) = owners.as_ref().and_then(|(_, r)| r.first()) {
                return replica;
            }
            assert!(
                Instant::now() < deadline,
                "no replica serves slot {slot}: {owners:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The primary and replicas of `slot` as the node behind `con` sees them (`CLUSTER
    /// SLOTS`); `None` when it names nobody or cannot be asked.
    fn slot_owners(&self, con: &mut redis::Connection, slot: u16) -> Option<(u16, Vec<u16>)> {
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(con).ok()?;
        let port_of = |v: &redis::Value| match v {
            redis::Value::Array(node) => match node.get(1) {
                Some(redis::Value::Int(port)) => u16::try_from(*port).ok(),
                _ => None,
            },
            _ => None,
        };
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            if (*start..=*end).contains(&i64::from(slot)) {
                let primary = fields.get(2).and_then(port_of)?;
                let replicas = fields.iter().skip(3).filter_map(port_of).collect();
                return Some((primary, replicas));
            }
        }
        None
    }

    /// `n` channel names `<prefix>0`, `<prefix>1`, ... (the first that qualify) whose keys are
    /// on `n` different primaries (at most three: the cluster has three).
    pub fn channels_on_distinct_primaries(&self, prefix: &str, n: usize) -> Vec<String> {
        assert!(n <= 3, "the cluster has three primaries");
        let mut found: Vec<(String, u16)> = Vec::new();
        for i in 0..1000 {
            let channel = format!("{prefix}{i}");
            let primary = self.primary_of_channel(&channel);
            if found.iter().all(|(_, p)| *p != primary) {
                found.push((channel, primary));
                if found.len() == n {
                    return found.into_iter().map(|(c, _)| c).collect();
                }
            }
        }
        panic!("no {n} names {prefix}N on {n} different primaries in 1000 tries")
    }

    /// `n` channel names `<prefix>0`, ... whose keys are all on the primary of `like`'s.
    pub fn channels_beside(&self, like: &str, prefix: &str, n: usize) -> Vec<String> {
        let primary = self.primary_of_channel(like);
        let found: Vec<String> = (0..5000)
            .map(|i| format!("{prefix}{i}"))
            .filter(|c| self.primary_of_channel(c) == primary)
            .take(n)
            .collect();
        assert_eq!(found.len(), n, "names on the primary of {like}");
        found
    }

    /// The history of `channel` as its primary stores it (`ZRANGE` of [`history_key`]).
    pub fn stored(&self, channel: &str) -> Vec<String> {
        let primary = self.primary_of_channel(channel);
        redis::cmd("ZRANGE")
            .arg(history_key(channel))
            .arg(0)
            .arg(-1)
            .query(&mut self.node(primary).con())
            .expect("ZRANGE")
    }

    /// Waits until the replica of `slot`'s primary is linked to it and has every write it made
    /// so far, so that a promotion loses nothing: the replica's replication offset reaches the
    /// primary's, read first (see [`RedisServer::replication_offset`]).
    pub fn wait_synced(&self, slot: u16) {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        let mut written = None;
        loop {
            let primary = self.primary_of(slot);
            let replica = self.replica_of_slot(slot);
            written = written.or_else(|| self.node(primary).replication_offset());
            if written.is_some_and(|w| self.node(replica).replicated_up_to(w)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the replica ({replica}) of slot {slot} did not reach the offset {written:?} of \
                 its primary ({primary}): {}",
                self.node(replica).replication_info()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the primary that serves `slot` (SIGKILL, as a crash) and waits for its exit; its
    /// port.
    pub fn kill_primary(&mut self, slot: u16) -> u16 {
        let port = self.primary_of(slot);
        self.node_mut(port).stop();
        port
    }

    /// Waits until a node other than `old` serves `slot` as primary in the view of every
    /// running node, says `ROLE master`, and every running node says `cluster_state:ok`; its
    /// port.
    pub fn wait_failover(&self, slot: u16, old: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let last = match self.failover_done(slot, old) {
                Ok(new) => return new,
                Err(why) => why,
            };
            assert!(
                Instant::now() < deadline,
                "no failover of slot {slot} from {old} within {FAILOVER_PATIENCE:?}: {last}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The new primary of `slot` when the failover from `old` is over, else why not.
    fn failover_done(&self, slot: u16, old: u16) -> Result<u16, String> {
        let mut named = None;
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let Some(mut con) = node.try_con() else {
                return Err(format!("node {} refuses connections", node.port()));
            };
            let info: String = redis::cmd("CLUSTER")
                .arg("INFO")
                .query(&mut con)
                .unwrap_or_default();
            if !info.contains("cluster_state:ok") {
                return Err(format!("node {} says the cluster is not ok", node.port()));
            }
            let primary = self.slot_owners(&mut con, slot).map(|(p, _)| p);
            match (primary, named) {
                (Some(p), _) if p == old => {
                    return Err(format!("node {} still names {old}", node.port()));
                }
                (None, _) => return Err(format!("node {} names no primary", node.port())),
                (Some(p), Some(n)) if p != n => {
                    return Err(format!("nodes disagree: {p} and {n}"));
                }
                (Some(p), _) => named = Some(p),
            }
        }
        let new = named.ok_or("no node runs")?;
        let role: Option<Vec<redis::Value>> = self
            .node(new)
            .try_con()
            .and_then(|mut c| redis::cmd("ROLE").query(&mut c).ok());
        match role.as_deref().and_then(|r| r.first()) {
            Some(redis::Value::BulkString(b)) if b == b"master" => Ok(new),
            other => Err(format!("{new} says role {other:?}")),
        }
    }

    /// Kills the primary of `slot` and waits for its replica's promotion: (old, new) ports.
    pub fn kill_primary_and_wait_failover(&mut self, slot: u16) -> (u16, u16) {
        let old = self.kill_primary(slot);
        let new = self.wait_failover(slot, old);
        (old, new)
    }

    /// Freezes the replica of `slot`'s primary (SIGSTOP, for less than the node timeout, so
    /// that the others do not take it for failed) and makes the primary drop its link: what the
    /// primary acknowledges next never reaches the replica. Its port; [`Cluster::unfreeze`]
    /// lets it go on.
    pub fn cut_replica(&self, slot: u16) -> u16 {
        let primary = self.primary_of(slot);
        let replica = self.replica_of_slot(slot);
        self.node(replica).freeze();
        let dropped = self.kill_clients(primary, "replica");
        assert_eq!(dropped, 1, "the replica's link of {primary}");
        replica
    }

    /// Closes the node's clients of a `kind` (`CLIENT KILL TYPE pubsub`, `replica`...); how
    /// many.
    pub fn kill_clients(&self, port: u16, kind: &str) -> i64 {
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg(kind)
            .query(&mut self.node(port).con())
            .unwrap_or_else(|e| panic!("CLIENT KILL TYPE {kind} on {port}: {e}"))
    }

    /// The ids of the node's pub/sub clients (`CLIENT LIST TYPE pubsub`), sorted: the same ids
    /// later mean the same connections.
    pub fn pubsub_client_ids(&self, port: u16) -> Vec<u64> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query(&mut self.node(port).con())
            .unwrap_or_else(|e| panic!("CLIENT LIST TYPE pubsub on {port}: {e}"));
        let mut ids: Vec<u64> = list
            .lines()
            .filter_map(|l| l.strip_prefix("id=")?.split(' ').next()?.parse().ok())
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Changes the default user's rights on the node (`ACL SETUSER default RULE`).
    pub fn set_default_acl(&self, port: u16, rule: &str) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .query(&mut self.node(port).con())
            .unwrap_or_else(|e| panic!("ACL SETUSER default {rule} on {port}: {e}"));
    }

    /// Lets a frozen node go on.
    pub fn unfreeze(&self, port: u16) {
        self.node(port).unfreeze();
    }

    /// The ports of the six nodes, primaries and replicas.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(RedisServer::port).collect()
    }

    /// Stops a node (SIGSTOP) as a host that stopped answering: its port still accepts
    /// connections (the kernel does), and nothing is answered on them. [`Cluster::unfreeze`]
    /// lets it go on.
    pub fn freeze(&self, port: u16) {
        self.node(port).freeze();
    }

    /// [`Cluster::freeze`] on each of `ports`.
    pub fn freeze_all(&self, ports: &[u16]) {
        for port in ports {
            self.freeze(*port);
        }
    }

    /// [`Cluster::unfreeze`] on each of `ports`.
    pub fn unfreeze_all(&self, ports: &[u16]) {
        for port in ports {
            self.unfreeze(*port);
        }
    }

    /// Sets every node's `cluster-node-timeout` (`CONFIG SET`): how long a node may not answer
    /// before the others fail it over.
    pub fn set_node_timeout(&self, timeout: Duration) {
        for node in self.nodes.iter().filter(|n| n.is_running()) {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg("cluster-node-timeout")
                .arg(timeout.as_millis().to_string())
                .query(&mut node.con())
                .unwrap_or_else(|e| panic!("CONFIG SET cluster-node-timeout: {e}"));
        }
    }

    /// Starts a killed node again on its port, empty but with its cluster configuration (its
    /// `nodes.conf`), and waits until it is back in the cluster as a replica that has synced.
    pub fn restart(&mut self, port: u16) {
        self.node_mut(port).start_again();
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let info: String = self
                .node(port)
                .try_con()
                .and_then(|mut c| {
                    let cluster: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok()?;
                    let replication: String =
                        redis::cmd("INFO").arg("replication").query(&mut c).ok()?;
                    Some(cluster + &replication)
                })
                .unwrap_or_default();
            if info.contains("cluster_state:ok")
                && info.contains("role:slave")
                && info.contains("master_link_status:up")
                && self.all_see_replica(port)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {port} did not come back as a synced replica: {info}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Cluster {
    /// Whether every running node's `CLUSTER SLOTS` lists the node on `port` as a replica.
    fn all_see_replica(&self, port: u16) -> bool {
        self.nodes.iter().filter(|n| n.is_running()).all(|n| {
            n.try_con().is_some_and(|mut con| {
                [0, 8192, 16383].iter().any(|&slot| {
                    self.slot_owners(&mut con, slot)
                        .is_some_and(|(_, replicas)| replicas.contains(&port))
                })
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tag_is_fnv1a_of_the_name() {
        // The published FNV-1a test vectors, and names checked by hand with python.
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(fnv1a32(b"foobar"), 0xbf9c_f968);
        assert_eq!(tag("news"), "bc46");
        assert_eq!(history_key("news"), "redisse:{bc46}:c:news");
        assert_eq!(seq_key("a"), "redisse:{292c}:id:a");
    }
}
