//! The read → step → commit loop: runs the monitor state machine
//! ([`crate::state`], a pure function) on monitors as the store holds them
//! and writes each outcome with the store's commit script, which checks the
//! monitor's version; after a version conflict (another replica, or the
//! API, wrote the monitor in between) it reads again and recomputes. The
//! store only reads and writes; the deciding happens here.
//!
//! [`Engine::apply`] runs one step in two round trips (read, then the
//! commit). [`Engine::apply_batch`], for the hot paths, runs many steps in
//! a few: one pipelined read (skipped for monitors the evaluator's cache
//! holds, see [`Engine::with_cache`] and the `cache` module) and one
//! pipelined commit of them all, per round, each round holding a monitor
//! at most once.

mod cache;

use std::{collections::HashMap, sync::Arc};

use crate::{
    model::{AlertJob, BeatRecord, Monitor, MonitorConfig, MonitorState, Outage},
    state::{BeatDisposition, Input, Outcome, Rules, step},
    store::{Commit, CommitResult, Result, Store},
};
use cache::MonitorCache;

/// What [`Engine::apply`] did.
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

/// The rounds of [`Engine::apply_batch`]: input indexes, each monitor at
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

/// Runs state-machine steps on monitors through a [`Store`]; cheap to
/// clone (clones share the cache).
#[derive(Clone)]
pub struct Engine {
    store: Store,
    /// Monitors as this engine last wrote them (the evaluator's; see
    /// [`Engine::with_cache`]).
    cache: Option<Arc<MonitorCache>>,
}

impl Engine {
    /// An engine writing through `store`, without a cache.
    pub fn new(store: Store) -> Self {
        Self { store, cache: None }
    }

    /// This engine, keeping up to `monitors` monitors as it last wrote
    /// them, so that [`Engine::apply_batch`] need not read them back (0:
    /// none). Only for the evaluator: an engine whose store also writes
    /// monitors without stepping them (the API's) must not use it. A stale
    /// copy costs a retry, never a wrong write (the commit checks the
    /// version), and the copies are not consulted while many turn out stale
    /// (several replicas writing the same monitors).
    pub fn with_cache(mut self, monitors: usize) -> Self {
        self.cache = (monitors > 0).then(|| Arc::new(MonitorCache::new(monitors)));
        self
    }

    /// The store this engine reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Keeps monitor `id` as just written (version `ver`), if this engine
    /// caches monitors.
    fn remember(&self, id: &str, cfg: &MonitorConfig, state: &MonitorState, ver: u64) {
        if let Some(cache) = &self.cache {
            cache.put(Monitor {
                id: id.into(),
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

    /// [`Engine::apply`] that may also replace the settings in the same write:
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
            let Some(before) = self.store.monitor(id).await? else {
                return Ok(None);
            };
            let new_cfg = patch(&before.cfg).filter(|c| *c != before.cfg);
            let cfg = new_cfg.as_ref().unwrap_or(&before.cfg);
            // Outages matter only when a deadline is about to fire: read
            // them only then (rare), not on every beat.
            let outages = if fires(&before.state, input) {
                self.store.outages().await?
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
            match self.store.commit(id, before.ver, &commit).await? {
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

    /// Applies many inputs as if by calling [`Engine::apply`] on each in order
    /// (per-monitor order is kept; a monitor may appear more than once), in a
    /// few pipelined round trips. Results are in input order; `None` where
    /// the monitor does not exist.
    ///
    /// The inputs go in rounds holding each monitor at most once (its k-th
    /// input in round k; usually there is one round). A round reads its
    /// monitors in one pipelined round trip (those the cache of
    /// [`Engine::with_cache`] holds are not read), steps each, and writes
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
                    let read = self
                        .store
                        .monitors(to_read.iter().map(|&i| inputs[i].0))
                        .await?;
                    for (&i, m) in to_read.iter().zip(read) {
                        let id = inputs[i].0;
                        let Some(m) = m? else {
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
                        outages = Some(self.store.outages().await?);
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
                let answers = self.store.commit_many(&calls).await?;
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
                self.store.record_late_beat(id, b).await?;
                None
            }
            _ => None,
        };
        Ok((outcome, beat))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// The hot path's cost, in round trips: a batch reads the monitors the
    /// cache does not hold in one, commits in one (however many shards),
    /// reads the outages once if a deadline fires, and goes round again
    /// only for a monitor's second input.
    #[tokio::test]
    async fn a_batch_costs_a_read_and_a_commit_per_round() {
        use crate::{
            model::{BeatStatus, MonitorConfig},
            names::Names,
            store::Caps,
            token,
        };
        let names = Names::new(&format!("unit-trips-{}", token::new_id())).unwrap();
        let url = "redis://127.0.0.1:6379";
        let open = || Store::open(url, names.clone(), Caps::default()).unwrap();
        let evaluator = Engine::new(open()).with_cache(1000);
        let api = Engine::new(open());
        let ids: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        let t = crate::time::now_ms();
        for id in &ids {
            let cfg = MonitorConfig {
                name: id.clone(),
                timeout: 60,
                interval: 60,
                channels: Vec::new(),
                created_at: t,
                token_hash: token::hash(id),
                token_hint: "tok".to_owned(),
                remind_every: None,
                confirm: 1,
            };
            api.store()
                .create_monitor(id, &cfg, &MonitorState::new(t))
                .await
                .unwrap();
        }
        let beats: Vec<BeatRecord> = (1..=4)
            .map(|seq| BeatRecord {
                seq,
                at: t + seq as i64,
                status: BeatStatus::Up,
                msg: None,
                msg_truncated: false,
                value: None,
                late: false,
            })
            .collect();
        fn beat_each<'a>(ids: &'a [String], b: &'a BeatRecord) -> Vec<(&'a str, Input<'a>)> {
            ids.iter().map(|id| (id.as_str(), Input::Beat(b))).collect()
        }
        let trips = |e: &Engine| e.store().round_trips();
        let cost = async |e: &Engine, inputs: &[(&str, Input<'_>)]| {
            let before = trips(e);
            let applied = e.apply_batch(inputs).await.unwrap();
            assert!(applied.iter().all(Option::is_some));
            trips(e) - before
        };

        let first = beat_each(&ids, &beats[0]);
        assert_eq!(cost(&evaluator, &first).await, 2, "read, commit");
        let second = beat_each(&ids, &beats[1]);
        assert_eq!(cost(&evaluator, &second).await, 1, "cached: commit");
        let twice = [
            (ids[0].as_str(), Input::Beat(&beats[2])),
            (ids[0].as_str(), Input::Beat(&beats[3])),
        ];
        assert_eq!(cost(&evaluator, &twice).await, 2, "two rounds, cached");
        let fire: Vec<(&str, Input<'_>)> = ids
            .iter()
            .map(|id| (id.as_str(), Input::Tick { now: t + 70_000 }))
            .collect();
        assert_eq!(cost(&evaluator, &fire).await, 2, "outages, commit");
        let before = trips(&api);
        api.apply(&ids[1], Input::Pause { now: t + 80_000 })
            .await
            .unwrap();
        assert_eq!(trips(&api) - before, 2, "one apply: read, commit");
        api.store().delete_all().await;
    }
}
