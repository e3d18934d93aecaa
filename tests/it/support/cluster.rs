//! A private Redis Cluster per test: six nodes on free loopback ports (three primaries, three
//! replicas, made by `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`),
//! waited for until every node says `cluster_state:ok`, and stopped when it is dropped. Each
//! node's cluster bus listens on its port + 10000, so the ports are picked below 55536 with
//! that second port free too ([`super::redis::free_cluster_port`]).

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::RedisServer;

/// How long a failover may take: a primary is seen failing after the node timeout (2 s), then
/// its replica is elected and promoted.
const FAILOVER_PATIENCE: Duration = Duration::from_secs(30);

pub struct Cluster {
    nodes: Vec<RedisServer>,
}

impl Cluster {
    /// Starts the six nodes and makes them one cluster.
    pub fn start() -> Self {
        let nodes: Vec<RedisServer> = (0..6)
            .map(|_| {
                let extra = [
                    "--cluster-enabled".to_owned(),
                    "yes".to_owned(),
                    "--cluster-node-timeout".to_owned(),
                    "2000".to_owned(),
                ];
                RedisServer::start_cluster_node_with(&extra)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
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
        cluster
    }

    /// A node's URL (any node answers for the cluster, redirecting to the others).
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub fn slot(&self, key: &str) -> u16 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.nodes[0].con())
            .expect("CLUSTER KEYSLOT")
    }

