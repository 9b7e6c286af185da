//! One delivery job, one attempt: from a message of the deliveries queue to
//! a recorded attempt and the job's next place (nowhere, a delay queue or
//! the dead-letter queue).
//!
//! For each job:
//!
//! 1. **Skip** it if its record is final (`succeeded`, `failed`) or already
//!    counts more attempts than the job (a stale copy: a newer one is on its
//!    way).
//! 2. **Claim** it in Redis for the attempt timeout plus a margin. If another
//!    replica holds the claim, the job goes to the one-second delay queue,
//!    without counting an attempt, and is looked at again then.
//! 3. For Slack, take the URL's **rate-limit slot** (one message per second
//!    per incoming webhook, across replicas); if taken, the job goes to the
//!    one-second delay queue, again without counting an attempt. After the
//!    attempt the slot is held one more second (or for a 429's
//!    `Retry-After`), so messages reach Slack at least a second apart.
//! 4. Make **one attempt**, then
//!    * success: record `succeeded`;
//!    * retryable failure with steps left in the schedule: publish the job,
//!      attempt count + 1, to the delay queue of the next step (for a 429,
//!      at least its `Retry-After`), record `retrying` with `next_retry_at`;
//!    * permanent failure (or schedule exhausted): publish the job to the
//!      dead-letter queue, record `failed`.
//!
//!    Test jobs get exactly one attempt: never retried, never dead-lettered.
//!    Every attempt is appended to the alert's attempt log.
//!
//! Ordering makes a crash duplicate rather than lose: the job is published
//! to its next queue before the record is written, and the message is
//! acked last. A Redis failure hands the message back to the queue (after a
//! pause) unless the job has already moved on to a delay queue.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use lifeline_shared::{
    amqp::{self, AmqpError, Publisher},
    model::{
        AlertEvent, AttemptRecord, Channel, ChannelKind, DeliveryJob, DeliveryOutcome,
        DeliveryRecord, Status,
    },
    names::Names,
    store::{Store, StoreError},
    time::now_ms,
};

use crate::{
    channels::{Channels, SendError, Sent, slack},
    retry::{RECHECK, RetrySchedule, with_retry_after},
    settle::{Settle, parse_job},
    summary::Summary,
};

/// One message per this period per Slack incoming webhook.
const SLACK_PERIOD: Duration = Duration::from_secs(1);
/// How long a claim outlives the attempt timeout, for the bookkeeping.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
/// Tries at writing a record before giving up.
const RECORD_TRIES: u32 = 3;
/// Pause between those tries.
const RECORD_PAUSE: Duration = Duration::from_millis(500);
/// State changes searched for the start of a downtime: as many as a
/// monitor keeps by default, since down reminders add one each.
const HISTORY_SEARCHED: usize = 1000;

/// Why a delivery job goes back to its queue.
#[derive(Debug, thiserror::Error)]
enum DeliverError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Amqp(#[from] AmqpError),
}

/// Attempts delivery jobs; shared by every job task of the process.
pub(crate) struct Deliverer {
    store: Store,
    publisher: Arc<Publisher>,
    channels: Channels,
    schedule: RetrySchedule,
    replica: String,
    claim_ttl: Duration,
    /// Delay queues declared by this process.
    declared: Mutex<HashSet<u64>>,
}

impl Deliverer {
    /// A deliverer for the replica `replica`; `attempt_timeout` bounds one
    /// attempt (and so how long a claim is held).
    pub(crate) fn new(
        store: Store,
        publisher: Arc<Publisher>,
        channels: Channels,
        schedule: RetrySchedule,
        replica: String,
        attempt_timeout: Duration,
    ) -> Self {
        Self {
            store,
            publisher,
            channels,
            schedule,
            replica,
            claim_ttl: attempt_timeout + CLAIM_MARGIN,
            declared: Mutex::default(),
        }
    }

    fn names(&self) -> &Names {
        self.store.names()
    }

    /// Declares the delay queues of the schedule and of the recheck.
    pub(crate) async fn declare(&self, ch: &lapin::Channel) -> Result<(), AmqpError> {
        for ms in self.schedule.startup_queues_ms() {
            amqp::declare_retry_queue(ch, self.names(), ms).await?;
            self.declared_set().insert(ms);
        }
        Ok(())
    }

