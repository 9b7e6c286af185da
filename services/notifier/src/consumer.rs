//! The RabbitMQ side: consume alert jobs, hand each to the dispatcher, and
//! settle the message according to what happened to it.
//!
//! Jobs arrive on the durable alerts queue with manual acknowledgements; the
//! prefetch bounds how many are held, and each runs in its own task, so one
//! slow receiver does not hold up the others. A job is
//!
//! * **acked** only once every one of its channels has a final delivery
//!   record (invariant 6: a notifier killed mid-delivery loses nothing, as
//!   RabbitMQ redelivers what was never acked);
//! * **nacked and requeued**, after a short pause, when Redis cannot be
//!   reached (or the job comes from a newer producer), so another attempt,
//!   possibly by another replica, picks it up;
//! * **rejected** without requeue when it is not an alert job at all.
//!
//! The connection is re-established by itself, with back-off, whenever it
//! drops; an outage is logged once when it starts and once when it ends.
//! Jobs in flight when the connection drops finish, but their ack cannot
//! reach the broker: RabbitMQ redelivers them, and the delivery records keep
//! a succeeded channel from being delivered twice.
//!
//! On shutdown the consumer is cancelled, jobs in flight finish and are
//! acked, and only then is the connection closed; jobs prefetched but not
//! started go back to the queue when the channel closes.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Connection,
    message::Delivery,
    options::{
        BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
        BasicQosOptions, BasicRejectOptions,
    },
    types::FieldTable,
};
use lifeline_shared::{
    amqp::{self, AmqpError},
    model::{AlertJob, WIRE_VERSION},
    names::Names,
};
use serde::Deserialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::dispatch::Dispatcher;

/// First pause before reconnecting; doubled after each failure.
const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest pause between reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// Longest wait for connecting and setting up the channel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before handing a job back to the queue, so a Redis outage does not
/// spin jobs through RabbitMQ.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// Why a consuming session ended (other than shutdown).
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("rabbitmq: {0}")]
    Lapin(#[from] lapin::Error),
    #[error("rabbitmq did not answer within {0:?}")]
    Timeout(Duration),
    #[error("rabbitmq cancelled the consumer")]
    Cancelled,
}

/// One connection consuming the alerts queue.
struct Session {
    conn: Connection,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// Consumes the alerts queue until shutdown, reconnecting as needed.
pub(crate) struct Consumer {
    amqp_url: String,
    names: Names,
    prefetch: u16,
    dispatcher: Arc<Dispatcher>,
    consuming: Arc<AtomicBool>,
}

impl Consumer {
    /// A consumer that sets `consuming` while it holds a live subscription.
    pub(crate) fn new(
        amqp_url: String,
        names: Names,
        prefetch: u16,
        dispatcher: Arc<Dispatcher>,
        consuming: Arc<AtomicBool>,
    ) -> Self {
        Self {
            amqp_url,
            names,
            prefetch,
            dispatcher,
            consuming,
        }
    }

    /// Consumes until `shutdown` is cancelled, then waits for every job in
    /// flight to be settled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let queue = self.names.alerts_queue();
        let mut tasks = JoinSet::new();
        let mut delay = BACKOFF_MIN;
        let mut outage = false;
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                opened = self.open() => opened,
                () = shutdown.cancelled() => break,
            };
            let error = match opened {
                Ok(session) => {
                    if outage {
                        tracing::info!(
                            amqp.queue = queue,
                            "rabbitmq is back; consuming alert jobs again"
                        );
                    } else {
                        tracing::info!(
                            amqp.queue = queue,
                            prefetch = self.prefetch,
                            "consuming alert jobs"
                        );
                    }
                    outage = false;
                    delay = BACKOFF_MIN;
                    self.consuming.store(true, Ordering::Relaxed);
                    let ended = self.consume(session, &mut tasks, &shutdown).await;
                    self.consuming.store(false, Ordering::Relaxed);
                    match ended {
                        Ok(()) => break,
                        Err(e) => e,
                    }
                }
                Err(e) => e,
            };
            if outage {
                tracing::debug!(error = %error, "rabbitmq still unavailable");
            } else {
                tracing::warn!(
                    error = %error,
                    "rabbitmq unavailable; reconnecting until it is back"
                );
                outage = true;
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = shutdown.cancelled() => break,
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
        drain(&mut tasks).await;
        tracing::info!("stopped consuming alert jobs");
    }