    /// The port of the primary that serves `slot`, from `CLUSTER SLOTS`.
    pub fn primary_of(&self, slot: u16) -> u16 {
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut self.nodes[0].con())
            .expect("CLUSTER SLOTS");
        for range in ranges {
            let redis::Value::Array(fields) = range else {
                continue;
            };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                (fields.first(), fields.get(1))
            else {
                continue;
            };
            if (*start..=*end).contains(&i64::from(slot))
                && let Some(redis::Value::Array(primary)) = fields.get(2)
                && let Some(redis::Value::Int(port)) = primary.get(1)
            {
                return u16::try_from(*port).expect("a port");
            }
        }
        panic!("no primary serves slot {slot}")
    }

    /// Every node's URL, comma-separated, as `--redis-cluster` takes them.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node listening on `port`.
    pub fn node(&self, port: u16) -> &RedisServer {
        self.nodes
            .iter()
            .find(|n| n.port() == port)
            .unwrap_or_else(|| panic!("no node on {port}"))
    }

    /// The primary of `slot`, as the first node that answers says (others may be down).
    pub fn primary_of_now(&self, slot: u16) -> Option<u16> {
        for node in &self.nodes {
            let Some(mut con) = node.try_con() else {
                continue;
            };
            let Ok(ranges) = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query::<Vec<redis::Value>>(&mut con)
            else {
                continue;
            };
            for range in ranges {
                let redis::Value::Array(fields) = range else {
                    continue;
                };
                if let (
                    Some(redis::Value::Int(start)),
                    Some(redis::Value::Int(end)),
                    Some(redis::Value::Array(primary)),
                ) = (fields.first(), fields.get(1), fields.get(2))
                    && (*start..=*end).contains(&i64::from(slot))
                    && let Some(redis::Value::Int(port)) = primary.get(1)
                {
                    return u16::try_from(*port).ok();
                }
            }
        }
        None
    }

    /// Waits until the primary of `slot` has every write it made on a replica (`WAIT 1`), so
    /// that a promotion loses nothing.
    pub fn wait_synced(&self, slot: u16) {
        let port = self.primary_of(slot);
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let acked: Option<i64> = self
                .node(port)
                .try_con()
                .and_then(|mut c| redis::cmd("WAIT").arg(1).arg(2000).query(&mut c).ok());
            if acked >= Some(1) {
                return;
            }
            assert!(Instant::now() < deadline, "no replica of {port} synced");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the primary of `slot` (SIGKILL, as a crash) and returns its port.
    pub fn kill_primary(&mut self, slot: u16) -> u16 {
        let port = self.primary_of(slot);
        let node = self
            .nodes
            .iter_mut()
            .find(|n| n.port() == port)
            .expect("the primary is a node of the cluster");
        node.stop();
        port
    }

    /// Waits until a node other than `old` serves `slot` as primary, says `ROLE master`, and
    /// every live node says `cluster_state:ok`. Returns the new primary's port.
    pub fn wait_failover(&self, slot: u16, old: u16) -> u16 {
        let deadline = Instant::now() + FAILOVER_PATIENCE;
        loop {
            let named = self.primary_of_now(slot).filter(|p| *p != old);
            let promoted = named.filter(|port| {
                let role: Option<Vec<redis::Value>> = self
                    .node(*port)
                    .try_con()
                    .and_then(|mut c| redis::cmd("ROLE").query(&mut c).ok());
                matches!(
                    role.as_deref().and_then(|r| r.first()),
                    Some(redis::Value::BulkString(b)) if b == b"master"
                )
            });
            let ok = self.nodes.iter().filter(|n| n.port() != old).all(|n| {
                n.try_con()
                    .and_then(|mut c| {
                        redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query::<String>(&mut c)
                            .ok()
                    })
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if let (Some(port), true) = (promoted, ok) {
                return port;
            }
            assert!(
                Instant::now() < deadline,
                "no failover of slot {slot} from {old} within {FAILOVER_PATIENCE:?} \
                 (named {named:?}, cluster ok: {ok})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port of a replica of the primary on `port` (`INFO replication`).
    pub fn replica_of(&self, port: u16) -> u16 {
        let info: String = redis::cmd("INFO")
            .arg("replication")
            .query(&mut self.node(port).con())
            .expect("INFO replication");
        info.lines()
            .filter(|l| l.starts_with("slave"))
            .find_map(|l| {
                l.split(',')
                    .find_map(|f| f.strip_prefix("port="))
                    .and_then(|p| p.parse().ok())
            })
            .unwrap_or_else(|| panic!("{port} has no replica: {info}"))
    }

    /// Moves `slot` with its keys from its primary to the primary on `to` (`CLUSTER SETSLOT
    /// ... IMPORTING/MIGRATING`, `MIGRATE`, then `SETSLOT ... NODE` on every primary), as a
    /// resharding does.
    pub fn migrate_slot(&self, slot: u16, to: u16) {
        let from = self.primary_of(slot);
        let id_of = |port: u16| -> String {
            redis::cmd("CLUSTER")
                .arg("MYID")
                .query(&mut self.node(port).con())
                .expect("CLUSTER MYID")
        };
        let (from_id, to_id) = (id_of(from), id_of(to));
        let setslot = |port: u16, how: &str, id: &str| {
            let _: () = redis::cmd("CLUSTER")
                .arg("SETSLOT")
                .arg(slot)
                .arg(how)
                .arg(id)
                .query(&mut self.node(port).con())
                .unwrap_or_else(|e| panic!("CLUSTER SETSLOT {slot} {how} on {port}: {e}"));
        };
        setslot(to, "IMPORTING", &from_id);
        setslot(from, "MIGRATING", &to_id);
        let keys: Vec<String> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1000)
            .query(&mut self.node(from).con())
            .expect("CLUSTER GETKEYSINSLOT");
        if !keys.is_empty() {
            let _: () = redis::cmd("MIGRATE")
                .arg("127.0.0.1")
                .arg(to)
                .arg("")
                .arg(0)
                .arg(5000)
                .arg("KEYS")
                .arg(&keys)
                .query(&mut self.node(from).con())
                .expect("MIGRATE");
        }
        setslot(to, "NODE", &to_id);
        setslot(from, "NODE", &to_id);
        for node in &self.nodes {
            if let Some(mut c) = node.try_con() {
                let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut c).unwrap_or_default();
                if matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master") {
                    let _: Result<(), _> = redis::cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(slot)
                        .arg("NODE")
                        .arg(&to_id)
                        .query(&mut c);
                }
            }
        }
    }

    /// The ports of the primaries.
    pub fn primaries(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = (0..16384u16)
            .step_by(1000)
            .map(|slot| self.primary_of(slot))
            .collect();
        ports.push(self.primary_of(16383));
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}
