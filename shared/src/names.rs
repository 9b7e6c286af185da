//! Every name Lifeline creates in NATS, Redis and RabbitMQ, as functions of
//! the configured prefix. A service never builds one by hand.
//!
//! Redis layout (ready for Redis Cluster: one script touches one hash slot).
//! A monitor belongs to shard `fnv1a(id) % SHARDS`; all of its keys carry that
//! shard's hash tag `{s<n>}`, shared with the shard's deadline index and alert
//! outbox, so one script updates a monitor, its deadline and its alerts
//! atomically:
//!
//! | key | type | holds |
//! | --- | --- | --- |
//! | `P:{sN}:m:<id>` | hash | `cfg` (JSON config), `st` (JSON state), `ver` |
//! | `P:{sN}:deadlines` | sorted set | monitor id scored by deadline (ms) |
//! | `P:{sN}:outbox` | hash | alert id → alert job not yet confirmed by RabbitMQ |
//! | `P:{sN}:beats:<id>` | list | newest-first beat history, capped |
//! | `P:{sN}:events:<id>` | list | newest-first state changes, capped |
//! | `P:{sN}:pushrate:<id>` | string | the push-rate bucket of a monitor's token (GCRA arrival time, ms; expires when idle) |
//! | `P:token:<sha256>` | string | monitor id of a push token (hashed) |
//! | `P:monitors` | sorted set | monitor ids by creation time |
//! | `P:channel:<id>` | string | channel JSON |
//! | `P:channels` | sorted set | channel ids by creation time |
//! | `P:delivery:<alert id>` | hash | channel id → delivery record JSON |
//! | `P:attempts:<alert id>` | list | every delivery attempt of the alert |
//! | `P:claim:<delivery id>` | string | the notifier attempting a delivery (expires) |
//! | `P:rate:<sha256>` | string | a destination's rate-limit slot (expires) |
//! | `P:{pulse}:watermark` | string | newest ingest pulse applied (ms): deadlines fire only up to it |
//! | `P:{pulse}:outages` | sorted set | push-path outages `{"start","end"}` by start |

/// Number of deadline shards. Fixed: changing it moves every monitor.
pub const SHARDS: u16 = 256;

/// The shard of a monitor id (FNV-1a, stable across processes and builds).
pub fn shard_of(id: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    (h % u32::from(SHARDS)) as u16
}

/// A shard's Redis hash tag, `{sN}`, written without an allocation.
struct Tag(u16);

impl std::fmt::Display for Tag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{{s{}}}", self.0)
    }
}

/// Names derived from one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    prefix: String,
}

