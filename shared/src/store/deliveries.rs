//! What the notifier writes about deliveries: the delivery record of each
//! (alert, channel) pair, the alert's attempt log, the claim a notifier
//! holds while it attempts a delivery, and the rate-limit slot of a
//! destination. The keys come from [`crate::names`]; nobody else builds a
//! command on them (the API only reads records and logs, through
//! [`Store::delivery`], [`Store::deliveries`] and [`Store::attempts`]).
//!
//! Records and logs are kept 30 days after their last write, whoever writes
//! them. A claim and a slot live only as long as asked
//! (`PX`), so a notifier that dies holding one blocks nobody for long.

use std::{sync::LazyLock, time::Duration};

use redis::{AsyncCommands, Script};

use super::{Result, Store, json};
use crate::model::{AttemptRecord, DeliveryRecord};

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
        let key = self.names.delivery(alert_id);
        let (_expire_set,): (i64,) = redis::pipe()
            .atomic()
            .cmd("HSETNX")
            .arg(&key)
            .arg(channel_id)
            .arg(json(rec))
            .ignore()
            .cmd("EXPIRE")
            .arg(&key)
            .arg(RECORD_TTL_SECS)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Records the outcome of delivering an alert to a channel (kept 30 days).
    pub async fn put_delivery(
        &self,
        alert_id: &str,
        channel_id: &str,
        rec: &DeliveryRecord,
    ) -> Result<()> {
        let key = self.names.delivery(alert_id);
        let mut conn = self.conn();
        let _: () = conn.hset(&key, channel_id, json(rec)).await?;
        let _: () = conn.expire(&key, RECORD_TTL_SECS).await?;
        Ok(())
    }

    /// Appends one attempt to an alert's attempt log (kept 30 days).
    pub async fn append_attempt(&self, alert_id: &str, rec: &AttemptRecord) -> Result<()> {
        let key = self.names.attempts(alert_id);
        let mut conn = self.conn();
        let _: () = conn.rpush(&key, json(rec)).await?;
        let _: () = conn.expire(&key, RECORD_TTL_SECS).await?;
        Ok(())
    }

    /// Claims a delivery for `holder` for `ttl`; false if another holds it.
    pub async fn claim_delivery(
        &self,
        delivery_id: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<bool> {
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.names.delivery_claim(delivery_id))
            .arg(holder)
            .arg("NX")
            .arg("PX")
            .arg(ttl.as_millis() as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(ok.is_some())
    }

    /// Releases a claim taken by `holder` (another holder's claim is left alone).
    pub async fn release_delivery(&self, delivery_id: &str, holder: &str) -> Result<()> {
        let _: i64 = RELEASE
            .key(self.names.delivery_claim(delivery_id))
            .arg(holder)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Takes the rate-limit slot of a destination for `period`; false if it
    /// was taken less than `period` ago (by any replica).
    pub async fn take_rate_slot(&self, destination_hash: &str, period: Duration) -> Result<bool> {
        let ok: Option<String> = redis::cmd("SET")
            .arg(self.names.rate_slot(destination_hash))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(period.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(ok.is_some())
    }

    /// Holds the rate-limit slot of a destination for `period` from now,
    /// whoever took it and however long it had left.
    pub async fn hold_rate_slot(&self, destination_hash: &str, period: Duration) -> Result<()> {
        let _: () = redis::cmd("SET")
            .arg(self.names.rate_slot(destination_hash))
            .arg(1)
            .arg("PX")
            .arg(period.as_millis().max(1) as u64)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use redis::AsyncCommands;

    use super::*;
    use crate::{model::DeliveryOutcome, names::Names, store::Caps, token::new_id};

    fn store() -> Store {
        let names = Names::new(&format!("unit-deliveries-{}", new_id())).unwrap();
        Store::open("redis://127.0.0.1:6379", names, Caps::default()).unwrap()
    }

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
        let store = store();
        let pending = record(DeliveryOutcome::Pending, 0);
        store.init_delivery("a", "c1", &pending).await.unwrap();
        store
            .put_delivery("a", "c2", &record(DeliveryOutcome::Succeeded, 1))
            .await
            .unwrap();
        store.init_delivery("a", "c2", &pending).await.unwrap();
        let key = store.names().delivery("a");
        let ttl: i64 = store.conn().ttl(&key).await.unwrap();
        let mut records = store.deliveries("a").await.unwrap();
        let _: () = store.conn().del(&key).await.unwrap();

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
        let key = store.names().rate_slot("d");
        let ttl_ms: i64 = store.conn().pttl(&key).await.unwrap();
        let _: () = store.conn().del(&key).await.unwrap();

        assert!(ttl_ms > 50_000 && ttl_ms <= 60_000, "{ttl_ms}");
    }
}
