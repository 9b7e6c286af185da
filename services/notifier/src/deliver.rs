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
//! 4. Make **one attempt**, then conclude it in three steps:
//!    * **decide** (`decide`, a pure function of the attempt's result, the
//!      job and the retry schedule): succeeded; retry after the schedule's
//!      next step (for a 429, at least its `Retry-After`); or failed for
//!      good, permanently or with the schedule exhausted. Test jobs get
//!      exactly one attempt: never retried, never dead-lettered;
//!    * **act**: publish the job, attempt count + 1, to the delay queue of
//!      the retry, or (failed, not a test) to the dead-letter queue;
//!    * **record** (`record`): append the attempt to the alert's attempt
//!      log and write the delivery record, `succeeded`, `retrying` with
//!      `next_retry_at`, or `failed`.
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
    metric,
    model::{AlertEvent, Channel, ChannelKind, DeliveryJob, DeliveryOutcome, Status},
    names::Names,
    store::{Store, StoreError},
    time::now_ms,
};

use crate::{
    channels::{Channels, SendError, Sent, slack},
    decide::{Attempt, Decision, decide},
    record::Records,
    retry::{RECHECK, RetrySchedule},
    settle::{Settle, parse_job},
    summary::Summary,
};

/// One message per this period per Slack incoming webhook.
const SLACK_PERIOD: Duration = Duration::from_secs(1);
/// How long a claim outlives the attempt timeout, for the bookkeeping.
const CLAIM_MARGIN: Duration = Duration::from_secs(10);
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
                    alert.id = %job.alert.alert_id,
                    channel.id = %job.channel_id,
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
                alert.id = %job.alert.alert_id,
                channel.id = %job.channel_id,
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
                delivery.id = %job.delivery_id,
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
                alert.id = %job.alert.alert_id,
                channel.id = %job.channel_id,
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
                    channel.id = %job.channel_id,
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
                alert.id = %job.alert.alert_id,
                channel.id = %job.channel_id,
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
        metrics::histogram!(metric::NOTIFIER_DELIVERY_SECONDS, "channel_type" => kind)
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
                    monitor.id = %job.alert.monitor.id,
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

    /// Concludes an attempt: decides what becomes of the delivery, acts on
    /// the decision (moves the job on), then records it.
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
        let decision = decide(Attempt::of(&result), job.test, attempt, &self.schedule);
        self.move_on(ch, job, kind, attempt, decision).await?;
        let records = Records::new(job, kind, attempt, at, elapsed, &result, decision);
        self.record(job, kind, &result, decision, &records).await?;
        Ok(Settle::Ack)
    }

    /// Publishes the job, its attempt count now `attempt`, to where
    /// `decision` sends it: the delay queue of a retry, or the dead-letter
    /// queue; nowhere when it succeeded or was a test.
    async fn move_on(
        &self,
        ch: &lapin::Channel,
        job: &DeliveryJob,
        kind: &'static str,
        attempt: u32,
        decision: Decision,
    ) -> Result<(), AmqpError> {
        let next = || DeliveryJob {
            attempt,
            ..job.clone()
        };
        match decision {
            Decision::Succeeded | Decision::Failed { dead_letter: false } => {}
            Decision::Retry { after } => self.publish_delayed(ch, &next(), after).await?,
            Decision::Failed { dead_letter: true } => {
                self.publisher
                    .publish_delivery(&self.names().dead_queue(), &next())
                    .await?;
                metrics::counter!(metric::NOTIFIER_DEAD_LETTERED, "channel_type" => kind)
                    .increment(1);
            }
        }
        Ok(())
    }

    /// Writes the records of a decided attempt, counts it and logs it. Only
    /// a retry, already on its way, survives a record that cannot be
    /// written. (A delivered attempt is always decided `Succeeded`, a
    /// failed one never.)
    async fn record(
        &self,
        job: &DeliveryJob,
        kind: &'static str,
        result: &Result<Sent, SendError>,
        decision: Decision,
        records: &Records,
    ) -> Result<(), StoreError> {
        let Records { log, .. } = records;
        let outcome = decision.outcome();
        match (result, decision) {
            (Ok(_), _) => {
                records.write(&self.store, job).await?;
                count(kind, outcome);
                tracing::info!(
                    alert.id = %job.alert.alert_id,
                    monitor.id = %job.alert.monitor.id,
                    channel.id = %job.channel_id,
                    channel.type = kind,
                    delivery.id = %job.delivery_id,
                    attempt = log.attempt,
                    http.status = log.http_status,
                    smtp.reply = log.smtp_reply,
                    duration_ms = log.duration_ms,
                    "alert delivered"
                );
            }
            (Err(error), Decision::Retry { after }) => {
                count(kind, outcome);
                tracing::info!(
                    alert.id = %job.alert.alert_id,
                    channel.id = %job.channel_id,
                    channel.type = kind,
                    delivery.id = %job.delivery_id,
                    attempt = log.attempt,
                    http.status = log.http_status,
                    smtp.reply = log.smtp_reply,
                    error = %error,
                    retry_in_ms = after.as_millis() as u64,
                    "alert delivery attempt failed; retrying later"
                );
                // The retry is on its way: a lost record is only a missing log line.
                if let Err(e) = records.write(&self.store, job).await {
                    tracing::warn!(
                        alert.id = %job.alert.alert_id,
                        channel.id = %job.channel_id,
                        error = %e,
                        "could not record the failed attempt; the retry is scheduled regardless"
                    );
                }
            }
            (Err(error), _) => {
                records.write(&self.store, job).await?;
                count(kind, outcome);
                tracing::warn!(
                    alert.id = %job.alert.alert_id,
                    monitor.id = %job.alert.monitor.id,
                    channel.id = %job.channel_id,
                    channel.type = kind,
                    delivery.id = %job.delivery_id,
                    attempt = log.attempt,
                    test = job.test,
                    retryable = error.retryable(),
                    http.status = log.http_status,
                    smtp.reply = log.smtp_reply,
                    error = %error,
                    "alert delivery failed for good"
                );
            }
        }
        Ok(())
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

fn count(channel_type: &'static str, outcome: DeliveryOutcome) {
    metrics::counter!(
        metric::NOTIFIER_DELIVERIES,
        "channel_type" => channel_type,
        "outcome" => outcome.as_str()
    )
    .increment(1);
}
