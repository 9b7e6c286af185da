//! Publishing alert jobs from the Redis outbox to RabbitMQ.
//!
//! A state change writes its alert job into its shard's outbox in the same
//! script that changes the state, so no job is lost between Redis and
//! RabbitMQ. The [`relay`] publishes each job as soon as it is written and
//! removes it once RabbitMQ confirmed it; the [`sweep`] republishes jobs
//! left behind (an evaluator killed between the two steps, or RabbitMQ
//! down). A job may thus reach RabbitMQ twice, always with the same alert
//! id, which the notifier delivers once per channel.

use std::{collections::HashSet, sync::Arc, time::Duration};

use lifeline_shared::{amqp::Publisher, model::AlertJob, store::Store};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest wait for one publish and its confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

async fn publish(publisher: &Publisher, store: &Store, job: &AlertJob) -> bool {
    let result = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish_alert(job)).await;
    match result {
        Ok(Ok(())) => {
            metrics::counter!("lifeline_evaluator_alerts_published_total", "event" => job.event.as_str()).increment(1);
            if let Err(error) = store.outbox_done(&job.alert_id, &job.monitor.id).await {
                tracing::warn!(alert.id = %job.alert_id, %error, "alert published but still in the outbox: it may be published again");
            }
            true
        }
        Ok(Err(error)) => {
            tracing::warn!(alert.id = %job.alert_id, %error, "alert job not published yet: kept in the outbox");
            false
        }
        Err(_) => {
            tracing::warn!(alert.id = %job.alert_id, "alert job publish timed out: kept in the outbox");
            false
        }
    }
}

/// Hands a freshly written job to the relay. The job is already safe in
/// the outbox, so when the relay is behind (RabbitMQ slow or down) it is
/// left to the sweep rather than holding up beats and deadlines.
pub(crate) fn hand_over(relay: &mpsc::Sender<AlertJob>, job: AlertJob) {
    if let Err(mpsc::error::TrySendError::Full(job)) = relay.try_send(job) {
        tracing::warn!(alert.id = %job.alert_id, "alert relay busy: the outbox sweep will publish this alert");
    }
}

/// Publishes jobs as state changes produce them, until every sender is gone.
pub(crate) async fn relay(
    publisher: Arc<Publisher>,
    store: Store,
    mut jobs: mpsc::Receiver<AlertJob>,
) {
    while let Some(job) = jobs.recv().await {
        tracing::info!(alert.id = %job.alert_id, monitor.id = %job.monitor.id, event = job.event.as_str(), reason = ?job.reason, "alert raised");
        publish(&publisher, &store, &job).await;
    }
}

/// The change number in an alert id `<monitor>.<n>`.
fn change_number(alert_id: &str) -> u64 {
    alert_id
        .rsplit('.')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Every `every`, republishes jobs that were already in the outbox at the
/// previous sweep (so a job the relay is publishing right now is left alone).
pub(crate) async fn sweep(
    publisher: Arc<Publisher>,
    store: Store,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut seen: HashSet<String> = HashSet::new();
    let mut interval = tokio::time::interval(every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let mut jobs = match store.outbox_all().await {
            Ok(jobs) => jobs,
            Err(error) => {
                tracing::warn!(%error, "outbox sweep failed");
                continue;
            }
        };
        // Oldest first, and a monitor's down before its up.
        jobs.sort_by_key(|j| (j.at, change_number(&j.alert_id)));
        let mut still = HashSet::new();
        for job in jobs {
            if seen.contains(&job.alert_id) {
                tracing::info!(alert.id = %job.alert_id, "republishing alert job left in the outbox");
                if !publish(&publisher, &store, &job).await {
                    still.insert(job.alert_id);
                }
            } else {
                still.insert(job.alert_id);
            }
        }
        metrics::gauge!("lifeline_evaluator_outbox_jobs").set(still.len() as f64);
        seen = still;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn change_numbers_order_alerts() {
        assert_eq!(super::change_number("abc.12"), 12);
        assert_eq!(super::change_number("garbage"), 0);
    }
}
