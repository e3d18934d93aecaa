//! The Redis broker: the Ruby gem's layout, published atomically.
//!
//! - ids come from `INCR redisse:lastEventId`, one counter for all channels;
//! - an event is `PUBLISH`ed on the channel's name, verbatim, as its complete SSE text;
//! - the channel's history is the sorted set named after the channel, trimmed to the newest N.
//!
//! Beside it, keys of our own, which the gem ignores:
//!
//! - the hash `redisse:trimmed` records, per channel, the newest id a trim by our publisher
//!   removed, so that a history trimmed to fewer events than a server keeps (or to none) still
//!   tells its readers what was lost (see `history`); the gem's own publisher records nothing,
//!   which only the full-history part of the rule can see;
//! - the string `redisse:lostBelow`, the data-loss floor: when Redis loses its data the counter
//!   starts again from nothing, and the first subscriber that notices (see [`subscriber`])
//!   raises the counter above every id it knew and sets the floor to the raised value, in one
//!   script ([`HistoryReader::raise`]), so that ids never go backwards for long and any server
//!   can tell a client whose position lies below the floor that events may be lost. The
//!   subscriber creates it (at 0) when it first connects, so that its disappearance is a sign
//!   of loss too;
//! - a publish with an idempotency key leaves `redisse:idempotency:<key>` (the id and the
//!   fingerprint of the event, see `idempotency`), expiring after the window; the publish script
//!   checks and writes it in the same atomic step as the event.
//!
//! Our publisher runs those steps in one Lua script, so no reader ever sees an event published
//! but missing from history, or history out of id order; history is read by another script that
//! returns the counter and every requested channel at one instant. What the gem's non-atomic
//! publisher writes is read the same way.
//!
//! The broker owns everything its Redis side needs: the command connections, the publish path
//! (shared with `Publisher::redis`, so there is one way to write an event), the history reader,
//! and the pub/sub [`subscriber`] task it starts, with the one cursor they share (the highest
//! counter a stream started from). Whether Redis is up is the `broker_up` gauge of the metrics,
//! written by the subscriber alone.
//!
//! Every client is built by [`client`]: `rediss://` is TLS by rustls (ring, the process's
//! default provider), trusting the system's roots or only the CA file of `redis_tls_ca`. Where
//! the primary is, one address or wherever Sentinel says, is [`primary`]'s: the command
//! connections are its [`Commands`], which follow the primary when it moves.

pub(crate) mod cluster;
pub(crate) mod primary;
pub(crate) mod probe;
mod shared_reads;
pub(crate) mod subscriber;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ConnectionAddr, IntoConnectionInfo, ProtocolVersion, Script, Value};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::sync::mpsc;

use self::primary::{Commands, Primary};
use self::shared_reads::SharedReads;
use self::subscriber::Subscriber;
use crate::config::Config;
use crate::dispatch::{DispatchSender, NewestCell, SubSender};
use crate::error::{BrokerError, Error};
use crate::event::{Event, Frame};
use crate::history::{ChannelHistory, Snapshot};
use crate::idempotency::{Keyed, Outcome};
use crate::logtext::Escaped;
use crate::metrics::Metrics;
use crate::stored::parse_stored;
use crate::tasks::Tasks;

/// The id counter's key, as in the gem.
pub const COUNTER_KEY: &str = "redisse:lastEventId";

/// The data-loss floor: a position below it may have lost events (see the module
/// documentation). The gem neither writes nor reads it.
pub const FLOOR_KEY: &str = "redisse:lostBelow";

/// Channels read by one history script call; keeps each call's reply bounded.
const SNAPSHOT_CHUNK: usize = 256;

/// The prefix of an idempotency key's record: `redisse:idempotency:<key>`, a string
/// `<id> <fingerprint>` that expires after the window. The gem neither writes nor reads it.
pub const IDEMPOTENCY_PREFIX: &str = "redisse:idempotency:";

/// The hash of trimmed watermarks: field = channel name, value = the newest id a trim by our
/// publisher removed from that channel's history. The gem neither writes nor reads it.
pub const TRIMMED_KEY: &str = "redisse:trimmed";