    /// Connects, declares the topology, sets the prefetch and subscribes.
    async fn open(&self) -> Result<Session, SessionError> {
        let open = async {
            let conn = amqp::connect(&self.amqp_url).await?;
            let channel = conn.create_channel().await?;
            amqp::declare_alerts(&channel, &self.names).await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    self.names.alerts_queue().as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await?;
            Ok(Session {
                conn,
                channel,
                consumer,
            })
        };
        tokio::time::timeout(OPEN_TIMEOUT, open)
            .await
            .map_err(|_| SessionError::Timeout(OPEN_TIMEOUT))?
    }

    /// Runs one session: `Ok` after a clean shutdown, `Err` when the
    /// connection or the subscription is lost.
    async fn consume(
        &self,
        session: Session,
        tasks: &mut JoinSet<()>,
        shutdown: &CancellationToken,
    ) -> Result<(), SessionError> {
        let Session {
            conn,
            channel,
            mut consumer,
        } = session;
        let ended = loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break Ok(()),
                Some(joined) = tasks.join_next(), if !tasks.is_empty() => report(joined),
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        tasks.spawn(handle(self.dispatcher.clone(), delivery, shutdown.clone()));
                    }
                    Some(Err(e)) => break Err(SessionError::Lapin(e)),
                    None => break Err(SessionError::Cancelled),
                },
            }
        };
        if ended.is_ok() {
            if let Err(e) = channel
                .basic_cancel(consumer.tag(), BasicCancelOptions::default())
                .await
            {
                tracing::warn!(error = %e, "could not cancel the rabbitmq consumer");
            }
            drain(tasks).await;
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = conn.close(200, "shutdown".into()).await;
        }
        ended
    }
}

/// Waits for every job task.
async fn drain(tasks: &mut JoinSet<()>) {
    if !tasks.is_empty() {
        tracing::info!(jobs = tasks.len(), "waiting for alert jobs in flight");
    }
    while let Some(joined) = tasks.join_next().await {
        report(joined);
    }
}

fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "alert job task failed");
    }
}

/// Just the version of a job that does not parse as this version's.
#[derive(Deserialize)]
struct Versioned {
    v: u8,
}

/// Processes one message and settles it.
async fn handle(dispatcher: Arc<Dispatcher>, delivery: Delivery, shutdown: CancellationToken) {
    let tag = delivery.delivery_tag;
    let job: AlertJob = match serde_json::from_slice(&delivery.data) {
        Ok(job) => job,
        Err(e) => {
            if let Ok(Versioned { v }) = serde_json::from_slice(&delivery.data)
                && v > WIRE_VERSION
            {
                tracing::warn!(
                    amqp.delivery_tag = tag,
                    job.v = v,
                    "alert job has a newer wire version; handing it back for a newer notifier"
                );
                pause(&shutdown).await;
                settle(&delivery, Settle::Requeue).await;
                return;
            }
            tracing::error!(
                amqp.delivery_tag = tag,
                bytes = delivery.data.len(),
                error = %e,
                "malformed alert job; rejecting it"
            );
            settle(&delivery, Settle::Reject).await;
            return;
        }
    };
    match dispatcher.dispatch(&job).await {
        Ok(()) => settle(&delivery, Settle::Ack).await,
        Err(e) => {
            tracing::warn!(
                alert.id = job.alert_id,
                error = %e,
                "could not read or write delivery records; handing the alert job back to the queue"
            );
            pause(&shutdown).await;
            settle(&delivery, Settle::Requeue).await;
        }
    }
}

async fn pause(shutdown: &CancellationToken) {
    tokio::select! {
        () = tokio::time::sleep(REQUEUE_PAUSE) => {}
        () = shutdown.cancelled() => {}
    }
}

#[derive(Clone, Copy, Debug)]
enum Settle {
    Ack,
    Requeue,
    Reject,
}

async fn settle(delivery: &Delivery, how: Settle) {
    let acker = &delivery.acker;
    let result = match how {
        Settle::Ack => acker.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            acker
                .nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                })
                .await
        }
        Settle::Reject => acker.reject(BasicRejectOptions { requeue: false }).await,
    };
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            amqp.delivery_tag = delivery.delivery_tag,
            settle = ?how,
            "the rabbitmq channel of this alert job is gone; it will be redelivered"
        ),
        Err(e) => tracing::warn!(
            amqp.delivery_tag = delivery.delivery_tag,
            settle = ?how,
            error = %e,
            "could not settle the alert job; it will be redelivered"
        ),
    }
}
