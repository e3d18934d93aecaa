//! The Redis broker: the Ruby gem's layout, published atomically (SPEC 2).
//!
//! - ids come from `INCR redisse:lastEventId`, one counter for all channels;
//! - an event is `PUBLISH`ed on the channel's name, verbatim, as its complete SSE text;
//! - the channel's history is the sorted set named after the channel, trimmed to the newest N.
//!
//! Our publisher runs those steps in one Lua script, so no reader ever sees an event published
//! but missing from history, or history out of id order; history is read by another script that
//! returns the counter and every requested channel at one instant. What the gem's non-atomic
//! publisher writes is read the same way. The pub/sub side lives in [`super::subscriber`].

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Script, Value};
use tokio::sync::{mpsc, oneshot};

use super::{BrokerError, ChannelHistory, Snapshot};
use crate::conn::Frame;
use crate::event::{Event, parse_stored_id};
use crate::hub::SubCommand;
use crate::metrics::Metrics;

/// The id counter's key, as in the gem.
pub const COUNTER_KEY: &str = "redisse:lastEventId";

/// Channels read by one history script call; keeps each call's reply bounded.
const SNAPSHOT_CHUNK: usize = 256;

const PUBLISH_SCRIPT: &str = r"
local id = redis.call('INCR', KEYS[2])
local payload = 'id: ' .. string.format('%d', id) .. '\n' .. ARGV[1]
redis.call('PUBLISH', KEYS[1], payload)
redis.call('ZADD', KEYS[1], id, payload)
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[2]) + 1))
return id
";

// KEYS[1] is the counter, the others are channels. ARGV[1] is the position after which events
// are returned, or -1 for none. A position past the counter (Redis lost its data), or any
// position when the counter does not exist, returns all.
// pcall: a key of another type under a channel's name reads as an empty history.
const SNAPSHOT_SCRIPT: &str = r"
local raw = redis.pcall('GET', KEYS[1])
local counter = -1
if type(raw) == 'string' then counter = tonumber(raw) or -1 end
local min = '(' .. ARGV[1]
if ARGV[1] == '-1' then min = nil
elseif tonumber(ARGV[1]) > counter then min = '-inf' end
local out = { counter }
for i = 2, #KEYS do
  local len = redis.pcall('ZCARD', KEYS[i])
  if type(len) ~= 'number' then len = 0 end
  local oldest = ''
  local events = {}
  if len > 0 then
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    oldest = first[2]
    if min then events = redis.call('ZRANGEBYSCORE', KEYS[i], min, '+inf') end
  end
  out[#out + 1] = len
  out[#out + 1] = oldest
  out[#out + 1] = events
end
return out
";

/// The publish script.
pub(crate) fn publish_script() -> Script {
    Script::new(PUBLISH_SCRIPT)
}

/// The history script, shared by streams and the subscriber's refill.
pub(crate) fn snapshot_script() -> Script {
    Script::new(SNAPSHOT_SCRIPT)
}

/// Publishing and history on Redis; subscriptions go to the subscriber task.
pub(crate) struct RedisBroker {
    commands: ConnectionManager,
    publish_script: Script,
    snapshot_script: Script,
    history_size: usize,
    subscriber: mpsc::UnboundedSender<SubCommand>,
    up: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
}

/// The client for commands (not pub/sub): reconnects by itself, never fails at creation.
pub(crate) fn command_connection(client: &redis::Client) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2);
    Ok(client.get_connection_manager_lazy(config)?)
}

impl RedisBroker {
    pub fn new(
        client: &redis::Client,
        history_size: usize,
        subscriber: mpsc::UnboundedSender<SubCommand>,
        up: Arc<AtomicBool>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, BrokerError> {
        Ok(RedisBroker {
            commands: command_connection(client)?,
            publish_script: publish_script(),
            snapshot_script: snapshot_script(),
            history_size,
            subscriber,
            up,
            metrics,
        })
    }

    pub async fn publish(&self, channel: &str, event: &Event) -> Result<u64, BrokerError> {
        publish(
            &mut self.commands.clone(),
            &self.publish_script,
            channel,
            event,
            self.history_size,
        )
        .await
    }

    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
    ) -> Result<Snapshot, BrokerError> {
        snapshot(
            &mut self.commands.clone(),
            &self.snapshot_script,
            channels,
            after,
        )
        .await
    }

    pub async fn subscriptions_ready(&self) {
        let (tx, rx) = oneshot::channel();
        // Order matters: the barrier travels behind every subscription already sent.
        let _ = self.subscriber.send(SubCommand::Barrier(tx));
        let _ = rx.await;
    }

    /// Counts history entries that were skipped as malformed.
    pub fn count_malformed(&self, skipped: u64) {
        if skipped > 0 {
            self.metrics.malformed.fetch_add(skipped, Relaxed);
        }
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Relaxed)
    }
}