// KEYS[1] is the channel, KEYS[2] the counter, KEYS[3] the trimmed hash. ARGV[1] is the event's
// text after its `id:` line, ARGV[2] the history size, ARGV[3] the command that sends it to the
// channel's subscribers: `PUBLISH`, or `SPUBLISH` on a Redis Cluster (see `cluster`), where
// KEYS[1] is also the shard channel. The channel's set and members are the
// gem's; when the trim removes anything, the newest id removed (the score of rank excess - 1,
// read before removing) goes into the hash if it is above what is there. Another type under the
// hash's name, or under the channel's, refuses the publish before anything is written.
// With an idempotency key, KEYS[4] is its record, ARGV[4] the fingerprint of the event and its
// channel, ARGV[5] the window in milliseconds. A record there answers its id without writing
// anything: flag 1 when the fingerprints match (a retry), 2 when they differ (the key reused for
// another event). Else the event is published and the record, `<id> <fingerprint>`, is set to
// expire after the window. The reply is `{id, flag}`, flag 0 for an event published now.
const PUBLISH_SCRIPT: &str = r"
if KEYS[4] then
  local prior = redis.call('GET', KEYS[4])
  if prior then
    local known, print = string.match(prior, '^(%d+) (%x+)$')
    if not known then
      return redis.error_reply(KEYS[4] .. ' does not hold an id and a fingerprint: not an idempotency record')
    end
    if print == ARGV[4] then return { tonumber(known), 1 } end
    return { tonumber(known), 2 }
  end
end
local kind = redis.call('TYPE', KEYS[3])['ok']
if kind ~= 'none' and kind ~= 'hash' then
  return redis.error_reply(KEYS[3] .. ' is a ' .. kind .. ', not the hash of trimmed ids: publishing would lose track of trims')
end
kind = redis.call('TYPE', KEYS[1])['ok']
if kind ~= 'none' and kind ~= 'zset' then
  return redis.error_reply('the key ' .. KEYS[1] .. ' is a ' .. kind .. ', not a channel history (a sorted set): nothing published')
end
local id = redis.call('INCR', KEYS[2])
local payload = 'id: ' .. string.format('%d', id) .. '\n' .. ARGV[1]
if ARGV[3] ~= 'PUBLISH' and ARGV[3] ~= 'SPUBLISH' then
  return redis.error_reply('publish script: ' .. ARGV[3] .. ' is neither PUBLISH nor SPUBLISH')
end
redis.call(ARGV[3], KEYS[1], payload)
redis.call('ZADD', KEYS[1], id, payload)
local excess = redis.call('ZCARD', KEYS[1]) - tonumber(ARGV[2])
if excess > 0 then
  local newest = redis.call('ZRANGE', KEYS[1], excess - 1, excess - 1, 'WITHSCORES')[2]
  redis.call('ZREMRANGEBYRANK', KEYS[1], 0, excess - 1)
  local known = tonumber(redis.call('HGET', KEYS[3], KEYS[1]))
  if not known or tonumber(newest) > known then
    redis.call('HSET', KEYS[3], KEYS[1], newest)
  end
end
if KEYS[4] then
  redis.call('SET', KEYS[4], string.format('%d', id) .. ' ' .. ARGV[4], 'PX', ARGV[5])
end
return { id, 0 }
";

