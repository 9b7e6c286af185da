//! Alert channels: create, list, read, delete, and webhook signing-secret
//! rotation.
//!
//! Three types: `webhook` (an http(s) URL, signed with a per-channel secret),
//! `slack` (an incoming-webhook URL) and `email` (1 to 20 plain addresses).
//! Each type accepts only its own fields, so a misspelt or misplaced field
//! is a 422 naming it.
//!
//! Secrets stay secret (invariant 8 applied to channels): a webhook's
//! signing secret is generated here and shown in full only in the answer to
//! the create or rotate request, afterwards only as `secret_hint`; a Slack
//! URL, which works as a password, is shown cut after its second path
//! segment. A channel still named by a monitor cannot be deleted: the answer
//! is a 409 listing those monitors, so nothing alerts into the void.

use axum::{
    Json,
    extract::State,
    http::{StatusCode, Uri},
    response::{IntoResponse, Response},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use futures::{StreamExt, TryStreamExt, stream};
use lifeline_shared::{
    model::{Channel, ChannelId, ChannelKind, MonitorId},
    store::CommitResult,
    time::now_ms,
    token,
};
use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::{
    AppState,
    config::is_http_url,
    error::ApiError,
    input::{self, Fields, JsonObject, PathId, quoted},
};

/// Longest webhook or Slack URL accepted.
const URL_MAX: usize = 2048;
/// Most recipients of one email channel.
const RECIPIENTS_MAX: usize = 20;
/// Random bytes in a webhook signing secret.
const SECRET_BYTES: usize = 24;
/// Prefix of a webhook signing secret (Standard Webhooks).
const SECRET_PREFIX: &str = "whsec_";
/// Characters of a secret shown as its hint (`whsec_` and four more).
const SECRET_HINT_LEN: usize = 10;
/// Path segments of a Slack URL shown (`/services/T000…`).
const SLACK_SEGMENTS_SHOWN: usize = 2;

/// The type of a new channel, read first since it decides which other
/// fields belong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Webhook,
    Email,
    Slack,
}

impl Type {
    /// The fields a body of this type may carry.
    fn fields(self) -> &'static [&'static str] {
        match self {
            Self::Webhook | Self::Slack => &["type", "name", "url"],
            Self::Email => &["type", "name", "to"],
        }
    }
}

/// A channel as the API shows it: never a secret in full.
#[derive(Debug, Serialize)]
pub(crate) struct ChannelView {
    id: ChannelId,
    #[serde(rename = "type")]
    kind: &'static str,
    name: String,
    /// Webhook: the URL; Slack: the URL cut by [`redact_slack_url`].
    #[serde(skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    /// Email: the recipients.
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<Vec<String>>,
    /// Webhook: the secret's first characters (`null` for a channel created
    /// before webhooks were signed, until its secret is rotated).
    #[serde(skip_serializing_if = "Option::is_none")]
    secret_hint: Option<Option<String>>,
    created_at: String,
}

impl From<Channel> for ChannelView {
    fn from(c: Channel) -> Self {
        let kind = c.kind.label();
        let (url, to, secret_hint) = match c.kind {
            ChannelKind::Webhook { url, secret } => (Some(url), None, Some(secret_hint(&secret))),
            ChannelKind::Slack { url } => (Some(redact_slack_url(&url)), None, None),
            ChannelKind::Email { to } => (None, Some(to), None),
        };
        Self {
            id: c.id,
            kind,
            name: c.name,
            url,
            to,
            secret_hint,
            created_at: super::time(c.created_at),
        }
    }
}

