//! Publishing alert jobs from the Redis outbox to RabbitMQ.
//!
//! A state change writes its alert job into its shard's outbox in the same
//! script that changes the state, so no job is lost between Redis and
//! RabbitMQ. The [`relay`] publishes each job as soon as it is written and
//! removes it once RabbitMQ confirmed it; the [`sweep`] republishes jobs
//! left behind (an evaluator killed between the two steps, or RabbitMQ
//! down). A job may thus reach RabbitMQ twice, always with the same alert
//! id, which the notifier delivers once per channel.

use std::{
    collections::HashSet,
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use futures::StreamExt as _;

use lifeline_shared::{
    amqp::Publisher,
    metric,
    model::{AlertId, AlertJob, MonitorId},
    store::Store,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest wait for one publish and its confirm.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

async fn publish(publisher: &Publisher, confirmed: &Confirmed, job: &AlertJob) -> bool {
    let result = tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish_alert(job)).await;
    match result {
        Ok(Ok(())) => {
            metrics::counter!(metric::EVALUATOR_ALERTS_PUBLISHED, "event" => job.event.as_str())
                .increment(1);
            confirmed.done(job);
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

/// Confirmed jobs removed from the outbox per Redis round trip, at most.
const DONE_BATCH: usize = 1024;

/// Removes jobs RabbitMQ confirmed from the outbox, many per Redis round
/// trip (one per job cost as much Redis time as the publish itself at
/// thousands of alerts per second). A job confirmed but not yet removed
/// when the evaluator dies is published again by a sweep: same alert id,
/// delivered once.
#[derive(Clone)]
struct Confirmed {
    tx: mpsc::UnboundedSender<(AlertId, MonitorId)>,
}

impl Confirmed {
    /// A handle and the removing task (to run), which ends once every
    /// handle is dropped.
    fn new(store: Store) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(AlertId, MonitorId)>();
        let removing = async move {
            let mut batch = Vec::with_capacity(DONE_BATCH);
            while rx.recv_many(&mut batch, DONE_BATCH).await > 0 {
                if let Err(error) = store.outbox_done_many(&batch).await {
                    tracing::warn!(jobs = batch.len(), %error, "alerts published but still in the outbox: they may be published again");
                }
                batch.clear();
            }
        };
        (Self { tx }, removing)
    }

    fn done(&self, job: &AlertJob) {
        let _ = self.tx.send((job.alert_id.clone(), job.monitor.id.clone()));
    }
}

/// Publishes at most this many jobs at once (each waits for its confirm).
const IN_FLIGHT: usize = 512;

/// The sending side of the relay: hands it freshly written jobs, and knows
/// which ones it holds so the sweep leaves them alone. Relay and sweep
/// remove the jobs they published through its one [`Confirmed`] task.
#[derive(Clone)]
pub(crate) struct Relay {
    tx: mpsc::Sender<AlertJob>,
    held: Arc<Mutex<HashSet<AlertId>>>,
    confirmed: Confirmed,
}

impl Relay {
    /// A relay handle, its queue (`capacity` jobs), and the task (to run)
    /// that removes confirmed jobs from `store`'s outbox; it ends once every
    /// handle is gone.
    pub(crate) fn new(
        capacity: usize,
        store: Store,
    ) -> (
        Self,
        mpsc::Receiver<AlertJob>,
        impl Future<Output = ()> + Send + 'static,
    ) {
        let (tx, rx) = mpsc::channel(capacity);
        let (confirmed, removing) = Confirmed::new(store);
        (
            Self {
                tx,
                held: Arc::default(),
                confirmed,
            },
            rx,
            removing,
        )
    }

    /// Hands a freshly written job to the relay. The job is already safe in
    /// the outbox, so when the relay is behind (RabbitMQ slow or down) it is
    /// left to the sweep rather than holding up beats and deadlines.
    pub(crate) fn hand_over(&self, job: AlertJob) {
        let id = job.alert_id.clone();
        self.held.lock().expect("relay lock").insert(id.clone());
        if let Err(mpsc::error::TrySendError::Full(job)) = self.tx.try_send(job) {
            self.held.lock().expect("relay lock").remove(&id);
            tracing::warn!(alert.id = %job.alert_id, "alert relay busy: the outbox sweep will publish this alert");
        }
    }

    fn holds(&self, alert_id: &str) -> bool {
        self.held.lock().expect("relay lock").contains(alert_id)
    }
}

/// Publishes jobs as state changes produce them, [`IN_FLIGHT`] at a time,
/// until every sender is gone.
pub(crate) async fn relay(publisher: Arc<Publisher>, relay: Relay, jobs: mpsc::Receiver<AlertJob>) {
    // Only the relay's handle is kept here: drop the sender half so the
    // queue closes when the producers' clones are gone.
    let (held, confirmed) = (relay.held.clone(), relay.confirmed.clone());
    drop(relay);
    tokio_stream_of(jobs)
        .for_each_concurrent(IN_FLIGHT, |job| {
            let (publisher, confirmed, held) = (publisher.clone(), confirmed.clone(), held.clone());
            async move {
                tracing::info!(alert.id = %job.alert_id, monitor.id = %job.monitor.id, event = job.event.as_str(), reason = ?job.reason, "alert raised");
                publish(&publisher, &confirmed, &job).await;
                held.lock().expect("relay lock").remove(&job.alert_id);
            }
        })
        .await;
}

/// A receiver as a stream.
fn tokio_stream_of(mut rx: mpsc::Receiver<AlertJob>) -> impl futures::Stream<Item = AlertJob> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
    relay: Relay,
    every: Duration,
    shutdown: CancellationToken,
) {
    let confirmed = relay.confirmed.clone();
    let mut seen: HashSet<AlertId> = HashSet::new();
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
        let mut left_behind = Vec::new();
        for job in jobs {
            if relay.holds(&job.alert_id) {
                continue; // the relay is about to publish it
            }
            if seen.contains(&job.alert_id) {
                left_behind.push(job);
            } else {
                still.insert(job.alert_id);
            }
        }
        let failed: Vec<AlertId> = futures::stream::iter(left_behind)
            .map(|job| {
                let (publisher, confirmed) = (publisher.clone(), confirmed.clone());
                async move {
                    tracing::info!(alert.id = %job.alert_id, "republishing alert job left in the outbox");
                    (!publish(&publisher, &confirmed, &job).await).then_some(job.alert_id)
                }
            })
            .buffered(IN_FLIGHT)
            .filter_map(|failed| async move { failed })
            .collect()
            .await;
        still.extend(failed);
        metrics::gauge!(metric::EVALUATOR_OUTBOX_JOBS).set(still.len() as f64);
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
