//! The deadline index of each shard: a sorted set of the shard's monitors
//! scored by the next moment the clock acts on them (ms). The commit script
//! (`commit`) moves a monitor's entry with each step; the evaluator's
//! deadline loop reads the entries that are due here, in one round trip
//! for every shard, so nothing scans the keyspace.

use redis::Cmd;

use super::{Keys, Result, Store, keys::Tag};
use crate::names::{SHARDS, shard_of};

impl Keys {
    /// Deadline index of a shard.
    pub fn deadlines(&self, shard: u16) -> String {
        format!("{}:{}:deadlines", self.prefix, Tag::shard(shard))
    }
}

impl Store {
    /// For every shard, up to `limit` monitors whose deadline is at or
    /// before `now`, with that deadline (ms), in one pipelined round trip;
    /// each shard's entries come oldest first.
    pub async fn due_all(&self, now: i64, limit: usize) -> Result<Vec<(String, i64)>> {
        let mut pipe = redis::pipe();
        for shard in 0..SHARDS {
            pipe.cmd("ZRANGEBYSCORE")
                .arg(self.keys.deadlines(shard))
                .arg("-inf")
                .arg(now)
                .arg("WITHSCORES")
                .arg("LIMIT")
                .arg(0)
                .arg(limit);
        }
        let per_shard: Vec<Vec<(String, f64)>> = self.conn.pipe(&pipe).await?;
        Ok(per_shard
            .into_iter()
            .flatten()
            .map(|(id, deadline)| (id, deadline as i64))
            .collect())
    }

    /// Drops a deadline entry whose monitor no longer exists.
    pub async fn forget_deadline(&self, id: &str) -> Result<()> {
        let _: () = self
            .conn
            .query(&Cmd::zrem(self.keys.deadlines(shard_of(id)), id))
            .await?;
        Ok(())
    }
}