    fn declared_set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.declared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Handles one message of the deliveries queue.
    pub(crate) async fn handle(&self, ch: &lapin::Channel, data: &[u8]) -> Settle {
        let job: DeliveryJob = match parse_job(data, "delivery job") {
            Ok(job) => job,
            Err(settle) => return settle,
        };
        match self.deliver(ch, &job).await {
            Ok(settle) => settle,
            Err(e) => {
                tracing::warn!(
                    alert.id = job.alert.alert_id,
                    channel.id = job.channel_id,
                    error = %e,
                    "could not read or write the delivery's state; handing it back to the queue"
                );
                Settle::Requeue
            }
        }
    }

    async fn deliver(
        &self,
        ch: &lapin::Channel,
        job: &DeliveryJob,
    ) -> Result<Settle, DeliverError> {
        if self.settled(job).await? {
            return Ok(Settle::Ack);
        }
        if !self
            .store
            .claim_delivery(&job.delivery_id, &self.replica, self.claim_ttl)
            .await?
        {
            tracing::debug!(
                alert.id = job.alert.alert_id,
                channel.id = job.channel_id,
                "another notifier is attempting this delivery; looking again shortly"
            );
            self.publish_delayed(ch, job, RECHECK).await?;
            return Ok(Settle::Ack);
        }
        let result = self.deliver_claimed(ch, job).await;
        if let Err(e) = self
            .store
            .release_delivery(&job.delivery_id, &self.replica)
            .await
        {
            tracing::debug!(
                delivery.id = job.delivery_id,
                error = %e,
                "could not release the delivery claim; it expires by itself"
            );
        }
        result
    }

    /// Whether the job has nothing left to do: its record is final, or
    /// counts more attempts than this copy of the job knows of.
    async fn settled(&self, job: &DeliveryJob) -> Result<bool, StoreError> {
        let Some(rec) = self
            .store
            .delivery(&job.alert.alert_id, &job.channel_id)
            .await?
        else {
            return Ok(false);
        };
        if rec.outcome.is_final() || rec.attempts > job.attempt {
            tracing::info!(
                alert.id = job.alert.alert_id,
                channel.id = job.channel_id,
                outcome = rec.outcome.as_str(),
                attempts = rec.attempts,
                job.attempt = job.attempt,
                "delivery already handled; dropping this copy"
            );
            return Ok(true);
        }
        Ok(false)
    }

    async fn deliver_claimed(
        &self,
        ch: &lapin::Channel,
        job: &DeliveryJob,
    ) -> Result<Settle, DeliverError> {
        // Another replica may have finished between the first look and the claim.
        if self.settled(job).await? {
            return Ok(Settle::Ack);
        }
        let channel = match self.store.channel(&job.channel_id).await {
            Ok(Some(channel)) => channel,
            Ok(None) => {
                let error = SendError::Invalid("the channel no longer exists".into());
                return self
                    .conclude(ch, job, "unknown", Err(error), Duration::ZERO)
                    .await;
            }
            Err(StoreError::Corrupt { key, error }) => {
                tracing::error!(
                    channel.id = job.channel_id,
                    redis.key = key,
                    error = %error,
                    "alert channel record is corrupt"
                );
                let error = SendError::Invalid(format!("the channel record is corrupt: {error}"));
                return self
                    .conclude(ch, job, "unknown", Err(error), Duration::ZERO)
                    .await;
            }
            Err(e) => return Err(e.into()),
        };
        let kind = channel.kind.label();
        if let ChannelKind::Slack { url } = &channel.kind
            && !self
                .store
                .take_rate_slot(&slack::destination(url), SLACK_PERIOD)
                .await?
        {
            tracing::debug!(
                alert.id = job.alert.alert_id,
                channel.id = job.channel_id,
                "slack webhook got a message less than a second ago; sending shortly"
            );
            self.publish_delayed(ch, job, RECHECK).await?;
            return Ok(Settle::Ack);
        }
        let down_since = self.down_since(job, &channel).await;
        let summary = Summary::new(&job.alert, down_since, now_ms());
        let started = Instant::now();
        let result = self.channels.send(&channel, job, &summary).await;
        let elapsed = started.elapsed();
        if let ChannelKind::Slack { url } = &channel.kind {
            let wait = result.as_ref().err().and_then(SendError::retry_after);
            self.hold_rate_slot(url, wait).await;
        }
        metrics::histogram!("lifeline_notifier_delivery_seconds", "channel_type" => kind)
            .record(elapsed.as_secs_f64());
        self.conclude(ch, job, kind, result, elapsed).await
    }

