//! The API's one error type and how it renders (invariant 7: bad input gets a
//! clear 4xx with a JSON body).
//!
//! Every refusal is JSON: `{"error": "...", "field": "timeout"}` where a
//! field is to blame, `{"error": "monitor not found"}` for an unknown id.
//! Redis being unreachable is a 503 `{"error": "storage unavailable"}`,
//! RabbitMQ a 503 `{"error": "message broker unavailable"}` (the caller may
//! retry); a test alert no notifier answered in time is a 504 carrying its
//! `alert_id`; anything else unexpected is an opaque 500. These are logged
//! here, once, with the cause; 4xx are the caller's business and are not
//! logged.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use lifeline_shared::{model::MonitorId, store::StoreError};
use serde_json::{Map, Value, json};

/// Why a request was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key, or the wrong one (401).
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The body or query cannot be read at all (400).
    #[error("{message}")]
    BadRequest {
        /// What is wrong.
        message: String,
        /// The query parameter or field to blame, if any.
        field: Option<String>,
    },
    /// A well-formed body with an invalid field (422).
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The field to blame.
        field: String,
    },
    /// No such monitor, channel, alert or route (404).
    #[error("{0}")]
    NotFound(&'static str),
    /// The route exists but not for this method (405).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The channel is still used by these monitors (409).
    #[error("{message}")]
    InUse {
        /// What is wrong.
        message: String,
        /// Ids of the monitors using the channel.
        monitors: Vec<MonitorId>,
    },
    /// The body exceeds the size limit (413).
    #[error("request body too large")]
    TooLarge,
    /// Redis unreachable or not serving (503).
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] StoreError),
    /// RabbitMQ unreachable, or it did not confirm a publish in time (503).
    #[error("message broker unavailable: {0}")]
    BrokerUnavailable(String),
    /// A test alert was sent but no outcome was recorded in time (504).
    #[error("no notifier answered within {}", seconds(*waited))]
    NoAnswer {
        /// The test alert, to look up later.
        alert_id: String,
        /// How long the API waited.
        waited: Duration,
    },
    /// The service is stopping while a test alert waits for its outcome (503).
    #[error("the API is shutting down")]
    ShuttingDown {
        /// The test alert, to look up later.
        alert_id: String,
    },
    /// Anything else (500, details logged only).
    #[error("internal error: {0}")]
    Internal(#[source] StoreError),
}

impl ApiError {
    /// A 422 naming `field`.
    pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            field: field.into(),
        }
    }

    /// A 400 about the request as a whole.
    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: None,
        }
    }

    /// A 400 naming a query parameter.
    pub(crate) fn bad_param(field: &str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            field: Some(field.to_owned()),
        }
    }

    /// The HTTP status this error answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::InUse { .. } => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) | Self::BrokerUnavailable(_) | Self::ShuttingDown { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NoAnswer { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// A wait as people say it: `30 s`, `1.5 s`, `250 ms`.
fn seconds(d: Duration) -> String {
    let ms = d.as_millis();
    if ms >= 1000 && ms.is_multiple_of(100) {
        let s = format!("{:.1}", ms as f64 / 1000.0);
        format!("{} s", s.trim_end_matches(".0"))
    } else {
        format!("{ms} ms")
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e)
        } else {
            Self::Internal(e)
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = Map::new();
        match &self {
            Self::Unavailable(e) => {
                tracing::warn!(error = %e, "storage unavailable, answering 503");
                body.insert("error".into(), json!("storage unavailable"));
            }
            Self::BrokerUnavailable(e) => {
                tracing::warn!(error = %e, "message broker unavailable, answering 503");
                body.insert("error".into(), json!("message broker unavailable"));
            }
            Self::NoAnswer { alert_id, waited } => {
                tracing::warn!(
                    alert.id = %alert_id,
                    waited_ms = waited.as_millis() as u64,
                    "no notifier reported the test alert's outcome, answering 504"
                );
                body.insert("error".into(), json!(self.to_string()));
                body.insert("alert_id".into(), json!(alert_id));
            }
            Self::ShuttingDown { alert_id } => {
                body.insert("error".into(), json!(self.to_string()));
                body.insert("alert_id".into(), json!(alert_id));
            }
            Self::Internal(e) => {
                tracing::error!(error = %e, "request failed, answering 500");
                body.insert("error".into(), json!("internal error"));
            }
            Self::BadRequest { message, field } => {
                body.insert("error".into(), json!(message));
                if let Some(field) = field {
                    body.insert("field".into(), json!(field));
                }
            }
            Self::Invalid { message, field } => {
                body.insert("error".into(), json!(message));
                body.insert("field".into(), json!(field));
            }
            Self::InUse { message, monitors } => {
                body.insert("error".into(), json!(message));
                body.insert("monitors".into(), json!(monitors));
            }
            other => {
                body.insert("error".into(), json!(other.to_string()));
            }
        }
        let mut response = (status, Json(Value::Object(body))).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;

    use super::*;

    #[test]
    fn waits_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5 s");
        assert_eq!(seconds(Duration::from_millis(250)), "250 ms");
        assert_eq!(seconds(Duration::from_millis(1234)), "1234 ms");
    }

    async fn render(e: ApiError) -> (StatusCode, Value) {
        let r = e.into_response();
        let status = r.status();
        let bytes = to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap())
    }

    /// What the store says when nothing listens on Redis's port.
    async fn unreachable_redis() -> StoreError {
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let names = lifeline_shared::names::Names::new("api-error-test").unwrap();
        let url = format!("redis://127.0.0.1:{port}");
        let store = lifeline_shared::store::Store::open(&url, names, Default::default()).unwrap();
        let e = store.ping().await.unwrap_err();
        assert!(e.is_unavailable(), "{e}");
        e
    }

    #[tokio::test]
    async fn renders_json_bodies() {
        let (s, v) = render(ApiError::invalid("timeout", "bad")).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(v, json!({"error": "bad", "field": "timeout"}));

        let (s, v) = render(ApiError::NotFound("monitor not found")).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert_eq!(v, json!({"error": "monitor not found"}));

        let (s, v) = render(unreachable_redis().await.into()).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v, json!({"error": "storage unavailable"}));

        let (s, v) = render(ApiError::BrokerUnavailable("refused".into())).await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(v, json!({"error": "message broker unavailable"}));

        let (s, v) = render(ApiError::NoAnswer {
            alert_id: "test.x".into(),
            waited: Duration::from_secs(30),
        })
        .await;
        assert_eq!(s, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            v,
            json!({"error": "no notifier answered within 30 s", "alert_id": "test.x"})
        );

        let corrupt = StoreError::Corrupt {
            key: "k".into(),
            error: serde_json::from_str::<Value>("{").unwrap_err(),
        };
        let (s, v) = render(corrupt.into()).await;
        assert_eq!(s, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(v, json!({"error": "internal error"}));
    }
}
