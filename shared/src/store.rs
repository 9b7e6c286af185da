//! Lifeline's Redis store: monitors, their state and deadlines, beat and
//! state-change history, the alert outbox, push tokens and channels.
//!
//! Every write to a monitor goes through one Lua script (see
//! [`Store::commit`]) that checks the monitor's version and then,
//! atomically and within one hash slot, writes the new state, moves the
//! deadline in the shard's index, appends history and puts the alert jobs
//! in the shard's outbox. Two evaluator replicas racing on one monitor
//! therefore cannot both raise the same alert: the loser sees a version
//! conflict and recomputes.
//!
//! [`Store::apply`] runs one state-machine step in two round trips (read,
//! then the script). [`Store::apply_batch`], for the hot paths, runs many
//! steps in a few: one pipelined read (skipped for monitors the evaluator's
//! cache holds, see [`Store::with_cache`]) and one script call committing
//! them all, per round, each round holding a monitor at most once.
//! Key layout: [`crate::names`]; the fields of a monitor's hash: the
//! `codec` submodule; what the notifier writes about deliveries (records,
//! attempt log, claims, rate-limit slots): the `deliveries` submodule.

mod cache;
mod codec;
mod deliveries;
mod persistence;

pub use persistence::Persistence;

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock},
    time::Duration,
};

use redis::{AsyncCommands, Script, aio::ConnectionManager};

use crate::{
    model::{
        AlertJob, BeatRecord, Channel, Monitor, MonitorConfig, MonitorState, Outage, StateChange,
    },
    names::{Names, shard_of},
    state::{BeatDisposition, Input, Outcome, Rules, step},
};
use cache::MonitorCache;
use codec::{Field, Writes};

