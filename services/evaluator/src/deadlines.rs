//! Firing passed deadlines.
//!
//! Every tick, one pipelined read of all deadline shards lists the monitors
//! whose deadline is at or before now, oldest first; each goes through the
//! state machine as a `Tick`, in batches of [`BATCH`] monitors written by
//! [`Engine::apply_batch`] in a few pipelined round trips, [`IN_FLIGHT`]
//! batches at once. Deadlines live in Redis, not in the process, so one that
//! passed while every evaluator was stopped is fired by the first tick after
//! a start (invariant 4). Replicas may tick the same monitor at once: the
//! version check lets only one write the change.
//!
//! A tick that took longer than the tick period is followed at once by the
//! next, and so is one that left passed deadlines unread (a shard had more
//! than [`DUE_PER_SHARD`]), so a backlog drains without pauses.
//!
//! "Now" is the push-path watermark (the newest ingest pulse applied), not
//! the wall clock: while no pulse gets through (every ingest down, or NATS
//! down) nothing times out, and once pulses resume the gap is an outage
//! that extends the deadlines inside it (see `lifeline_shared::state::extend`).
//!
//! Metrics:
//! * `lifeline_evaluator_deadlines_due` (gauge): passed deadlines the last
//!   tick found (at most [`DUE_PER_SHARD`] per shard);
//! * `lifeline_evaluator_deadlines_overdue_seconds` (gauge): how long before
//!   now the oldest of them passed, 0 if none: how far the ticker is behind;
//! * `lifeline_evaluator_detection_delay_seconds` (histogram): from a
//!   deadline to the write of the alert it raised (wall clock);
//! * `lifeline_evaluator_watermark_lag_seconds` (gauge): how far the
//!   watermark is behind the wall clock.

use std::{collections::HashMap, time::Duration};

use futures::StreamExt as _;
use lifeline_shared::{
    engine::{Applied, Engine},
    metric,
    names::shard_of,
    state::Input,
    store::{Store, StoreError},
    time::now_ms,
};
use tokio_util::sync::CancellationToken;

/// Due monitors read per shard and tick (256 shards: at most 65,536 a tick).
const DUE_PER_SHARD: usize = 256;

/// Due monitors evaluated together by one [`Engine::apply_batch`].
const BATCH: usize = 512;

/// Batches evaluated at once.
const IN_FLIGHT: usize = 4;

/// Fires passed deadlines every `tick` until `shutdown`.
pub(crate) async fn run(
    engine: Engine,
    tick: Duration,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    // A tick that overran is followed at once by the next, then the period
    // counts from there.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let store = engine.store();
    let mut failing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        // Deadlines fire only up to the newest pulse: a deadline the push
        // path has not been seen working through may fall in an outage.
        let now = match store.watermark().await {
            Ok(Some(watermark)) => {
                let wall = now_ms();
                metrics::gauge!(metric::EVALUATOR_WATERMARK_LAG)
                    .set((wall - watermark).max(0) as f64 / 1000.0);
                watermark.min(wall)
            }
            Ok(None) => continue, // no pulse yet: no ingest has ever run
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read the pulse watermark; retrying every tick");
                    failing = true;
                }
                continue;
            }
        };
        let mut due = match store.due_all(now, DUE_PER_SHARD).await {
            Ok(due) => {
                if failing {
                    tracing::info!("deadline index readable again");
                    failing = false;
                }
                due
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(%error, "cannot read deadlines; retrying every tick");
                    failing = true;
                }
                continue;
            }
        };
        // Oldest first across shards, so a backlog drains in deadline order.
        due.sort_unstable_by_key(|&(_, deadline)| deadline);
        let oldest = due.first().map_or(now, |&(_, deadline)| deadline);
        metrics::gauge!(metric::EVALUATOR_DEADLINES_DUE).set(due.len() as f64);
        metrics::gauge!(metric::EVALUATOR_DEADLINES_OVERDUE)
            .set((now - oldest).max(0) as f64 / 1000.0);
        let truncated = truncated(&due);
        let ids: Vec<String> = due.into_iter().map(|(id, _)| id).collect();
        // Batches by index range: a closure taking borrowed chunks fails the
        // spawned task's `Send` check ("FnOnce is not general enough").
        let batches = (0..ids.len()).step_by(BATCH).map(|start| {
            let batch = &ids[start..ids.len().min(start + BATCH)];
            fire(&engine, batch, now, &jobs)
        });
        let all_fired = futures::stream::iter(batches)
            .buffer_unordered(IN_FLIGHT)
            .fold(true, |all, fired| async move { all && fired })
            .await;
        // More passed deadlines wait unread: read them now rather than
        // after a period (not after a failure: that waits for the tick).
        if truncated && all_fired {
            interval.reset_immediately();
        }
    }
}