// KEYS[1] is the counter, KEYS[2] the trimmed hash, KEYS[3] the data-loss floor, the others are
// channels. ARGV[1] is the position after which events are returned, or -1 for none. A position
// past the counter (Redis lost its data), or any position when the counter does not exist,
// returns all. The reply starts with the counter, the page end (below) and the floor (-1 when
// there is none); then each channel gives its length, oldest score ('' when empty), trimmed
// watermark (0 when none) and events.
// ARGV[2] is the byte budget of the page, 0 for all: events are then taken in id order across
// the channels (a merge of their sorted sets, each read 1, 2, 4 ... up to 32 members at a time,
// so that a page never reads much more than its budget) until the next would pass the budget
// (at least one is taken); the second element of the reply is then the score of the last one
// taken when some were left for a later page, '' otherwise.
// pcall: a key of another type under a channel's name reads as an empty history, and under the
// hash's name as nothing recorded.
const SNAPSHOT_SCRIPT: &str = r"
local raw = redis.pcall('GET', KEYS[1])
local counter = -1
if type(raw) == 'string' then counter = tonumber(raw) or -1 end
local min = '(' .. ARGV[1]
if ARGV[1] == '-1' then min = nil
elseif tonumber(ARGV[1]) > counter then min = '-inf' end
local budget = tonumber(ARGV[2]) or 0
local floor = redis.pcall('GET', KEYS[3])
if type(floor) == 'string' then floor = tonumber(floor) or -1 else floor = -1 end
local out = { counter, '', floor }
local heads = {}
for i = 4, #KEYS do
  local len = redis.pcall('ZCARD', KEYS[i])
  if type(len) ~= 'number' then len = 0 end
  local oldest = ''
  local events = {}
  if len > 0 then
    local first = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    oldest = first[2]
    if min and budget == 0 then
      events = redis.call('ZRANGEBYSCORE', KEYS[i], min, '+inf')
    elseif min then
      heads[#heads + 1] = { key = KEYS[i], min = min, skip = 0, events = events, batch = {}, pos = 1, n = 1 }
    end
  end
  local trimmed = redis.pcall('HGET', KEYS[2], KEYS[i])
  if type(trimmed) == 'string' then trimmed = tonumber(trimmed) or 0 else trimmed = 0 end
  out[#out + 1] = len
  out[#out + 1] = oldest
  out[#out + 1] = trimmed
  out[#out + 1] = events
end
local function fetch(h)
  h.batch = redis.call('ZRANGEBYSCORE', h.key, h.min, '+inf', 'WITHSCORES', 'LIMIT', h.skip, h.n)
  h.pos = 1
  return #h.batch > 0
end
local open = {}
for _, h in ipairs(heads) do
  if fetch(h) then open[#open + 1] = h end
end
local bytes = 0
local taken = nil
while #open > 0 do
  local best = 1
  for j = 2, #open do
    if tonumber(open[j].batch[open[j].pos + 1]) < tonumber(open[best].batch[open[best].pos + 1]) then
      best = j
    end
  end
  local h = open[best]
  local member = h.batch[h.pos]
  if taken and bytes + #member > budget then
    out[2] = taken
    break
  end
  h.events[#h.events + 1] = member
  bytes = bytes + #member
  local score = h.batch[h.pos + 1]
  -- Members sharing a score (only a foreign writer makes them) are counted, so that the next
  -- read resumes at this score past the ones taken.
  if score == h.score then h.same = h.same + 1 else h.score = score; h.same = 1 end
  taken = score
  h.pos = h.pos + 2
  if h.pos > #h.batch then
    local more = #h.batch == 2 * h.n
    h.min = score
    h.skip = h.same
    if h.n < 32 then h.n = h.n * 2 end
    if not (more and fetch(h)) then table.remove(open, best) end
  end
end
return out
";

// KEYS[1] is the counter, KEYS[2] the data-loss floor; ARGV[1] the highest id the caller knew
// before it saw Redis lose its data, or 0 to only make sure that the floor exists (at 0). Unless
// the floor is already above that id (another caller raised it for the same loss, or this one
// did before a retry), the counter is raised to one above both the id and the counter, and the
// floor to the same value: ids below the floor were given before the loss or given again after
// it. Each only rises, so callers racing end at the highest. Replies with the counter and the
// floor. A key of another type is refused by name before anything is written.
const RAISE_SCRIPT: &str = r"
for i = 1, 2 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= 'string' then
    return redis.error_reply(KEYS[i] .. ' is a ' .. kind .. ', not a string: cannot record the data loss')
  end
end
local counter = tonumber(redis.call('GET', KEYS[1]) or '') or 0
local floor = tonumber(redis.call('GET', KEYS[2]) or '')
local known = tonumber(ARGV[1])
if known == 0 or (floor and floor > known) then
  if not floor then
    floor = 0
    redis.call('SET', KEYS[2], '0')
  end
  return { counter, floor }
end
if counter < known then redis.call('SET', KEYS[1], ARGV[1]) end
local raised = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], string.format('%d', raised))
return { raised, raised }
";

/// The client for commands (not pub/sub): reconnects by itself, never fails at creation.
fn command_connection(client: &redis::Client) -> Result<ConnectionManager, BrokerError> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(10)))
        .set_max_delay(Duration::from_secs(2))
        .set_number_of_retries(2);
    client
        .get_connection_manager_lazy(config)
        .map_err(BrokerError::redis)
}

/// Opens a client for `url`; with `ca` (PEM certificates, see [`read_ca`]) a `rediss://`
/// server's certificate must chain to them instead of the system's roots. `resp3` sets the
/// protocol: the subscriber's pub/sub messages then arrive as pushes on its multiplexed
/// connection; other clients keep what the URL asks for (RESP2 by default), so that they work
/// with any Redis the gem works with.
pub(crate) fn client(
    url: &str,
    ca: Option<&[u8]>,
    resp3: bool,
) -> Result<redis::Client, redis::RedisError> {
    client_from_info(url.into_connection_info()?, ca, resp3)
}

/// [`client`] for an address already parsed (or resolved through Sentinel).
pub(crate) fn client_from_info(
    mut info: redis::ConnectionInfo,
    ca: Option<&[u8]>,
    resp3: bool,
) -> Result<redis::Client, redis::RedisError> {
    if resp3 {
        let settings = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        info = info.set_redis_settings(settings);
    }
    if matches!(info.addr(), ConnectionAddr::TcpTls { .. }) {
        install_crypto_provider();
    }
    match ca {
        None => redis::Client::open(info),
        // Refuses a URL that is not `rediss://` (`Config::validate` says so first).
        Some(pem) => redis::Client::build_with_tls(
            info,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        ),
    }
}

/// The Redis client builds its rustls configuration with the process's default crypto
/// provider, which rustls cannot choose by itself when more than one is compiled in (it would
/// panic at the first `rediss://` connection): ring, as for the server's TLS, unless the
/// application installed one.
pub(crate) fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An error means another thread installed one meanwhile, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// Reads the PEM file of CA certificates a `rediss://` server's certificate must chain to; the
/// error says what is wrong with it (unreadable, no certificate, one that is not a CA).
pub(crate) fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let name = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{name}: not a PEM certificate file ({e})"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{name}: a certificate that cannot be a trust anchor ({e})"))?;
    }
    if roots.is_empty() {
        return Err(format!(
            "{name}: no certificate in it (a PEM file of -----BEGIN CERTIFICATE----- blocks)"
        ));
    }
    Ok(pem)
}

