//! RabbitMQ topology and the alert publisher.
//!
//! Alert jobs go to a durable direct exchange and a durable queue, as
//! persistent messages with publisher confirms and `mandatory`, so a job is
//! taken off the evaluator's outbox only once RabbitMQ has it on disk
//! (invariant 6 starts here).

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
        QueueDeclareOptions,
    },
    types::FieldTable,
};
use tokio::sync::Mutex;

use crate::{model::AlertJob, names::Names};

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

/// Declares the alert exchange and queue (idempotent).
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
    ch.queue_declare(
        names.alerts_queue().as_str().into(),
        QueueDeclareOptions::durable(),
        FieldTable::default(),
    )
    .await?;
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

/// Publishes alert jobs with confirms; reconnects on the next publish after
/// any failure.
pub struct AlertPublisher {
    url: String,
    names: Names,
    inner: Mutex<Option<(Connection, Channel)>>,
}

impl AlertPublisher {
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

    /// Publishes one job and waits for RabbitMQ's confirm.
    pub async fn publish(&self, job: &AlertJob) -> Result<(), AmqpError> {
        let mut guard = self.inner.lock().await;
        if guard
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            *guard = Some(self.open().await?);
        }
        let (_, ch) = guard.as_ref().expect("opened above");
        let body = serde_json::to_vec(job).expect("alert jobs serialize");
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.alert_id.as_str().into());
        let result = async {
            let confirm = ch
                .basic_publish(
                    self.names.alerts_exchange().as_str().into(),
                    ALERT_ROUTING_KEY.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
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
            *guard = None;
        }
        result
    }

    /// Whether RabbitMQ is reachable (connects if needed).
    pub async fn ready(&self) -> Result<(), AmqpError> {
        let mut guard = self.inner.lock().await;
        if guard
            .as_ref()
            .is_none_or(|(c, ch)| !c.status().connected() || !ch.status().connected())
        {
            *guard = Some(self.open().await?);
        }
        Ok(())
    }
}
