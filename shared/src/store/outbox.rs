//! The alert outbox of each shard: a hash of alert id → alert job. The
//! commit script (`commit`) puts a step's alert jobs here in the same write
//! as the state change that raised them, so a job is never lost between
//! Redis and RabbitMQ: the evaluator removes it only once RabbitMQ
//! confirmed it, and publishes what is left after a restart.

use super::{Keys, Result, Store, keys::Tag, parse};
use crate::{
    model::{AlertId, AlertJob, MonitorId},
    names::{SHARDS, shard_of},
};

impl Keys {
    /// Alert outbox of a shard.
    pub fn outbox(&self, shard: u16) -> String {
        format!("{}:{}:outbox", self.prefix, Tag::shard(shard))
    }
}

impl Store {
    /// Every alert job in the outboxes (not yet confirmed by RabbitMQ), in
    /// one pipelined round trip.
    pub async fn outbox_all(&self) -> Result<Vec<AlertJob>> {
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("HVALS").arg(self.keys.outbox(shard));
        }
        let per_shard: Vec<Vec<String>> = self.conn.pipe(&pipe).await?;
        per_shard
            .iter()
            .flatten()
            .map(|r| parse("outbox", r))
            .collect()
    }

    /// Removes many jobs (alert id, monitor id) from their outboxes in one
    /// pipelined round trip, once RabbitMQ confirmed them.
    pub async fn outbox_done_many(&self, jobs: &[(AlertId, MonitorId)]) -> Result<()> {
        let mut pipe = redis::pipe();
        for (alert_id, monitor_id) in jobs {
            pipe.hdel(self.keys.outbox(shard_of(monitor_id)), alert_id.as_str())
                .ignore();
        }
        let _: () = self.conn.pipe(&pipe).await?;
        Ok(())
    }
}
