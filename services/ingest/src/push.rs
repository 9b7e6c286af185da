//! The push handler: parse and validate, resolve the token, publish, answer.
//!
//! Parameters come from the query string and, for a POST, from a form or
//! JSON body (a body field overrides the same query parameter). Unknown
//! parameters are ignored, as push clients add their own.
//!
//! Checks run cheapest first, and nothing is published unless all pass:
//! body size (else 413) and syntax, parameters (else 400), token
//! plausibility and lookup (a short-lived cache before Redis; else 404), the
//! push path being up (else 503), the token's rate limit (else 429). `HEAD`
//! is refused (405): a link checker or uptime probe sending it must not
//! count as a beat.

use axum::{
    Json,
    body::Bytes,
    extract::{
        Path, RawQuery, State,
        rejection::{BytesRejection, PathRejection},
    },
    http::{HeaderMap, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use lifeline_shared::{
    metric,
    model::{BeatEvent, BeatStatus, MSG_MAX_BYTES, WIRE_VERSION},
    time::now_ms,
    token,
};
use serde_json::{Value, json};

use crate::{
    AppState,
    error::{self, PushError},
    publish,
};

/// Largest push body read (larger: 413).
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// The raw parameters of a push, before validation.
#[derive(Debug, Default, PartialEq)]
struct RawParams {
    status: Option<String>,
    msg: Option<String>,
    value: Option<String>,
    ping: Option<String>,
}

impl RawParams {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "status" => self.status = Some(value),
            "msg" => self.msg = Some(value),
            "value" => self.value = Some(value),
            "ping" => self.ping = Some(value),
            _ => {}
        }
    }

    fn from_form(bytes: &[u8], into: &mut Self) {
        for (k, v) in form_urlencoded::parse(bytes) {
            into.set(&k, v.into_owned());
        }
    }

    fn from_json(bytes: &[u8], into: &mut Self) -> Result<(), PushError> {
        let value: Value = serde_json::from_slice(bytes)
            .map_err(|e| PushError::BadBody(format!("not JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(PushError::BadBody("JSON body must be an object".into()));
        };
        for (k, v) in map {
            let s = match v {
                Value::Null => continue,
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                other => other.to_string(),
            };
            into.set(&k, s);
        }
        Ok(())
    }
}

/// Validated parameters.
#[derive(Debug, PartialEq)]
struct Params {
    status: BeatStatus,
    msg: Option<String>,
    msg_truncated: bool,
    value: Option<f64>,
}

fn validate(raw: RawParams) -> Result<Params, PushError> {
    let status = match raw.status.as_deref().map(str::trim) {
        None | Some("") => BeatStatus::Up,
        Some(s) if s.eq_ignore_ascii_case("up") => BeatStatus::Up,
        Some(s) if s.eq_ignore_ascii_case("down") => BeatStatus::Down,
        Some(_) => {
            return Err(PushError::BadParam {
                field: "status",
                reason: "must be up or down".into(),
            });
        }
    };
    let (field, value) = match (raw.value, raw.ping) {
        (Some(v), _) if !v.trim().is_empty() => ("value", Some(v)),
        (_, Some(p)) if !p.trim().is_empty() => ("ping", Some(p)),
        _ => ("value", None),
    };
    let value = match value {
        None => None,
        Some(v) => match v.trim().parse::<f64>() {
            Ok(n) if n.is_finite() => Some(n),
            _ => {
                return Err(PushError::BadParam {
                    field,
                    reason: "must be a finite number".into(),
                });
            }
        },
    };
    let (msg, msg_truncated) = match raw.msg {
        None => (None, false),
        Some(m) if m.is_empty() => (None, false),
        Some(mut m) => {
            let truncated = m.len() > MSG_MAX_BYTES;
            if truncated {
                let mut cut = MSG_MAX_BYTES;
                while !m.is_char_boundary(cut) {
                    cut -= 1;
                }
                m.truncate(cut);
            }
            (Some(m), truncated)
        }
    };
    Ok(Params {
        status,
        msg,
        msg_truncated,
        value,
    })
}

fn parse_request(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Params, PushError> {
    let mut raw = RawParams::default();
    if let Some(q) = query {
        RawParams::from_form(q.as_bytes(), &mut raw);
    }
    if !body.is_empty() {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            RawParams::from_json(body, &mut raw)?;
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            RawParams::from_form(body, &mut raw);
        }
    }
    validate(raw)
}

/// `GET|POST /api/push/{token}`.
pub(crate) async fn push(
    State(state): State<AppState>,
    method: Method,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if method == Method::HEAD {
        return error::push_method_not_allowed().await;
    }
    match accept(&state, path, query.as_deref(), &headers, body).await {
        Ok(()) => {
            metrics::counter!(metric::INGEST_PUSHES, "result" => "accepted").increment(1);
            Json(json!({"ok": true})).into_response()
        }
        Err(e) => {
            metrics::counter!(metric::INGEST_PUSHES, "result" => e.label()).increment(1);
            e.into_response()
        }
    }
}

async fn accept(
    state: &AppState,
    path: Result<Path<String>, PathRejection>,
    query: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(), PushError> {
    let Ok(Path(push_token)) = path else {
        return Err(PushError::UnknownToken);
    };
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            PushError::TooLarge { limit: MAX_BODY }
        } else {
            PushError::BadBody(e.body_text())
        }
    })?;
    if body.len() > MAX_BODY {
        return Err(PushError::TooLarge { limit: MAX_BODY });
    }
    let params = parse_request(query, headers, &body)?;
    if !token::plausible(&push_token) {
        return Err(PushError::UnknownToken);
    }
    let monitor_id = resolve(state, &push_token).await?;
    let event = BeatEvent {
        v: WIRE_VERSION,
        monitor_id: monitor_id.into(),
        status: params.status,
        msg: params.msg,
        msg_truncated: params.msg_truncated,
        value: params.value,
        at: now_ms(),
    };
    publish(state, &event).await
}

