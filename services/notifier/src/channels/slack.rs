//! Slack channel: one POST to an incoming-webhook URL.
//!
//! The payload has `text`, the notification fallback (`:red_circle:
//! nightly-backup is DOWN: …`), and `blocks`: a header with the status emoji
//! (`:red_circle:` down, `:large_green_circle:` up, `:test_tube:` test) and
//! the monitor name, a section with the reason and the message, a section of
//! fields with the times, and a context line with the monitor and alert ids.
//! User text is escaped for Slack's mrkdwn (`&`, `<`, `>`).
//!
//! Slack allows about one message per second per incoming webhook: the
//! caller takes a rate-limit slot per URL ([`destination`]) before each
//! attempt. A 429 is retried after its `Retry-After`; other 4xx (an archived
//! channel, a revoked webhook) are permanent.

use lifeline_shared::model::AlertEvent;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{SendError, Sent, http_url, post};
use crate::summary::Summary;

/// Longest text of a header block (Slack's limit).
const HEADER_MAX_CHARS: usize = 150;

/// The rate-limit key of a Slack URL: its SHA-256, hex (the URL is a secret).
pub(crate) fn destination(url: &str) -> String {
    Sha256::digest(url.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// POSTs the alert to the incoming webhook at `url` once.
pub(crate) async fn send(
    client: &reqwest::Client,
    url: &str,
    summary: &Summary,
) -> Result<Sent, SendError> {
    let url = http_url(url, "slack webhook")?;
    post(client.post(url).json(&payload(summary))).await
}

fn emoji(event: AlertEvent) -> &'static str {
    match event {
        AlertEvent::Down => ":red_circle:",
        AlertEvent::Up => ":large_green_circle:",
        AlertEvent::Test => ":test_tube:",
    }
}

/// The incoming-webhook payload.
pub(crate) fn payload(s: &Summary) -> Value {
    let emoji = emoji(s.event);
    let header: String = format!("{emoji} {}", s.headline)
        .chars()
        .take(HEADER_MAX_CHARS)
        .collect();
    let mut lines = Vec::new();
    let mut times = Vec::new();
    let mut ids = Vec::new();
    for f in &s.facts {
        let text = format!("*{}:* {}", f.label, escape(&f.value));
        match f.label {
            "Reason" | "Message" | "Value" => lines.push(text),
            "Monitor" | "Alert id" => ids.push(json!({"type": "mrkdwn", "text": text})),
            _ => times.push(json!({"type": "mrkdwn", "text": text})),
        }
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": header, "emoji": true}}),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": lines.join("\n")}}),
    ];
    if !times.is_empty() {
        blocks.push(json!({"type": "section", "fields": times}));
    }
    if !ids.is_empty() {
        blocks.push(json!({"type": "context", "elements": ids}));
    }
    json!({
        "text": format!("{emoji} {}", escape(&s.one_liner())),
        "blocks": blocks,
    })
}

/// Escapes the three characters Slack's mrkdwn gives a meaning to.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use lifeline_shared::model::{AlertJob, MonitorRef, Reason, WIRE_VERSION};

    use super::*;

    #[test]
    fn payload_has_a_fallback_text_and_blocks() {
        let job = AlertJob {
            v: WIRE_VERSION,
            alert_id: "m1.2".into(),
            event: AlertEvent::Down,
            monitor: MonitorRef {
                id: "m1".into(),
                name: "backup <prod>".into(),
            },
            reason: Reason::Timeout,
            msg: Some("a & b".into()),
            value: None,
            at: 1_700_000_060_000,
            last_beat_at: None,
            channels: vec![],
        };
        let p = payload(&Summary::new(&job, None, 1_700_000_070_000));
        assert_eq!(
            p["text"],
            ":red_circle: backup &lt;prod&gt; is DOWN: no heartbeat arrived before the deadline"
        );
        let blocks = p["blocks"].as_array().unwrap();
        assert_eq!(blocks[0]["type"], "header");
        assert_eq!(
            blocks[0]["text"]["text"],
            ":red_circle: backup <prod> is DOWN"
        );
        let section = blocks[1]["text"]["text"].as_str().unwrap();
        assert!(section.contains("*Message:* a &amp; b"), "{section}");
        let times = blocks[2]["fields"].to_string();
        assert!(times.contains("Down since"), "{times}");
        assert!(times.contains("Last beat:* never"), "{times}");
        assert!(blocks[3]["elements"].to_string().contains("m1"));
    }

    #[test]
    fn destinations_hide_the_url() {
        let d = destination("https://hooks.slack.com/services/T/B/secret");
        assert_eq!(d.len(), 64);
        assert!(!d.contains("secret"));
        assert_eq!(
            d,
            destination("https://hooks.slack.com/services/T/B/secret")
        );
    }
}