/// The one way events are written to Redis: the publish script on a command connection.
#[derive(Clone)]
pub(crate) struct RedisPublisher {
    commands: Commands,
    script: Script,
    history_size: usize,
    /// How long an idempotency key's record lives.
    window: Duration,
}

impl RedisPublisher {
    /// A publisher for `url` (trusting `ca`, see [`client`]) that keeps `history_size` events
    /// per channel and idempotency keys for `window`. It connects on first use and reconnects
    /// by itself.
    pub fn connect(
        url: &str,
        ca: Option<&[u8]>,
        history_size: usize,
        window: Duration,
    ) -> Result<Self, BrokerError> {
        let client = client(url, ca, false).map_err(BrokerError::redis)?;
        Ok(RedisPublisher::new(
            Commands::to(&client)?,
            history_size,
            window,
        ))
    }

    /// A publisher to the primary the `sentinels` (URLs) name `master` (see `primary`, and
    /// there for `ca`); it asks them at first use and again whenever the primary refuses or
    /// cannot be reached.
    pub fn through_sentinel(
        sentinels: &[String],
        master: &str,
        ca: Option<&[u8]>,
        history_size: usize,
        window: Duration,
    ) -> Result<Self, BrokerError> {
        let primary = Primary::sentinel(sentinels, master, ca).map_err(BrokerError::redis)?;
        Ok(RedisPublisher::new(
            Commands::following(Arc::new(primary)),
            history_size,
            window,
        ))
    }

    fn new(commands: Commands, history_size: usize, window: Duration) -> Self {
        RedisPublisher {
            commands,
            script: Script::new(PUBLISH_SCRIPT),
            history_size,
            window,
        }
    }

    /// Keeps idempotency keys for `window` instead.
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Runs the publish script: publishes the event, or with `keyed` answers the event its key
    /// was used for within the window.
    pub async fn publish(
        &self,
        channel: &str,
        event: &Event,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        self.publish_tail(channel, &event.encode_tail(), keyed)
            .await
    }

    /// [`RedisPublisher::publish`] with the event already encoded after its `id:` line
    /// (`Event::encode_tail`).
    pub async fn publish_tail(
        &self,
        channel: &str,
        tail: &[u8],
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        let mut inv = self.script.key(channel);
        inv.key(COUNTER_KEY)
            .key(TRIMMED_KEY)
            .arg(tail)
            .arg(self.history_size)
            .arg("PUBLISH");
        if let Some(keyed) = keyed {
            inv.key(format!("{IDEMPOTENCY_PREFIX}{}", keyed.key))
                .arg(&keyed.fingerprint)
                .arg(window_millis(self.window));
        }
        let reply: (u64, u8) = match inv.invoke_async(&mut self.commands.get().await?).await {
            // Refused before it ran (a demoted primary, a dead address), and the primary
            // moved: sent once more, there.
            Err(e)
                if (primary::is_readonly(&e) || e.is_connection_refusal())
                    && self.commands.follow_after(&e).await =>
            {
                inv.invoke_async(&mut self.commands.get().await?).await
            }
            Err(e) => {
                self.commands.follow_after(&e).await;
                Err(e)
            }
            ok => ok,
        }
        .map_err(BrokerError::redis)?;
        publish_outcome(reply)
    }
}

