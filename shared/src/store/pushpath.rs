//! The push path's health: the watermark (the newest of ingest's pulses
//! the evaluator applied) and the outages (gaps between pulses longer than
//! allowed). Deadlines fire only up to the watermark, and a deadline that
//! passed during an outage is extended rather than fired, so a broken push
//! path does not raise alerts for monitors that did push. Both keys share
//! the tag `{pulse}`, so one script moves the watermark and records an
//! outage together.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use super::{Keys, Result, Store, parse};
use crate::model::Outage;

impl Keys {
    /// Push-path watermark: the newest pulse time applied (ms).
    pub fn watermark(&self) -> String {
        format!("{}:{{pulse}}:watermark", self.prefix)
    }

    /// Outages of the push path, scored by start.
    pub fn outages(&self) -> String {
        format!("{}:{{pulse}}:outages", self.prefix)
    }
}

// KEYS: watermark, outages. ARGV: pulse time, gap (ms), outages kept.
const PULSE_LUA: &str = r#"
local w = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = tonumber(ARGV[1])
if at <= w then return false end
redis.call('SET', KEYS[1], ARGV[1])
if w > 0 and at - w > tonumber(ARGV[2]) then
  local outage = '{"start":' .. w .. ',"end":' .. at .. '}'
  redis.call('ZADD', KEYS[2], w, outage)
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -tonumber(ARGV[3]) - 1)
  return outage
end
return false
"#;

static PULSE: LazyLock<Script> = LazyLock::new(|| Script::new(PULSE_LUA));

/// Outages kept (the newest).
const OUTAGES_KEPT: usize = 1000;

impl Store {
    /// Advances the push-path watermark to a pulse sent at `at`; a gap of
    /// more than `gap_ms` since the previous pulse is recorded as an outage,
    /// which is returned.
    pub async fn pulse(&self, at: i64, gap_ms: i64) -> Result<Option<Outage>> {
        let mut call = PULSE.key(self.keys.watermark());
        call.key(self.keys.outages())
            .arg(at)
            .arg(gap_ms)
            .arg(OUTAGES_KEPT);
        let r: Option<String> = self.conn.invoke(&call).await?;
        r.map(|raw| parse(&self.keys.outages(), &raw)).transpose()
    }

    /// The push-path watermark: the newest pulse applied (ms), if any.
    pub async fn watermark(&self) -> Result<Option<i64>> {
        Ok(self.conn.query(&Cmd::get(self.keys.watermark())).await?)
    }

    /// The most recent push-path outages, oldest first.
    pub async fn outages(&self) -> Result<Vec<Outage>> {
        let key = self.keys.outages();
        let raw: Vec<String> = self
            .conn
            .query(&Cmd::zrange(&key, -(OUTAGES_KEPT as isize), -1))
            .await?;
        raw.iter().map(|r| parse(&key, r)).collect()
    }
}
