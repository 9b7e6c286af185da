//! Webhook channel: one HTTP POST of the alert as JSON.
//!
//! The body is a stable public contract, built from the alert job:
//!
//! ```json
//! {"event": "monitor.down", "alert_id": "…", "monitor": {"id": "…", "name": "…"},
//!  "reason": "timeout", "msg": null, "value": null,
//!  "at": "2026-01-02T03:04:05.678Z", "last_beat_at": "2026-01-02T03:03:05.000Z"}
//! ```
//!
//! Every key is always present (`null` when empty). Headers:
//! `content-type: application/json`, `user-agent: Lifeline/<version>`. A
//! 2xx answer is success; redirects are not followed (a 3xx is a failure).
//! Webhook URLs often embed secrets, so they never appear in logs or
//! recorded errors.

use std::time::Duration;

use lifeline_shared::{
    model::{AlertJob, MonitorRef, Reason},
    time::rfc3339,
};
use serde::Serialize;

use super::{SendError, Sent, error_chain};

/// `User-Agent` of every webhook request.
const USER_AGENT: &str = concat!("Lifeline/", env!("CARGO_PKG_VERSION"));

/// The JSON body POSTed to a webhook.
#[derive(Debug, Serialize)]
pub(crate) struct Payload<'a> {
    event: &'static str,
    alert_id: &'a str,
    monitor: &'a MonitorRef,
    reason: Reason,
    msg: Option<&'a str>,
    value: Option<f64>,
    at: String,
    last_beat_at: Option<String>,
}

impl<'a> Payload<'a> {
    /// The body for `job`.
    pub(crate) fn new(job: &'a AlertJob) -> Self {
        Self {
            event: job.event.as_str(),
            alert_id: &job.alert_id,
            monitor: &job.monitor,
            reason: job.reason,
            msg: job.msg.as_deref(),
            value: job.value,
            at: rfc3339(job.at),
            last_beat_at: job.last_beat_at.map(rfc3339),
        }
    }
}

/// The webhook sender: one pooled HTTP client.
pub(crate) struct Webhook {
    client: reqwest::Client,
}

impl Webhook {
    /// A sender whose every attempt gives up after `timeout`.
    pub(crate) fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self { client })
    }

    /// POSTs `job` to `url` once.
    pub(crate) async fn send(&self, url: &str, job: &AlertJob) -> Result<Sent, SendError> {
        let url = reqwest::Url::parse(url)
            .map_err(|e| SendError::Invalid(format!("webhook url: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(SendError::Invalid(format!(
                "webhook url scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        let response = self
            .client
            .post(url)
            .json(&Payload::new(job))
            .send()
            .await
            .map_err(|e| SendError::Transport(error_chain(&e.without_url())))?;
        let status = response.status();
        if status.is_success() {
            Ok(Sent {
                http_status: Some(status.as_u16()),
            })
        } else {
            Err(SendError::Status(status.as_u16()))
        }
    }
}

#[cfg(test)]
mod tests {
    use lifeline_shared::model::{AlertEvent, WIRE_VERSION};
    use serde_json::json;

    use super::*;

    fn job() -> AlertJob {
        AlertJob {
            v: WIRE_VERSION,
            alert_id: "m1.3".into(),
            event: AlertEvent::Up,
            monitor: MonitorRef {
                id: "m1".into(),
                name: "nightly backup".into(),
            },
            reason: Reason::Recovered,
            msg: Some("ok again".into()),
            value: Some(1.5),
            at: 1_700_000_000_123,
            last_beat_at: None,
            channels: vec!["c1".into()],
        }
    }

    #[test]
    fn payload_has_every_documented_key() {
        let body = serde_json::to_value(Payload::new(&job())).unwrap();
        assert_eq!(
            body,
            json!({
                "event": "monitor.up",
                "alert_id": "m1.3",
                "monitor": {"id": "m1", "name": "nightly backup"},
                "reason": "recovered",
                "msg": "ok again",
                "value": 1.5,
                "at": "2023-11-14T22:13:20.123Z",
                "last_beat_at": null,
            })
        );
    }

    #[test]
    fn empty_fields_are_null() {
        let mut j = job();
        j.msg = None;
        j.value = None;
        j.last_beat_at = Some(1_700_000_000_000);
        let body = serde_json::to_value(Payload::new(&j)).unwrap();
        assert_eq!(body["msg"], serde_json::Value::Null);
        assert_eq!(body["value"], serde_json::Value::Null);
        assert_eq!(body["last_beat_at"], "2023-11-14T22:13:20.000Z");
    }

    #[tokio::test]
    async fn non_http_urls_are_refused_without_a_request() {
        let w = Webhook::new(Duration::from_secs(1)).unwrap();
        let err = w.send("ftp://example.com/x", &job()).await.unwrap_err();
        assert!(!err.retryable(), "{err}");
        let err = w.send("not a url", &job()).await.unwrap_err();
        assert!(!err.retryable(), "{err}");
    }
}
