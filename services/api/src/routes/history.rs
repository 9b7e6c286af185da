//! What happened to a monitor: its beats, its state changes with the
//! delivery of the alerts they raised, and the delivery log of one alert.
//! This is how an operator tells a timeout that is too short from a job that
//! really stopped (the gaps between beats) and sees whether an alert reached
//! its channels.

use axum::{Json, extract::State};
use futures::{StreamExt, TryStreamExt, stream};
use lifeline_shared::model::{BeatRecord, BeatStatus, DeliveryRecord, Reason, StateChange, Status};
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

/// One delivery of an alert to a channel.
#[derive(Debug, Serialize)]
struct DeliveryView {
    channel_id: String,
    outcome: String,
    attempts: u32,
    at: String,
    http_status: Option<u16>,
    error: Option<String>,
}

impl DeliveryView {
    fn new(channel_id: String, r: DeliveryRecord) -> Self {
        Self {
            channel_id,
            outcome: r.outcome,
            attempts: r.attempts,
            at: super::time(r.at),
            http_status: r.http_status,
            error: r.error,
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
    alert_id: Option<String>,
    deliveries: Vec<DeliveryView>,
}

/// Answers 404 unless monitor `id` exists.
async fn ensure_monitor(app: &AppState, id: &str) -> Result<(), ApiError> {
    if input::plausible_id(id) && app.store.monitor(id).await?.is_some() {
        Ok(())
    } else {
        Err(ApiError::NotFound("monitor not found"))
    }
}

/// The delivery records of an alert, by channel id.
async fn deliveries(app: &AppState, alert_id: &str) -> Result<Vec<DeliveryView>, ApiError> {
    let mut records = app.store.deliveries(alert_id).await?;
    records.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(records
        .into_iter()
        .map(|(channel, r)| DeliveryView::new(channel, r))
        .collect())
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
                let deliveries = match &c.alert_id {
                    Some(alert_id) => deliveries(&app, alert_id).await?,
                    None => Vec::new(),
                };
                Ok::<_, ApiError>(EventView {
                    at: super::time(c.at),
                    from: c.from,
                    to: c.to,
                    reason: c.reason,
                    msg: c.msg,
                    alert_id: c.alert_id,
                    deliveries,
                })
            }
        })
        .buffered(super::CONCURRENT_READS)
        .try_collect()
        .await?;
    Ok(Json(json!({ "events": events })))
}

/// `GET /api/v1/alerts/{alert_id}`: 404 when no delivery is recorded.
pub(crate) async fn alert(
    State(app): State<AppState>,
    PathId(alert_id): PathId,
) -> Result<Json<Value>, ApiError> {
    let plausible = alert_id
        .split_once('.')
        .is_some_and(|(m, n)| input::plausible_id(m) && n.parse::<u64>().is_ok());
    if !plausible {
        return Err(ApiError::NotFound("alert not found"));
    }
    let deliveries = deliveries(&app, &alert_id).await?;
    if deliveries.is_empty() {
        return Err(ApiError::NotFound("alert not found"));
    }
    Ok(Json(
        json!({ "alert_id": alert_id, "deliveries": deliveries }),
    ))
}
