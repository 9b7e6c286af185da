//! Every name Lifeline creates in NATS and RabbitMQ, as functions of the
//! configured prefix, and the sharding of monitors. A service never builds
//! one by hand. Redis keys are the store's own (`lifeline_shared::store::Keys`,
//! laid out in the store's `keys` module), built by the store alone.
//!
//! A monitor belongs to shard [`shard_of`]`(id)` of [`SHARDS`]: its beats
//! are published on that shard's subject, and all of its Redis keys carry
//! that shard's hash tag, shared with the shard's deadline index and alert
//! outbox.

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

    /// Pattern matching every Redis key of this prefix (test clean-up only).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