/// Reads the counter and channels' histories with the history script; shared by streams and,
/// on its own connection, the subscriber's refill. A read that finds its connection dead (the
/// first after Redis restarted) is made again at once on the new connection, rather than
/// failing and waiting out its caller's backoff.
pub(crate) struct HistoryReader {
    commands: Commands,
    script: Script,
    raise: Script,
}

impl HistoryReader {
    fn new(commands: Commands) -> Self {
        HistoryReader {
            commands,
            script: Script::new(SNAPSHOT_SCRIPT),
            raise: Script::new(RAISE_SCRIPT),
        }
    }

    /// After a data loss, raises the counter and the floor above `known`, the highest id the
    /// caller knew, unless the floor is already above it; with `known` 0, only makes sure the
    /// floor exists. Returns the counter and the floor (see `RAISE_SCRIPT`).
    pub async fn raise(&self, known: u64) -> Result<(u64, u64), BrokerError> {
        let (counter, floor): (i64, i64) = self
            .raise
            .key(COUNTER_KEY)
            .key(FLOOR_KEY)
            .arg(known)
            .invoke_async(&mut self.commands.get().await?)
            .await
            .map_err(BrokerError::redis)?;
        Ok((counter.max(0) as u64, floor.max(0) as u64))
    }

    /// The Redis server's `run_id` (`INFO server`), which changes at every restart: only a
    /// restarted Redis can have come back from an older save. `None` when it cannot be read
    /// (an ACL user without `INFO`, or a server that does not say).
    pub async fn run_id(&self) -> Option<String> {
        let mut con = self.commands.get().await.ok()?;
        let mut cmd = redis::cmd("INFO");
        cmd.arg("server");
        let info: String = match cmd.query_async(&mut con).await {
            Err(e) if e.is_unrecoverable_error() => cmd.query_async(&mut con).await,
            reply => reply,
        }
        .inspect_err(|e| tracing::debug!(error = %e, "INFO server unanswered"))
        .ok()?;
        info.lines()
            .find_map(|l| l.strip_prefix("run_id:"))
            .map(|id| id.trim().to_owned())
    }

    /// Reads the counter and the channels' histories (see [`super::Broker::snapshot`]);
    /// entries that are not SSE events are skipped (`Snapshot::malformed` says how many; the
    /// caller counts them, once per read it acts on).
    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
        budget: usize,
    ) -> Result<Snapshot, BrokerError> {
        let after_arg = after.map_or_else(|| "-1".to_owned(), |a| a.to_string());
        // The lowest of the last ids of the chunks that stopped at their budget: each chunk's
        // page is a prefix of its channels' merged events, so up to it the pages together are
        // a prefix of all.
        let mut cut: Option<u64> = None;
        let mut lowest_counter: Option<u64> = None;
        let mut snap = Snapshot {
            unrecorded_trims: true,
            ..Snapshot::default()
        };
        let chunks: Vec<&[Arc<str>]> = if channels.is_empty() {
            vec![&[]]
        } else {
            channels.chunks(SNAPSHOT_CHUNK).collect()
        };
        let mut con = self.commands.get().await?;
        for chunk in chunks {
            let mut inv = self.script.key(COUNTER_KEY);
            inv.key(TRIMMED_KEY).key(FLOOR_KEY);
            for ch in chunk {
                inv.key(&**ch);
            }
            inv.arg(&after_arg).arg(budget);
            let reply: Value = match inv.invoke_async(&mut con).await {
                // The connection's socket died (Redis restarted): the manager has begun a new
                // connection, and a read (which changes nothing) is tried again at once on it.
                Err(e) if e.is_unrecoverable_error() => inv.invoke_async(&mut con).await,
                reply => reply,
            }
            .map_err(BrokerError::redis)?;
            let page = parse_snapshot(reply)?;
            if let Some(end) = page.page_end {
                cut = Some(cut.map_or(end, |c| c.min(end)));
            }
            // Chunks are read one after the other: an event published between two reads on a
            // channel of an earlier chunk may have a lower id than events a later chunk
            // returned. A page ends at the lowest counter read, where every chunk was whole.
            lowest_counter = match (lowest_counter, page.counter) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            snap.counter = snap.counter.max(page.counter);
            snap.floor = snap.floor.max(page.floor);
            snap.channels.extend(page.histories);
            snap.malformed += page.malformed;
        }
        if let Some(low) = lowest_counter
            && budget > 0
            && snap
                .channels
                .iter()
                .flat_map(|c| &c.events)
                .any(|f| f.id > low)
        {
            cut = Some(cut.map_or(low, |c| c.min(low)));
        }
        if let Some(cut) = cut {
            snap.page_end = Some(cut);
            for channel in &mut snap.channels {
                channel.events.retain(|f| f.id <= cut);
            }
        }
        Ok(snap)
    }
}