/// The answer to a create: the channel, plus a webhook's signing secret.
#[derive(Serialize)]
struct Created {
    #[serde(flatten)]
    channel: ChannelView,
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

fn channel_type(body: &Map<String, Value>) -> Result<Type, ApiError> {
    match body.get("type") {
        None | Some(Value::Null) => Err(ApiError::invalid("type", "type is required")),
        Some(Value::String(t)) => match t.as_str() {
            "webhook" => Ok(Type::Webhook),
            "email" => Ok(Type::Email),
            "slack" => Ok(Type::Slack),
            other => Err(ApiError::invalid(
                "type",
                format!(
                    "unknown channel type {}; expected \"webhook\", \"email\" or \"slack\"",
                    quoted(other)
                ),
            )),
        },
        Some(_) => Err(ApiError::invalid("type", "type must be a string")),
    }
}

/// The `url` of a webhook or Slack channel: http(s), with a host.
fn http_url(v: Value) -> Result<String, ApiError> {
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

/// The `to` of an email channel: 1 to 20 addresses, duplicates removed,
/// order kept.
fn recipients(v: Value) -> Result<Vec<String>, ApiError> {
    let Value::Array(items) = v else {
        return Err(ApiError::invalid(
            "to",
            "to must be an array of email addresses",
        ));
    };
    if items.is_empty() || items.len() > RECIPIENTS_MAX {
        return Err(ApiError::invalid(
            "to",
            format!("to must list 1 to {RECIPIENTS_MAX} email addresses"),
        ));
    }
    let mut out: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(addr) = item else {
            return Err(ApiError::invalid(
                "to",
                "to must be an array of email addresses (strings)",
            ));
        };
        if !is_email_address(&addr) {
            return Err(ApiError::invalid(
                "to",
                format!(
                    "invalid email address {} in to: expected a plain address such as ops@example.com",
                    quoted(&addr)
                ),
            ));
        }
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    Ok(out)
}

/// Whether `s` is a plain `local@domain` address: a dot-atom local part
/// (letters, digits and ``!#$%&'*+/=?^_`{|}~-``, dots between), a domain of
/// letter-digit-hyphen labels; ASCII only, no display name, no quotes, no
/// whitespace — nothing that could inject a mail header.
fn is_email_address(s: &str) -> bool {
    const LOCAL_SPECIALS: &[u8] = b"!#$%&'*+/=?^_`{|}~-";
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let dot_separated = |part: &str, ok: &dyn Fn(&str) -> bool| part.split('.').all(ok);
    let local_ok = (1..=64).contains(&local.len())
        && dot_separated(local, &|atom| {
            !atom.is_empty()
                && atom
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(&b))
        });
    let domain_ok = (1..=253).contains(&domain.len())
        && dot_separated(domain, &|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    s.len() <= 254 && local_ok && domain_ok
}

/// A new signing secret: `whsec_` and the standard base64 of 24 random bytes.
fn new_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    rand::fill(&mut bytes);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The part of a secret that may be shown or logged; `None` without a secret.
fn secret_hint(secret: &str) -> Option<String> {
    (!secret.is_empty()).then(|| {
        let head: String = secret.chars().take(SECRET_HINT_LEN).collect();
        format!("{head}…")
    })
}

/// A Slack URL as shown: scheme, host and port, and the first two path
/// segments; anything after them (the part that authorises posting) and the
/// query become `…`. `https://hooks.slack.com/services/T000/B000/XXXX` is
/// shown as `https://hooks.slack.com/services/T000…`.
fn redact_slack_url(url: &str) -> String {
    let Ok(uri) = url.parse::<Uri>() else {
        return "…".to_owned();
    };
    let mut out = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("https"),
        uri.host().unwrap_or_default()
    );
    if let Some(port) = uri.port_u16() {
        out.push_str(&format!(":{port}"));
    }
    let segments: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    for segment in segments.iter().take(SLACK_SEGMENTS_SHOWN) {
        out.push('/');
        out.push_str(segment);
    }
    if segments.len() > SLACK_SEGMENTS_SHOWN || uri.query().is_some() {
        out.push('…');
    }
    out
}

/// `POST /api/v1/channels`
pub(crate) async fn create(
    State(app): State<AppState>,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let ty = channel_type(&body)?;
    let mut f = Fields::new(body, ty.fields())?;
    f.take("type");
    let name = input::name("name", f.required("name")?)?;
    let (kind, secret) = match ty {
        Type::Webhook => {
            let url = http_url(f.required("url")?)?;
            let secret = new_secret();
            (
                ChannelKind::Webhook {
                    url,
                    secret: secret.clone(),
                },
                Some(secret),
            )
        }
        Type::Slack => (
            ChannelKind::Slack {
                url: http_url(f.required("url")?)?,
            },
            None,
        ),
        Type::Email => (
            ChannelKind::Email {
                to: recipients(f.required("to")?)?,
            },
            None,
        ),
    };
    let channel = Channel {
        id: token::new_id().into(),
        name,
        kind,
        created_at: now_ms(),
    };
    app.store.put_channel(&channel).await?;
    tracing::info!(
        channel.id = %channel.id,
        channel.kind = channel.kind.label(),
        secret.hint = secret.as_deref().and_then(secret_hint),
        "channel created"
    );
    let created = Created {
        channel: channel.into(),
        secret,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
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

/// `POST /api/v1/channels/{id}/secret`: a new signing secret for a webhook
/// channel, effective for the next delivery attempt; 422 for other types.
pub(crate) async fn rotate_secret(
    State(app): State<AppState>,
    PathId(id): PathId,
) -> Result<Json<Value>, ApiError> {
    if !input::plausible_id(&id) {
        return Err(ApiError::NotFound("channel not found"));
    }
    let secret = new_secret();
    // Written only over the channel as read, so a rotation never
    // resurrects a deleted channel nor silently loses to a concurrent one.
    let old_hint = loop {
        let mut edit = app
            .store
            .channel_to_edit(&id)
            .await?
            .ok_or(ApiError::NotFound("channel not found"))?;
        let ChannelKind::Webhook {
            secret: current, ..
        } = &mut edit.channel.kind
        else {
            return Err(ApiError::invalid(
                "type",
                format!(
                    "only webhook channels have a signing secret; this channel is of type \"{}\"",
                    edit.channel.kind.label()
                ),
            ));
        };
        let old_hint = secret_hint(current);
        current.clone_from(&secret);
        match app.store.replace_channel(&edit).await? {
            CommitResult::Committed => break old_hint,
            CommitResult::Conflict => continue,
            CommitResult::Missing => return Err(ApiError::NotFound("channel not found")),
        }
    };
    tracing::info!(
        channel.id = %id,
        secret.hint = secret_hint(&secret),
        secret.old_hint = old_hint,
        "webhook signing secret rotated"
    );
    Ok(Json(json!({ "id": id, "secret": secret })))
}

/// Reads a channel, or answers 404.
pub(super) async fn find(app: &AppState, id: &str) -> Result<Channel, ApiError> {
    if !input::plausible_id(id) {
        return Err(ApiError::NotFound("channel not found"));
    }
    app.store
        .channel(id)
        .await?
        .ok_or(ApiError::NotFound("channel not found"))
}

/// Ids of the monitors whose channels include `channel_id`, oldest first.
async fn monitors_using(app: &AppState, channel_id: &str) -> Result<Vec<MonitorId>, ApiError> {
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

    fn field_of(e: ApiError) -> String {
        match e {
            ApiError::Invalid { field, .. } => field,
            other => panic!("expected a 422, got {other:?}"),
        }
    }

    #[test]
    fn http_urls() {
        assert!(http_url(json!("http://127.0.0.1:9/hook")).is_ok());
        assert!(http_url(json!("https://hooks.example.com/a?b=c")).is_ok());
        for bad in [
            json!("ftp://x/y"),
            json!("http://"),
            json!("example.com/hook"),
            json!("http://exa mple.com"),
            json!(format!("https://x/{}", "a".repeat(URL_MAX))),
            json!(5),
        ] {
            assert_eq!(field_of(http_url(bad.clone()).unwrap_err()), "url", "{bad}");
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
        assert_eq!(t(json!("webhook")).unwrap(), Type::Webhook);
        assert_eq!(t(json!("email")).unwrap(), Type::Email);
        assert_eq!(t(json!("slack")).unwrap(), Type::Slack);
        for bad in [json!("pager"), json!("Webhook"), json!(1), json!(null)] {
            assert_eq!(field_of(t(bad).unwrap_err()), "type");
        }
    }

    #[test]
    fn email_addresses() {
        for good in [
            "ops@example.com",
            "first.last+alerts@mail.example.co.uk",
            "o'brien@example.com",
            "a_b-c@sub-domain.example",
            "root@localhost",
            "x{1}|~@example.com",
        ] {
            assert!(is_email_address(good), "{good}");
        }
        for bad in [
            "",
            "ops",
            "ops@",
            "@example.com",
            "a@b@example.com",
            "Ops <ops@example.com>",
            "\"ops\"@example.com",
            "ops@example.com\r\nBcc: x@evil.example",
            "ops@example.com\n",
            " ops@example.com",
            "o ps@example.com",
            ".ops@example.com",
            "ops.@example.com",
            "o..ps@example.com",
            "ops@example..com",
            "ops@.example.com",
            "ops@example.com.",
            "ops@-example.com",
            "ops@example-.com",
            "ops@exa_mple.com",
            "ops@[127.0.0.1]",
            "opé@example.com",
            "ops@exämple.com",
            &format!("{}@example.com", "a".repeat(65)),
            &format!("ops@{}.com", "a".repeat(64)),
        ] {
            assert!(!is_email_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn recipient_lists() {
        assert_eq!(
            recipients(json!(["a@example.com", "b@example.com", "a@example.com"])).unwrap(),
            ["a@example.com", "b@example.com"]
        );
        let many: Vec<String> = (0..21).map(|i| format!("u{i}@example.com")).collect();
        for bad in [
            json!("ops@example.com"),
            json!([]),
            json!(many),
            json!([1]),
            json!(["ops@example.com", "Ops <ops@example.com>"]),
        ] {
            assert_eq!(
                field_of(recipients(bad.clone()).unwrap_err()),
                "to",
                "{bad}"
            );
        }
        let e = recipients(json!(["ok@example.com", "bad address"])).unwrap_err();
        assert!(e.to_string().contains("\"bad address\""), "{e}");
    }

    #[test]
    fn secrets_are_random_and_hinted() {
        let s = new_secret();
        assert!(s.starts_with(SECRET_PREFIX), "{s}");
        let key = STANDARD.decode(&s[SECRET_PREFIX.len()..]).unwrap();
        assert_eq!(key.len(), SECRET_BYTES);
        assert_ne!(s, new_secret());
        let hint = secret_hint(&s).unwrap();
        assert_eq!(hint, format!("{}…", &s[..10]));
        assert_eq!(secret_hint(""), None);
    }

    #[test]
    fn slack_urls_are_cut() {
        assert_eq!(
            redact_slack_url("https://hooks.slack.com/services/T000/B000/XXXXXXXX"),
            "https://hooks.slack.com/services/T000…"
        );
        assert_eq!(
            redact_slack_url("http://127.0.0.1:9000/slack?token=abc"),
            "http://127.0.0.1:9000/slack…"
        );
        assert_eq!(
            redact_slack_url("http://user:pw@127.0.0.1:9000/a/b"),
            "http://127.0.0.1:9000/a/b"
        );
        assert_eq!(redact_slack_url("not a url"), "…");
    }

    #[test]
    fn views_never_show_secrets() {
        let view = |kind| {
            serde_json::to_value(ChannelView::from(Channel {
                id: "c".into(),
                name: "n".into(),
                kind,
                created_at: 0,
            }))
            .unwrap()
        };
        let secret = new_secret();
        let v = view(ChannelKind::Webhook {
            url: "http://x/h".into(),
            secret: secret.clone(),
        });
        assert!(!v.to_string().contains(&secret[10..]), "{v}");
        assert_eq!(v["url"], "http://x/h");
        assert_eq!(v["secret_hint"], format!("{}…", &secret[..10]));
        assert!(v.get("to").is_none());

        let v = view(ChannelKind::Webhook {
            url: "http://x/h".into(),
            secret: String::new(),
        });
        assert_eq!(v["secret_hint"], Value::Null);

        let v = view(ChannelKind::Slack {
            url: "https://hooks.slack.com/services/T0/B0/SECRET".into(),
        });
        assert_eq!(v["url"], "https://hooks.slack.com/services/T0…");
        assert!(v.get("secret_hint").is_none() && v.get("to").is_none());

        let v = view(ChannelKind::Email {
            to: vec!["a@example.com".into()],
        });
        assert_eq!(v["to"], json!(["a@example.com"]));
        assert!(v.get("url").is_none() && v.get("secret_hint").is_none());
    }
}
