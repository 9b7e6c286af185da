//! Publishing accepted pushes to JetStream in batches (a group commit).
//!
//! Every push handler hands its serialized [`BeatEvent`] to one packing
//! task and waits. The task keeps at most [`IN_FLIGHT`] JetStream publishes
//! outstanding; while they wait for their acknowledgements, new pushes
//! queue up, and the next publish carries all of them (up to
//! [`BATCH_MAX_BEATS`] beats or [`BATCH_MAX_BYTES`]) as one
//! [`BeatBatch`](lifeline_shared::model::BeatBatch). Each handler answers 200
//! only once JetStream acknowledged the message carrying its beat
//! (invariant 1), and 503 when it was not acknowledged in time (invariant 2).
//!
//! Nothing waits to fill a batch: a lone push is published at once, as a
//! batch of one. Under load, batches grow by themselves to what arrived
//! during one acknowledgement round trip, so JetStream stores (and the
//! evaluator acknowledges) one message per batch instead of one per push.
//!
//! [`BeatEvent`]: lifeline_shared::model::BeatEvent

use std::{future::Future, sync::Arc, time::Duration};

use lifeline_shared::{
    metric,
    model::{BATCH_MAX_BEATS, BATCH_MAX_BYTES, BeatBatch},
};
use tokio::{
    sync::{Semaphore, mpsc, oneshot},
    task::JoinSet,
};

/// JetStream publishes awaiting their acknowledgement at once. One, so that
/// every push arriving meanwhile shares the next message (measured, 64
/// connections: 1 in flight 22.4k–26.7k pushes/s, 2 in flight 22.6k–25.0k,
/// 4 in flight 18.7k).
const IN_FLIGHT: usize = 1;

/// Pushes waiting to be packed, at most; more wait for room (backpressure
/// on the handlers).
const QUEUE: usize = 16 * BATCH_MAX_BEATS;

/// Longest time a publish may wait for JetStream's acknowledgement.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a beat was not handed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NotPublished {
    /// JetStream did not acknowledge the message in time (or refused it).
    Unacknowledged,
    /// The packing task is gone (the service is shutting down).
    Closed,
}

struct Pending {
    event: Vec<u8>,
    done: oneshot::Sender<Result<(), NotPublished>>,
}

/// Hands serialized beat events to the packing task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Pending>,
}

impl Batcher {
    /// A batcher publishing on `subject`, and its packing task (to run): it
    /// ends once every handle is dropped and every publish is answered.
    pub(crate) fn new(
        js: async_nats::jetstream::Context,
        subject: String,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (tx, rx) = mpsc::channel(QUEUE);
        (Self { tx }, pack(js, subject.into(), rx))
    }

    /// Publishes one serialized beat event; returns once JetStream
    /// acknowledged the message carrying it.
    pub(crate) async fn publish(&self, event: Vec<u8>) -> Result<(), NotPublished> {
        let (done, acked) = oneshot::channel();
        self.tx
            .send(Pending { event, done })
            .await
            .map_err(|_| NotPublished::Closed)?;
        acked.await.unwrap_or(Err(NotPublished::Closed))
    }
}

async fn pack(
    js: async_nats::jetstream::Context,
    subject: async_nats::Subject,
    mut rx: mpsc::Receiver<Pending>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    // The publishes awaiting their acknowledgement (at most `IN_FLIGHT`,
    // and those finishing).
    let mut publishes = JoinSet::new();
    while let Some(first) = rx.recv().await {
        while publishes.try_join_next().is_some() {}
        // Wait for a free slot before packing: pushes arriving meanwhile
        // join this batch.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            break;
        };
        let mut bytes = first.event.len();
        let mut batch = vec![first];
        while batch.len() < BATCH_MAX_BEATS {
            let Ok(next) = rx.try_recv() else { break };
            bytes += next.event.len() + 1;
            batch.push(next);
            if bytes >= BATCH_MAX_BYTES {
                break;
            }
        }
        let js = js.clone();
        let subject = subject.clone();
        publishes.spawn(async move {
            let payload = BeatBatch::json_from_parts(batch.iter().map(|p| p.event.as_slice()));
            let size = batch.len();
            let started = std::time::Instant::now();
            let acked = tokio::time::timeout(PUBLISH_TIMEOUT, async {
                js.publish(subject, payload.into())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            })
            .await;
            drop(slot);
            metrics::histogram!(metric::INGEST_PUBLISH_SECONDS)
                .record(started.elapsed().as_secs_f64());
            metrics::histogram!(metric::INGEST_BATCH_BEATS).record(size as f64);
            let result = match acked {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(error)) => {
                    tracing::warn!(%error, beats = size, "batch not acknowledged by JetStream: answering 503");
                    Err(NotPublished::Unacknowledged)
                }
                Err(_) => {
                    tracing::warn!(
                        beats = size,
                        "JetStream acknowledgement timed out: answering 503"
                    );
                    Err(NotPublished::Unacknowledged)
                }
            };
            for p in batch {
                let _ = p.done.send(result);
            }
        });
    }
    while publishes.join_next().await.is_some() {}
}
