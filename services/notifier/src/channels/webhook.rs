//! Webhook channel: one HTTP POST of the alert as JSON, signed per the
//! Standard Webhooks convention.
//!
//! The body is a stable public contract, built from the alert job:
//!
//! ```json
//! {"event": "monitor.down", "alert_id": "…", "monitor": {"id": "…", "name": "…"},
//!  "reason": "timeout", "msg": null, "value": null,
//!  "at": "2026-01-02T03:04:05.678Z", "last_beat_at": "2026-01-02T03:03:05.000Z"}
//! ```
//!
//! `event` is `monitor.down`, `monitor.up` or `test`. Every key is always
//! present (`null` when empty). Headers:
//!
//! * `webhook-id`: the delivery id, the same on every attempt of one
//!   delivery (alert, channel), so a receiver drops duplicates with it;
//! * `webhook-timestamp`: when this attempt was signed, in Unix seconds;
//! * `webhook-signature`: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`,
//!   keyed with the base64-decoding of the channel secret after `whsec_`
//!   (absent for a channel created without a secret);
//! * `content-type: application/json`, `user-agent: Lifeline/<version>`.
//!
//! A 2xx answer is success; redirects are not followed (a 3xx is a
//! permanent failure). Webhook URLs often embed secrets, so they never
//! appear in logs or recorded errors; nor does the secret.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use lifeline_shared::{
    model::{AlertJob, DeliveryJob, MonitorRef, Reason},
    time::{now_ms, rfc3339},
};
use serde::Serialize;
use sha2::Sha256;

use super::{SendError, Sent, http_url, post};

/// Prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

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

/// The signing key of a `whsec_<base64>` secret (the prefix is optional,
/// as in the Standard Webhooks libraries).
pub(crate) fn decode_secret(secret: &str) -> Result<Vec<u8>, SendError> {
    let encoded = secret.strip_prefix(SECRET_PREFIX).unwrap_or(secret);
    match STANDARD.decode(encoded) {
        Ok(key) if !key.is_empty() => Ok(key),
        _ => Err(SendError::Invalid(
            "webhook secret is not whsec_ followed by base64".into(),
        )),
    }
}

/// The `webhook-signature` value of `body` sent as `id` at `timestamp`.
pub(crate) fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// POSTs `job` to `url` once, signed with `secret` unless it is empty.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    secret: &str,
    job: &DeliveryJob,
) -> Result<Sent, SendError> {
    let url = http_url(url, "webhook")?;
    let key = if secret.is_empty() {
        None
    } else {
        Some(decode_secret(secret)?)
    };
    let body = serde_json::to_vec(&Payload::new(&job.alert)).expect("payloads serialize");
    let timestamp = now_ms().div_euclid(1000);
    let mut request = client
        .post(url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", job.delivery_id.as_str())
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = key {
        request = request.header(
            "webhook-signature",
            sign(&key, &job.delivery_id, timestamp, &body),
        );
    }
    post(request.body(body)).await
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

    #[test]
    fn test_alerts_say_so() {
        let mut j = job();
        j.event = AlertEvent::Test;
        j.reason = Reason::Test;
        let body = serde_json::to_value(Payload::new(&j)).unwrap();
        assert_eq!(body["event"], "test");
        assert_eq!(body["reason"], "test");
    }

    #[test]
    fn signs_like_the_standard_webhooks_test_vector() {
        // The test vector of the Standard Webhooks specification.
        let key = decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            sign(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
        // Without the prefix, the same key.
        assert_eq!(
            decode_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            key
        );
    }

    #[test]
    fn bad_secrets_are_permanent_failures() {
        for bad in ["whsec_", "whsec_not base64!", "whsec_%%%"] {
            let err = decode_secret(bad).unwrap_err();
            assert!(!err.retryable(), "{bad}");
            // A fixed text: the secret itself never ends up in a record.
            assert_eq!(
                err.to_string(),
                "invalid channel settings: webhook secret is not whsec_ followed by base64"
            );
        }
    }

    #[tokio::test]
    async fn non_http_urls_are_refused_without_a_request() {
        let client = reqwest::Client::new();
        let dj = DeliveryJob::new(job(), &"c1".into());
        let err = send(&client, "ftp://example.com/x", "", &dj)
            .await
            .unwrap_err();
        assert!(!err.retryable(), "{err}");
        let err = send(&client, "not a url", "", &dj).await.unwrap_err();
        assert!(!err.retryable(), "{err}");
    }
}