async fn resolve(state: &AppState, push_token: &str) -> Result<String, PushError> {
    let inner = &state.inner;
    let id = match inner.tokens.get(push_token) {
        Some(cached) => cached,
        None => {
            let seen = inner.tokens.generation();
            let found = inner
                .store
                .monitor_for_token(&token::hash(push_token))
                .await
                .map_err(|error| {
                    tracing::warn!(%error, "token lookup failed: answering 503");
                    PushError::Unavailable
                })?;
            inner.tokens.put(push_token, found.clone(), seen);
            found
        }
    };
    id.ok_or(PushError::UnknownToken)
}

async fn publish(state: &AppState, event: &BeatEvent) -> Result<(), PushError> {
    let inner = &state.inner;
    // While NATS is unreachable a publish would only wait for its ack to
    // time out, and could still be sent after the 503 once NATS is back:
    // refuse at once instead.
    if !matches!(
        inner.nats.connection_state(),
        async_nats::connection::State::Connected
    ) {
        return Err(PushError::Unavailable);
    }
    // After an outage, a pulse must precede the first beat (see `pulse`).
    if !inner.pulser.ensure_fresh().await {
        tracing::warn!(monitor.id = %event.monitor_id, "push path down (no pulse gets through): answering 503");
        return Err(PushError::Unavailable);
    }
    // Last, so a push refused for another reason (NATS down) does not use
    // up the token's allowance.
    if let Some(limiter) = &inner.limiter
        && let Err(refused) = limiter.check(&event.monitor_id).await
    {
        tracing::debug!(monitor.id = %event.monitor_id, "push over the rate limit refused");
        return Err(PushError::RateLimited {
            limit: limiter.limit().to_string(),
            retry_after: refused.retry_after_secs(),
        });
    }
    let payload = serde_json::to_vec(event).expect("beat events serialize");
    match inner.batcher.publish(payload).await {
        Ok(()) => Ok(()),
        Err(publish::NotPublished::Unacknowledged) => Err(PushError::Unavailable),
        Err(publish::NotPublished::Closed) => {
            tracing::warn!(monitor.id = %event.monitor_id, "publisher stopped (shutting down): answering 503");
            Err(PushError::Unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(q: &str) -> Result<Params, PushError> {
        parse_request(Some(q), &HeaderMap::new(), b"")
    }

    #[test]
    fn defaults_to_up() {
        let p = parse("").unwrap();
        assert_eq!(p.status, BeatStatus::Up);
        assert_eq!((p.msg, p.value), (None, None));
    }

    #[test]
    fn reads_reference_parameters() {
        let p = parse("status=down&msg=error-Connection%20refused%3A%20db&value=123").unwrap();
        assert_eq!(p.status, BeatStatus::Down);
        assert_eq!(p.msg.as_deref(), Some("error-Connection refused: db"));
        assert_eq!(p.value, Some(123.0));
        assert_eq!(parse("status=UP").unwrap().status, BeatStatus::Up);
    }

    #[test]
    fn refuses_bad_status_and_value() {
        for q in [
            "status=maybe",
            "value=abc",
            "value=NaN",
            "value=inf",
            "value=1e400",
            "ping=x",
        ] {
            let e = parse(q).unwrap_err();
            assert!(matches!(e, PushError::BadParam { .. }), "{q}: {e:?}");
        }
        assert!(matches!(
            parse("ping=x").unwrap_err(),
            PushError::BadParam { field: "ping", .. }
        ));
    }

    #[test]
    fn ping_is_an_alias_of_value() {
        assert_eq!(parse("status=up&msg=OK&ping=").unwrap().value, None);
        assert_eq!(parse("ping=12.5").unwrap().value, Some(12.5));
    }

    #[test]
    fn long_messages_are_truncated_on_a_char_boundary() {
        let long = "é".repeat(1000);
        let q = format!(
            "msg={}",
            form_urlencoded::byte_serialize(long.as_bytes()).collect::<String>()
        );
        let p = parse(&q).unwrap();
        assert!(p.msg_truncated);
        let m = p.msg.unwrap();
        assert!(m.len() <= MSG_MAX_BYTES && m.len() >= MSG_MAX_BYTES - 1);
    }

    #[test]
    fn body_fields_override_query() {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let p = parse_request(
            Some("status=up"),
            &h,
            br#"{"status":"down","msg":"x","value":3}"#,
        )
        .unwrap();
        assert_eq!(
            (p.status, p.msg.as_deref(), p.value),
            (BeatStatus::Down, Some("x"), Some(3.0))
        );
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let p = parse_request(None, &h, b"status=down&msg=sync-failed").unwrap();
        assert_eq!(p.status, BeatStatus::Down);
        assert!(
            parse_request(
                None,
                &{
                    let mut j = HeaderMap::new();
                    j.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
                    j
                },
                b"{not json"
            )
            .is_err()
        );
    }

    #[test]
    fn invalid_utf8_in_query_does_not_panic() {
        let p = parse("msg=%FF%FE&status=up").unwrap();
        assert!(p.msg.is_some());
    }
}
