//! Alert channels: create, list, read, delete.
//!
//! Only webhooks exist so far; `email` and `slack` are refused as "not
//! supported yet". A channel still named by a monitor cannot be deleted:
//! the answer is a 409 listing those monitors, so nothing alerts into the
//! void.

use axum::{
    Json,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::{StreamExt, TryStreamExt, stream};
use lifeline_shared::{
    model::{Channel, ChannelKind},
    time::now_ms,
    token,
};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{
    AppState,
    config::is_http_url,
    error::ApiError,
    input::{self, Fields, JsonObject, PathId, quoted},
};

/// Longest webhook URL accepted.
const URL_MAX: usize = 2048;

/// A channel as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ChannelView {
    id: String,
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    url: String,
    created_at: String,
}

impl From<Channel> for ChannelView {
    fn from(c: Channel) -> Self {
        let kind = c.kind.label();
        let url = match c.kind {
            ChannelKind::Webhook { url, .. } | ChannelKind::Slack { url } => url,
            ChannelKind::Email { .. } => String::new(),
        };
        Self {
            id: c.id,
            kind,
            name: c.name,
            url,
            created_at: super::time(c.created_at),
        }
    }
}

/// The `type` of a new channel: checked first, since it decides which
/// other fields belong.
fn channel_type(body: &serde_json::Map<String, Value>) -> Result<&'static str, ApiError> {
    match body.get("type") {
        None | Some(Value::Null) => Err(ApiError::invalid("type", "type is required")),
        Some(Value::String(t)) => match t.as_str() {
            "webhook" => Ok("webhook"),
            "email" | "slack" => Err(ApiError::invalid(
                "type",
                format!("channel type \"{t}\" is not supported yet; use \"webhook\""),
            )),
            other => Err(ApiError::invalid(
                "type",
                format!(
                    "unknown channel type {}; expected \"webhook\"",
                    quoted(other)
                ),
            )),
        },
        Some(_) => Err(ApiError::invalid("type", "type must be a string")),
    }
}

/// A webhook URL: http(s), with a host.
fn webhook_url(v: Value) -> Result<String, ApiError> {
    let Value::String(url) = v else {
        return Err(ApiError::invalid("url", "url must be a string"));
    };
    let url = url.trim();
    if url.len() > URL_MAX {
        return Err(ApiError::invalid(
            "url",
            format!("url must be at most {URL_MAX} characters long"),
        ));
    }
    if !is_http_url(url) {
        return Err(ApiError::invalid(
            "url",
            "url must be an http:// or https:// URL with a host",
        ));
    }
    Ok(url.to_owned())
}

/// `POST /api/v1/channels`
pub(crate) async fn create(
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    channel_type(&body)?;
    let mut f = Fields::new(body, &["type", "name", "url"])?;
    f.take("type");
    let name = input::name("name", f.required("name")?)?;
    let url = webhook_url(f.required("url")?)?;
    let channel = Channel {
        id: token::new_id(),
        name,
        kind: ChannelKind::Webhook {
            url,
            secret: String::new(),
        },
        created_at: now_ms(),
    };
    app.store.put_channel(&channel).await?;
    tracing::info!(channel.id = %channel.id, channel.kind = "webhook", "channel created");
    Ok((StatusCode::CREATED, Json(ChannelView::from(channel))).into_response())
}

/// `GET /api/v1/channels`
pub(crate) async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let channels: Vec<ChannelView> = app
        .store
        .channels()
        .await?
        .into_iter()
        .map(ChannelView::from)
        .collect();
    Ok(Json(json!({ "channels": channels })))
}

/// `GET /api/v1/channels/{id}`
pub(crate) async fn get(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<ChannelView>, ApiError> {
    let channel = find(&app, &id).await?;
    Ok(Json(channel.into()))
}

/// `DELETE /api/v1/channels/{id}`: 409 while monitors use it.
pub(crate) async fn delete(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    find(&app, &id).await?;
    let users = monitors_using(&app, &id).await?;
    if !users.is_empty() {
        return Err(ApiError::InUse {
            message: format!(
                "channel is used by {} monitor(s); remove it from them first",
                users.len()
            ),
            monitors: users,
        });
    }
    if !app.store.delete_channel(&id).await? {
        return Err(ApiError::NotFound("channel not found"));
    }
    tracing::info!(channel.id = %id, "channel deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// Reads a channel, or answers 404.
async fn find(app: &AppState, id: &str) -> Result<Channel, ApiError> {
    if !input::plausible_id(id) {
        return Err(ApiError::NotFound("channel not found"));
    }
    app.store
        .channel(id)
        .await?
        .ok_or(ApiError::NotFound("channel not found"))
}

/// Ids of the monitors whose channels include `channel_id`, oldest first.
async fn monitors_using(app: &AppState, channel_id: &str) -> Result<Vec<String>, ApiError> {
    let ids = app.store.monitor_ids().await?;
    let monitors: Vec<_> = stream::iter(ids)
        .map(|id| {
            let store = app.store.clone();
            async move { store.monitor(&id).await }
        })
        .buffered(super::CONCURRENT_READS)
        .try_collect()
        .await?;
    Ok(monitors
        .into_iter()
        .flatten()
        .filter(|m| m.cfg.channels.iter().any(|c| c == channel_id))
        .map(|m| m.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn webhook_urls() {
        assert!(webhook_url(json!("http://127.0.0.1:9/hook")).is_ok());
        assert!(webhook_url(json!("https://hooks.example.com/a?b=c")).is_ok());
        for bad in [
            json!("ftp://x/y"),
            json!("http://"),
            json!("example.com/hook"),
            json!("http://exa mple.com"),
            json!(5),
        ] {
            assert!(webhook_url(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn types() {
        let t = |v: Value| {
            let Value::Object(m) = json!({ "type": v }) else {
                unreachable!()
            };
            channel_type(&m)
        };
        assert_eq!(t(json!("webhook")).unwrap(), "webhook");
        for bad in [
            json!("email"),
            json!("slack"),
            json!("pager"),
            json!(1),
            json!(null),
        ] {
            assert!(t(bad).is_err());
        }
    }
}
