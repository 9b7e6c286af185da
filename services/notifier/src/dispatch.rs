//! From one alert job to one final delivery record per (alert, channel).
//!
//! For each channel of a job: skip it if its record already says
//! `succeeded` (a republished or redelivered job never delivers twice), load
//! the channel, make up to `retry_delays.len() + 1` attempts, and write the
//! outcome with [`Store::put_delivery`]. A channel that no longer exists gets
//! a `failed` record with no attempt.
//!
//! [`Dispatcher::dispatch`] returns `Ok` only once every channel of the job
//! has its final record: the consumer then acknowledges the job, and never
//! before (invariant 6). A Redis failure returns `Err` and the consumer puts
//! the job back on the queue; channels already recorded as `succeeded` are
//! skipped when it comes back.
//!
//! Within one process, an (alert, channel) pair is delivered by one task at a
//! time: a duplicate job arriving while the first is still in flight skips
//! that pair (if the first fails to record, its own message is requeued).

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::join_all;
use lifeline_shared::{
    model::{AlertJob, Channel, DeliveryRecord},
    store::{Store, StoreError},
    time::now_ms,
};

use crate::channels::{Channels, kind_label};

/// Outcome of a delivered alert.
pub(crate) const SUCCEEDED: &str = "succeeded";
/// Outcome of an alert that could not be delivered.
pub(crate) const FAILED: &str = "failed";

/// Attempts to write a delivery record before handing the job back.
const RECORD_TRIES: u32 = 3;
/// Pause between those attempts.
const RECORD_PAUSE: Duration = Duration::from_millis(500);

/// Delivers alert jobs and records the outcomes; shared by every job task.
pub(crate) struct Dispatcher {
    store: Store,
    channels: Channels,
    retry_delays: Vec<Duration>,
    in_flight: Arc<Mutex<HashSet<(String, String)>>>,
}

/// Removes an (alert, channel) pair from the in-flight set when dropped.
struct InFlight {
    set: Arc<Mutex<HashSet<(String, String)>>>,
    key: (String, String),
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.key);
    }
}

impl Dispatcher {
    /// A dispatcher writing to `store`, retrying after each of `retry_delays`.
    pub(crate) fn new(store: Store, channels: Channels, retry_delays: Vec<Duration>) -> Self {
        Self {
            store,
            channels,
            retry_delays,
            in_flight: Arc::default(),
        }
    }

    /// Delivers `job` to each of its channels, concurrently; `Ok` once each
    /// has a final record.
    pub(crate) async fn dispatch(&self, job: &AlertJob) -> Result<(), StoreError> {
        let mut seen = HashSet::new();
        let ids = job.channels.iter().filter(|id| seen.insert(id.as_str()));
        join_all(ids.map(|id| self.dispatch_one(job, id)))
            .await
            .into_iter()
            .collect()
    }

    fn claim(&self, alert_id: &str, channel_id: &str) -> Option<InFlight> {
        let key = (alert_id.to_owned(), channel_id.to_owned());
        let mut set = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        set.insert(key.clone()).then(|| InFlight {
            set: self.in_flight.clone(),
            key,
        })
    }

    async fn dispatch_one(&self, job: &AlertJob, channel_id: &str) -> Result<(), StoreError> {
        let alert_id = job.alert_id.as_str();
        let Some(_claim) = self.claim(alert_id, channel_id) else {
            tracing::debug!(
                alert.id = alert_id,
                channel.id = channel_id,
                "alert is already being delivered to this channel by another task; skipping"
            );
            return Ok(());
        };
        if let Some(rec) = self.store.delivery(alert_id, channel_id).await?
            && rec.outcome == SUCCEEDED
        {
            tracing::info!(
                alert.id = alert_id,
                channel.id = channel_id,
                "alert already delivered to this channel; skipping duplicate"
            );
            return Ok(());
        }
        let record = match self.store.channel(channel_id).await {
            Ok(Some(channel)) => self.deliver(&channel, job).await,
            Ok(None) => {
                tracing::warn!(
                    alert.id = alert_id,
                    channel.id = channel_id,
                    "alert channel does not exist; recording the delivery as failed"
                );
                not_delivered("channel does not exist")
            }
            Err(StoreError::Corrupt { key, error }) => {
                tracing::error!(
                    alert.id = alert_id,
                    channel.id = channel_id,
                    redis.key = key,
                    error = %error,
                    "alert channel record is corrupt; recording the delivery as failed"
                );
                not_delivered(&format!("channel record is corrupt: {error}"))
            }
            Err(e) => return Err(e),
        };
        self.record(alert_id, channel_id, &record).await
    }