impl Names {
    /// Validates the prefix: 1–64 ASCII letters, digits, `-` or `_`, so it
    /// is a legal NATS token, stream name, Redis key part and AMQP name.
    pub fn new(prefix: &str) -> Result<Self, String> {
        let ok = !prefix.is_empty()
            && prefix.len() <= 64
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if ok {
            Ok(Self {
                prefix: prefix.to_owned(),
            })
        } else {
            Err(format!(
                "{prefix:?} must be 1-64 ASCII letters, digits, '-' or '_'"
            ))
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    // --- NATS ---

    /// JetStream stream holding beat events.
    pub fn beats_stream(&self) -> String {
        format!("{}_beats", self.prefix)
    }

    /// Subject a beat of a monitor in `shard` is published on.
    pub fn beats_subject(&self, shard: u16) -> String {
        format!("{}.beats.{shard}", self.prefix)
    }

    /// Subject ingest publishes batches of beats on ([`crate::model::BeatBatch`]).
    pub fn beat_batches_subject(&self) -> String {
        format!("{}.beats.batch", self.prefix)
    }

    /// Wildcard covering every beat subject.
    pub fn beats_subjects(&self) -> String {
        format!("{}.beats.>", self.prefix)
    }

    /// Subject of ingest's pulses (inside the beats stream).
    pub fn pulse_subject(&self) -> String {
        format!("{}.beats.pulse", self.prefix)
    }

    /// Durable pull consumer shared by all evaluator replicas.
    pub fn evaluator_consumer(&self) -> String {
        format!("{}_evaluator", self.prefix)
    }

    // --- RabbitMQ ---

    /// Durable direct exchange alert jobs are published to.
    pub fn alerts_exchange(&self) -> String {
        format!("{}.alerts", self.prefix)
    }

    /// Durable queue the notifiers consume alert jobs from.
    pub fn alerts_queue(&self) -> String {
        format!("{}.alerts", self.prefix)
    }

    /// Durable queue of delivery jobs (one per alert and channel).
    pub fn deliveries_queue(&self) -> String {
        format!("{}.deliveries", self.prefix)
    }

    /// Delay queue holding delivery jobs for `delay_ms` before they return
    /// to the deliveries queue (per-queue TTL with dead-lettering).
    pub fn retry_queue(&self, delay_ms: u64) -> String {
        format!("{}.retry.{delay_ms}", self.prefix)
    }

    /// Dead-letter queue of deliveries that failed for good.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.prefix)
    }

    // --- Redis ---

    fn tag(shard: u16) -> Tag {
        Tag(shard)
    }

    /// Monitor hash (`cfg`, `st`, `ver`).
    pub fn monitor(&self, id: &str) -> String {
        format!("{}:{}:m:{id}", self.prefix, Self::tag(shard_of(id)))
    }

    /// Deadline index of a shard.
    pub fn deadlines(&self, shard: u16) -> String {
        format!("{}:{}:deadlines", self.prefix, Self::tag(shard))
    }

    /// Alert outbox of a shard.
    pub fn outbox(&self, shard: u16) -> String {
        format!("{}:{}:outbox", self.prefix, Self::tag(shard))
    }

    /// Beat history of a monitor.
    pub fn beats(&self, id: &str) -> String {
        format!("{}:{}:beats:{id}", self.prefix, Self::tag(shard_of(id)))
    }

    /// State-change history of a monitor.
    pub fn events(&self, id: &str) -> String {
        format!("{}:{}:events:{id}", self.prefix, Self::tag(shard_of(id)))
    }

    /// Push-rate bucket of a monitor's push token, shared by every ingest
    /// replica: the GCRA theoretical arrival time (ms, Redis clock). It
    /// expires a second after the token's full burst is available again.
    pub fn push_rate(&self, id: &str) -> String {
        format!("{}:{}:pushrate:{id}", self.prefix, Self::tag(shard_of(id)))
    }

    /// Push token (by its SHA-256) → monitor id.
    pub fn token(&self, token_hash: &str) -> String {
        format!("{}:token:{token_hash}", self.prefix)
    }

    /// Counter bumped whenever a push token is revoked (rotation, deletion):
    /// ingest replicas watch it and drop their cached token lookups.
    pub fn token_generation(&self) -> String {
        format!("{}:tokens:gen", self.prefix)
    }

    /// Index of all monitors.
    pub fn monitors_index(&self) -> String {
        format!("{}:monitors", self.prefix)
    }

    /// A channel's JSON.
    pub fn channel(&self, id: &str) -> String {
        format!("{}:channel:{id}", self.prefix)
    }

    /// Index of all channels.
    pub fn channels_index(&self) -> String {
        format!("{}:channels", self.prefix)
    }

    /// Delivery records of one alert, by channel id.
    pub fn delivery(&self, alert_id: &str) -> String {
        format!("{}:delivery:{alert_id}", self.prefix)
    }

    /// Attempt log of one alert (every attempt on every channel).
    pub fn attempts(&self, alert_id: &str) -> String {
        format!("{}:attempts:{alert_id}", self.prefix)
    }

    /// Claim on a delivery, held by the notifier attempting it.
    pub fn delivery_claim(&self, delivery_id: &str) -> String {
        format!("{}:claim:{delivery_id}", self.prefix)
    }

    /// Rate-limit slot of a destination (e.g. one Slack webhook URL).
    pub fn rate_slot(&self, destination_hash: &str) -> String {
        format!("{}:rate:{destination_hash}", self.prefix)
    }

    /// Push-path watermark: the newest pulse time applied (ms).
    pub fn watermark(&self) -> String {
        format!("{}:{{pulse}}:watermark", self.prefix)
    }

    /// Outages of the push path, scored by start.
    pub fn outages(&self) -> String {
        format!("{}:{{pulse}}:outages", self.prefix)
    }

    /// Pattern matching every Redis key of this prefix (test clean-up only).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_keys_share_their_shard_tag() {
        let n = Names::new("p").unwrap();
        let id = "abc123";
        let tag = format!("{{s{}}}", shard_of(id));
        for key in [
            n.monitor(id),
            n.beats(id),
            n.events(id),
            n.push_rate(id),
            n.deadlines(shard_of(id)),
            n.outbox(shard_of(id)),
        ] {
            assert!(key.contains(&tag), "{key}");
        }
    }

    #[test]
    fn shards_are_spread_and_stable() {
        assert_eq!(shard_of("abc123"), shard_of("abc123"));
        let used: std::collections::HashSet<u16> =
            (0..10_000).map(|i| shard_of(&format!("m{i}"))).collect();
        assert_eq!(used.len(), usize::from(SHARDS));
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["", "a.b", "a b", "a*", "a:b", &"x".repeat(65)] {
            assert!(Names::new(p).is_err(), "{p}");
        }
        assert!(Names::new("lifeline-test_1").is_ok());
    }
}
