//! Firing passed deadlines.
//!
//! Every tick, one pipelined read of all deadline shards lists the monitors
//! whose deadline is at or before now; each goes through the state machine
//! as a `Tick`. Deadlines live in Redis, not in the process, so one that
//! passed while every evaluator was stopped is fired by the first tick after
//! a start (invariant 4). Replicas may tick the same monitor at once: the
//! version check lets only one write the change.
//!
//! "Now" is the push-path watermark (the newest ingest pulse applied), not
//! the wall clock: while no pulse gets through (every ingest down, or NATS
//! down) nothing times out, and once pulses resume the gap is an outage
//! that extends the deadlines inside it (see `lifeline_shared::state::extend`).

use std::time::Duration;

use futures::StreamExt as _;
use lifeline_shared::{state::Input, store::Store, time::now_ms};
use tokio_util::sync::CancellationToken;

/// Due monitors read per shard and tick.
const DUE_PER_SHARD: usize = 1000;

/// Due monitors evaluated at once.
const CONCURRENCY: usize = 32;

/// Fires passed deadlines every `tick` until `shutdown`.
pub(crate) async fn run(
    store: Store,
    tick: Duration,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
                metrics::gauge!("lifeline_evaluator_watermark_lag_seconds")
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
        let due = match store.due_all(now, DUE_PER_SHARD).await {
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
        futures::stream::iter(due)
            .for_each_concurrent(CONCURRENCY, |id| {
                let (store, jobs) = (store.clone(), jobs.clone());
                async move { fire(&store, &id, now, &jobs).await }
            })
            .await;
    }
}

async fn fire(store: &Store, id: &str, now: i64, jobs: &crate::outbox::Relay) {
    match store.apply(id, Input::Tick { now }).await {
        Ok(Some(applied)) => {
            if let Some(deadline) = applied
                .before
                .state
                .deadline
                .filter(|_| !applied.jobs.is_empty())
            {
                metrics::histogram!("lifeline_evaluator_detection_delay_seconds")
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
        Ok(None) => {
            let _ = store.forget_deadline(id).await;
        }
        Err(error) => {
            tracing::warn!(monitor.id = %id, %error, "deadline not evaluated; retrying next tick")
        }
    }
}