    /// Writes a final record, trying a little harder than one command: after
    /// a successful delivery, failing here means delivering again later.
    async fn record(
        &self,
        alert_id: &str,
        channel_id: &str,
        record: &DeliveryRecord,
    ) -> Result<(), StoreError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.store.put_delivery(alert_id, channel_id, record).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= RECORD_TRIES => return Err(e),
                Err(e) => {
                    tracing::debug!(
                        alert.id = alert_id,
                        channel.id = channel_id,
                        error = %e,
                        "could not write the delivery record; trying again"
                    );
                    tokio::time::sleep(RECORD_PAUSE).await;
                }
            }
        }
    }

    /// Attempts delivery until success, a permanent error or the last retry.
    async fn deliver(&self, channel: &Channel, job: &AlertJob) -> DeliveryRecord {
        let kind = kind_label(&channel.kind);
        let max_attempts = self.retry_delays.len() + 1;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let started = Instant::now();
            let result = self.channels.send(channel, job).await;
            let elapsed = started.elapsed();
            metrics::histogram!("lifeline_notifier_delivery_seconds", "channel_type" => kind)
                .record(elapsed.as_secs_f64());
            let at = now_ms();
            let error = match result {
                Ok(sent) => {
                    tracing::info!(
                        alert.id = job.alert_id,
                        monitor.id = job.monitor.id,
                        channel.id = channel.id,
                        channel.type = kind,
                        attempts,
                        http.status = sent.http_status,
                        duration_ms = elapsed.as_millis() as u64,
                        "alert delivered"
                    );
                    count(kind, SUCCEEDED);
                    return DeliveryRecord {
                        outcome: SUCCEEDED.into(),
                        attempts: attempts as u32,
                        at,
                        http_status: sent.http_status,
                        error: None,
                        next_retry_at: None,
                    };
                }
                Err(e) => e,
            };
            if error.retryable() && attempts < max_attempts {
                let delay = self.retry_delays[attempts - 1];
                tracing::info!(
                    alert.id = job.alert_id,
                    channel.id = channel.id,
                    channel.type = kind,
                    attempt = attempts,
                    error = %error,
                    retry_in_ms = delay.as_millis() as u64,
                    "alert delivery attempt failed; retrying"
                );
                tokio::time::sleep(delay).await;
                continue;
            }
            tracing::warn!(
                alert.id = job.alert_id,
                monitor.id = job.monitor.id,
                channel.id = channel.id,
                channel.type = kind,
                attempts,
                error = %error,
                "alert delivery failed"
            );
            count(kind, FAILED);
            return DeliveryRecord {
                outcome: FAILED.into(),
                attempts: attempts as u32,
                at,
                http_status: error.http_status(),
                error: Some(error.to_string()),
                next_retry_at: None,
            };
        }
    }
}

/// The record of a delivery that could not even be attempted.
fn not_delivered(error: &str) -> DeliveryRecord {
    count("unknown", FAILED);
    DeliveryRecord {
        outcome: FAILED.into(),
        attempts: 0,
        at: now_ms(),
        http_status: None,
        error: Some(error.to_owned()),
        next_retry_at: None,
    }
}

fn count(channel_type: &'static str, outcome: &'static str) {
    metrics::counter!(
        "lifeline_notifier_deliveries_total",
        "channel_type" => channel_type,
        "outcome" => outcome
    )
    .increment(1);
}
