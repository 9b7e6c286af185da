//! Rate limits shared by every replica of a service: the push-rate bucket
//! of each monitor's token (ingest) and the rate-limit slot of each alert
//! destination (the notifier, e.g. one Slack webhook URL). Each lives in
//! one key that expires by itself once it no longer limits anything.

use std::time::Duration;

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

impl Store {
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
