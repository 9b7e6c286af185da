//! Ingest's error answers: every refusal is JSON `{"ok":false,"error":…}`.

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

/// A method other than GET or POST on the push path.
pub(crate) async fn method_not_allowed() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        Json(json!({"ok": false, "error": "method not allowed: use GET or POST"})),
    )
        .into_response()
}