/// Reads the CA file of `config`, if any (see [`read_ca`]).
pub(crate) fn config_ca(config: &Config) -> Result<Option<Vec<u8>>, Error> {
    match &config.redis_tls_ca {
        Some(path) => {
            Ok(Some(read_ca(path).map_err(|e| {
                Error::InvalidConfig(format!("redis_tls_ca: {e}"))
            })?))
        }
        None => Ok(None),
    }
}

/// The primary `config` names: its `redis_url` (trusting `redis_tls_ca`), or the one its
/// `redis_sentinel` finds. Only the settings are checked here; nothing connects.
fn config_primary(config: &Config) -> Result<Primary, Error> {
    let ca = config_ca(config)?;
    if let Some(sentinel) = &config.redis_sentinel {
        return Primary::sentinel(&sentinel.sentinels, &sentinel.master, ca.as_deref())
            .map_err(|e| Error::RedisUrl(Box::new(e)));
    }
    let url = config.redis_url.as_deref().unwrap_or_default();
    let client = client(url, ca.as_deref(), true).map_err(|e| Error::RedisUrl(Box::new(e)))?;
    Ok(Primary::Fixed(client))
}

/// Waits at most `timeout` for the Redis primary of `config` to answer a PING, on a
/// connection made as the subscriber's is (see [`probe`]; through Sentinel, once a sentinel
/// named a primary); with a zero `timeout`, only checks the settings (URL, CA file).
pub(crate) async fn wait_until_answered(config: &Config, timeout: Duration) -> Result<(), Error> {
    let primary = config_primary(config)?;
    if timeout.is_zero() {
        return Ok(());
    }
    let described = config.broker_description();
    let unreachable = |failure: probe::Unanswered| Error::BrokerUnreachable {
        message: format!("Redis {described}: {}", failure.cause),
        waited: failure.transient.then_some(timeout),
    };
    probe::wait_until_answered(&primary, timeout)
        .await
        .map_err(unreachable)
}

/// Publishing and history on Redis; subscriptions go to the subscriber task.
pub(crate) struct RedisBroker {
    publisher: RedisPublisher,
    history: HistoryReader,
    subscriptions: SubSender,
    /// The highest counter a stream's snapshot read, or id this process published: streams start
    /// from it even when no event was dispatched here, so a reconnected subscriber that finds a
    /// lower counter knows that Redis lost its data. Shared with the subscriber.
    counter_seen: Arc<AtomicU64>,
    /// The newest event published here (see `dispatch::NewestCell`), which the subscriber
    /// checks like the newest delivered one. Shared with the subscriber.
    published: Arc<NewestCell>,
    metrics: Arc<Metrics>,
    /// Streams' identical history reads made at the same time, shared.
    shared_reads: SharedReads,
}

