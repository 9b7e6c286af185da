//! Monitors: one hash per monitor holding its settings, state and version
//! (the fields are `codec`'s), and the index of every monitor by creation
//! time. After its creation a monitor's hash changes only through the
//! commit script (`commit`), which checks and increments the version; this
//! module creates, reads and deletes.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use super::{
    Keys, Result, Store, StoreError,
    codec::{self, Field, Writes},
    keys::Tag,
};
use crate::{
    model::{Monitor, MonitorConfig, MonitorState},
    names::shard_of,
};

impl Keys {
    /// A monitor's hash (fields: `codec`), tagged with its shard.
    pub fn monitor(&self, id: &str) -> String {
        format!("{}:{}:m:{id}", self.prefix, Tag::of(id))
    }

    /// Index of all monitors, by creation time.
    pub fn monitors_index(&self) -> String {
        format!("{}:monitors", self.prefix)
    }
}

/// The values of a monitor's hash fields ([`Field::ALL`]) as `HMGET`
/// answers them.
type MonitorRow = Vec<Option<String>>;

// KEYS: monitor, deadlines, beats, events. ARGV: monitor id.
const DELETE_LUA: &str = r#"
local existed = redis.call('DEL', KEYS[1], KEYS[3], KEYS[4])
redis.call('ZREM', KEYS[2], ARGV[1])
return existed
"#;

static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(DELETE_LUA));

impl Store {
    /// Reads one monitor.
    pub async fn monitor(&self, id: &str) -> Result<Option<Monitor>> {
        let row: MonitorRow = self.conn.query(&self.read_monitor(id)).await?;
        self.monitor_from(id, row)
    }

    /// Reads many monitors in one pipelined round trip: for each id in
    /// order, the monitor if it exists, or why its record cannot be read.
    pub async fn monitors<'a, I>(
        &self,
        ids: I,
    ) -> Result<impl Iterator<Item = Result<Option<Monitor>>>>
    where
        I: Iterator<Item = &'a str> + Clone,
    {
        let mut read = redis::pipe();
        for id in ids.clone() {
            read.add_command(self.read_monitor(id));
        }
        let rows: Vec<MonitorRow> = self.conn.pipe(&read).await?;
        Ok(ids.zip(rows).map(|(id, row)| self.monitor_from(id, row)))
    }

    /// The `HMGET` that reads a monitor as a [`MonitorRow`].
    fn read_monitor(&self, id: &str) -> Cmd {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.keys.monitor(id));
        for field in Field::ALL {
            cmd.arg(field.key());
        }
        cmd
    }

    /// The monitor a [`Store::read_monitor`] answer holds, if it exists.
    fn monitor_from(&self, id: &str, row: MonitorRow) -> Result<Option<Monitor>> {
        codec::decode(id, row).map_err(|e| StoreError::CorruptField {
            key: self.keys.monitor(id),
            field: e.field.key(),
            problem: e.to_string(),
        })
    }

    /// Creates a monitor and its push token.
    pub async fn create_monitor(
        &self,
        id: &str,
        cfg: &MonitorConfig,
        state: &MonitorState,
    ) -> Result<()> {
        let key = self.keys.monitor(id);
        let mut writes = Writes::default();
        writes.config(cfg).state(state);
        // One transaction: no optional value of an earlier record under this
        // id survives, and a reader sees the monitor whole or not at all.
        let mut create = redis::pipe();
        create.atomic();
        if !writes.unset.is_empty() {
            let unset: Vec<&str> = writes.unset.iter().map(|f| f.key()).collect();
            create.hdel(&key, unset).ignore();
        }
        let set: Vec<(&str, &str)> = writes
            .set
            .iter()
            .map(|(f, v)| (f.key(), v.as_str()))
            .chain([(codec::VER, "0")])
            .collect();
        create.hset_multiple(&key, &set).ignore();
        let _: () = self.conn.pipe(&create).await?;
        let _: () = self
            .conn
            .query(&Cmd::zadd(self.keys.monitors_index(), id, cfg.created_at))
            .await?;
        let _: () = self
            .conn
            .query(&Cmd::set(self.keys.token(&cfg.token_hash), id))
            .await?;
        Ok(())
    }

    /// Deletes a monitor, its token, deadline and history. Returns whether it existed.
    pub async fn delete_monitor(&self, monitor: &Monitor) -> Result<bool> {
        self.revoke_token(&monitor.cfg.token_hash).await?;
        let id = monitor.id.as_str();
        let mut delete = DELETE.key(self.keys.monitor(id));
        delete
            .key(self.keys.deadlines(shard_of(id)))
            .key(self.keys.beats(id))
            .key(self.keys.events(id))
            .arg(id);
        let existed: i64 = self.conn.invoke(&delete).await?;
        let _: () = self
            .conn
            .query(&Cmd::zrem(self.keys.monitors_index(), id))
            .await?;
        Ok(existed > 0)
    }

    /// All monitor ids, oldest first.
    pub async fn monitor_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .conn
            .query(&Cmd::zrange(self.keys.monitors_index(), 0, -1))
            .await?)
    }
}