    /// Keeps a Slack URL's rate-limit slot for a second from now (or as
    /// long as a 429 asked), so the next message reaches Slack at least that
    /// long after this one did, however long this attempt took.
    async fn hold_rate_slot(&self, url: &str, retry_after: Option<Duration>) {
        let hold = retry_after.map_or(SLACK_PERIOD, |w| w.max(SLACK_PERIOD));
        let held = self
            .store
            .hold_rate_slot(&slack::destination(url), hold)
            .await;
        if let Err(e) = held {
            tracing::debug!(error = %e, "could not extend the slack rate-limit slot");
        }
    }

    /// When the monitor went down, for the recovery alert of `job`, read
    /// from its state-change history (best effort: `None` if unknown).
    async fn down_since(&self, job: &DeliveryJob, channel: &Channel) -> Option<i64> {
        if job.alert.event != AlertEvent::Up || matches!(channel.kind, ChannelKind::Webhook { .. })
        {
            return None;
        }
        let events = match self
            .store
            .events(&job.alert.monitor.id, HISTORY_SEARCHED)
            .await
        {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(
                    monitor.id = job.alert.monitor.id,
                    error = %e,
                    "could not read the monitor's history; the alert will not say how long it was down"
                );
                return None;
            }
        };
        // Newest first: this recovery, then the changes before it (down
        // reminders, from down to down, are passed over).
        events
            .iter()
            .skip_while(|c| c.alert_id.as_deref() != Some(job.alert.alert_id.as_str()))
            .skip(1)
            .find(|c| c.to == Status::Down && c.from != Status::Down)
            .map(|c| c.at)
    }

    /// Acts on the attempt's result: records it, and moves the job on.
    async fn conclude(
        &self,
        ch: &lapin::Channel,
        job: &DeliveryJob,
        kind: &'static str,
        result: Result<Sent, SendError>,
        elapsed: Duration,
    ) -> Result<Settle, DeliverError> {
        let attempt = job.attempt + 1;
        let at = now_ms();
        let duration_ms = elapsed.as_millis() as u64;
        let mut log = AttemptRecord {
            at,
            channel_id: job.channel_id.clone(),
            channel_type: kind.to_owned(),
            attempt,
            outcome: DeliveryOutcome::Succeeded,
            http_status: None,
            smtp_reply: None,
            error: None,
            next_retry_at: None,
            duration_ms,
        };
        let mut record = DeliveryRecord {
            outcome: DeliveryOutcome::Succeeded,
            attempts: attempt,
            at,
            http_status: None,
            error: None,
            next_retry_at: None,
        };
        let error = match result {
            Ok(sent) => {
                log.http_status = sent.http_status;
                log.smtp_reply = sent.smtp_reply;
                record.http_status = sent.http_status;
                self.write(job, &log, &record).await?;
                count(kind, DeliveryOutcome::Succeeded);
                tracing::info!(
                    alert.id = job.alert.alert_id,
                    monitor.id = job.alert.monitor.id,
                    channel.id = job.channel_id,
                    channel.type = kind,
                    delivery.id = job.delivery_id,
                    attempt,
                    http.status = log.http_status,
                    smtp.reply = log.smtp_reply,
                    duration_ms,
                    "alert delivered"
                );
                return Ok(Settle::Ack);
            }
            Err(error) => error,
        };
        log.http_status = error.http_status();
        log.smtp_reply = error.smtp_reply().map(str::to_owned);
        log.error = Some(error.to_string());
        record.http_status = log.http_status;
        record.error = log.error.clone();

        let delay = if job.test || !error.retryable() {
            None
        } else {
            self.schedule
                .delay_after(attempt)
                .map(|step| with_retry_after(step, error.retry_after()))
        };
        if let Some(delay) = delay {
            let next = DeliveryJob {
                attempt,
                ..job.clone()
            };
            self.publish_delayed(ch, &next, delay).await?;
            let next_retry_at = at + delay.as_millis() as i64;
            log.outcome = DeliveryOutcome::Retrying;
            log.next_retry_at = Some(next_retry_at);
            record.outcome = DeliveryOutcome::Retrying;
            record.next_retry_at = Some(next_retry_at);
            count(kind, DeliveryOutcome::Retrying);
            tracing::info!(
                alert.id = job.alert.alert_id,
                channel.id = job.channel_id,
                channel.type = kind,
                delivery.id = job.delivery_id,
                attempt,
                http.status = log.http_status,
                smtp.reply = log.smtp_reply,
                error = %error,
                retry_in_ms = delay.as_millis() as u64,
                "alert delivery attempt failed; retrying later"
            );
            // The retry is on its way: a lost record is only a missing log line.
            if let Err(e) = self.write(job, &log, &record).await {
                tracing::warn!(
                    alert.id = job.alert.alert_id,
                    channel.id = job.channel_id,
                    error = %e,
                    "could not record the failed attempt; the retry is scheduled regardless"
                );
            }
            return Ok(Settle::Ack);
        }

        if !job.test {
            let dead = DeliveryJob {
                attempt,
                ..job.clone()
            };
            self.publisher
                .publish_delivery(&self.names().dead_queue(), &dead)
                .await?;
            metrics::counter!("lifeline_notifier_dead_lettered_total", "channel_type" => kind)
                .increment(1);
        }
        log.outcome = DeliveryOutcome::Failed;
        record.outcome = DeliveryOutcome::Failed;
        self.write(job, &log, &record).await?;
        count(kind, DeliveryOutcome::Failed);
        tracing::warn!(
            alert.id = job.alert.alert_id,
            monitor.id = job.alert.monitor.id,
            channel.id = job.channel_id,
            channel.type = kind,
            delivery.id = job.delivery_id,
            attempt,
            test = job.test,
            retryable = error.retryable(),
            http.status = log.http_status,
            smtp.reply = log.smtp_reply,
            error = %error,
            "alert delivery failed for good"
        );
        Ok(Settle::Ack)
    }

    /// Appends the attempt to the log, then writes the record; a few tries
    /// each. A lost log line is only logged; a lost record is an error.
    async fn write(
        &self,
        job: &DeliveryJob,
        log: &AttemptRecord,
        record: &DeliveryRecord,
    ) -> Result<(), StoreError> {
        let alert_id = job.alert.alert_id.as_str();
        if let Err(e) = retry(|| self.store.append_attempt(alert_id, log)).await {
            tracing::warn!(
                alert.id = alert_id,
                channel.id = job.channel_id,
                error = %e,
                "could not append to the attempt log"
            );
        }
        retry(|| self.store.put_delivery(alert_id, &job.channel_id, record)).await
    }

    /// Publishes `job` to the delay queue of `delay`, declaring it first if
    /// this process has not yet.
    async fn publish_delayed(
        &self,
        ch: &lapin::Channel,
        job: &DeliveryJob,
        delay: Duration,
    ) -> Result<(), AmqpError> {
        let ms = delay.as_millis() as u64;
        let known = self.declared_set().contains(&ms);
        if !known {
            amqp::declare_retry_queue(ch, self.names(), ms).await?;
            self.declared_set().insert(ms);
        }
        let published = self
            .publisher
            .publish_delivery(&self.names().retry_queue(ms), job)
            .await;
        if published.is_err() {
            // Perhaps the queue was deleted: declare it again next time.
            self.declared_set().remove(&ms);
        }
        published
    }
}

/// Runs a Redis write up to [`RECORD_TRIES`] times.
async fn retry<F, Fut>(mut write: F) -> Result<(), StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), StoreError>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match write().await {
            Ok(()) => return Ok(()),
            Err(e) if tries >= RECORD_TRIES => return Err(e),
            Err(_) => tokio::time::sleep(RECORD_PAUSE).await,
        }
    }
}

fn count(channel_type: &'static str, outcome: DeliveryOutcome) {
    metrics::counter!(
        "lifeline_notifier_deliveries_total",
        "channel_type" => channel_type,
        "outcome" => outcome.as_str()
    )
    .increment(1);
}