/// Whether some shard had more due deadlines than were read.
fn truncated(due: &[(String, i64)]) -> bool {
    let mut per_shard: HashMap<u16, usize> = HashMap::new();
    due.iter().any(|(id, _)| {
        let n = per_shard.entry(shard_of(id)).or_default();
        *n += 1;
        *n >= DUE_PER_SHARD
    })
}

/// Fires the deadlines of `ids` at `now`; false if some were not evaluated
/// (they are retried next tick).
async fn fire(engine: &Engine, ids: &[String], now: i64, jobs: &crate::outbox::Relay) -> bool {
    let store = engine.store();
    let inputs: Vec<(&str, Input<'_>)> = ids
        .iter()
        .map(|id| (id.as_str(), Input::Tick { now }))
        .collect();
    match engine.apply_batch(&inputs).await {
        Ok(results) => {
            for (id, applied) in ids.iter().zip(results) {
                fired(store, id, applied, jobs).await;
            }
            true
        }
        // One unreadable monitor must not hold up the others: evaluate them
        // one by one, so only that one fails.
        Err(StoreError::Corrupt { .. } | StoreError::CorruptField { .. }) => {
            let mut all = true;
            for id in ids {
                match engine.apply(id, Input::Tick { now }).await {
                    Ok(applied) => fired(store, id, applied, jobs).await,
                    Err(error) => {
                        tracing::warn!(monitor.id = %id, %error, "deadline not evaluated; retrying next tick");
                        all = false;
                    }
                }
            }
            all
        }
        Err(error) => {
            tracing::warn!(monitors = ids.len(), %error, "deadlines not evaluated; retrying next tick");
            false
        }
    }
}

/// Records what firing one monitor's deadline did and hands its alert jobs
/// to the relay.
async fn fired(store: &Store, id: &str, applied: Option<Applied>, jobs: &crate::outbox::Relay) {
    let Some(applied) = applied else {
        let _ = store.forget_deadline(id).await;
        return;
    };
    if let Some(deadline) = applied
        .before
        .state
        .deadline
        .filter(|_| !applied.jobs.is_empty())
    {
        metrics::histogram!(metric::EVALUATOR_DETECTION_DELAY)
            .record((now_ms() - deadline).max(0) as f64 / 1000.0);
    }
    if applied.outcome.changes.is_empty() && applied.outcome.state.deadline.is_none() {
        // Indexed without a deadline (should not happen): unindex.
        let _ = store.forget_deadline(id).await;
    }
    for job in applied.jobs {
        jobs.hand_over(job);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_shard_means_more_deadlines_wait() {
        // Ids of one shard, then one of another.
        let first = shard_of("m0");
        let same: Vec<(String, i64)> = (0..)
            .map(|i| format!("m{i}"))
            .filter(|id| shard_of(id) == first)
            .take(DUE_PER_SHARD)
            .map(|id| (id, 0))
            .collect();
        let other = (0..)
            .map(|i| format!("x{i}"))
            .find(|id| shard_of(id) != first)
            .unwrap();
        assert!(truncated(&same));
        let mut partial = same[1..].to_vec();
        partial.push((other, 0));
        assert!(!truncated(&partial));
        assert!(!truncated(&[]));
    }
}
