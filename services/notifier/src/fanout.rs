//! Fan-out: one alert job becomes one delivery job per distinct channel.
//!
//! For each channel of the alert, a `pending` delivery record is written
//! unless the pair already has one (so a repeated alert never turns a
//! `succeeded` back into `pending`), then the delivery job is published to
//! the deliveries queue with a broker confirm. The alert job is acked only
//! after every delivery job is confirmed (invariant 6). A crash before the
//! ack fans the alert out again, which is harmless: the delivery consumer
//! drops a delivery that already has a final record, and a claim keeps two
//! copies from being attempted at once.
//!
//! From then on each (alert, channel) pair lives its own life, so a failing
//! Slack never delays, blocks or repeats the email or webhook of the same
//! alert.

use std::{collections::HashSet, sync::Arc};

use lifeline_shared::{
    amqp::Publisher,
    model::{AlertEvent, AlertJob, ChannelId, DeliveryJob, DeliveryOutcome, DeliveryRecord},
    store::{Store, StoreError},
    time::now_ms,
};

use crate::settle::{Settle, parse_job};

/// Turns alert jobs into delivery jobs.
pub(crate) struct Fanout {
    store: Store,
    publisher: Arc<Publisher>,
}

impl Fanout {
    /// A fan-out writing records to `store` and publishing with `publisher`.
    pub(crate) fn new(store: Store, publisher: Arc<Publisher>) -> Self {
        Self { store, publisher }
    }

    /// Handles one message of the alerts queue.
    pub(crate) async fn handle(&self, data: &[u8]) -> Settle {
        let alert: AlertJob = match parse_job(data, "alert job") {
            Ok(alert) => alert,
            Err(settle) => return settle,
        };
        let mut seen = HashSet::new();
        let channels: Vec<&ChannelId> = alert
            .channels
            .iter()
            .filter(|id| seen.insert(id.as_str()))
            .collect();
        for channel_id in &channels {
            if let Err(e) = self.init_record(&alert.alert_id, channel_id).await {
                tracing::warn!(
                    alert.id = %alert.alert_id,
                    error = %e,
                    "could not write delivery records; handing the alert job back to the queue"
                );
                return Settle::Requeue;
            }
        }
        let queue = self.store.names().deliveries_queue();
        for channel_id in &channels {
            let mut job = DeliveryJob::new(alert.clone(), channel_id);
            job.test = alert.event == AlertEvent::Test;
            if let Err(e) = self.publisher.publish_delivery(&queue, &job).await {
                tracing::warn!(
                    alert.id = %alert.alert_id,
                    error = %e,
                    "could not publish a delivery job; handing the alert job back to the queue"
                );
                return Settle::Requeue;
            }
        }
        tracing::info!(
            alert.id = %alert.alert_id,
            monitor.id = %alert.monitor.id,
            alert.event = alert.event.as_str(),
            channels = channels.len(),
            "alert fanned out to its channels"
        );
        Settle::Ack
    }

    /// Writes a `pending` record for (alert, channel) unless one exists.
    async fn init_record(&self, alert_id: &str, channel_id: &str) -> Result<(), StoreError> {
        let record = DeliveryRecord {
            outcome: DeliveryOutcome::Pending,
            attempts: 0,
            at: now_ms(),
            http_status: None,
            error: None,
            next_retry_at: None,
        };
        self.store
            .init_delivery(alert_id, channel_id, &record)
            .await
    }
}
