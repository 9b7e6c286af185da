//! Every Redis key Lifeline uses, as a function of the configured prefix.
//! Each key is built by the store module that owns it (an `impl Keys` block
//! there); this module holds the layout and the hash tags.
//!
//! The layout is ready for Redis Cluster, where a script may touch the keys
//! of one hash slot only. A monitor belongs to shard
//! [`shard_of`]`(id)` (of [`SHARDS`]); all of its keys carry that shard's
//! hash tag `{s<n>}`, shared with the shard's deadline index and alert
//! outbox, so one script updates a monitor, its deadline and its alerts
//! atomically. The push path's two keys share the tag `{pulse}`.
//!
//! | key | type | holds | owner |
//! | --- | --- | --- | --- |
//! | `P:{sN}:m:<id>` | hash | a monitor's settings, state and version (fields: `codec`) | `monitors` |
//! | `P:monitors` | sorted set | monitor ids by creation time | `monitors` |
//! | `P:{sN}:deadlines` | sorted set | monitor id scored by deadline (ms) | `deadlines` |
//! | `P:{sN}:outbox` | hash | alert id → alert job not yet confirmed by RabbitMQ | `outbox` |
//! | `P:{sN}:beats:<id>` | list | newest-first beat history, capped | `history` |
//! | `P:{sN}:events:<id>` | list | newest-first state changes, capped | `history` |
//! | `P:{sN}:pushrate:<id>` | string | the push-rate bucket of a monitor's token (GCRA arrival time, ms; expires when idle) | `ratelimit` |
//! | `P:rate:<sha256>` | string | a destination's rate-limit slot (expires) | `ratelimit` |
//! | `P:token:<sha256>` | string | monitor id of a push token (hashed) | `tokens` |
//! | `P:tokens:gen` | string | revocation counter, bumped whenever a token is revoked | `tokens` |
//! | `P:channel:<id>` | string | channel JSON | `channels` |
//! | `P:channels` | sorted set | channel ids by creation time | `channels` |
//! | `P:delivery:<alert id>` | hash | channel id → delivery record JSON | `deliveries` |
//! | `P:attempts:<alert id>` | list | every delivery attempt of the alert | `deliveries` |
//! | `P:claim:<delivery id>` | string | the notifier attempting a delivery (expires) | `deliveries` |
//! | `P:{pulse}:watermark` | string | newest ingest pulse applied (ms): deadlines fire only up to it | `pushpath` |
//! | `P:{pulse}:outages` | sorted set | push-path outages `{"start","end"}` by start | `pushpath` |
//!
//! The commit script (`commit`) writes a monitor's hash, its shard's
//! deadline index and outbox, and its history in one call; deleting a
//! monitor (`monitors`) removes its hash, deadline and history in one.
//!
//! [`Keys`] is public for tests and benchmarks that look at Redis
//! directly; the services never use it (the store's `boundary` test).

use std::fmt;

use crate::names::{Names, SHARDS, shard_of};

/// The Redis keys of one prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub(super) prefix: String,
}

impl Keys {
    /// The keys under `names`' prefix.
    pub fn new(names: &Names) -> Self {
        Self {
            prefix: names.prefix().to_owned(),
        }
    }
}

/// A shard's Redis hash tag, `{sN}`, written without an allocation.
pub(super) struct Tag(u16);

impl Tag {
    /// The tag of shard `shard` (below [`SHARDS`]).
    pub(super) fn shard(shard: u16) -> Self {
        debug_assert!(shard < SHARDS);
        Self(shard)
    }

    /// The tag of monitor `id`'s shard.
    pub(super) fn of(id: &str) -> Self {
        Self(shard_of(id))
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{s{}}}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_keys_share_their_shard_tag() {
        let k = Keys::new(&Names::new("p").unwrap());
        let id = "abc123";
        let tag = format!("{{s{}}}", shard_of(id));
        for key in [
            k.monitor(id),
            k.beats(id),
            k.events(id),
            k.push_rate(id),
            k.deadlines(shard_of(id)),
            k.outbox(shard_of(id)),
        ] {
            assert!(key.contains(&tag), "{key}");
        }
        assert_eq!(k.monitor(id), format!("p:{tag}:m:abc123"));
    }

    #[test]
    fn the_push_path_keys_share_one_tag() {
        let k = Keys::new(&Names::new("p").unwrap());
        assert_eq!(k.watermark(), "p:{pulse}:watermark");
        assert_eq!(k.outages(), "p:{pulse}:outages");
    }
}
