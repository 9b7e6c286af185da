//! The data Lifeline moves and stores, with serde_json as the wire format.
//!
//! [`BeatEvent`] travels on NATS from ingest to the evaluator and
//! [`AlertJob`] on RabbitMQ from the evaluator to the notifier; both carry a
//! version field `v` so a newer producer can be detected by an older
//! consumer. Times are milliseconds since the Unix epoch.

use serde::{Deserialize, Serialize};

pub use crate::ids::{AlertId, ChannelId, DeliveryId, MonitorId};

/// Wire version of [`BeatEvent`] and [`AlertJob`].
pub const WIRE_VERSION: u8 = 1;

/// What a push reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BeatStatus {
    /// Healthy (the default).
    Up,
    /// The job reports a failure: alert at once.
    Down,
}

/// One accepted push, published by ingest once per 2xx answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeatEvent {
    /// Wire version.
    pub v: u8,
    /// The monitor the push token resolved to.
    pub monitor_id: MonitorId,
    /// Reported status.
    pub status: BeatStatus,
    /// Free text, at most [`MSG_MAX_BYTES`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// Whether `msg` was cut to fit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub msg_truncated: bool,
    /// A finite number to track.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// When ingest received the push (ms).
    pub at: i64,
}

/// Longest message kept with a beat; longer ones are truncated, never refused.
pub const MSG_MAX_BYTES: usize = 1024;

/// Beats ingest packs into one JetStream message, at most.
pub const BATCH_MAX_BEATS: usize = 512;

/// Bytes of beat events ingest packs into one JetStream message, at most
/// (NATS refuses messages over 1 MiB by default).
pub const BATCH_MAX_BYTES: usize = 256 * 1024;

/// Several accepted pushes in one JetStream message: ingest answers each of
/// them 200 once JetStream acknowledged the message that carries it.
/// Packing pushes that arrive together into one message (a group commit)
/// costs the push path one stored message, one acknowledgement and one
/// evaluator ack per batch instead of per push.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeatBatch {
    /// Wire version.
    pub v: u8,
    /// The beats, in the order ingest accepted them.
    pub beats: Vec<BeatEvent>,
}

impl BeatBatch {
    /// A batch's JSON from beat events already serialized one by one, so the
    /// request handlers (in parallel) do the serializing, not the one task
    /// that packs batches.
    pub fn json_from_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
        let mut out = Vec::with_capacity(BATCH_MAX_BYTES / 8);
        out.extend_from_slice(br#"{"v":"#);
        out.extend_from_slice(WIRE_VERSION.to_string().as_bytes());
        out.extend_from_slice(br#","beats":["#);
        for (i, part) in parts.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(part);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// The sequence number of the `index`-th beat of the JetStream message at
/// `stream_seq`: it orders beats as they were accepted (stream order, then
/// batch order), and a redelivered message gives its beats the same numbers,
/// so the evaluator recognises them.
pub fn beat_seq(stream_seq: u64, index: usize) -> u64 {
    debug_assert!(index < BATCH_MAX_BEATS);
    (stream_seq << 10) | index as u64
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A pulse: published by every ingest replica every 250 ms into the beats
/// stream, so evaluators know up to when the push path worked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pulse {
    /// Wire version.
    pub v: u8,
    /// When it was sent (ms).
    pub at: i64,
}

/// A window during which the push path was down (no pulse got through):
/// monitors could not beat, so deadlines inside it are extended by its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outage {
    /// Last pulse before the gap (ms).
    pub start: i64,
    /// First pulse after the gap (ms).
    pub end: i64,
}

/// A beat as kept in a monitor's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BeatRecord {
    /// The order in which beats were accepted: see [`beat_seq`].
    pub seq: u64,
    /// When ingest received it (ms).
    pub at: i64,
    /// Reported status.
    pub status: BeatStatus,
    /// Message, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// Whether the message was truncated.
    #[serde(default, skip_serializing_if = "is_false")]
    pub msg_truncated: bool,
    /// Value, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Applied after a newer beat had already been applied (it was recorded
    /// but did not change the state).
    #[serde(default, skip_serializing_if = "is_false")]
    pub late: bool,
}

/// A monitor's status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Created, no beat yet: never alerts.
    New,
    /// Beating within its timeout.
    Up,
    /// Missed its deadline or reported down.
    Down,
    /// Beats are recorded, nothing alerts.
    Paused,
}

