//! The commit script: the one way a monitor's hash changes after its
//! creation.
//!
//! A commit checks the monitor's version and then, atomically and within
//! one hash slot, writes the new state (and the new settings, when the API
//! changes them), moves the deadline in the shard's index, appends the
//! history and puts the alert jobs in the shard's outbox. Two evaluator
//! replicas racing on one monitor therefore cannot both raise the same
//! alert (invariant 3): the loser sees a version conflict and recomputes.
//!
//! Many monitors' commits go out in one round trip: one script call per
//! shard among them (a script may touch the keys of one hash slot only, so
//! that the stack runs on Redis Cluster unchanged), pipelined, each call
//! written straight into one command buffer.

use std::sync::LazyLock;

use redis::{Cmd, Pipeline, Script};

use super::{Result, Store, codec, codec::Writes, json};
use crate::{
    model::{AlertJob, BeatRecord, MonitorConfig, MonitorState, StateChange},
    names::shard_of,
};

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

/// What [`Store::commit`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CommitResult {
    /// Written.
    Committed,
    /// The record changed since it was read: read again and recompute.
    Conflict,
    /// The record no longer exists.
    Missing,
}

impl CommitResult {
    /// The meaning of a script's answer: 1, 0 or -1.
    pub(super) fn of(answer: i64) -> Self {
        match answer {
            1 => Self::Committed,
            0 => Self::Conflict,
            _ => Self::Missing,
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

static COMMIT: LazyLock<Script> = LazyLock::new(|| Script::new(COMMIT_LUA));

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

impl Store {
    /// Writes one state-machine step if the monitor is still at `expected_ver`.
    pub async fn commit(
        &self,
        id: &str,
        expected_ver: u64,
        c: &Commit<'_>,
    ) -> Result<CommitResult> {
        Ok(self.commit_many(&[(id, expected_ver, c)]).await?[0])
    }

    /// [`Store::commit`] for several monitors (each at most once) in one
    /// round trip: one script call per shard among them, pipelined. Each
    /// monitor's commit stands or fails on its own; the answers are in the
    /// order of `commits`.
    pub async fn commit_many(
        &self,
        commits: &[(&str, u64, &Commit<'_>)],
    ) -> Result<Vec<CommitResult>> {
        let (groups, pipe) = self.commit_pipe(commits);
        let answers: Vec<Vec<i64>> = match self.conn.pipe(&pipe).await {
            // Redis lost its scripts (a restart, `SCRIPT FLUSH`): load the
            // script and send the calls again. A call that did run before
            // the loss meets a version conflict the second time and is
            // retried from a read, as any conflict.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.conn.load(&COMMIT).await?;
                self.conn.pipe(&pipe).await?
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
    fn commit_pipe(&self, commits: &[(&str, u64, &Commit<'_>)]) -> (Vec<Vec<usize>>, Pipeline) {
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
    fn commit_call(&self, commits: &[(&str, u64, &Commit<'_>)]) -> Cmd {
        // A beat's commit takes about 20 arguments and 400 bytes.
        let mut call = Cmd::with_capacity(8 + 24 * commits.len(), 512 * commits.len());
        call.arg("EVALSHA")
            .arg(COMMIT.get_hash())
            .arg(5 * commits.len());
        for &(id, _, _) in commits {
            let shard = shard_of(id);
            call.arg(self.keys.monitor(id))
                .arg(self.keys.deadlines(shard))
                .arg(self.keys.outbox(shard))
                .arg(self.keys.beats(id))
                .arg(self.keys.events(id));
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
                call.arg(job.alert_id.as_str()).arg(json(job));
            }
            for change in c.changes.iter() {
                call.arg(json(change));
            }
        }
        call
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::{names::Names, store::Caps};

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
}
