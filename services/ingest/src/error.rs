//! Ingest's error answers: every refusal is JSON `{"ok":false,"error":…}`
//! (invariant 7), whichever layer refuses: the handler, the body size limit,
//! the router's fallbacks for unknown paths and methods.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Why a push was not accepted.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PushError {
    /// No monitor has this token (never had, deleted, or rotated away).
    #[error("unknown push token")]
    UnknownToken,
    /// A parameter is invalid.
    #[error("invalid {field}: {reason}")]
    BadParam {
        /// The parameter.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The body could not be read or parsed.
    #[error("invalid body: {0}")]
    BadBody(String),
    /// The body is larger than the push endpoint reads.
    #[error("request body too large: at most {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: usize,
    },
    /// The token pushed more often than the configured rate allows.
    #[error("rate limit exceeded: {limit}; retry after {retry_after} s")]
    RateLimited {
        /// The limit, as people read it.
        limit: String,
        /// Whole seconds to wait, at least 1.
        retry_after: u64,
    },
    /// NATS or Redis is unreachable: the client should retry.
    #[error("temporarily unavailable, retry")]
    Unavailable,
}

impl PushError {
    /// The `reason` label of the refused-push metric.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Self::UnknownToken => "unknown_token",
            Self::BadParam { .. } | Self::BadBody(_) => "bad_request",
            Self::TooLarge { .. } => "too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::Unavailable => "unavailable",
        }
    }
}

impl IntoResponse for PushError {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Self::UnknownToken => (
                StatusCode::NOT_FOUND,
                Json(json!({"ok": false, "error": message})),
            )
                .into_response(),
            Self::BadParam { field, .. } => (
                StatusCode::BAD_REQUEST,
                Json(json!({"ok": false, "error": message, "field": field})),
            )
                .into_response(),
            Self::BadBody(_) => (
                StatusCode::BAD_REQUEST,
                Json(json!({"ok": false, "error": message})),
            )
                .into_response(),
            Self::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Json(json!({"ok": false, "error": message})),
            )
                .into_response(),
            Self::RateLimited { retry_after, .. } => {
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({"ok": false, "error": message, "retry_after": retry_after})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
                r
            }
            Self::Unavailable => {
                let mut r = (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({"ok": false, "error": message})),
                )
                    .into_response();
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}

/// Any other path.
pub(crate) async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"ok": false, "error": "not found"})),
    )
        .into_response()
}

/// A method the route does not serve (the ops routes: GET only).
pub(crate) async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"ok": false, "error": "method not allowed"})),
    )
        .into_response()
}

/// A method other than GET or POST on the push path (HEAD included: it
/// must not count as a beat).
pub(crate) async fn push_method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET, POST")],
        Json(json!({"ok": false, "error": "method not allowed: use GET or POST"})),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use serde_json::Value;

    use super::*;

    async fn render(r: Response) -> (StatusCode, Option<String>, Value) {
        let status = r.status();
        let retry = r
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn refusals_render_as_json() {
        let (s, retry, v) = render(
            PushError::RateLimited {
                limit: "at most 10 pushes per second (bursts of 20)".into(),
                retry_after: 2,
            }
            .into_response(),
        )
        .await;
        assert_eq!(
            (s, retry.as_deref()),
            (StatusCode::TOO_MANY_REQUESTS, Some("2"))
        );
        assert_eq!(
            v,
            json!({
                "ok": false,
                "error": "rate limit exceeded: at most 10 pushes per second (bursts of 20); retry after 2 s",
                "retry_after": 2,
            })
        );

        let (s, _, v) = render(PushError::TooLarge { limit: 65536 }.into_response()).await;
        assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(v["error"], "request body too large: at most 65536 bytes");

        let (s, retry, v) = render(PushError::Unavailable.into_response()).await;
        assert_eq!(
            (s, retry.as_deref()),
            (StatusCode::SERVICE_UNAVAILABLE, Some("1"))
        );
        assert_eq!(v["ok"], false);

        let r = push_method_not_allowed().await;
        assert_eq!(r.headers()[header::ALLOW], "GET, POST");
        let (s, _, v) = render(r).await;
        assert_eq!(s, StatusCode::METHOD_NOT_ALLOWED);
        assert!(v["error"].is_string());
    }
}
