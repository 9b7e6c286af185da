//! What an attempt leaves in Redis once it is decided: a line in the
//! alert's attempt log and the delivery record of its (alert, channel)
//! pair, both built here from the attempt and its [`Decision`], then
//! written a few tries each.
//!
//! Building is pure; writing appends the log line first and the record
//! last, so whoever waits for a record to be final (a test alert's request)
//! finds its attempt already in the log. A lost log line is only logged; a
//! lost record is an error, and the caller says what it costs (for a retry
//! already on its way, only a missing log line).

use std::time::Duration;

use lifeline_shared::{
    model::{AttemptRecord, DeliveryJob, DeliveryRecord},
    store::{Store, StoreError},
};

use crate::{
    channels::{SendError, Sent},
    decide::Decision,
};

/// Tries at writing a record before giving up.
const RECORD_TRIES: u32 = 3;
/// Pause between those tries.
const RECORD_PAUSE: Duration = Duration::from_millis(500);

/// The attempt-log line and the delivery record of one decided attempt.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Records {
    /// Appended to the alert's attempt log.
    pub(crate) log: AttemptRecord,
    /// The (alert, channel) pair's record, replaced.
    pub(crate) record: DeliveryRecord,
}

impl Records {
    /// The records of attempt `number` of `job` on a channel of type `kind`:
    /// it ended at `at` (ms) after `elapsed`, as `result`, and `decision` was
    /// taken on it.
    pub(crate) fn new(
        job: &DeliveryJob,
        kind: &str,
        number: u32,
        at: i64,
        elapsed: Duration,
        result: &Result<Sent, SendError>,
        decision: Decision,
    ) -> Self {
        let (http_status, smtp_reply, error) = match result {
            Ok(sent) => (sent.http_status, sent.smtp_reply.clone(), None),
            Err(e) => (
                e.http_status(),
                e.smtp_reply().map(str::to_owned),
                Some(e.to_string()),
            ),
        };
        let next_retry_at = match decision {
            Decision::Retry { after } => Some(at + after.as_millis() as i64),
            Decision::Succeeded | Decision::Failed { .. } => None,
        };
        let outcome = decision.outcome();
        Self {
            log: AttemptRecord {
                at,
                channel_id: job.channel_id.clone(),
                channel_type: kind.to_owned(),
                attempt: number,
                outcome,
                http_status,
                smtp_reply,
                error: error.clone(),
                next_retry_at,
                duration_ms: elapsed.as_millis() as u64,
            },
            record: DeliveryRecord {
                outcome,
                attempts: number,
                at,
                http_status,
                error,
                next_retry_at,
            },
        }
    }

    /// Appends the attempt to the log, then writes the record; a few tries
    /// each. A lost log line is only logged; a lost record is an error.
    pub(crate) async fn write(&self, store: &Store, job: &DeliveryJob) -> Result<(), StoreError> {
        let alert_id = job.alert.alert_id.as_str();
        if let Err(e) = retry(|| store.append_attempt(alert_id, &self.log)).await {
            tracing::warn!(
                alert.id = alert_id,
                channel.id = %job.channel_id,
                error = %e,
                "could not append to the attempt log"
            );
        }
        retry(|| store.put_delivery(alert_id, &job.channel_id, &self.record)).await
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

#[cfg(test)]
mod tests {
    use lifeline_shared::model::{AlertEvent, AlertJob, DeliveryOutcome, MonitorRef, Reason};

    use super::*;

    fn job() -> DeliveryJob {
        let alert = AlertJob {
            v: 1,
            alert_id: "m.1".into(),
            event: AlertEvent::Down,
            monitor: MonitorRef {
                id: "m".into(),
                name: "backup".into(),
            },
            reason: Reason::Timeout,
            msg: None,
            value: None,
            at: 1,
            last_beat_at: None,
            channels: vec!["c".into()],
        };
        DeliveryJob::new(alert, &"c".into())
    }

    #[test]
    fn a_delivered_attempt_records_what_the_receiver_answered() {
        let sent = Sent {
            http_status: None,
            smtp_reply: Some("250 2.0.0 Ok".into()),
        };
        let r = Records::new(
            &job(),
            "email",
            2,
            1_000,
            Duration::from_millis(42),
            &Ok(sent),
            Decision::Succeeded,
        );
        assert_eq!(
            r.log,
            AttemptRecord {
                at: 1_000,
                channel_id: "c".into(),
                channel_type: "email".into(),
                attempt: 2,
                outcome: DeliveryOutcome::Succeeded,
                http_status: None,
                smtp_reply: Some("250 2.0.0 Ok".into()),
                error: None,
                next_retry_at: None,
                duration_ms: 42,
            }
        );
        assert_eq!(
            r.record,
            DeliveryRecord {
                outcome: DeliveryOutcome::Succeeded,
                attempts: 2,
                at: 1_000,
                http_status: None,
                error: None,
                next_retry_at: None,
            }
        );
    }

    #[test]
    fn a_retry_records_when_the_next_attempt_is_due() {
        let busy = SendError::Status {
            status: 503,
            retry_after: None,
        };
        let r = Records::new(
            &job(),
            "webhook",
            1,
            1_000,
            Duration::from_millis(7),
            &Err(busy),
            Decision::Retry {
                after: Duration::from_secs(5),
            },
        );
        assert_eq!(r.log.outcome, DeliveryOutcome::Retrying);
        assert_eq!(r.record.outcome, DeliveryOutcome::Retrying);
        assert_eq!(r.log.next_retry_at, Some(6_000));
        assert_eq!(r.record.next_retry_at, Some(6_000));
        assert_eq!(
            (r.log.http_status, r.record.http_status),
            (Some(503), Some(503))
        );
        let error = Some("receiver answered HTTP 503".to_owned());
        assert_eq!((&r.log.error, &r.record.error), (&error, &error));
    }

    #[test]
    fn a_failure_records_the_error_and_no_next_attempt() {
        for dead_letter in [false, true] {
            let refused = SendError::Smtp {
                reply: "550 5.1.1 no such mailbox".into(),
                permanent: true,
            };
            let r = Records::new(
                &job(),
                "email",
                1,
                1_000,
                Duration::ZERO,
                &Err(refused),
                Decision::Failed { dead_letter },
            );
            assert_eq!(r.record.outcome, DeliveryOutcome::Failed);
            assert_eq!(r.log.outcome, DeliveryOutcome::Failed);
            assert_eq!((r.log.next_retry_at, r.record.next_retry_at), (None, None));
            assert_eq!(
                r.log.smtp_reply.as_deref(),
                Some("550 5.1.1 no such mailbox")
            );
            assert_eq!(r.record.http_status, None);
            assert_eq!(
                r.record.error.as_deref(),
                Some("SMTP server replied 550 5.1.1 no such mailbox")
            );
        }
    }
}
