//! The RabbitMQ side: consume a queue, hand each message to its worker, and
//! settle the message according to what the worker says (a `Settle`, which
//! lives in `settle` so that the workers never depend on this module).
//!
//! Two consumers run in each notifier, each on its own connection: the
//! alerts queue (worker: the fan-out) and the deliveries queue (worker: the
//! deliverer). Messages arrive with manual acknowledgements; the prefetch
//! bounds how many each holds, and each runs in its own task, so one slow
//! receiver does not hold up the others. A message is
//!
//! * **acked** once the worker has moved it on (published its successors
//!   with confirms) and recorded what it did (invariant 6: a notifier killed
//!   mid-delivery loses nothing, as RabbitMQ redelivers what was never acked);
//! * **nacked and requeued**, after a short pause, when Redis or RabbitMQ
//!   cannot be reached (or the job comes from a newer producer), so another
//!   attempt, possibly by another replica, picks it up;
//! * **rejected** without requeue when it is not a job at all.
//!
//! The connection is re-established by itself, with back-off, whenever it
//! drops; an outage is logged once when it starts and once when it ends.
//! Jobs in flight when the connection drops finish, but their ack cannot
//! reach the broker: RabbitMQ redelivers them, and the delivery records keep
//! a finished delivery from being attempted again.
//!
//! On shutdown the consumer is cancelled, jobs in flight finish and are
//! settled, and only then is the connection closed; jobs prefetched but not
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
    backoff::Backoff,
    names::Names,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::{deliver::Deliverer, fanout::Fanout, settle::Settle};

/// Pauses between reconnection attempts: from about 500 ms, doubling up
/// to 10 s, jittered.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
/// Longest wait for connecting and setting up the channel.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before handing a job back to the queue, so an outage does not
/// spin jobs through RabbitMQ.
const REQUEUE_PAUSE: Duration = Duration::from_secs(1);

/// The worker of a queue.
#[derive(Clone)]
pub(crate) enum Work {
    /// Alert jobs, fanned out into delivery jobs.
    Fanout(Arc<Fanout>),
    /// Delivery jobs, attempted.
    Deliver(Arc<Deliverer>),
}

impl Work {
    fn queue(&self, names: &Names) -> String {
        match self {
            Self::Fanout(_) => names.alerts_queue(),
            Self::Deliver(_) => names.deliveries_queue(),
        }
    }

    /// What the queue holds, for logs.
    fn jobs(&self) -> &'static str {
        match self {
            Self::Fanout(_) => "alert jobs",
            Self::Deliver(_) => "delivery jobs",
        }
    }

    /// Declares what the worker publishes to, besides the base topology.
    async fn declare(&self, ch: &lapin::Channel) -> Result<(), AmqpError> {
        match self {
            Self::Fanout(_) => Ok(()),
            Self::Deliver(d) => d.declare(ch).await,
        }
    }

    async fn handle(&self, ch: &lapin::Channel, data: &[u8]) -> Settle {
        match self {
            Self::Fanout(f) => f.handle(data).await,
            Self::Deliver(d) => d.handle(ch, data).await,
        }
    }
}

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

/// One connection consuming a queue.
struct Session {
    conn: Connection,
    channel: lapin::Channel,
    consumer: lapin::Consumer,
}

/// Consumes one queue until shutdown, reconnecting as needed.
pub(crate) struct Consumer {
    amqp_url: String,
    names: Names,
    prefetch: u16,
    work: Work,
    consuming: Arc<AtomicBool>,
}

impl Consumer {
    /// A consumer that sets `consuming` while it holds a live subscription.
    pub(crate) fn new(
        amqp_url: String,
        names: Names,
        prefetch: u16,
        work: Work,
        consuming: Arc<AtomicBool>,
    ) -> Self {
        Self {
            amqp_url,
            names,
            prefetch,
            work,
            consuming,
        }
    }

    /// Consumes until `shutdown` is cancelled, then waits for every job in
    /// flight to be settled.
    pub(crate) async fn run(self, shutdown: CancellationToken) {
        let queue = self.work.queue(&self.names);
        let jobs = self.work.jobs();
        let mut tasks = JoinSet::new();
        let mut backoff = BACKOFF;
        let mut outage = false;
        while !shutdown.is_cancelled() {
            let opened = tokio::select! {
                opened = self.open(&queue) => opened,
                () = shutdown.cancelled() => break,
            };
            let error = match opened {
                Ok(session) => {
                    if outage {
                        tracing::info!(
                            amqp.queue = queue,
                            "rabbitmq is back; consuming {jobs} again"
                        );
                    } else {
                        tracing::info!(
                            amqp.queue = queue,
                            prefetch = self.prefetch,
                            "consuming {jobs}"
                        );
                    }
                    outage = false;
                    backoff.reset();
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
                tracing::debug!(amqp.queue = queue, error = %error, "rabbitmq still unavailable");
            } else {
                tracing::warn!(
                    amqp.queue = queue,
                    error = %error,
                    "rabbitmq unavailable; reconnecting until it is back"
                );
                outage = true;
            }
            if !backoff.wait(&shutdown).await {
                break;
            }
        }
        drain(&mut tasks, jobs).await;
        tracing::info!(amqp.queue = queue, "stopped consuming {jobs}");
    }

    /// Connects, declares the topology, sets the prefetch and subscribes.
    async fn open(&self, queue: &str) -> Result<Session, SessionError> {
        let open = async {
            let conn = amqp::connect(&self.amqp_url).await?;
            let channel = conn.create_channel().await?;
            amqp::declare_alerts(&channel, &self.names).await?;
            self.work.declare(&channel).await?;
            channel
                .basic_qos(self.prefetch, BasicQosOptions::default())
                .await?;
            let consumer = channel
                .basic_consume(
                    queue.into(),
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
                        tasks.spawn(handle(
                            self.work.clone(),
                            channel.clone(),
                            delivery,
                            shutdown.clone(),
                        ));
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
            drain(tasks, self.work.jobs()).await;
            let _ = channel.close(200, "shutdown".into()).await;
            let _ = conn.close(200, "shutdown".into()).await;
        }
        ended
    }
}

/// Waits for every job task.
async fn drain(tasks: &mut JoinSet<()>, jobs: &str) {
    if !tasks.is_empty() {
        tracing::info!(jobs = tasks.len(), "waiting for {jobs} in flight");
    }
    while let Some(joined) = tasks.join_next().await {
        report(joined);
    }
}

fn report(joined: Result<(), tokio::task::JoinError>) {
    if let Err(e) = joined {
        tracing::error!(error = %e, "job task failed");
    }
}

/// Processes one message and settles it.
async fn handle(
    work: Work,
    channel: lapin::Channel,
    delivery: Delivery,
    shutdown: CancellationToken,
) {
    let how = work.handle(&channel, &delivery.data).await;
    if how == Settle::Requeue {
        tokio::select! {
            () = tokio::time::sleep(REQUEUE_PAUSE) => {}
            () = shutdown.cancelled() => {}
        }
    }
    settle(&delivery, how).await;
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
            "the rabbitmq channel of this job is gone; it will be redelivered"
        ),
        Err(e) => tracing::warn!(
            amqp.delivery_tag = delivery.delivery_tag,
            settle = ?how,
            error = %e,
            "could not settle the job; it will be redelivered"
        ),
    }
}
