//! Applying beat events from JetStream.
//!
//! All replicas pull from one durable consumer with explicit acks. Each beat
//! is routed to a lane by its monitor id, so one monitor's beats are applied
//! in order by one task, while many monitors proceed in parallel. A beat is
//! acknowledged only after its outcome (state, deadline, history, alert
//! jobs) is committed to Redis; a crash before the ack means a redelivery,
//! which the state machine recognises by its stream sequence (invariants 1,
//! 3, 5).
//!
//! Ingest's pulses travel in the same stream; each advances the push-path
//! watermark in Redis (up to which deadlines may fire), and a gap between
//! two is recorded as an outage of the push path.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt as _;
use lifeline_shared::{
    model::{BeatEvent, BeatRecord, Pulse},
    names::Names,
    nats,
    state::Input,
    store::Store,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Beats held in one lane's queue.
const LANE_QUEUE: usize = 256;

/// A gap between pulses longer than this is an outage of the push path
/// (ingest pulses every 250 ms).
const OUTAGE_GAP_MS: i64 = 2000;

/// Unacknowledged beats the consumer may hold across all replicas.
const MAX_ACK_PENDING: i64 = 8192;

/// Consumes beats until `shutdown`, reconnecting after failures.
pub(crate) async fn run(
    js: jetstream::Context,
    store: Store,
    names: Names,
    lanes: usize,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        match consume(&js, &store, &names, lanes, &jobs, &shutdown).await {
            Ok(()) => delay = Duration::from_millis(200),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "beat consumer interrupted; restarting"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The durable consumer's configuration.
fn consumer_config(names: &Names) -> pull::Config {
    pull::Config {
        durable_name: Some(names.evaluator_consumer()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(30),
        max_ack_pending: MAX_ACK_PENDING,
        ..Default::default()
    }
}

async fn consume(
    js: &jetstream::Context,
    store: &Store,
    names: &Names,
    lanes: usize,
    jobs: &crate::outbox::Relay,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let stream = nats::ensure_beats_stream(js, names)
        .await
        .context("beats stream")?;
    let consumer = stream
        .get_or_create_consumer(&names.evaluator_consumer(), consumer_config(names))
        .await
        .context("beats consumer")?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(500)
        .heartbeat(Duration::from_secs(5))
        .messages()
        .await
        .context("pulling beats")?;
    tracing::info!(consumer = %names.evaluator_consumer(), "consuming beats");
    let pulse_subject = names.pulse_subject();

    let mut senders = Vec::with_capacity(lanes);
    let mut workers = Vec::with_capacity(lanes);
    for _ in 0..lanes.max(1) {
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        senders.push(tx);
        workers.push(tokio::spawn(lane(
            rx,
            store.clone(),
            jobs.clone(),
            shutdown.clone(),
        )));
    }

    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = messages.next() => next,
        };
        let msg = match next {
            None => break Err(anyhow::anyhow!("beat stream ended")),
            Some(Err(error)) => {
                tracing::warn!(%error, "error while pulling beats");
                continue;
            }
            Some(Ok(msg)) => msg,
        };
        if msg.subject.as_str() == pulse_subject {
            // Beats dispatched before this pulse are applied before the
            // watermark passes them, so the ticker cannot fire a deadline
            // that one of them was about to meet.
            if !drain(&senders).await {
                break Err(anyhow::anyhow!("beat lane stopped"));
            }
            handle_pulse(store, msg).await;
            continue;
        }
        let event: BeatEvent = match serde_json::from_slice(&msg.payload) {
            Ok(event) => event,
            Err(error) => {
                tracing::error!(subject = %msg.subject, %error, "malformed beat event dropped from the stream");
                metrics::counter!("lifeline_evaluator_beats_total", "result" => "malformed")
                    .increment(1);
                let _ = msg.ack_with(AckKind::Term).await;
                continue;
            }
        };
        let lane = usize::from(lifeline_shared::names::shard_of(&event.monitor_id)) % senders.len();
        if senders[lane]
            .send(Work::Beat(Box::new(msg), event))
            .await
            .is_err()
        {
            break Err(anyhow::anyhow!("beat lane stopped"));
        }
    };
    // Let every lane finish (and acknowledge) what it holds.
    drop(senders);
    for w in workers {
        let _ = w.await;
    }
    result
}

/// What a lane is given.
enum Work {
    /// A beat to apply (and acknowledge).
    Beat(Box<jetstream::Message>, BeatEvent),
    /// Answer once everything queued before it is applied.
    Barrier(oneshot::Sender<()>),
}

/// Waits until every lane has applied what it was given so far.
async fn drain(lanes: &[mpsc::Sender<Work>]) -> bool {
    let mut done = Vec::with_capacity(lanes.len());
    for lane in lanes {
        let (tx, rx) = oneshot::channel();
        if lane.send(Work::Barrier(tx)).await.is_err() {
            return false;
        }
        done.push(rx);
    }
    for rx in done {
        if rx.await.is_err() {
            return false;
        }
    }
    true
}

/// Advances the push-path watermark; records an outage after a gap.
async fn handle_pulse(store: &Store, msg: jetstream::Message) {
    let pulse: Pulse = match serde_json::from_slice(&msg.payload) {
        Ok(p) => p,
        Err(error) => {
            tracing::error!(%error, "malformed pulse dropped from the stream");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // Dated by JetStream's storage time, not the sender's clock: a pulse
    // buffered by a disconnected client and flushed after the outage must
    // not paper over the gap.
    let at = msg
        .info()
        .map(|i| (i.published.unix_timestamp_nanos() / 1_000_000) as i64)
        .unwrap_or(pulse.at);
    match store.pulse(at, OUTAGE_GAP_MS).await {
        Ok(outage) => {
            if let Some(o) = outage {
                tracing::warn!(
                    outage.start = %lifeline_shared::time::rfc3339(o.start),
                    outage.end = %lifeline_shared::time::rfc3339(o.end),
                    duration_ms = o.end - o.start,
                    "push path outage recorded: deadlines inside it are extended by its length"
                );
                metrics::counter!("lifeline_evaluator_outages_total").increment(1);
            }
            let _ = msg.ack().await;
        }
        Err(error) => {
            tracing::warn!(%error, "pulse not applied; it will be redelivered");
            let _ = msg
                .ack_with(AckKind::Nak(Some(Duration::from_millis(500))))
                .await;
        }
    }
}

/// Applies the beats of its monitors in order; acknowledges each once committed.
async fn lane(
    mut rx: mpsc::Receiver<Work>,
    store: Store,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    while let Some(work) = rx.recv().await {
        let (msg, event) = match work {
            Work::Beat(msg, event) => (msg, event),
            Work::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
        };
        let seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::error!(%error, "beat without stream metadata; leaving it for redelivery");
                continue;
            }
        };
        let beat = BeatRecord {
            seq,
            at: event.at,
            status: event.status,
            msg: event.msg,
            msg_truncated: event.msg_truncated,
            value: event.value,
            late: false,
        };
        let mut delay = Duration::from_millis(100);
        let applied = loop {
            match store.apply(&event.monitor_id, Input::Beat(&beat)).await {
                Ok(applied) => break Some(applied),
                Err(error) => {
                    tracing::warn!(monitor.id = %event.monitor_id, %error, "beat not applied; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => break None,
                        _ = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        // Shut down before the beat could be applied: leave it unacknowledged
        // so it is redelivered.
        let Some(applied) = applied else { continue };
        let result = match &applied {
            Some(a) => format!("{:?}", a.outcome.beat).to_lowercase(),
            None => "unknown_monitor".to_owned(),
        };
        metrics::counter!("lifeline_evaluator_beats_total", "result" => result).increment(1);
        for job in applied.into_iter().flat_map(|a| a.jobs) {
            jobs.hand_over(job);
        }
        if let Err(error) = msg.ack().await {
            tracing::warn!(%error, "beat applied but not acknowledged; its redelivery will be ignored");
        }
    }
}