/// Why a monitor changed state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// First beat of a new (or resumed, never-beaten) monitor.
    FirstBeat,
    /// No beat before the deadline.
    Timeout,
    /// A `status=down` beat.
    Reported,
    /// An up beat after being down.
    Recovered,
    /// Paused through the API.
    Paused,
    /// Resumed through the API.
    Resumed,
    /// A test alert sent through `POST /api/v1/channels/{id}/test`.
    Test,
    /// Still down: a repeated `monitor.down` alert, every `remind_every`
    /// seconds while the monitor stays down.
    Reminder,
}

/// The kind of alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AlertEvent {
    /// The monitor went down.
    #[serde(rename = "monitor.down")]
    Down,
    /// The monitor recovered.
    #[serde(rename = "monitor.up")]
    Up,
    /// A test alert, sent on request through one channel.
    #[serde(rename = "test")]
    Test,
}

impl AlertEvent {
    /// `monitor.down` or `monitor.up`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Down => "monitor.down",
            Self::Up => "monitor.up",
            Self::Test => "test",
        }
    }
}

/// A monitor's settings, written by the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorConfig {
    /// Descriptive name.
    pub name: String,
    /// Longest wait between beats, in seconds.
    pub timeout: u32,
    /// Recommended push interval, in seconds.
    pub interval: u32,
    /// Channel ids alerted on state changes.
    pub channels: Vec<ChannelId>,
    /// Creation time (ms).
    pub created_at: i64,
    /// SHA-256 (hex) of the current push token: the token itself is never stored.
    pub token_hash: String,
    /// The token's first characters, to tell tokens apart.
    pub token_hint: String,
    /// Seconds between `monitor.down` reminders while the monitor stays
    /// down; `None` (the default): one down alert only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remind_every: Option<u32>,
    /// Deadlines that must be missed in a row before a timeout alerts, 1 (the
    /// default) to [`CONFIRM_MAX`]; a `status=down` report alerts at once.
    #[serde(default = "confirm_default")]
    pub confirm: u32,
}

/// Largest [`MonitorConfig::confirm`].
pub const CONFIRM_MAX: u32 = 10;

fn confirm_default() -> u32 {
    1
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A monitor's evaluated state, written only through the state machine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorState {
    /// Current status.
    pub status: Status,
    /// When the evaluator acts next if no beat comes (ms): while up, the
    /// next deadline (a timeout, or one more miss of a `confirm` count);
    /// while down with reminders, the next reminder; otherwise none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<i64>,
    /// Newest applied beat (ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_beat_at: Option<i64>,
    /// Stream sequence of the newest applied beat.
    #[serde(default)]
    pub last_seq: u64,
    /// When the current status began (ms).
    pub since: i64,
    /// Number of state changes so far; numbers alert ids.
    #[serde(default)]
    pub changes: u64,
    /// Deadlines missed in a row while up, short of the monitor's `confirm`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub misses: u32,
}

impl MonitorState {
    /// The state of a monitor created at `now`.
    pub fn new(now: i64) -> Self {
        Self {
            status: Status::New,
            deadline: None,
            last_beat_at: None,
            last_seq: 0,
            since: now,
            changes: 0,
            misses: 0,
        }
    }
}

/// A monitor as stored: settings, state, and the version every write checks.
#[derive(Clone, Debug, PartialEq)]
pub struct Monitor {
    /// Monitor id.
    pub id: MonitorId,
    /// Settings.
    pub cfg: MonitorConfig,
    /// Evaluated state.
    pub state: MonitorState,
    /// Incremented by every write; a write expecting another version fails.
    pub ver: u64,
}

/// One state change, as kept in a monitor's history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    /// When it took effect (ms): for a timeout, the deadline itself; for a
    /// reminder (down to down), when it was due.
    pub at: i64,
    /// Status before.
    pub from: Status,
    /// Status after.
    pub to: Status,
    /// Why.
    pub reason: Reason,
    /// The beat's message, for `reported` and `recovered`; for a `timeout`
    /// that needed several missed deadlines, how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msg: Option<String>,
    /// The alert this change raised, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alert_id: Option<AlertId>,
}

/// Monitor identity carried by an alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRef {
    /// Monitor id.
    pub id: MonitorId,
    /// Monitor name at the time of the alert.
    pub name: String,
}

