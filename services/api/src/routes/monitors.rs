//! Monitors: create, list, read, edit, delete, pause, resume, and push-token
//! rotation.
//!
//! Every write after creation goes through the monitor state machine and the
//! store's versioned commit, so state, deadline and settings change in one
//! atomic write and never race the evaluator: a new timeout moves the
//! deadline of an up monitor at once, and turning reminders on, off or to
//! another period reschedules those of a down monitor (`Input::Retime`);
//! pause and resume are `Input::Pause` / `Input::Resume`. These inputs never
//! raise alerts, so the API publishes nothing.
//!
//! Two optional settings shape alerting: `remind_every` (seconds, `null` =
//! off) repeats the `monitor.down` alert while a monitor stays down, and
//! `confirm` (1 to 10, default 1) is how many deadlines must be missed in a
//! row before a timeout alerts.
//!
//! Push tokens (invariant 8) are generated here, stored only as a SHA-256
//! and a short hint, and returned in full only by create and rotate.
//! Rotation points the new token at the monitor, writes it into the
//! settings, then revokes the token it replaced.

use std::time::Duration;

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::{StreamExt, TryStreamExt, stream};
use lifeline_shared::{
    backoff::Backoff,
    engine::Engine,
    model::{AlertJob, ChannelId, MonitorConfig, MonitorId, MonitorState, Status},
    state::Input,
    store::StoreError,
    time::now_ms,
    token,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    AppState,
    error::ApiError,
    input::{self, Fields, JsonObject, PathId, quoted},
};

/// Fields a monitor body may carry.
const FIELDS: &[&str] = &[
    "name",
    "timeout",
    "interval",
    "channels",
    "remind_every",
    "confirm",
];

/// Most channels one monitor may alert.
const CHANNELS_MAX: usize = 50;

/// A monitor as the API shows it: never the token, only its hint.
#[derive(Debug, Serialize)]
pub(crate) struct MonitorView {
    id: MonitorId,
    name: String,
    status: Status,
    timeout: u32,
    interval: u32,
    channels: Vec<ChannelId>,
    /// Seconds between down reminders; `null`: none.
    remind_every: Option<u32>,
    /// Missed deadlines in a row before a timeout alerts.
    confirm: u32,
    created_at: String,
    last_beat_at: Option<String>,
    /// While up: when the monitor misses its next deadline if no beat comes.
    deadline: Option<String>,
    /// While up: deadlines missed in a row so far, short of `confirm`.
    misses: u32,
    /// While down with reminders: when the next reminder is due.
    next_reminder_at: Option<String>,
    status_since: String,
    token_hint: String,
}

impl MonitorView {
    fn new(id: &str, cfg: &MonitorConfig, state: &MonitorState) -> Self {
        Self {
            id: id.into(),
            name: cfg.name.clone(),
            status: state.status,
            timeout: cfg.timeout,
            interval: cfg.interval,
            channels: cfg.channels.clone(),
            remind_every: cfg.remind_every,
            confirm: cfg.confirm,
            created_at: super::time(cfg.created_at),
            last_beat_at: state.last_beat_at.map(super::time),
            deadline: state
                .deadline
                .filter(|_| state.status == Status::Up)
                .map(super::time),
            misses: state.misses,
            next_reminder_at: state
                .deadline
                .filter(|_| state.status == Status::Down)
                .map(super::time),
            status_since: super::time(state.since),
            token_hint: cfg.token_hint.clone(),
        }
    }
}

/// The answer to a create: the monitor, plus its token and push URL.
#[derive(Debug, Serialize)]
struct Created {
    #[serde(flatten)]
    monitor: MonitorView,
    token: String,
    push_url: String,
}