impl RedisBroker {
    /// Connects lazily to the primary of `config` and starts the subscriber task, which lives
    /// until the broker and the hub are dropped. Returns the broker and where the hub sends
    /// subscription changes.
    pub fn start(
        config: &Config,
        dispatch: DispatchSender,
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<(Self, SubSender), Error> {
        let primary = config_primary(config)?;
        let (sub_tx, sub_rx) = mpsc::unbounded_channel();
        let counter_seen = Arc::new(AtomicU64::new(0));
        let published = Arc::new(NewestCell::default());
        // Publishing and streams' history reads share one command connection: whichever runs
        // first after an outage reconnects it for both (the subscriber wakes it first). Through
        // Sentinel, the subscriber makes them when it first finds the primary, and again
        // whenever it moves.
        let primary = Arc::new(primary);
        let (commands, refills) = match &*primary {
            Primary::Fixed(client) => (Commands::to(client)?, Commands::to(client)?),
            Primary::Sentinel(_) => (
                Commands::following(primary.clone()),
                Commands::following(primary.clone()),
            ),
        };
        let subscriber = Subscriber {
            primary,
            metrics: metrics.clone(),
            counter_seen: counter_seen.clone(),
            published: published.clone(),
            dispatch,
            commands: sub_rx,
            history: HistoryReader::new(refills),
            streams_commands: commands.clone(),
            history_size: config.history_size,
            ping_interval: config.redis_ping_interval,
            ping_timeout: config.redis_ping_timeout,
            floor_seen: None,
            run_id: None,
            connected: None,
        };
        tasks.spawn("redis subscriber", subscriber.run());
        let broker = RedisBroker {
            publisher: RedisPublisher::new(
                commands.clone(),
                config.history_size,
                config.idempotency_window,
            ),
            history: HistoryReader::new(commands),
            subscriptions: sub_tx.clone(),
            counter_seen,
            published,
            metrics,
            shared_reads: SharedReads::default(),
        };
        Ok((broker, sub_tx))
    }

    pub async fn publish(
        &self,
        channel: &str,
        event: &Event,
        keyed: Option<&Keyed<'_>>,
    ) -> Result<Outcome, BrokerError> {
        let tail = event.encode_tail();
        let outcome = self.publisher.publish_tail(channel, &tail, keyed).await?;
        // An id this process handed out is one it knows: should Redis come back without it (a
        // crash after the write was acknowledged but before it was saved), the subscriber sees
        // the counter below it and tells the streams, rather than the event vanishing unseen.
        let (Outcome::Published(id) | Outcome::Replayed(id) | Outcome::Conflict(id)) = outcome;
        self.counter_seen.fetch_max(id, Relaxed);
        if let Outcome::Published(id) = outcome {
            // As the subscriber will read it back: the script's payload, parsed as stored.
            let mut payload = format!("id: {id}\n").into_bytes();
            payload.extend_from_slice(&tail);
            if let Ok((_, bytes)) = parse_stored(payload) {
                self.published.offer(id, channel, &bytes);
            }
        }
        Ok(outcome)
    }

    /// A stream's snapshot or page (shared with identical reads that started after `ready`,
    /// when the stream's subscriptions were active: see [`shared_reads`]); its counter is
    /// remembered (see `counter_seen`).
    pub async fn snapshot(
        &self,
        channels: &[Arc<str>],
        after: Option<u64>,
        budget: usize,
        ready: tokio::time::Instant,
    ) -> Result<Snapshot, BrokerError> {
        let snapshot = self
            .shared_reads
            .read(channels, after, budget, ready, &self.metrics, || {
                self.history.snapshot(channels, after, budget)
            })
            .await?;
        if snapshot.malformed > 0 {
            self.metrics.malformed.inc_by(snapshot.malformed);
        }
        self.counter_seen
            .fetch_max(snapshot.counter.unwrap_or(0), Relaxed);
        Ok(snapshot)
    }

    /// Returns when the subscriptions were confirmed active (see `dispatch::Ready`).
    pub async fn subscriptions_ready(&self) -> tokio::time::Instant {
        crate::dispatch::barrier(&self.subscriptions, None).await
    }

    pub fn is_up(&self) -> bool {
        self.metrics.broker_up()
    }
}

/// The idempotency window in milliseconds as the publish script takes it: at least one (`PX 0`
/// is an error in Redis; `Config::validate` refuses a zero window).
fn window_millis(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// The publish script's reply: `{id, flag}` (see `PUBLISH_SCRIPT`).
fn publish_outcome((id, flag): (u64, u8)) -> Result<Outcome, BrokerError> {
    match flag {
        0 => Ok(Outcome::Published(id)),
        1 => Ok(Outcome::Replayed(id)),
        2 => Ok(Outcome::Conflict(id)),
        other => Err(BrokerError::Protocol(format!(
            "publish script: unknown flag {other}"
        ))),
    }
}

/// One history script reply.
struct ParsedSnapshot {
    counter: Option<u64>,
    /// Where the page stopped at its budget (the score of the last entry it read).
    page_end: Option<u64>,
    /// The data-loss floor, when there is one.
    floor: Option<u64>,
    histories: Vec<ChannelHistory>,
    /// Entries skipped as malformed.
    malformed: u64,
}

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
    let page_end = items.next().as_ref().and_then(score);
    let floor = match items.next() {
        Some(Value::Int(n)) => u64::try_from(n).ok(),
        _ => return Err(bad("no floor")),
    };
    let mut histories = Vec::new();
    let mut malformed = 0;
    while let Some(len) = items.next() {
        let (Some(oldest), Some(trimmed), Some(events)) =
            (items.next(), items.next(), items.next())
        else {
            return Err(bad("a channel's entry is incomplete"));
        };
        let Value::Int(len) = len else {
            return Err(bad("length"));
        };
        let Value::Int(trimmed) = trimmed else {
            return Err(bad("trimmed watermark"));
        };
        let (mut events, skipped) = stored_frames(events);
        malformed += skipped;
        // An entry past the counter read in the same atomic snapshot was not given its id by
        // the counter (every publisher takes the id from it before writing): a lie, which would
        // move the stream's position past every real event. Refused like any malformed entry.
        if let Some(counter) = counter {
            let before = events.len();
            events.retain(|f| f.id <= counter);
            let lies = (before - events.len()) as u64;
            if lies > 0 {
                tracing::warn!(
                    counter,
                    entries = lies,
                    "skipping history entries whose id is past the id counter"
                );
                malformed += lies;
            }
        }
        histories.push(ChannelHistory {
            len: len.max(0) as usize,
            oldest: score(&oldest),
            trimmed: trimmed.max(0) as u64,
            events,
        });
    }
    Ok(ParsedSnapshot {
        counter,
        page_end,
        floor,
        histories,
        malformed,
    })
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

/// Turns stored payloads into frames (`stored`), skipping and logging what is not one SSE
/// event; returns
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
            match parse_stored(bytes) {
                Ok((id, bytes)) => Some(Frame::event(id, bytes)),
                Err((why, bytes)) => {
                    skipped += 1;
                    tracing::warn!(
                        reason = %why,
                        payload = %Escaped(&bytes),
                        "skipping a history entry that is not one SSE event"
                    );
                    None
                }
            }
        })
        .collect();
    (frames, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn a_snapshot_reply_gives_each_channels_watermark() {
        let reply = Value::Array(vec![
            Value::Int(9),
            bulk(""),
            Value::Int(4),
            Value::Int(2),
            bulk("8"),
            Value::Int(7),
            Value::Array(vec![bulk("id: 9\nevent: m\ndata: x\n\n")]),
            Value::Int(0),
            bulk(""),
            Value::Int(0),
            Value::Array(vec![]),
        ]);
        let page = parse_snapshot(reply).unwrap();
        assert_eq!(
            (page.counter, page.page_end, page.floor, page.malformed),
            (Some(9), None, Some(4), 0)
        );
        let histories = page.histories;
        let a = &histories[0];
        assert_eq!(
            (a.len, a.oldest, a.trimmed, a.events.len()),
            (2, Some(8), 7, 1)
        );
        let b = &histories[1];
        assert_eq!(
            (b.len, b.oldest, b.trimmed, b.events.len()),
            (0, None, 0, 0)
        );
        // No floor recorded.
        let none = Value::Array(vec![Value::Int(9), bulk(""), Value::Int(-1)]);
        assert_eq!(parse_snapshot(none).unwrap().floor, None);
        // A reply in an old shape (no floor, or three items per channel) is refused, not misread.
        let old = Value::Array(vec![
            Value::Int(9),
            bulk(""),
            Value::Int(0),
            Value::Int(0),
            bulk(""),
            Value::Array(vec![]),
        ]);
        assert!(parse_snapshot(old).is_err());
        let old = Value::Array(vec![Value::Int(9), bulk("")]);
        assert!(parse_snapshot(old).is_err());
    }

    #[test]
    fn ca_files_are_read_or_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("redisse-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.pem");
        assert!(read_ca(&missing).unwrap_err().contains("cannot read"));
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        assert!(read_ca(&garbage).unwrap_err().contains("no certificate"));
        let broken = dir.join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(read_ca(&broken).is_err());
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap();
        let good = dir.join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        assert_eq!(read_ca(&good).unwrap(), ca.pem().into_bytes());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tls_client_is_built_without_a_provider_panic() {
        let pem = {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.self_signed(&key).unwrap().pem().into_bytes()
        };
        assert!(client("rediss://127.0.0.1:1/", Some(&pem), true).is_ok());
        assert!(client("rediss://127.0.0.1:1/", None, false).is_ok());
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
        // A CA for a plain URL is refused by the client too.
        assert!(client("redis://127.0.0.1:1/", Some(&pem), false).is_err());
    }
}