/// One alert job: published to RabbitMQ once per alerting state change.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertJob {
    /// Wire version.
    pub v: u8,
    /// Unique and stable: a job republished after a crash keeps its id, so
    /// the notifier delivers it to each channel once.
    pub alert_id: AlertId,
    /// Down or up.
    pub event: AlertEvent,
    /// The monitor.
    pub monitor: MonitorRef,
    /// Why.
    pub reason: Reason,
    /// The beat's message, if any (for a `timeout` that needed several
    /// missed deadlines, how many).
    #[serde(default)]
    pub msg: Option<String>,
    /// The beat's value, if any.
    #[serde(default)]
    pub value: Option<f64>,
    /// When the state changed (ms): for a reminder, when the monitor went
    /// down.
    pub at: i64,
    /// Newest beat before the change (ms).
    #[serde(default)]
    pub last_beat_at: Option<i64>,
    /// Channel ids to deliver to, as configured at the time of the change.
    pub channels: Vec<ChannelId>,
}

/// Where a channel delivers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ChannelKind {
    /// HTTP POST of the alert as JSON, signed per Standard Webhooks.
    Webhook {
        /// Receiver URL (http or https).
        url: String,
        /// Signing secret `whsec_<base64>`; shown only when created or rotated.
        #[serde(default)]
        secret: String,
    },
    /// An email through the configured SMTP server.
    Email {
        /// Recipients.
        to: Vec<String>,
    },
    /// A Slack incoming webhook.
    Slack {
        /// The incoming-webhook URL.
        url: String,
    },
}

impl ChannelKind {
    /// `webhook`, `email` or `slack`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Webhook { .. } => "webhook",
            Self::Email { .. } => "email",
            Self::Slack { .. } => "slack",
        }
    }
}

/// An alert channel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Channel {
    /// Channel id.
    pub id: ChannelId,
    /// Descriptive name.
    pub name: String,
    /// Type and its settings.
    #[serde(flatten)]
    pub kind: ChannelKind,
    /// Creation time (ms).
    pub created_at: i64,
}

/// One delivery: one alert to one channel. Travels on RabbitMQ between the
/// notifier's fan-out, its delivery consumers, the delay queues and the
/// dead-letter queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryJob {
    /// Wire version.
    pub v: u8,
    /// Stable id of this delivery, the same on every attempt: sent as
    /// `webhook-id`, so receivers can drop duplicates.
    pub delivery_id: DeliveryId,
    /// The channel to deliver to.
    pub channel_id: ChannelId,
    /// Attempts made so far.
    pub attempt: u32,
    /// A test alert: one attempt, no retries.
    #[serde(default, skip_serializing_if = "is_false")]
    pub test: bool,
    /// The alert.
    pub alert: AlertJob,
}

impl DeliveryJob {
    /// The first-attempt job delivering `alert` to `channel_id`.
    pub fn new(alert: AlertJob, channel_id: &ChannelId) -> Self {
        Self {
            v: WIRE_VERSION,
            delivery_id: DeliveryId::new(format!("msg_{}_{channel_id}", alert.alert_id)),
            channel_id: channel_id.clone(),
            attempt: 0,
            test: false,
            alert,
        }
    }
}

/// Where delivering one alert to one channel stands: the outcome of a
/// delivery record ([`DeliveryRecord`]) and of each attempt in the attempt
/// log ([`AttemptRecord`]). Spelt in snake case in Redis and in the API's
/// JSON (`pending`, `retrying`, `succeeded`, `failed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryOutcome {
    /// Fanned out, not attempted yet (a delivery record only, never an
    /// attempt).
    Pending,
    /// Failed for now; retried at `next_retry_at`.
    Retrying,
    /// Delivered.
    Succeeded,
    /// Failed for good (permanent error or schedule exhausted):
    /// dead-lettered, unless a test alert.
    Failed,
}

impl DeliveryOutcome {
    /// The outcome as spelt on the wire: `pending`, `retrying`, `succeeded`
    /// or `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
        }
    }

    /// Whether nothing more happens to the delivery: `succeeded` or `failed`.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

