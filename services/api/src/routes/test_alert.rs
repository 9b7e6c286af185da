//! Test alerts: `POST /api/v1/channels/{id}/test` sends one alert through one
//! channel and answers with what happened, so an operator checks a channel
//! (a URL, a Slack hook, an address, a signature check) without waiting for
//! a real outage.
//!
//! The API makes no delivery itself: it publishes one delivery job
//! (`test: true`, event `test`, alert id `test.<random>`) straight to the
//! deliveries queue, where any notifier picks it up and makes exactly one
//! attempt, then polls the delivery record the notifier writes until its
//! outcome is final. A refused request publishes nothing (invariant 7); when
//! RabbitMQ does not confirm the job, the answer is a 503 and nothing was
//! sent. A notifier that does not answer within the configured wait (30 s)
//! gives a 504 carrying the alert id, which `GET /api/v1/alerts/{alert_id}`
//! shows later.
//!
//! Counted in `lifeline_api_test_alerts_total{outcome}`: `succeeded`,
//! `failed`, `no_answer`, `broker_unavailable`.

use std::time::Duration;

use axum::{Json, extract::State};
use lifeline_shared::{
    metric,
    model::{
        AlertEvent, AlertId, AlertJob, AttemptRecord, DeliveryJob, DeliveryOutcome, DeliveryRecord,
        MonitorRef, Reason, WIRE_VERSION,
    },
    time::now_ms,
    token,
};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::{
    AppState,
    error::ApiError,
    input::PathId,
    routes::{channels, history::AttemptView},
};

/// The monitor a test alert names.
const TEST_MONITOR_ID: &str = "test";
/// Its name.
const TEST_MONITOR_NAME: &str = "Lifeline test alert";
/// The message a test alert carries.
const TEST_MESSAGE: &str = "This is a test alert from Lifeline.";
/// Longest wait for RabbitMQ to take the job.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the delivery record is read while waiting.
const POLL: Duration = Duration::from_millis(100);
/// How long to wait for the attempt log once the outcome is final, should a
/// notifier write the record before the attempt.
const ATTEMPT_GRACE: Duration = Duration::from_secs(1);

/// The alert a test sends through `channel_id`.
fn test_alert(channel_id: &str, now: i64) -> AlertJob {
    AlertJob {
        v: WIRE_VERSION,
        alert_id: AlertId::new(format!("test.{}", token::new_id())),
        event: AlertEvent::Test,
        monitor: MonitorRef {
            id: TEST_MONITOR_ID.into(),
            name: TEST_MONITOR_NAME.into(),
        },
        reason: Reason::Test,
        msg: Some(TEST_MESSAGE.into()),
        value: None,
        at: now,
        last_beat_at: None,
        channels: vec![channel_id.into()],
    }
}

fn count(outcome: &'static str) {
    metrics::counter!(metric::API_TEST_ALERTS, "outcome" => outcome).increment(1);
}

/// `POST /api/v1/channels/{id}/test`: 200 with the outcome (also when the
/// delivery failed: the outcome says so), 404, 503 or 504.
pub(crate) async fn send(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    let channel = channels::find(&app, &id).await?;
    let alert = test_alert(&channel.id, now_ms());
    let alert_id = alert.alert_id.clone();
    let mut job = DeliveryJob::new(alert, &channel.id);
    job.test = true;

    let queue = app.store.names().deliveries_queue();
    let published = tokio::time::timeout(
        PUBLISH_TIMEOUT,
        app.publisher.publish_delivery(&queue, &job),
    )
    .await;
    if let Err(reason) = match published {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!(
            "no confirm within {} ms",
            PUBLISH_TIMEOUT.as_millis()
        )),
    } {
        count("broker_unavailable");
        return Err(ApiError::BrokerUnavailable(reason));
    }
    tracing::info!(
        channel.id = %channel.id,
        channel.kind = channel.kind.label(),
        alert.id = %alert_id,
        "test alert sent"
    );

    let started = Instant::now();
    let (record, attempts) = match wait_for_outcome(&app, &alert_id, &channel.id).await {
        Ok(found) => found,
        Err(e) => {
            if matches!(e, ApiError::NoAnswer { .. }) {
                count("no_answer");
            }
            return Err(e);
        }
    };
    count(if record.outcome == DeliveryOutcome::Succeeded {
        "succeeded"
    } else {
        "failed"
    });
    tracing::info!(
        channel.id = %channel.id,
        alert.id = %alert_id,
        outcome = %record.outcome,
        duration_ms = started.elapsed().as_millis() as u64,
        "test alert answered"
    );
    let last = attempts.last();
    Ok(Json(json!({
        "alert_id": alert_id,
        "channel_id": channel.id,
        "outcome": record.outcome,
        "http_status": record.http_status.or_else(|| last.and_then(|a| a.http_status)),
        "smtp_reply": last.and_then(|a| a.smtp_reply.clone()),
        "error": record.error.clone().or_else(|| last.and_then(|a| a.error.clone())),
        "attempts": attempts.into_iter().map(AttemptView::from).collect::<Vec<_>>(),
    })))
}

/// Polls the delivery record of `alert_id` on `channel_id` until its outcome
/// is `succeeded` or `failed`; returns it with the channel's attempts.
async fn wait_for_outcome(
    app: &AppState,
    alert_id: &str,
    channel_id: &str,
) -> Result<(DeliveryRecord, Vec<AttemptRecord>), ApiError> {
    let deadline = Instant::now() + app.test_timeout;
    let mut settled: Option<Instant> = None;
    loop {
        if let Some(record) = app.store.delivery(alert_id, channel_id).await?
            && record.outcome.is_final()
        {
            let attempts: Vec<AttemptRecord> = app
                .store
                .attempts(alert_id)
                .await?
                .into_iter()
                .filter(|a| a.channel_id == channel_id)
                .collect();
            let settled = *settled.get_or_insert_with(Instant::now);
            if !attempts.is_empty()
                || settled.elapsed() >= ATTEMPT_GRACE
                || Instant::now() >= deadline
            {
                return Ok((record, attempts));
            }
        }
        if Instant::now() >= deadline {
            return Err(ApiError::NoAnswer {
                alert_id: alert_id.to_owned(),
                waited: app.test_timeout,
            });
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = app.shutdown.cancelled() => {
                return Err(ApiError::ShuttingDown { alert_id: alert_id.to_owned() });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_alerts_have_their_own_ids() {
        let a = test_alert("chan1", 5);
        assert!(a.alert_id.starts_with("test."), "{}", a.alert_id);
        assert_ne!(a.alert_id, test_alert("chan1", 5).alert_id);
        assert_eq!(a.channels, ["chan1"]);
        let v = serde_json::to_value(&a).unwrap();
        assert_eq!(
            (&v["event"], &v["reason"]),
            (&json!("test"), &json!("test"))
        );
    }
}
