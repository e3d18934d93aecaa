//! A private Redis Cluster per test: six nodes on free loopback ports (three primaries, three
//! replicas, made by `redis-cli --cluster create ... --cluster-replicas 1 --cluster-yes`),
//! waited for until every node says `cluster_state:ok`, and stopped when it is dropped. Each
//! node's cluster bus listens on its port + 10000, so the ports are picked below 55536 with
//! that second port free too ([`super::redis::free_cluster_port`]).

use std::process::Command;
use std::time::{Duration, Instant};

use super::redis::RedisServer;

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
}