impl std::fmt::Display for DeliveryOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One delivery attempt, as kept in an alert's attempt log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// When the attempt ended (ms).
    pub at: i64,
    /// The channel.
    pub channel_id: ChannelId,
    /// `webhook`, `email` or `slack`.
    pub channel_type: String,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// How it ended: `retrying`, `succeeded` or `failed`.
    pub outcome: DeliveryOutcome,
    /// HTTP status received, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// SMTP reply received, if any (e.g. `250 2.0.0 Ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smtp_reply: Option<String>,
    /// What went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (ms), for `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<i64>,
    /// How long the attempt took.
    pub duration_ms: u64,
}

/// The outcome of delivering one alert to one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// Where the delivery stands.
    pub outcome: DeliveryOutcome,
    /// Attempts made.
    pub attempts: u32,
    /// Time of the last attempt (ms).
    pub at: i64,
    /// HTTP status of the last attempt, if one was received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u16>,
    /// Error text of the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the next attempt is due (ms), while `retrying`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_retry_at: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_job_wire_shape() {
        let job = AlertJob {
            v: WIRE_VERSION,
            alert_id: "m.1".into(),
            event: AlertEvent::Down,
            monitor: MonitorRef {
                id: "m".into(),
                name: "n".into(),
            },
            reason: Reason::Timeout,
            msg: None,
            value: None,
            at: 5,
            last_beat_at: Some(1),
            channels: vec!["c".into()],
        };
        let v = serde_json::to_value(&job).unwrap();
        assert_eq!(v["event"], "monitor.down");
        assert_eq!(v["reason"], "timeout");
        assert_eq!(serde_json::from_value::<AlertJob>(v).unwrap(), job);
    }

    #[test]
    fn settings_and_state_stored_before_reminders_and_confirm_still_parse() {
        let cfg: MonitorConfig = serde_json::from_str(
            r#"{"name":"n","timeout":60,"interval":60,"channels":[],"created_at":1,
                "token_hash":"h","token_hint":"t"}"#,
        )
        .unwrap();
        assert_eq!((cfg.remind_every, cfg.confirm), (None, 1));
        let st: MonitorState =
            serde_json::from_str(r#"{"status":"up","deadline":5,"since":1,"changes":2}"#).unwrap();
        assert_eq!(st.misses, 0);
        let v = serde_json::to_value(&st).unwrap();
        assert!(v.get("misses").is_none(), "{v}");
        assert_eq!(serde_json::to_value(Reason::Reminder).unwrap(), "reminder");
    }

    #[test]
    fn delivery_outcomes_keep_their_spelling() {
        for (outcome, spelt) in [
            (DeliveryOutcome::Pending, "pending"),
            (DeliveryOutcome::Retrying, "retrying"),
            (DeliveryOutcome::Succeeded, "succeeded"),
            (DeliveryOutcome::Failed, "failed"),
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), spelt);
            assert_eq!(
                (outcome.as_str(), outcome.to_string()),
                (spelt, spelt.into())
            );
        }
        assert!(DeliveryOutcome::Succeeded.is_final() && DeliveryOutcome::Failed.is_final());
        assert!(!DeliveryOutcome::Pending.is_final() && !DeliveryOutcome::Retrying.is_final());
        // Records stored when the outcome was a string decode, and encode,
        // unchanged.
        let stored = r#"{"outcome":"retrying","attempts":1,"at":5,"http_status":503,"error":"e","next_retry_at":9}"#;
        let record: DeliveryRecord = serde_json::from_str(stored).unwrap();
        assert_eq!(record.outcome, DeliveryOutcome::Retrying);
        assert_eq!(serde_json::to_string(&record).unwrap(), stored);
        let pending: DeliveryRecord =
            serde_json::from_str(r#"{"outcome":"pending","attempts":0,"at":5}"#).unwrap();
        assert_eq!(pending.outcome, DeliveryOutcome::Pending);
        let attempt: AttemptRecord = serde_json::from_str(
            r#"{"at":5,"channel_id":"c","channel_type":"webhook","attempt":1,"outcome":"failed","duration_ms":3}"#,
        )
        .unwrap();
        assert_eq!(attempt.outcome, DeliveryOutcome::Failed);
        assert!(serde_json::from_str::<DeliveryOutcome>(r#""done""#).is_err());
    }

    #[test]
    fn channel_json_is_flat() {
        let c = Channel {
            id: "c".into(),
            name: "ops".into(),
            kind: ChannelKind::Webhook {
                url: "http://x".into(),
                secret: "whsec_x".into(),
            },
            created_at: 1,
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "webhook");
        assert_eq!(v["url"], "http://x");
    }
}