/// `POST /api/v1/monitors`
pub(crate) async fn create(
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let mut f = Fields::new(body, FIELDS)?;
    let name = input::name("name", f.required("name")?)?;
    let timeout = input::seconds("timeout", f.required("timeout")?)?;
    let interval = match f.optional("interval") {
        Some(v) => input::seconds("interval", v)?,
        None => timeout,
    };
    let remind_every = match f.take("remind_every") {
        Some(v) => input::remind_every("remind_every", v)?,
        None => None,
    };
    let confirm = match f.optional("confirm") {
        Some(v) => input::confirm("confirm", v)?,
        None => 1,
    };
    let channels = match f.optional("channels") {
        Some(v) => known_channels(&app, v).await?,
        None => Vec::new(),
    };

    let id = token::new_id();
    let push_token = token::generate();
    let now = now_ms();
    let cfg = MonitorConfig {
        name,
        timeout,
        interval,
        channels,
        created_at: now,
        token_hash: token::hash(&push_token),
        token_hint: token::hint(&push_token),
        remind_every,
        confirm,
    };
    let state = MonitorState::new(now);
    app.store.create_monitor(&id, &cfg, &state).await?;
    tracing::info!(
        monitor.id = %id,
        monitor.timeout = timeout,
        monitor.remind_every = cfg.remind_every,
        monitor.confirm = cfg.confirm,
        token.hint = %cfg.token_hint,
        "monitor created"
    );
    let created = Created {
        monitor: MonitorView::new(&id, &cfg, &state),
        push_url: app.push_url(&push_token),
        token: push_token,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// `GET /api/v1/monitors`: oldest first.
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let ids = app.store.monitor_ids().await?;
    let monitors: Vec<_> = stream::iter(ids)
        .map(|id| {
            let store = app.store.clone();
            async move { store.monitor(&id).await }
        })
        .buffered(super::CONCURRENT_READS)
        .try_collect()
        .await?;
    let views: Vec<MonitorView> = monitors
        .into_iter()
        .flatten()
        .map(|m| MonitorView::new(&m.id, &m.cfg, &m.state))
        .collect();
    Ok(Json(json!({ "monitors": views })))
}

/// `GET /api/v1/monitors/{id}`
pub(crate) async fn get(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<MonitorView>, ApiError> {
    known_id(&id)?;
    let m = app
        .store
        .monitor(&id)
        .await?
        .ok_or(ApiError::NotFound("monitor not found"))?;
    Ok(Json(MonitorView::new(&m.id, &m.cfg, &m.state)))
}

/// `PATCH /api/v1/monitors/{id}`: any of name, timeout, interval, channels,
/// remind_every (`null` turns reminders off), confirm.
pub(crate) async fn update(
    State(app): State<AppState>,
    PathId(id): PathId,
    JsonObject(body): JsonObject,
) -> Result<Json<MonitorView>, ApiError> {
    let mut f = Fields::new(body, FIELDS)?;
    let name = f.take("name").map(|v| input::name("name", v)).transpose()?;
    let timeout = f
        .take("timeout")
        .map(|v| input::seconds("timeout", v))
        .transpose()?;
    let interval = f
        .take("interval")
        .map(|v| input::seconds("interval", v))
        .transpose()?;
    let remind_every = f
        .take("remind_every")
        .map(|v| input::remind_every("remind_every", v))
        .transpose()?;
    let confirm = f
        .take("confirm")
        .map(|v| input::confirm("confirm", v))
        .transpose()?;
    let channels = match f.take("channels") {
        Some(v) => Some(known_channels(&app, v).await?),
        None => None,
    };
    known_id(&id)?;

    let r = reconfigure(&app.engine, &id, |cfg| MonitorConfig {
        name: name.clone().unwrap_or_else(|| cfg.name.clone()),
        timeout: timeout.unwrap_or(cfg.timeout),
        interval: interval.unwrap_or(cfg.interval),
        channels: channels.clone().unwrap_or_else(|| cfg.channels.clone()),
        remind_every: remind_every.unwrap_or(cfg.remind_every),
        confirm: confirm.unwrap_or(cfg.confirm),
        ..cfg.clone()
    })
    .await?
    .ok_or(ApiError::NotFound("monitor not found"))?;
    tracing::info!(
        monitor.id = %id,
        monitor.timeout = r.cfg.timeout,
        monitor.remind_every = r.cfg.remind_every,
        monitor.confirm = r.cfg.confirm,
        monitor.deadline = r.state.deadline,
        "monitor updated"
    );
    Ok(Json(MonitorView::new(&id, &r.cfg, &r.state)))
}

/// `DELETE /api/v1/monitors/{id}`: the monitor, its token, deadline and history.
pub(crate) async fn delete(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    known_id(&id)?;
    let m = app
        .store
        .monitor(&id)
        .await?
        .ok_or(ApiError::NotFound("monitor not found"))?;
    if !app.store.delete_monitor(&m).await? {
        return Err(ApiError::NotFound("monitor not found"));
    }
    tracing::info!(monitor.id = %id, "monitor deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/v1/monitors/{id}/pause`
pub(crate) async fn pause(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<MonitorView>, ApiError> {
    transition(&app, &id, Input::Pause { now: now_ms() }).await
}

/// `POST /api/v1/monitors/{id}/resume`
pub(crate) async fn resume(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<MonitorView>, ApiError> {
    transition(&app, &id, Input::Resume { now: now_ms() }).await
}

/// Applies a pause or resume and answers with the monitor.
async fn transition(
    app: &AppState,
    id: &str,
    input: Input<'_>,
) -> Result<Json<MonitorView>, ApiError> {
    known_id(id)?;
    let applied = app
        .engine
        .apply(id, input)
        .await?
        .ok_or(ApiError::NotFound("monitor not found"))?;
    note_jobs(id, &applied.jobs);
    let (from, to) = (applied.before.state.status, applied.outcome.state.status);
    if from != to {
        tracing::info!(monitor.id = %id, ?from, ?to, "monitor status changed by the API");
    }
    Ok(Json(MonitorView::new(
        id,
        &applied.before.cfg,
        &applied.outcome.state,
    )))
}

/// `POST /api/v1/monitors/{id}/token`: a new push token; the old one stops
/// resolving at once (ingest caches tokens for at most 500 ms).
pub(crate) async fn rotate_token(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    known_id(&id)?;
    if app.store.monitor(&id).await?.is_none() {
        return Err(ApiError::NotFound("monitor not found"));
    }
    let push_token = token::generate();
    let hash = token::hash(&push_token);
    let hint = token::hint(&push_token);

    app.store.add_token(&hash, &id).await?;
    let written = reconfigure(&app.engine, &id, |cfg| MonitorConfig {
        token_hash: hash.clone(),
        token_hint: hint.clone(),
        ..cfg.clone()
    })
    .await;
    let r = match written {
        Ok(Some(r)) => r,
        Ok(None) => {
            forget_token(&app, &id, &hash, &hint).await;
            return Err(ApiError::NotFound("monitor not found"));
        }
        Err(e) => {
            forget_token(&app, &id, &hash, &hint).await;
            return Err(e.into());
        }
    };
    if r.before.token_hash != hash
        && let Err(e) = revoke_replaced(&app, &r.before.token_hash).await
    {
        tracing::error!(
            monitor.id = %id,
            token.hint = %r.before.token_hint,
            error = %e,
            "the replaced push token could not be revoked and still resolves"
        );
        return Err(e.into());
    }
    tracing::info!(
        monitor.id = %id,
        token.hint = %hint,
        token.old_hint = %r.before.token_hint,
        "push token rotated"
    );
    Ok(Json(json!({
        "id": id,
        "token": push_token,
        "push_url": app.push_url(&push_token),
    })))
}

/// Revokes the token a rotation replaced, retrying briefly: once the new
/// hash is in the settings nothing else remembers the old one.
async fn revoke_replaced(app: &AppState, old_hash: &str) -> Result<(), StoreError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_millis(400));
    let mut attempt = 1;
    loop {
        match app.store.revoke_token(old_hash).await {
            Ok(()) => return Ok(()),
            Err(e) if attempt >= 3 => return Err(e),
            Err(_) => {
                tokio::time::sleep(backoff.next_delay()).await;
                attempt += 1;
            }
        }
    }
}

/// Best effort: withdraws a token whose rotation did not complete.
async fn forget_token(app: &AppState, id: &str, hash: &str, hint: &str) {
    if let Err(e) = app.store.revoke_token(hash).await {
        tracing::warn!(
            monitor.id = %id,
            token.hint = %hint,
            error = %e,
            "an unused push token could not be withdrawn"
        );
    }
}

/// A 404 for ids that cannot exist, before any Redis lookup.
fn known_id(id: &str) -> Result<(), ApiError> {
    if input::plausible_id(id) {
        Ok(())
    } else {
        Err(ApiError::NotFound("monitor not found"))
    }
}

/// The `channels` field: ids of existing channels, duplicates removed.
async fn known_channels(app: &AppState, v: Value) -> Result<Vec<ChannelId>, ApiError> {
    let ids = input::id_list("channels", v, CHANNELS_MAX)?;
    for id in &ids {
        let exists = input::plausible_id(id) && app.store.channel(id).await?.is_some();
        if !exists {
            return Err(ApiError::invalid(
                "channels",
                format!("unknown channel {} in channels", quoted(id)),
            ));
        }
    }
    Ok(ids.into_iter().map(ChannelId::from).collect())
}

/// Alert jobs from an API-driven input: the state machine raises none for
/// pause, resume or retime; should one ever appear, it is already in the
/// outbox and the evaluator's sweeper publishes it.
fn note_jobs(id: &str, jobs: &[AlertJob]) {
    if !jobs.is_empty() {
        tracing::debug!(
            monitor.id = %id,
            jobs = jobs.len(),
            "an API input raised alert jobs; the evaluator's outbox sweeper will publish them"
        );
    }
}

/// What [`reconfigure`] wrote.
struct Reconfigured {
    /// The settings it replaced.
    before: MonitorConfig,
    /// The settings now in force.
    cfg: MonitorConfig,
    /// The state now in force.
    state: MonitorState,
}

/// Replaces a monitor's settings by `patch(current settings)` in one
/// state-machine step (`Input::Retime`), so a new timeout moves the deadline
/// (and new reminder settings the next reminder) in the same atomic write.
/// The patch is applied to each attempt's fresh read (`Engine::apply_with`):
/// a token rotation racing an edit is never overwritten with the stale token
/// hash, which would leave a live token nobody can revoke. Returns `None`
/// when the monitor does not exist.
async fn reconfigure(
    engine: &Engine,
    id: &str,
    patch: impl Fn(&MonitorConfig) -> MonitorConfig,
) -> Result<Option<Reconfigured>, StoreError> {
    let applied = engine
        .apply_with(id, Input::Retime { now: now_ms() }, |current| {
            Some(patch(current))
        })
        .await?;
    Ok(applied.map(|a| {
        note_jobs(id, &a.jobs);
        Reconfigured {
            before: a.before.cfg,
            cfg: a.cfg,
            state: a.outcome.state,
        }
    }))
}
