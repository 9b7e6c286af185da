//! RabbitMQ topology and a publisher with confirms.
//!
//! Queues (all durable, messages persistent):
//! * `P.alerts`, bound to the direct exchange `P.alerts`: alert jobs from
//!   the evaluator;
//! * `P.deliveries`: one delivery job per (alert, channel), from the
//!   notifier's fan-out;
//! * `P.retry.<ms>`: delay queues — a job waits there `<ms>` (per-queue TTL),
//!   then is dead-lettered back to `P.deliveries`; retries never hold a
//!   consumer;
//! * `P.dead`: deliveries that failed for good.
//!
//! Every publish waits for the broker's confirm and is `mandatory`, so a
//! message is dropped from its source (outbox, previous queue) only once
//! RabbitMQ has it (invariant 6).

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::{AMQPValue, FieldTable, LongString, ShortString},
};
use tokio::sync::Mutex;

use crate::{
    model::{AlertJob, DeliveryJob},
    names::Names,
};

/// Routing key of alert jobs.
pub const ALERT_ROUTING_KEY: &str = "alert";

/// A RabbitMQ failure.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// Connection, channel or protocol error.
    #[error("rabbitmq: {0}")]
    Lapin(#[from] lapin::Error),
    /// The broker refused or could not route the message.
    #[error("rabbitmq did not confirm the message: {0}")]
    NotConfirmed(String),
}

/// Connects to RabbitMQ.
pub async fn connect(url: &str) -> Result<Connection, AmqpError> {
    Ok(Connection::connect(url, ConnectionProperties::default()).await?)
}

/// Declares the alert exchange and queue, the deliveries queue and the
/// dead-letter queue (idempotent).
pub async fn declare_alerts(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        names.alerts_exchange().as_str().into(),
        ExchangeKind::Direct,
        durable,
        FieldTable::default(),
    )
    .await?;
    for queue in [
        names.alerts_queue(),
        names.deliveries_queue(),
        names.dead_queue(),
    ] {
        ch.queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
    }
    ch.queue_bind(
        names.alerts_queue().as_str().into(),
        names.alerts_exchange().as_str().into(),
        ALERT_ROUTING_KEY.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares the delay queue of `delay_ms` (idempotent).
pub async fn declare_retry_queue(
    ch: &Channel,
    names: &Names,
    delay_ms: u64,
) -> Result<(), AmqpError> {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-message-ttl"),
        AMQPValue::LongLongInt(delay_ms as i64),
    );
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        ShortString::from("x-dead-letter-routing-key"),
        AMQPValue::LongString(LongString::from(names.deliveries_queue().as_str())),
    );
    ch.queue_declare(
        names.retry_queue(delay_ms).as_str().into(),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    Ok(())
}

/// Publishes with confirms; reconnects on the next publish after any failure.
pub struct Publisher {
    url: String,
    names: Names,
    inner: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
    /// A publisher that connects on first use.
    pub fn new(url: &str, names: Names) -> Self {
        Self {
            url: url.to_owned(),
            names,
            inner: Mutex::new(None),
        }
    }

    async fn open(&self) -> Result<(Connection, Channel), AmqpError> {
        let conn = connect(&self.url).await?;
        let ch = conn.create_channel().await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        declare_alerts(&ch, &self.names).await?;
        Ok((conn, ch))
    }

    /// The open channel, connecting first if needed.
    async fn channel(&self) -> Result<Channel, AmqpError> {
        let mut guard = self.inner.lock().await;
        if guard
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            *guard = Some(self.open().await?);
        }
        Ok(guard.as_ref().expect("opened above").1.clone())
    }

    /// Publishes `body` (JSON) to `exchange` with `routing_key`, persistent
    /// and mandatory, and waits for RabbitMQ's confirm. Many publishes may
    /// wait for their confirms at once (the lock covers only connecting).
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        message_id: &str,
    ) -> Result<(), AmqpError> {
        let ch = self.channel().await?;
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(message_id.into());
        let result = async {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    body,
                    props,
                )
                .await?
                .await?;
            if !confirm.is_ack() {
                return Err(AmqpError::NotConfirmed("nack".into()));
            }
            if let Some(returned) = confirm.take_message() {
                return Err(AmqpError::NotConfirmed(format!(
                    "returned: {}",
                    returned.reply_text
                )));
            }
            Ok(())
        }
        .await;
        if result.is_err() {
            // Drop the channel that failed (not one a concurrent publish
            // may have opened since).
            let mut guard = self.inner.lock().await;
            if guard.as_ref().is_some_and(|(_, c)| c.id() == ch.id()) {
                *guard = None;
            }
        }
        result
    }

    /// Publishes an alert job to the alerts exchange.
    pub async fn publish_alert(&self, job: &AlertJob) -> Result<(), AmqpError> {
        let body = serde_json::to_vec(job).expect("alert jobs serialize");
        self.publish(
            &self.names.alerts_exchange(),
            ALERT_ROUTING_KEY,
            &body,
            &job.alert_id,
        )
        .await
    }

    /// Publishes a delivery job straight to `queue` (deliveries, a delay
    /// queue or the dead-letter queue).
    pub async fn publish_delivery(&self, queue: &str, job: &DeliveryJob) -> Result<(), AmqpError> {
        let body = serde_json::to_vec(job).expect("delivery jobs serialize");
        self.publish("", queue, &body, &job.delivery_id).await
    }

    /// Whether RabbitMQ is reachable (connects if needed).
    pub async fn ready(&self) -> Result<(), AmqpError> {
        self.channel().await.map(|_| ())
    }
}
