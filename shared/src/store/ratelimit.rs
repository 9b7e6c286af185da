//! Rate limits shared by every replica of a service: the push-rate bucket
//! of each monitor's token (ingest) and the rate-limit slot of each alert
//! destination (the notifier, e.g. one Slack webhook URL). Each lives in
//! one key that expires by itself once it no longer limits anything.
//!
//! The push-rate bucket is a GCRA bucket leased out several tokens at a
//! time; why, and what it costs, is told in ingest's `limit` module, which
//! keeps the leases. Here is only the script that takes tokens from the
//! shared bucket: it reads the time from Redis (replicas' clocks do not
//! matter) and touches one key (ready for Redis Cluster).

use std::{sync::LazyLock, time::Duration};

use redis::Script;

use super::{Keys, Result, Store, keys::Tag};

impl Keys {
    /// Push-rate bucket of a monitor's push token, shared by every ingest
    /// replica: the GCRA theoretical arrival time (ms, Redis clock). It
    /// expires a second after the token's full burst is available again.
    pub fn push_rate(&self, id: &str) -> String {
        format!("{}:{}:pushrate:{id}", self.prefix, Tag::of(id))
    }

    /// Rate-limit slot of a destination (e.g. one Slack webhook URL).
    pub fn rate_slot(&self, destination_hash: &str) -> String {
        format!("{}:rate:{destination_hash}", self.prefix)
    }
}

/// What a monitor's push-rate bucket granted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PushTokens {
    /// Tokens granted (0: the bucket is empty).
    pub granted: u32,
    /// `TAT - now` after the grant, in ms, rounded up.
    pub debt_ms: i64,
}

// One monitor's GCRA bucket, leasing up to ARGV[3] tokens at once.
// KEYS: the monitor's push-rate key (TAT, ms, Redis clock).
// ARGV: interval T (ms), tolerance b × T (ms), tokens wanted.
// Returns {granted, ceil(TAT - now) in ms}.
const TAKE_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local room = math.floor((now + tolerance - tat) / interval + 1e-9)
local granted = math.max(0, math.min(tonumber(ARGV[3]), room))
if granted > 0 then
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.3f', tat), 'PX', math.ceil(tat - now) + 1000)
end
return {granted, math.ceil(tat - now)}
"#;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(TAKE_LUA));

impl Store {
    /// Takes up to `want` tokens from the push-rate bucket of monitor `id`
    /// (emission interval `interval_ms`, tolerance `tolerance_ms`, that is
    /// burst × interval): fewer if fewer are left, none while it is empty.
    /// The bucket expires a second after it would be full again.
    pub async fn take_push_tokens(
        &self,
        id: &str,
        interval_ms: f64,
        tolerance_ms: f64,
        want: u32,
    ) -> Result<PushTokens> {
        let key = self.keys.push_rate(id);
        let mut call = TAKE.key(&key);
        call.arg(interval_ms).arg(tolerance_ms).arg(want);
        let (granted, debt_ms) = self.conn.invoke(&call).await?;
        Ok(PushTokens { granted, debt_ms })
    }

    /// Takes the rate-limit slot of a destination for `period`; false if it
    /// was taken less than `period` ago (by any replica).
    pub async fn take_rate_slot(&self, destination_hash: &str, period: Duration) -> Result<bool> {
        let mut take = redis::cmd("SET");
        take.arg(self.keys.rate_slot(destination_hash))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(period.as_millis().max(1) as u64);
        let ok: Option<String> = self.conn.query(&take).await?;
        Ok(ok.is_some())
    }

    /// Holds the rate-limit slot of a destination for `period` from now,
    /// whoever took it and however long it had left.
    pub async fn hold_rate_slot(&self, destination_hash: &str, period: Duration) -> Result<()> {
        let mut hold = redis::cmd("SET");
        hold.arg(self.keys.rate_slot(destination_hash))
            .arg(1)
            .arg("PX")
            .arg(period.as_millis().max(1) as u64);
        let _: () = self.conn.query(&hold).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redis::Cmd;

    use super::*;
    use crate::{names::Names, store::Caps, token::new_id};

    fn store() -> Store {
        let names = Names::new(&format!("unit-ratelimit-{}", new_id())).unwrap();
        Store::open("redis://127.0.0.1:6379", names, Caps::default()).unwrap()
    }

    /// Holding a slot keeps it taken for the period asked from now, even
    /// when it was taken for less.
    #[tokio::test]
    async fn a_held_rate_slot_lasts_as_long_as_asked() {
        let store = store();
        let period = Duration::from_secs(1);
        assert!(store.take_rate_slot("d", period).await.unwrap());
        assert!(!store.take_rate_slot("d", period).await.unwrap());
        store
            .hold_rate_slot("d", Duration::from_secs(60))
            .await
            .unwrap();
        let key = store.keys.rate_slot("d");
        let ttl_ms: i64 = store.conn.query(&Cmd::pttl(&key)).await.unwrap();
        let _: () = store.conn.query(&Cmd::del(&key)).await.unwrap();

        assert!(ttl_ms > 50_000 && ttl_ms <= 60_000, "{ttl_ms}");
    }
}