/// A Redis failure, or a record that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot serve right now: unreachable, the connection dropped or
    /// timed out, or it is loading its data, failing over or read-only.
    /// Asking again later may succeed (an HTTP service answers 503).
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis refused a command or a script: a bug, or a Redis set up to
    /// forbid it. Asking again will not help.
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// A stored record is not what this version expects.
    #[error("corrupt record at {key}: {error}")]
    Corrupt {
        /// The key read.
        key: String,
        /// The parse error.
        error: serde_json::Error,
    },
    /// A field of a monitor's hash is missing or does not parse.
    #[error("corrupt record at {key}, field `{field}`: {problem}")]
    CorruptField {
        /// The key read.
        key: String,
        /// The hash field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl StoreError {
    /// Whether Redis could not serve (see [`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<redis::RedisError> for StoreError {
    /// Sorts a Redis error: "cannot serve right now" or a refusal.
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            );
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What [`Store::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitResult {
    /// Written.
    Committed,
    /// The monitor changed since it was read: read again and recompute.
    Conflict,
    /// The monitor no longer exists.
    Missing,
}

impl CommitResult {
    /// The meaning of the commit script's answer.
    fn of(answer: i64) -> Self {
        match answer {
            1 => Self::Committed,
            0 => Self::Conflict,
            _ => Self::Missing,
        }
    }
}

/// The values of a monitor's hash fields ([`Field::ALL`]) as `HMGET`
/// answers them.
type MonitorRow = Vec<Option<String>>;

/// Whether `input` fires `state`'s deadline, the only case in which a step
/// needs the push-path outages.
fn fires(state: &MonitorState, input: Input<'_>) -> bool {
    let at = match input {
        Input::Beat(b) => b.at,
        Input::Tick { now } => now,
        _ => return false,
    };
    state.deadline.is_some_and(|d| d <= at)
}

/// The rounds of [`Store::apply_batch`]: input indexes, each monitor at
/// most once per round, a monitor's k-th input in round k.
fn rounds(inputs: &[(&str, Input<'_>)]) -> Vec<Vec<usize>> {
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(inputs.len());
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (i, &(id, _)) in inputs.iter().enumerate() {
        let k = seen.entry(id).or_default();
        if *k == rounds.len() {
            rounds.push(Vec::new());
        }
        rounds[*k].push(i);
        *k += 1;
    }
    rounds
}

/// Everything one state-machine step writes.
#[derive(Debug)]
pub struct Commit<'a> {
    /// The state the hash holds at the expected version, if known: then
    /// only the fields that differ from it are written (`None`: all).
    pub prior: Option<&'a MonitorState>,
    /// The new state.
    pub state: &'a MonitorState,
    /// New settings, when the API changes them.
    pub cfg: Option<&'a MonitorConfig>,
    /// The beat to add to the history.
    pub beat: Option<&'a BeatRecord>,
    /// State changes to add to the history.
    pub changes: &'a [StateChange],
    /// Alert jobs to put in the outbox.
    pub alerts: &'a [AlertJob],
}

/// What [`Store::apply`] did.
#[derive(Debug)]
pub struct Applied {
    /// The monitor as read before the step.
    pub before: Monitor,
    /// The settings in force after the step.
    pub cfg: MonitorConfig,
    /// The step's outcome (already written).
    pub outcome: Outcome,
    /// Alert jobs written to the outbox, to publish now.
    pub jobs: Vec<AlertJob>,
}

/// History lengths kept per monitor.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Beats kept per monitor (`LIFELINE_HISTORY_BEATS`, default 100).
    pub beats: usize,
    /// State changes kept per monitor (`LIFELINE_HISTORY_EVENTS`, default 1000).
    pub events: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            beats: 100,
            events: 1000,
        }
    }
}

// Commits the steps of one or more monitors, each only if its monitor is
// still at the version the step read.
// KEYS: five per monitor: monitor, deadlines, outbox, beats, events.
// ARGV: version field, beats cap, events cap, then per monitor: expected
//       ver, deadline ('' = none), monitor id, beat JSON ('' = none), counts
//       s, u, n and c, then s (field, value) pairs to set in the monitor
//       hash (the state fields that changed, and the settings when they
//       change), u fields to remove from it, n (alert id, job JSON) pairs
//       and c state-change JSONs.
// Returns one answer per monitor: 1 written, 0 version conflict, -1 gone.
const COMMIT_LUA: &str = r#"
local vf = ARGV[1]
local beats_cap, events_cap = tonumber(ARGV[2]), tonumber(ARGV[3])
local answers = {}
local i, k = 4, 0
while i <= #ARGV do
  local mon, deadlines, outbox = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local beats, events = KEYS[k + 4], KEYS[k + 5]
  k = k + 5
  local expected, deadline, id, beat = tonumber(ARGV[i]), ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local s, u = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  local n, c = tonumber(ARGV[i + 6]), tonumber(ARGV[i + 7])
  i = i + 8
  local next_i = i + 2 * s + u + 2 * n + c
  local ver = redis.call('HGET', mon, vf)
  if not ver then
    answers[#answers + 1] = -1
  elseif tonumber(ver) ~= expected then
    answers[#answers + 1] = 0
  else
    redis.call('HSET', mon, vf, tonumber(ver) + 1, unpack(ARGV, i, i + 2 * s - 1))
    i = i + 2 * s
    if u > 0 then redis.call('HDEL', mon, unpack(ARGV, i, i + u - 1)) end
    i = i + u
    if deadline == '' then
      redis.call('ZREM', deadlines, id)
    else
      redis.call('ZADD', deadlines, deadline, id)
    end
    if beat ~= '' and redis.call('LPUSH', beats, beat) > beats_cap then
      redis.call('LTRIM', beats, 0, beats_cap - 1)
    end
    for _ = 1, n do
      redis.call('HSET', outbox, ARGV[i], ARGV[i + 1])
      i = i + 2
    end
    if c > 0 then
      for _ = 1, c do
        redis.call('LPUSH', events, ARGV[i])
        i = i + 1
      end
      redis.call('LTRIM', events, 0, events_cap - 1)
    end
    answers[#answers + 1] = 1
  end
  i = next_i
end
return answers
"#;

// A beat older than the newest applied one: recorded once, unless the
// history already holds its sequence number. KEYS: monitor, beats.
// ARGV: beat JSON, the `"seq":N,` marker, beats cap.
const LATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
for _, e in ipairs(entries) do
  if string.find(e, ARGV[2], 1, true) then return 0 end
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"#;

// KEYS: monitor, deadlines, beats, events, outbox. ARGV: monitor id.
const DELETE_LUA: &str = r#"
local existed = redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
return existed
"#;

// KEYS: watermark, outages. ARGV: pulse time, gap (ms), outages kept.
const PULSE_LUA: &str = r#"
local w = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = tonumber(ARGV[1])
if at <= w then return false end
redis.call('SET', KEYS[1], ARGV[1])
if w > 0 and at - w > tonumber(ARGV[2]) then
  local outage = '{"start":' .. w .. ',"end":' .. at .. '}'
  redis.call('ZADD', KEYS[2], w, outage)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
  return outage
end
return false
"#;

/// Outages kept (the newest).
const OUTAGES_KEPT: usize = 1000;

static PULSE: LazyLock<Script> = LazyLock::new(|| Script::new(PULSE_LUA));

static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));
static LATE: LazyLock<Script> = LazyLock::new(|| Script::new(LATE_LUA));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));

/// Handle to the Redis store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: ConnectionManager,
    names: Names,
    caps: Caps,
    /// Monitors as this handle last wrote them (the evaluator's; see
    /// [`Store::with_cache`]).
    cache: Option<Arc<MonitorCache>>,
}

/// The positions of `ids`, grouped by shard (in order of first appearance,
/// each group in the order given).
fn by_shard<'a>(ids: impl Iterator<Item = &'a str>) -> Vec<Vec<usize>> {
    let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
    for (i, id) in ids.enumerate() {
        let shard = shard_of(id);
        match groups.iter_mut().find(|(s, _)| *s == shard) {
            Some((_, g)) => g.push(i),
            None => groups.push((shard, vec![i])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|error| StoreError::Corrupt {
        key: key.to_owned(),
        error,
    })
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types serialize")
}

impl Store {
    /// A store on `url`. Connects lazily and reconnects by itself, so a
    /// service starts while Redis is down and answers 503 until it is back;
    /// each command gives up after 2 s.
    pub fn open(url: &str, names: Names, caps: Caps) -> Result<Self> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(Self {
            conn,
            names,
            caps,
            cache: None,
        })
    }

    /// This store, keeping up to `monitors` monitors as it last wrote them,
    /// so that [`Store::apply_batch`] need not read them back (0: none).
    /// Only for the evaluator: a handle that writes monitors without
    /// stepping them (the API) must not use it. A stale copy costs a retry,
    /// never a wrong write (the commit checks the version), and the copies
    /// are not consulted while many turn out stale (several replicas
    /// writing the same monitors).
    pub fn with_cache(mut self, monitors: usize) -> Self {
        self.cache = (monitors > 0).then(|| Arc::new(MonitorCache::new(monitors)));
        self
    }

    /// The names this store uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// A connection for commands this module does not wrap.
    pub fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// `PING`: whether Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.conn()).await?;
        Ok(())
    }

    // --- monitors ---

    /// The monitor id a push token's hash resolves to.
    pub async fn monitor_for_token(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(self.conn().get(self.names.token(token_hash)).await?)
    }

    /// Reads one monitor.
    pub async fn monitor(&self, id: &str) -> Result<Option<Monitor>> {
        let row: MonitorRow = self.read_monitor(id).query_async(&mut self.conn()).await?;
        self.monitor_from(id, row)
    }

    /// The `HMGET` that reads a monitor as a [`MonitorRow`].
    fn read_monitor(&self, id: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.names.monitor(id));
        for field in Field::ALL {
            cmd.arg(field.key());
        }
        cmd
    }

    /// The monitor a [`Store::read_monitor`] answer holds, if it exists.
    fn monitor_from(&self, id: &str, row: MonitorRow) -> Result<Option<Monitor>> {
        codec::decode(id, row).map_err(|e| StoreError::CorruptField {
            key: self.names.monitor(id),
            field: e.field.key(),
            problem: e.to_string(),
        })
    }

    /// Creates a monitor and its push token.
    pub async fn create_monitor(
        &self,
        id: &str,
        cfg: &MonitorConfig,
        state: &MonitorState,
    ) -> Result<()> {
        let mut conn = self.conn();
        let key = self.names.monitor(id);
        let mut writes = Writes::default();
        writes.config(cfg).state(state);
        // One transaction: no optional value of an earlier record under this
        // id survives, and a reader sees the monitor whole or not at all.
        let mut create = redis::pipe();
        create.atomic();
        if !writes.unset.is_empty() {
            let unset: Vec<&str> = writes.unset.iter().map(|f| f.key()).collect();
            create.hdel(&key, unset).ignore();
        }
        let set: Vec<(&str, &str)> = writes
            .set
            .iter()
            .map(|(f, v)| (f.key(), v.as_str()))
            .chain([(codec::VER, "0")])
            .collect();
        create.hset_multiple(&key, &set).ignore();
        let _: () = create.query_async(&mut conn).await?;
        let _: () = conn
            .zadd(self.names.monitors_index(), id, cfg.created_at)
            .await?;
        let _: () = conn.set(self.names.token(&cfg.token_hash), id).await?;
        Ok(())
    }

    /// Points a new token hash at a monitor (rotation, before the old one is revoked).
    pub async fn add_token(&self, token_hash: &str, id: &str) -> Result<()> {
        let _: () = self.conn().set(self.names.token(token_hash), id).await?;
        Ok(())
    }

    /// Revokes a push token, then bumps the revocation counter so every
    /// ingest replica drops its cached token lookups.
    pub async fn revoke_token(&self, token_hash: &str) -> Result<()> {
        let _: () = redis::pipe()
            .del(self.names.token(token_hash))
            .ignore()
            .incr(self.names.token_generation(), 1)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Deletes a monitor, its token, deadline and history. Returns whether it existed.
    pub async fn delete_monitor(&self, monitor: &Monitor) -> Result<bool> {
        self.revoke_token(&monitor.cfg.token_hash).await?;
        let id = &monitor.id;
        let shard = shard_of(id);
        let existed: i64 = DELETE
            .key(self.names.monitor(id))
            .key(self.names.deadlines(shard))
            .key(self.names.beats(id))
            .key(self.names.events(id))
            .arg(id)
            .invoke_async(&mut self.conn())
            .await?;
        let _: () = self.conn().zrem(self.names.monitors_index(), id).await?;
        Ok(existed > 0)
    }

    /// All monitor ids, oldest first.
    pub async fn monitor_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .conn()
            .zrange(self.names.monitors_index(), 0, -1)
            .await?)
    }

    /// Applies one state-machine step if the monitor is still at `expected_ver`.
    pub async fn commit(
        &self,
        id: &str,
        expected_ver: u64,
        c: &Commit<'_>,
    ) -> Result<CommitResult> {
        Ok(self.commit_many(&[(id, expected_ver, c)]).await?[0])
    }

    /// [`Store::commit`] for several monitors in one round trip: one
    /// script call per shard among them (a script touches the keys of one
    /// hash slot only, so that the stack runs on Redis Cluster unchanged),
    /// pipelined. Each monitor's commit stands or fails on its own.
    async fn commit_many(&self, commits: &[(&str, u64, &Commit<'_>)]) -> Result<Vec<CommitResult>> {
        let (groups, pipe) = self.commit_pipe(commits);
        let mut conn = self.conn();
        let answers: Vec<Vec<i64>> = match pipe.query_async(&mut conn).await {
            // Redis lost its scripts (a restart, `SCRIPT FLUSH`): load the
            // script and send the calls again. A call that did run before
            // the loss meets a version conflict the second time and is
            // retried from a read, as any conflict.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                COMMIT.load_async(&mut conn).await?;
                pipe.query_async(&mut conn).await?
            }
            answers => answers?,
        };
        let mut out = vec![CommitResult::Conflict; commits.len()];
        for (group, answers) in groups.iter().zip(answers) {
            for (&i, answer) in group.iter().zip(answers) {
                out[i] = CommitResult::of(answer);
            }
        }
        Ok(out)
    }

    /// The commit script calls for `commits`, one per shard among them, and
    /// the positions in `commits` that each call covers.
    fn commit_pipe(
        &self,
        commits: &[(&str, u64, &Commit<'_>)],
    ) -> (Vec<Vec<usize>>, redis::Pipeline) {
        let groups = by_shard(commits.iter().map(|&(id, _, _)| id));
        let mut pipe = redis::pipe();
        for group in &groups {
            let calls: Vec<(&str, u64, &Commit<'_>)> = group.iter().map(|&i| commits[i]).collect();
            pipe.add_command(self.commit_call(&calls));
        }
        (groups, pipe)
    }

    /// The `EVALSHA` of the commit script for `commits` (see `COMMIT_LUA`),
    /// written into one command buffer: the evaluator sends one per batch
    /// of beats, and a script invocation would allocate every key and
    /// argument apart first.
    fn commit_call(&self, commits: &[(&str, u64, &Commit<'_>)]) -> redis::Cmd {
        // A beat's commit takes about 20 arguments and 400 bytes.
        let mut call = redis::Cmd::with_capacity(8 + 24 * commits.len(), 512 * commits.len());
        call.arg("EVALSHA")
            .arg(COMMIT.get_hash())
            .arg(5 * commits.len());
        for &(id, _, _) in commits {
            let shard = shard_of(id);
            call.arg(self.names.monitor(id))
                .arg(self.names.deadlines(shard))
                .arg(self.names.outbox(shard))
                .arg(self.names.beats(id))
                .arg(self.names.events(id));
        }
        call.arg(codec::VER)
            .arg(self.caps.beats)
            .arg(self.caps.events);
        let mut beat = Vec::with_capacity(256);
        for &(id, expected_ver, c) in commits {
            let mut writes = Writes::default();
            match c.prior {
                Some(prior) => writes.state_since(prior, c.state),
                None => writes.state(c.state),
            };
            if let Some(cfg) = c.cfg {
                writes.config(cfg);
            }
            call.arg(expected_ver);
            match c.state.deadline {
                Some(deadline) => call.arg(deadline),
                None => call.arg(""),
            };
            call.arg(id);
            beat.clear();
            if let Some(b) = c.beat {
                serde_json::to_writer(&mut beat, b).expect("model types serialize");
            }
            call.arg(beat.as_slice())
                .arg(writes.set.len())
                .arg(writes.unset.len())
                .arg(c.alerts.len())
                .arg(c.changes.len());
            for (field, value) in &writes.set {
                call.arg(field.key()).arg(value);
            }
            for field in &writes.unset {
                call.arg(field.key());
            }
            for job in c.alerts {
                call.arg(&job.alert_id).arg(json(job));
            }
            for change in c.changes.iter() {
                call.arg(json(change));
            }
        }
        call
    }

    /// Keeps monitor `id` as just written (version `ver`), if this store
    /// caches monitors.
    fn remember(&self, id: &str, cfg: &MonitorConfig, state: &MonitorState, ver: u64) {
        if let Some(cache) = &self.cache {
            cache.put(Monitor {
                id: id.to_owned(),
                cfg: cfg.clone(),
                state: state.clone(),
                ver,
            });
        }
    }

    /// Drops the cached copy of `id`, if any.
    fn forget_cached(&self, id: &str) {
        if let Some(cache) = &self.cache {
            cache.forget(id);
        }
    }

    /// Runs one state-machine step on a monitor and writes its outcome,
    /// re-reading and recomputing on a version conflict. Returns `None` when
    /// the monitor does not exist.
    pub async fn apply(&self, id: &str, input: Input<'_>) -> Result<Option<Applied>> {
        self.apply_with(id, input, |_| None).await
    }

    /// [`Store::apply`] that may also replace the settings in the same write:
    /// `patch` gets each attempt's freshly read settings and returns the new
    /// ones (or `None` to keep them), and the step follows the new settings
    /// (timeout, reminders, confirm).
    /// Deriving the patch from the fresh read means concurrent edits (say a
    /// token rotation and a rename) never overwrite each other with stale
    /// settings.
    pub async fn apply_with(
        &self,
        id: &str,
        input: Input<'_>,
        patch: impl Fn(&MonitorConfig) -> Option<MonitorConfig>,
    ) -> Result<Option<Applied>> {
        loop {
            let Some(before) = self.monitor(id).await? else {
                return Ok(None);
            };
            let new_cfg = patch(&before.cfg).filter(|c| *c != before.cfg);
            let cfg = new_cfg.as_ref().unwrap_or(&before.cfg);
            // Outages matter only when a deadline is about to fire: read
            // them only then (rare), not on every beat.
            let outages = if fires(&before.state, input) {
                self.outages().await?
            } else {
                Vec::new()
            };
            let (outcome, beat) = self
                .run_step(id, &before.state, cfg, input, &outages)
                .await?;
            let cfg = cfg.clone();
            if outcome.state == before.state && new_cfg.is_none() && beat.is_none() {
                return Ok(Some(Applied {
                    before,
                    cfg,
                    outcome,
                    jobs: Vec::new(),
                }));
            }
            let jobs: Vec<AlertJob> = outcome.alerts.iter().map(|a| a.to_job(id, &cfg)).collect();
            let commit = Commit {
                prior: Some(&before.state),
                state: &outcome.state,
                cfg: new_cfg.as_ref(),
                beat,
                changes: &outcome.changes,
                alerts: &jobs,
            };
            match self.commit(id, before.ver, &commit).await? {
                CommitResult::Committed => {
                    self.remember(id, &cfg, &outcome.state, before.ver + 1);
                    return Ok(Some(Applied {
                        before,
                        cfg,
                        outcome,
                        jobs,
                    }));
                }
                CommitResult::Conflict => continue,
                CommitResult::Missing => return Ok(None),
            }
        }
    }

    /// Applies many inputs as if by calling [`Store::apply`] on each in order
    /// (per-monitor order is kept; a monitor may appear more than once), in a
    /// few pipelined round trips. Results are in input order; `None` where
    /// the monitor does not exist.
    ///
    /// The inputs go in rounds holding each monitor at most once (its k-th
    /// input in round k; usually there is one round). A round reads its
    /// monitors in one pipelined round trip (those the cache of
    /// [`Store::with_cache`] holds are not read), steps each, and writes
    /// every outcome that changes something in one script call. The
    /// push-path outages are read at most once per call, and only if a step
    /// fires a deadline. Items whose write meets a version conflict (another
    /// replica wrote the monitor in between, or the cached copy was stale)
    /// are read afresh and applied again, before the next round.
    ///
    /// A Redis error fails the whole call, possibly after some items were
    /// written. Calling again with the same inputs is then safe (see
    /// [`crate::state`]): a beat already applied comes back as a duplicate
    /// (its `seq` is the monitor's `last_seq`) or as late (older), and a late
    /// beat is recorded only if the history does not hold its `seq` yet; a
    /// tick at the same `now` changes nothing, since firing a deadline always
    /// leaves none at or before `now`. The alert jobs of items written before
    /// the error are not returned but wait in the outbox, whose sweep
    /// publishes them.
    pub async fn apply_batch(&self, inputs: &[(&str, Input<'_>)]) -> Result<Vec<Option<Applied>>> {
        let mut results: Vec<Option<Applied>> = Vec::with_capacity(inputs.len());
        results.resize_with(inputs.len(), || None);
        let mut outages: Option<Vec<Outage>> = None;
        let mut conn = self.conn();
        for round in rounds(inputs) {
            // Items of this round still to apply: all of it, then those
            // whose commit met a version conflict (read afresh), until
            // none is left — before the next round, to keep each
            // monitor's order.
            let mut todo = round;
            while !todo.is_empty() {
                // The monitors as they stand: the cached copy while the
                // cache is trusted, else read (one pipelined round trip).
                let trusted = self.cache.as_ref().is_some_and(|c| c.trusted());
                let mut befores: Vec<(usize, Monitor, bool)> = Vec::with_capacity(todo.len());
                let mut to_read: Vec<usize> = Vec::new();
                for &i in &todo {
                    let cached = match &self.cache {
                        Some(cache) if trusted => cache.get(inputs[i].0),
                        _ => None,
                    };
                    match cached {
                        Some(m) => befores.push((i, m, true)),
                        None => to_read.push(i),
                    }
                }
                if !to_read.is_empty() {
                    let mut read = redis::pipe();
                    for &i in &to_read {
                        read.add_command(self.read_monitor(inputs[i].0));
                    }
                    let rows: Vec<MonitorRow> = read.query_async(&mut conn).await?;
                    for (&i, row) in to_read.iter().zip(rows) {
                        let id = inputs[i].0;
                        let Some(m) = self.monitor_from(id, row)? else {
                            self.forget_cached(id);
                            continue;
                        };
                        // Keeps count of how often a copy would have been
                        // stale, so that the cache is trusted again once
                        // copies are fresh.
                        if let Some(cache) = &self.cache
                            && let Some(ver) = cache.ver(id)
                        {
                            cache.observe(ver == m.ver);
                        }
                        befores.push((i, m, false));
                    }
                }
                // (input index, beat to record, outcome to write, cached)
                let mut pending: Vec<(usize, Option<&BeatRecord>, Applied, bool)> = Vec::new();
                let mut reread: Vec<usize> = Vec::new();
                for (i, before, cached) in befores {
                    let (id, input) = inputs[i];
                    // As in `apply_with`: outages only for a step that fires.
                    let firing = fires(&before.state, input);
                    if firing && outages.is_none() {
                        outages = Some(self.outages().await?);
                    }
                    let known = match &outages {
                        Some(o) if firing => o.as_slice(),
                        _ => &[],
                    };
                    let (outcome, beat) = self
                        .run_step(id, &before.state, &before.cfg, input, known)
                        .await?;
                    let cfg = before.cfg.clone();
                    let noop = outcome.state == before.state && beat.is_none();
                    let jobs = if noop {
                        Vec::new()
                    } else {
                        outcome.alerts.iter().map(|a| a.to_job(id, &cfg)).collect()
                    };
                    let applied = Applied {
                        before,
                        cfg,
                        outcome,
                        jobs,
                    };
                    if noop && cached {
                        // Nothing to write, so no version check either: a
                        // stale copy could hide a change (say a paused
                        // monitor resumed by the API since, whose deadline
                        // this tick must fire). Decide again from a read.
                        self.forget_cached(id);
                        reread.push(i);
                    } else if noop {
                        results[i] = Some(applied);
                    } else {
                        pending.push((i, beat, applied, cached));
                    }
                }
                todo = reread;
                if pending.is_empty() {
                    continue;
                }
                let commits: Vec<Commit<'_>> = pending
                    .iter()
                    .map(|&(_, beat, ref a, _)| Commit {
                        prior: Some(&a.before.state),
                        state: &a.outcome.state,
                        cfg: None,
                        beat,
                        changes: &a.outcome.changes,
                        alerts: &a.jobs,
                    })
                    .collect();
                let calls: Vec<(&str, u64, &Commit<'_>)> = pending
                    .iter()
                    .zip(&commits)
                    .map(|(&(i, _, ref a, _), c)| (inputs[i].0, a.before.ver, c))
                    .collect();
                let answers = self.commit_many(&calls).await?;
                for ((i, _, applied, cached), answer) in pending.into_iter().zip(answers) {
                    let id = inputs[i].0;
                    if cached && let Some(cache) = &self.cache {
                        cache.observe(answer != CommitResult::Conflict);
                    }
                    match answer {
                        CommitResult::Committed => {
                            self.remember(
                                id,
                                &applied.cfg,
                                &applied.outcome.state,
                                applied.before.ver + 1,
                            );
                            results[i] = Some(applied);
                        }
                        CommitResult::Conflict => {
                            self.forget_cached(id);
                            todo.push(i);
                        }
                        CommitResult::Missing => {
                            self.forget_cached(id);
                        }
                    }
                }
            }
        }
        Ok(results)
    }

    /// One state-machine step, and the beat to record with it: an applied
    /// beat goes into the commit; a late one is recorded here, apart.
    async fn run_step<'a>(
        &self,
        id: &str,
        state: &MonitorState,
        cfg: &MonitorConfig,
        input: Input<'a>,
        outages: &[Outage],
    ) -> Result<(Outcome, Option<&'a BeatRecord>)> {
        let outcome = step(id, state, &Rules::of(cfg), input, outages);
        let beat = match (input, outcome.beat) {
            (Input::Beat(b), BeatDisposition::Applied) => Some(b),
            (Input::Beat(b), BeatDisposition::Late) => {
                self.record_late_beat(id, b).await?;
                None
            }
            _ => None,
        };
        Ok((outcome, beat))
    }

    /// Advances the push-path watermark to a pulse sent at `at`; a gap of
    /// more than `gap_ms` since the previous pulse is recorded as an outage,
    /// which is returned.
    pub async fn pulse(&self, at: i64, gap_ms: i64) -> Result<Option<Outage>> {
        let r: Option<String> = PULSE
            .key(self.names.watermark())
            .key(self.names.outages())
            .arg(at)
            .arg(gap_ms)
            .arg(OUTAGES_KEPT)
            .invoke_async(&mut self.conn())
            .await?;
        r.map(|raw| parse(&self.names.outages(), &raw)).transpose()
    }

    /// The push-path watermark: the newest pulse applied (ms), if any.
    pub async fn watermark(&self) -> Result<Option<i64>> {
        Ok(self.conn().get(self.names.watermark()).await?)
    }

    /// The most recent push-path outages, oldest first.
    pub async fn outages(&self) -> Result<Vec<Outage>> {
        let key = self.names.outages();
        let raw: Vec<String> = self
            .conn()
            .zrange(&key, -(OUTAGES_KEPT as isize), -1)
            .await?;
        raw.iter().map(|r| parse(&key, r)).collect()
    }

    /// Records a beat that arrived after a newer one was applied, once.
    pub async fn record_late_beat(&self, id: &str, beat: &BeatRecord) -> Result<bool> {
        let late = BeatRecord {
            late: true,
            ..beat.clone()
        };
        let r: i64 = LATE
            .key(self.names.monitor(id))
            .key(self.names.beats(id))
            .arg(json(&late))
            .arg(format!("\"seq\":{},", beat.seq))
            .arg(self.caps.beats)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(r == 1)
    }

    /// Newest-first beat history.
    pub async fn beats(&self, id: &str, limit: usize) -> Result<Vec<BeatRecord>> {
        self.list(&self.names.beats(id), limit).await
    }

    /// Newest-first state changes.
    pub async fn events(&self, id: &str, limit: usize) -> Result<Vec<StateChange>> {
        self.list(&self.names.events(id), limit).await
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<T>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<String> = self.conn().lrange(key, 0, limit as isize - 1).await?;
        raw.iter().map(|r| parse(key, r)).collect()
    }

    // --- deadlines and outbox ---

    /// For every shard, up to `limit` monitors whose deadline is at or
    /// before `now`, with that deadline (ms), in one pipelined round trip;
    /// each shard's entries come oldest first.
    pub async fn due_all(&self, now: i64, limit: usize) -> Result<Vec<(String, i64)>> {
        let mut pipe = redis::pipe();
        for shard in 0..crate::names::SHARDS {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.names.deadlines(shard))
                .arg("-inf")
                .arg(now)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let per_shard: Vec<Vec<(String, f64)>> = pipe.query_async(&mut self.conn()).await?;
        Ok(per_shard
            .into_iter()
            .flatten()
            .map(|(id, deadline)| (id, deadline as i64))
            .collect())
    }

    /// Drops a deadline entry whose monitor no longer exists.
    pub async fn forget_deadline(&self, id: &str) -> Result<()> {
        let _: () = self
            .conn()
            .zrem(self.names.deadlines(shard_of(id)), id)
            .await?;
        Ok(())
    }

    /// Every alert job in the outboxes (not yet confirmed by RabbitMQ), in
    /// one pipelined round trip.
    pub async fn outbox_all(&self) -> Result<Vec<AlertJob>> {
        let mut pipe = redis::pipe();
        for shard in 0..crate::names::SHARDS {
            pipe.cmd("HVALS").arg(self.names.outbox(shard));
        }
        let per_shard: Vec<Vec<String>> = pipe.query_async(&mut self.conn()).await?;
        per_shard
            .iter()
            .flatten()
            .map(|r| parse("outbox", r))
            .collect()
    }

    /// Removes many jobs (alert id, monitor id) from their outboxes in one
    /// pipelined round trip, once RabbitMQ confirmed them.
    pub async fn outbox_done_many(&self, jobs: &[(String, String)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (alert_id, monitor_id) in jobs {
            pipe.hdel(self.names.outbox(shard_of(monitor_id)), alert_id)
                .ignore();
        }
        let _: () = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    // --- channels ---

    /// Creates or replaces a channel.
    pub async fn put_channel(&self, c: &Channel) -> Result<()> {
        let mut conn = self.conn();
        let _: () = conn.set(self.names.channel(&c.id), json(c)).await?;
        let _: () = conn
            .zadd(self.names.channels_index(), &c.id, c.created_at)
            .await?;
        Ok(())
    }

    /// Reads a channel.
    pub async fn channel(&self, id: &str) -> Result<Option<Channel>> {
        let key = self.names.channel(id);
        let raw: Option<String> = self.conn().get(&key).await?;
        raw.map(|r| parse(&key, &r)).transpose()
    }

    /// All channels, oldest first.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let ids: Vec<String> = self
            .conn()
            .zrange(self.names.channels_index(), 0, -1)
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.channel(&id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Deletes a channel. Returns whether it existed.
    pub async fn delete_channel(&self, id: &str) -> Result<bool> {
        let mut conn = self.conn();
        let n: i64 = conn.del(self.names.channel(id)).await?;
        let _: () = conn.zrem(self.names.channels_index(), id).await?;
        Ok(n > 0)
    }

    // --- deliveries ---

    /// The delivery record of an alert to a channel.
    pub async fn delivery(
        &self,
        alert_id: &str,
        channel_id: &str,
    ) -> Result<Option<crate::model::DeliveryRecord>> {
        let key = self.names.delivery(alert_id);
        let raw: Option<String> = self.conn().hget(&key, channel_id).await?;
        raw.map(|r| parse(&key, &r)).transpose()
    }

    /// All delivery records of an alert, by channel id.
    pub async fn deliveries(
        &self,
        alert_id: &str,
    ) -> Result<Vec<(String, crate::model::DeliveryRecord)>> {
        let key = self.names.delivery(alert_id);
        let raw: Vec<(String, String)> = self.conn().hgetall(&key).await?;
        raw.into_iter()
            .map(|(c, r)| Ok((c, parse(&key, &r)?)))
            .collect()
    }

    /// Every attempt of an alert, oldest first.
    pub async fn attempts(&self, alert_id: &str) -> Result<Vec<crate::model::AttemptRecord>> {
        let key = self.names.attempts(alert_id);
        let raw: Vec<String> = self.conn().lrange(&key, 0, -1).await?;
        raw.iter().map(|r| parse(&key, r)).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Redis Cluster refuses a script whose keys lie in several hash slots:
    /// a batch of monitors from many shards goes out as one call per shard,
    /// each call's keys sharing its shard's hash tag, every monitor once.
    #[tokio::test]
    async fn a_batch_commit_calls_the_script_once_per_shard() {
        let store = Store::open(
            "redis://127.0.0.1:6379",
            Names::new("unit-commit").unwrap(),
            Caps::default(),
        )
        .unwrap();
        let ids: Vec<String> = (0..600).map(|i| format!("mon{i}")).collect();
        let state = MonitorState::new(0);
        let commit = Commit {
            prior: None,
            state: &state,
            cfg: None,
            beat: None,
            changes: &[],
            alerts: &[],
        };
        let commits: Vec<(&str, u64, &Commit<'_>)> =
            ids.iter().map(|id| (id.as_str(), 1, &commit)).collect();
        let (groups, pipe) = store.commit_pipe(&commits);
        let shards: BTreeSet<u16> = ids.iter().map(|id| shard_of(id)).collect();
        assert_eq!(groups.len(), shards.len(), "one call per shard");
        let mut seen = BTreeSet::new();
        for (group, cmd) in groups.iter().zip(pipe.cmd_iter()) {
            let args: Vec<Vec<u8>> = cmd
                .args_iter()
                .map(|a| match a {
                    redis::Arg::Simple(b) => b.to_vec(),
                    _ => Vec::new(),
                })
                .collect();
            let numkeys: usize = std::str::from_utf8(&args[2]).unwrap().parse().unwrap();
            assert_eq!(numkeys, 5 * group.len());
            let tags: BTreeSet<String> = args[3..3 + numkeys]
                .iter()
                .map(|k| {
                    let k = std::str::from_utf8(k).unwrap();
                    k[k.find('{').unwrap()..=k.find('}').unwrap()].to_owned()
                })
                .collect();
            assert_eq!(tags.len(), 1, "keys of one call share a hash tag: {tags:?}");
            for &i in group {
                assert_eq!(shard_of(&ids[i]), shard_of(&ids[group[0]]));
                assert!(seen.insert(i), "monitor {i} in two calls");
            }
        }
        assert_eq!(seen.len(), ids.len(), "every monitor committed");
    }

    #[test]
    fn rounds_hold_each_monitor_once_and_keep_its_order() {
        let tick = Input::Tick { now: 0 };
        let ids = ["a", "b", "a", "c", "a", "b"];
        let inputs: Vec<(&str, Input<'_>)> = ids.iter().map(|&id| (id, tick)).collect();
        assert_eq!(rounds(&inputs), [vec![0, 1, 3], vec![2, 5], vec![4]]);
        assert!(rounds(&[]).is_empty());
    }

    #[test]
    fn only_a_passed_deadline_needs_the_outages() {
        let mut s = MonitorState::new(0);
        let beat = BeatRecord {
            seq: 1,
            at: 100,
            status: crate::model::BeatStatus::Up,
            msg: None,
            msg_truncated: false,
            value: None,
            late: false,
        };
        assert!(!fires(&s, Input::Tick { now: 100 }), "no deadline");
        s.deadline = Some(100);
        assert!(fires(&s, Input::Tick { now: 100 }));
        assert!(fires(&s, Input::Beat(&beat)));
        assert!(!fires(&s, Input::Tick { now: 99 }));
        assert!(!fires(&s, Input::Pause { now: 200 }));
    }
}
