//! What happened to a monitor: its beats, its state changes with the
//! delivery of the alerts they raised, and the delivery log of one alert
//! (the outcome per channel and every attempt, as the notifiers recorded
//! them). This is how an operator tells a timeout that is too short from a
//! job that really stopped (the gaps between beats) and sees whether, when
//! and why an alert reached its channels or not.

use axum::{Json, extract::State};
use futures::{StreamExt, TryStreamExt, stream};
use lifeline_shared::model::{
    AlertId, AttemptRecord, BeatRecord, BeatStatus, ChannelId, DeliveryOutcome, DeliveryRecord,
    Reason, StateChange, Status,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    AppState,
    error::ApiError,
    input::{self, Limit, PathId},
};

/// One beat as the API shows it.
#[derive(Debug, Serialize)]
struct BeatView {
    at: String,
    status: BeatStatus,
    msg: Option<String>,
    value: Option<f64>,
    msg_truncated: bool,
    late: bool,
}

impl From<&BeatRecord> for BeatView {
    fn from(b: &BeatRecord) -> Self {
        Self {
            at: super::time(b.at),
            status: b.status,
            msg: b.msg.clone(),
            value: b.value,
            msg_truncated: b.msg_truncated,
            late: b.late,
        }
    }
}

/// The outcome of delivering an alert to one channel.
#[derive(Debug, Serialize)]
pub(super) struct DeliveryView {
    channel_id: ChannelId,
    outcome: DeliveryOutcome,
    attempts: u32,
    at: String,
    http_status: Option<u16>,
    error: Option<String>,
    next_retry_at: Option<String>,
}

impl DeliveryView {
    fn new(channel_id: ChannelId, r: DeliveryRecord) -> Self {
        Self {
            channel_id,
            outcome: r.outcome,
            attempts: r.attempts,
            at: super::time(r.at),
            http_status: r.http_status,
            error: r.error,
            next_retry_at: r.next_retry_at.map(super::time),
        }
    }
}

/// One delivery attempt.
#[derive(Debug, Serialize)]
pub(super) struct AttemptView {
    at: String,
    channel_id: ChannelId,
    channel_type: String,
    attempt: u32,
    outcome: DeliveryOutcome,
    http_status: Option<u16>,
    smtp_reply: Option<String>,
    error: Option<String>,
    next_retry_at: Option<String>,
    duration_ms: u64,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            at: super::time(a.at),
            channel_id: a.channel_id,
            channel_type: a.channel_type,
            attempt: a.attempt,
            outcome: a.outcome,
            http_status: a.http_status,
            smtp_reply: a.smtp_reply,
            error: a.error,
            next_retry_at: a.next_retry_at.map(super::time),
            duration_ms: a.duration_ms,
        }
    }
}

/// One state change with the deliveries of the alert it raised.
#[derive(Debug, Serialize)]
struct EventView {
    at: String,
    from: Status,
    to: Status,
    reason: Reason,
    msg: Option<String>,
    alert_id: Option<AlertId>,
    deliveries: Vec<DeliveryView>,
    attempts: Vec<AttemptView>,
}

/// Answers 404 unless monitor `id` exists.
async fn ensure_monitor(app: &AppState, id: &str) -> Result<(), ApiError> {
    if input::plausible_id(id) && app.store.monitor(id).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::NotFound("monitor not found"))
    }
}

/// The delivery records of an alert, by channel id, and its attempts,
/// oldest first.
async fn delivery_log(
    app: &AppState,
    alert_id: &str,
) -> Result<(Vec<DeliveryView>, Vec<AttemptView>), ApiError> {
    let (mut records, attempts) =
        tokio::try_join!(app.store.deliveries(alert_id), app.store.attempts(alert_id))?;
    records.sort_by(|a, b| a.0.cmp(&b.0));
    let deliveries = records
        .into_iter()
        .map(|(channel, r)| DeliveryView::new(channel.into(), r))
        .collect();
    Ok((deliveries, attempts.into_iter().map(Into::into).collect()))
}

