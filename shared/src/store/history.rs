//! A monitor's history: its newest beats and state changes, two capped
//! lists under its shard's tag. The commit script (`commit`) appends to
//! both with each step; this module reads them, and records a beat that
//! arrived after a newer one (a late beat), once.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use super::{Keys, Result, Store, json, keys::Tag, parse};
use crate::model::{BeatRecord, StateChange};

/// History lengths kept per monitor.
#[derive(Clone, Copy, Debug)]
pub struct Caps {
    /// Beats kept per monitor (`LIFELINE_HISTORY_BEATS`, default 100).
    pub beats: usize,
    /// State changes kept per monitor (`LIFELINE_HISTORY_EVENTS`, default 1000).
    pub events: usize,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            beats: 100,
            events: 1000,
        }
    }
}

impl Keys {
    /// Beat history of a monitor.
    pub fn beats(&self, id: &str) -> String {
        format!("{}:{}:beats:{id}", self.prefix, Tag::of(id))
    }

    /// State-change history of a monitor.
    pub fn events(&self, id: &str) -> String {
        format!("{}:{}:events:{id}", self.prefix, Tag::of(id))
    }
}

// A beat older than the newest applied one: recorded once, unless the
// history already holds its sequence number. KEYS: monitor, beats.
// ARGV: beat JSON, the `"seq":N,` marker, beats cap.
const LATE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local entries = redis.call('LRANGE', KEYS[2], 0, -1)
for _, e in ipairs(entries) do
  if string.find(e, ARGV[2], 1, true) then return 0 end
end
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[3]) - 1)
return 1
"#;

static LATE: LazyLock<Script> = LazyLock::new(|| Script::new(LATE_LUA));

impl Store {
    /// Records a beat that arrived after a newer one was applied, once.
    pub async fn record_late_beat(&self, id: &str, beat: &BeatRecord) -> Result<bool> {
        let late = BeatRecord {
            late: true,
            ..beat.clone()
        };
        let mut call = LATE.key(self.keys.monitor(id));
        call.key(self.keys.beats(id))
            .arg(json(&late))
            .arg(format!("\"seq\":{},", beat.seq))
            .arg(self.caps.beats);
        let r: i64 = self.conn.invoke(&call).await?;
        Ok(r == 1)
    }

    /// Newest-first beat history.
    pub async fn beats(&self, id: &str, limit: usize) -> Result<Vec<BeatRecord>> {
        self.list(&self.keys.beats(id), limit).await
    }

    /// Newest-first state changes.
    pub async fn events(&self, id: &str, limit: usize) -> Result<Vec<StateChange>> {
        self.list(&self.keys.events(id), limit).await
    }

    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        limit: usize,
    ) -> Result<Vec<T>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<String> = self
            .conn
            .query(&Cmd::lrange(key, 0, limit as isize - 1))
            .await?;
        raw.iter().map(|r| parse(key, r)).collect()
    }
}
