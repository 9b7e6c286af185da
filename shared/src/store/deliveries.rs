//! What the notifier writes about deliveries: the delivery record of each
//! (alert, channel) pair, the alert's attempt log, and the claim a notifier
//! holds while it attempts a delivery. The API reads records and logs
//! through [`Store::delivery`], [`Store::deliveries`] and
//! [`Store::attempts`].
//!
//! Records and logs are kept 30 days after their last write, whoever writes
//! them. A claim lives only as long as asked (`PX`), so a notifier that
//! dies holding one blocks nobody for long.

use std::{sync::LazyLock, time::Duration};

use redis::{Cmd, Script};

use super::{Keys, Result, Store, json, parse};
use crate::model::{AttemptRecord, DeliveryRecord};

impl Keys {
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
}

/// How long delivery records and attempt logs are kept.
const RECORD_TTL_SECS: i64 = 30 * 24 * 3600;

// KEYS: claim. ARGV: holder.
const RELEASE_LUA: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

static RELEASE: LazyLock<Script> = LazyLock::new(|| Script::new(RELEASE_LUA));

impl Store {
    /// Writes `rec` as the delivery record of an alert to a channel unless
    /// the pair already has one (so a repeated fan-out never turns a
    /// `succeeded` back into `pending`); kept 30 days.
    pub async fn init_delivery(
        &self,
        alert_id: &str,
        channel_id: &str,
        rec: &DeliveryRecord,
    ) -> Result<()> {
        let key = self.keys.delivery(alert_id);
        let mut init = redis::pipe();
        init.atomic()
            .cmd("HSETNX")
            .arg(&key)
            .arg(channel_id)
            .arg(json(rec))
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(RECORD_TTL_SECS);
        let (_expire_set,): (i64,) = self.conn.pipe(&init).await?;
        Ok(())
    }

    /// Records the outcome of delivering an alert to a channel (kept 30 days).
    pub async fn put_delivery(
        &self,
        alert_id: &str,
        channel_id: &str,
        rec: &DeliveryRecord,
    ) -> Result<()> {
        let key = self.keys.delivery(alert_id);
        let _: () = self
            .conn
            .query(&Cmd::hset(&key, channel_id, json(rec)))
            .await?;
        let _: () = self.conn.query(&Cmd::expire(&key, RECORD_TTL_SECS)).await?;
        Ok(())
    }

    /// Appends one attempt to an alert's attempt log (kept 30 days).
    pub async fn append_attempt(&self, alert_id: &str, rec: &AttemptRecord) -> Result<()> {
        let key = self.keys.attempts(alert_id);
        let _: () = self.conn.query(&Cmd::rpush(&key, json(rec))).await?;
        let _: () = self.conn.query(&Cmd::expire(&key, RECORD_TTL_SECS)).await?;
        Ok(())
    }

    /// The delivery record of an alert to a channel.
    pub async fn delivery(
        &self,
        alert_id: &str,
        channel_id: &str,
    ) -> Result<Option<DeliveryRecord>> {
        let key = self.keys.delivery(alert_id);
        let raw: Option<String> = self.conn.query(&Cmd::hget(&key, channel_id)).await?;
        raw.map(|r| parse(&key, &r)).transpose()
    }

    /// All delivery records of an alert, by channel id.
    pub async fn deliveries(&self, alert_id: &str) -> Result<Vec<(String, DeliveryRecord)>> {
        let key = self.keys.delivery(alert_id);
        let raw: Vec<(String, String)> = self.conn.query(&Cmd::hgetall(&key)).await?;
        raw.into_iter()
            .map(|(c, r)| Ok((c, parse(&key, &r)?)))
            .collect()
    }

    /// Every attempt of an alert, oldest first.
    pub async fn attempts(&self, alert_id: &str) -> Result<Vec<AttemptRecord>> {
        let key = self.keys.attempts(alert_id);
        let raw: Vec<String> = self.conn.query(&Cmd::lrange(&key, 0, -1)).await?;
        raw.iter().map(|r| parse(&key, r)).collect()
    }

    /// Claims a delivery for `holder` for `ttl`; false if another holds it.
    pub async fn claim_delivery(
        &self,
        delivery_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let mut claim = redis::cmd("SET");
        claim
            .arg(self.keys.delivery_claim(delivery_id))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64);
        let ok: Option<String> = self.conn.query(&claim).await?;
        Ok(ok.is_some())
    }

    /// Releases a claim taken by `holder` (another holder's claim is left alone).
    pub async fn release_delivery(&self, delivery_id: &str, holder: &str) -> Result<()> {
        let mut release = RELEASE.key(self.keys.delivery_claim(delivery_id));
        release.arg(holder);
        let _: i64 = self.conn.invoke(&release).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::DeliveryOutcome, names::Names, store::Caps, token::new_id};

    fn record(outcome: DeliveryOutcome, attempts: u32) -> DeliveryRecord {
        DeliveryRecord {
            outcome,
            attempts,
            at: 1,
            http_status: None,
            error: None,
            next_retry_at: None,
        }
    }

    /// A repeated fan-out writes a first record only where there is none,
    /// and either write keeps the alert's records for 30 days.
    #[tokio::test]
    async fn a_first_record_never_replaces_one_that_exists() {
        let names = Names::new(&format!("unit-deliveries-{}", new_id())).unwrap();
        let store = Store::open("redis://127.0.0.1:6379", names, Caps::default()).unwrap();
        let pending = record(DeliveryOutcome::Pending, 0);
        store.init_delivery("a", "c1", &pending).await.unwrap();
        store
            .put_delivery("a", "c2", &record(DeliveryOutcome::Succeeded, 1))
            .await
            .unwrap();
        store.init_delivery("a", "c2", &pending).await.unwrap();
        let key = store.keys.delivery("a");
        let ttl: i64 = store.conn.query(&Cmd::ttl(&key)).await.unwrap();
        let mut records = store.deliveries("a").await.unwrap();
        let _: () = store.conn.query(&Cmd::del(&key)).await.unwrap();

        assert!(
            ttl > RECORD_TTL_SECS - 60 && ttl <= RECORD_TTL_SECS,
            "{ttl}"
        );
        records.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            records,
            [
                ("c1".to_owned(), pending),
                ("c2".to_owned(), record(DeliveryOutcome::Succeeded, 1))
            ]
        );
    }
}