/// `GET /api/v1/monitors/{id}/beats?limit=N`: newest first.
pub(crate) async fn beats(
    State(app): State<AppState>,
    PathId(id): PathId,
    Limit(limit): Limit,
) -> Result<Json<Value>, ApiError> {
    ensure_monitor(&app, &id).await?;
    let mut beats = app.store.beats(&id, limit).await?;
    // Late beats are appended at the tail: order by time, newest first.
    beats.sort_by(|a, b| b.at.cmp(&a.at).then(b.seq.cmp(&a.seq)));
    let beats: Vec<BeatView> = beats.iter().map(BeatView::from).collect();
    Ok(Json(json!({ "beats": beats })))
}

/// `GET /api/v1/monitors/{id}/events?limit=N`: newest first.
pub(crate) async fn events(
    State(app): State<AppState>,
    PathId(id): PathId,
    Limit(limit): Limit,
) -> Result<Json<Value>, ApiError> {
    ensure_monitor(&app, &id).await?;
    let changes = app.store.events(&id, limit).await?;
    let events: Vec<EventView> = stream::iter(changes)
        .map(|c: StateChange| {
            let app = app.clone();
            async move {
                let (deliveries, attempts) = match &c.alert_id {
                    Some(alert_id) => delivery_log(&app, alert_id).await?,
                    None => (Vec::new(), Vec::new()),
                };
                Ok::<_, ApiError>(EventView {
                    at: super::time(c.at),
                    from: c.from,
                    to: c.to,
                    reason: c.reason,
                    msg: c.msg,
                    alert_id: c.alert_id,
                    deliveries,
                    attempts,
                })
            }
        })
        .buffered(super::CONCURRENT_READS)
        .try_collect()
        .await?;
    Ok(Json(json!({ "events": events })))
}

/// Whether `id` could be an alert id: `<monitor id>.<change number>`, or
/// `test.<id>` for a test alert (checked before any Redis lookup).
fn plausible_alert_id(id: &str) -> bool {
    id.split_once('.')
        .is_some_and(|(a, b)| input::plausible_id(a) && input::plausible_id(b))
}

/// `GET /api/v1/alerts/{alert_id}`: 404 when neither a delivery nor an
/// attempt is recorded.
pub(crate) async fn alert(
    State(app): State<AppState>,
    PathId(alert_id): PathId,
) -> Result<Json<Value>, ApiError> {
    if !plausible_alert_id(&alert_id) {
        return Err(ApiError::NotFound("alert not found"));
    }
    let (deliveries, attempts) = delivery_log(&app, &alert_id).await?;
    if deliveries.is_empty() && attempts.is_empty() {
        return Err(ApiError::NotFound("alert not found"));
    }
    Ok(Json(json!({
        "alert_id": alert_id,
        "deliveries": deliveries,
        "attempts": attempts,
    })))
}

/// `GET /api/v1/outages`: windows in which the push path was down (no
/// ingest pulse got through), newest first. Deadlines that fell inside one
/// were extended by its length instead of alerting.
pub(crate) async fn outages(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let outages = app.store.outages().await?;
    let list: Vec<Value> = outages
        .iter()
        .rev()
        .map(|o| {
            json!({
                "start": super::time(o.start),
                "end": super::time(o.end),
                "duration_ms": o.end - o.start,
            })
        })
        .collect();
    Ok(Json(json!({ "outages": list })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_ids() {
        for good in ["abc123.4", "test.k3j9x0a1b2c3d4e5"] {
            assert!(plausible_alert_id(good), "{good}");
        }
        for bad in ["garbage", "a.", ".1", "a.b.c", "a:b.1", "{s1}.2"] {
            assert!(!plausible_alert_id(bad), "{bad}");
        }
    }
}