/// Runs the publish script: returns the new event's id.
pub(crate) async fn publish(
    con: &mut ConnectionManager,
    script: &Script,
    channel: &str,
    event: &Event,
    history_size: usize,
) -> Result<u64, BrokerError> {
    let id: u64 = script
        .key(channel)
        .key(COUNTER_KEY)
        .arg(event.encode_tail())
        .arg(history_size)
        .invoke_async(con)
        .await?;
    Ok(id)
}

/// Reads the counter and the channels' histories (see [`super::Broker::snapshot`]).
pub(crate) async fn snapshot(
    con: &mut ConnectionManager,
    script: &Script,
    channels: &[Arc<str>],
    after: Option<u64>,
) -> Result<Snapshot, BrokerError> {
    let after_arg = after.map_or_else(|| "-1".to_owned(), |a| a.to_string());
    let mut snap = Snapshot::default();
    let chunks: Vec<&[Arc<str>]> = if channels.is_empty() {
        vec![&[]]
    } else {
        channels.chunks(SNAPSHOT_CHUNK).collect()
    };
    for chunk in chunks {
        let mut inv = script.key(COUNTER_KEY);
        for ch in chunk {
            inv.key(&**ch);
        }
        let reply: Value = inv.arg(&after_arg).invoke_async(con).await?;
        let (counter, histories, malformed) = parse_snapshot(reply)?;
        snap.counter = snap.counter.max(counter);
        snap.channels.extend(histories);
        snap.malformed += malformed;
    }
    Ok(snap)
}

/// The counter, the histories, and how many entries were skipped as malformed.
type ParsedSnapshot = (Option<u64>, Vec<ChannelHistory>, u64);

fn parse_snapshot(reply: Value) -> Result<ParsedSnapshot, BrokerError> {
    let bad = |what: &str| BrokerError::Protocol(format!("history script: {what}"));
    let Value::Array(items) = reply else {
        return Err(bad("not an array"));
    };
    let mut items = items.into_iter();
    let counter = match items.next() {
        Some(Value::Int(n)) if n > 0 => Some(n as u64),
        Some(Value::Int(_)) => None,
        _ => return Err(bad("no counter")),
    };
    let mut histories = Vec::new();
    let mut malformed = 0;
    while let (Some(len), Some(oldest), Some(events)) = (items.next(), items.next(), items.next()) {
        let Value::Int(len) = len else {
            return Err(bad("length"));
        };
        let (events, skipped) = stored_frames(events);
        malformed += skipped;
        histories.push(ChannelHistory {
            len: len.max(0) as usize,
            oldest: score(&oldest),
            events,
        });
    }
    Ok((counter, histories, malformed))
}

fn score(v: &Value) -> Option<u64> {
    let text = match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?,
        Value::SimpleString(s) => s.as_str(),
        Value::Int(n) => return u64::try_from(*n).ok(),
        _ => return None,
    };
    text.parse::<f64>().ok().map(|f| f as u64)
}

/// Turns stored payloads into frames, skipping (and logging) what is not an SSE event; returns
/// how many were skipped.
fn stored_frames(events: Value) -> (Vec<Frame>, u64) {
    let Value::Array(events) = events else {
        return (Vec::new(), 0);
    };
    let mut skipped = 0;
    let frames = events
        .into_iter()
        .filter_map(|v| {
            let bytes = match v {
                Value::BulkString(bytes) => bytes,
                _ => {
                    skipped += 1;
                    return None;
                }
            };
            match parse_stored_id(&bytes) {
                Some(id) => Some(Frame::event(id, Bytes::from(bytes))),
                None => {
                    skipped += 1;
                    tracing::warn!(
                        payload = %String::from_utf8_lossy(&bytes[..bytes.len().min(80)]),
                        "skipping a history entry that is not an SSE event"
                    );
                    None
                }
            }
        })
        .collect();
    (frames, skipped)
}
