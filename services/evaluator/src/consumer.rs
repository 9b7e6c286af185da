//! Applying beat events from JetStream.
//!
//! All replicas pull from one durable consumer with explicit acks. A
//! message carries a batch of beats (ingest packs the pushes that arrive
//! together, see [`BeatBatch`]); each beat is routed to a lane by its
//! monitor id, so one monitor's beats are applied in order by one task,
//! while many monitors proceed in parallel. A lane applies what it holds in
//! one [`Engine::apply_batch`] (a few pipelined Redis round trips, however
//! many beats). A message is acknowledged only after every beat it carries
//! is committed to Redis (state, deadline, history, alert jobs); a crash
//! before the ack means a redelivery, whose beats the state machine
//! recognises by their sequence numbers (invariants 1, 3, 5).
//!
//! Ingest's pulses travel in the same stream; each advances the push-path
//! watermark in Redis (up to which deadlines may fire), and a gap between
//! two is recorded as an outage of the push path.
//!
//! Metrics: `lifeline_evaluator_beats_total{result}`,
//! `lifeline_evaluator_consumer_pending` (messages in the stream not yet
//! delivered to an evaluator) and `lifeline_evaluator_consumer_unacked`
//! (delivered, not yet acknowledged): together the consumer lag.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::pull};
use futures::StreamExt as _;
use lifeline_shared::{
    backoff::Backoff,
    engine::{Applied, Engine},
    metric,
    model::{BeatBatch, BeatEvent, BeatRecord, MonitorId, Pulse, beat_seq},
    names::Names,
    nats,
    state::{BeatDisposition, Input},
    store::{Store, StoreError},
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Beats held in one lane's queue.
const LANE_QUEUE: usize = 1024;

/// Beats a lane applies in one go, at most.
const LANE_BATCH: usize = 256;

/// Beats one message may carry (their sequence numbers have room for this many).
const MESSAGE_MAX_BEATS: usize = 1024;

/// How often the consumer lag is read.
const LAG_EVERY: Duration = Duration::from_secs(2);

/// A gap between pulses longer than this is an outage of the push path
/// (ingest pulses every 250 ms).
const OUTAGE_GAP_MS: i64 = 2000;

/// Unacknowledged beats the consumer may hold across all replicas.
const MAX_ACK_PENDING: i64 = 8192;

/// Consumes beats until `shutdown`, reconnecting after failures.
pub(crate) async fn run(
    js: jetstream::Context,
    engine: Engine,
    names: Names,
    lanes: usize,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    while !shutdown.is_cancelled() {
        match consume(&js, &engine, &names, lanes, &jobs, &shutdown).await {
            Ok(()) => backoff.reset(),
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "beat consumer interrupted; restarting"
                );
                backoff.wait(&shutdown).await;
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
    engine: &Engine,
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
    let lag_stop = shutdown.child_token();
    let lag = tokio::spawn(watch_lag(consumer.clone(), lag_stop.clone()));
    let _stop_lag = lag_stop.clone().drop_guard();
    let pulse_subject = names.pulse_subject();

    let mut senders = Vec::with_capacity(lanes);
    let mut workers = Vec::with_capacity(lanes);
    for _ in 0..lanes.max(1) {
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        senders.push(tx);
        workers.push(tokio::spawn(lane(
            rx,
            engine.clone(),
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
            handle_pulse(engine.store(), msg).await;
            continue;
        }
        let Some(beats) = parse_beats(&msg) else {
            let _ = msg.ack_with(AckKind::Term).await;
            continue;
        };
        let stream_seq = match msg.info() {
            Ok(info) => info.stream_sequence,
            Err(error) => {
                tracing::error!(%error, "beat message without stream metadata; leaving it for redelivery");
                continue;
            }
        };
        if beats.is_empty() {
            let _ = msg.ack().await;
            continue;
        }
        let group = Arc::new(AckGroup {
            remaining: AtomicUsize::new(beats.len()),
            msg,
        });
        let mut stopped = false;
        for (index, event) in beats.into_iter().enumerate() {
            let lane =
                usize::from(lifeline_shared::names::shard_of(&event.monitor_id)) % senders.len();
            let beat = BeatRecord {
                seq: beat_seq(stream_seq, index),
                at: event.at,
                status: event.status,
                msg: event.msg,
                msg_truncated: event.msg_truncated,
                value: event.value,
                late: false,
            };
            let work = Work::Beat {
                group: group.clone(),
                monitor_id: event.monitor_id,
                beat,
            };
            if senders[lane].send(work).await.is_err() {
                stopped = true;
                break;
            }
        }
        if stopped {
            break Err(anyhow::anyhow!("beat lane stopped"));
        }
    };
    // Let every lane finish (and acknowledge) what it holds.
    drop(senders);
    for w in workers {
        let _ = w.await;
    }
    lag_stop.cancel();
    let _ = lag.await;
    result
}

/// The beats of one message: acknowledged once the last is applied.
struct AckGroup {
    msg: jetstream::Message,
    remaining: AtomicUsize,
}

impl AckGroup {
    /// One of the message's beats is committed.
    async fn applied(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
            && let Err(error) = self.msg.ack().await
        {
            tracing::warn!(%error, "beats applied but not acknowledged; their redelivery will be ignored");
        }
    }
}

/// The beats a message carries: a batch, or a single beat event (ingest
/// before batching). `None` (and logged) when it is neither.
fn parse_beats(msg: &jetstream::Message) -> Option<Vec<BeatEvent>> {
    let parsed = serde_json::from_slice::<BeatBatch>(&msg.payload)
        .map(|b| b.beats)
        .or_else(|_| serde_json::from_slice::<BeatEvent>(&msg.payload).map(|e| vec![e]));
    let problem = match parsed {
        Ok(beats) if beats.len() <= MESSAGE_MAX_BEATS => return Some(beats),
        Ok(beats) => format!("{} beats in one message", beats.len()),
        Err(error) => error.to_string(),
    };
    tracing::error!(subject = %msg.subject, error = %problem, "malformed beat message dropped from the stream");
    metrics::counter!(metric::EVALUATOR_BEATS, "result" => "malformed").increment(1);
    None
}

/// What a lane is given.
enum Work {
    /// A beat to apply.
    Beat {
        group: Arc<AckGroup>,
        monitor_id: MonitorId,
        beat: BeatRecord,
    },
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
                metrics::counter!(metric::EVALUATOR_OUTAGES).increment(1);
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

/// Applies the beats of its monitors in order, in batches of what it
/// holds; each message is acknowledged once all its beats are committed.
async fn lane(
    mut rx: mpsc::Receiver<Work>,
    engine: Engine,
    jobs: crate::outbox::Relay,
    shutdown: CancellationToken,
) {
    let mut held: Vec<(Arc<AckGroup>, MonitorId, BeatRecord)> = Vec::with_capacity(LANE_BATCH);
    while let Some(mut work) = rx.recv().await {
        let barrier = loop {
            match work {
                Work::Barrier(done) => break Some(done),
                Work::Beat {
                    group,
                    monitor_id,
                    beat,
                } => held.push((group, monitor_id, beat)),
            }
            if held.len() >= LANE_BATCH {
                break None;
            }
            match rx.try_recv() {
                Ok(next) => work = next,
                Err(_) => break None,
            }
        };
        if !held.is_empty() {
            // Shut down before the beats could be applied: leave them
            // unacknowledged so they are redelivered.
            if !apply(&engine, &held, &jobs, &shutdown).await {
                return;
            }
            for (group, _, _) in held.drain(..) {
                group.applied().await;
            }
        }
        if let Some(done) = barrier {
            let _ = done.send(());
        }
    }
}

/// Applies `held` until it succeeds (true) or `shutdown` (false).
async fn apply(
    engine: &Engine,
    held: &[(Arc<AckGroup>, MonitorId, BeatRecord)],
    jobs: &crate::outbox::Relay,
    shutdown: &CancellationToken,
) -> bool {
    let inputs: Vec<(&str, Input<'_>)> = held
        .iter()
        .map(|(_, id, beat)| (id.as_str(), Input::Beat(beat)))
        .collect();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let error = match engine.apply_batch(&inputs).await {
            Ok(results) => {
                let mut tally = Tally::default();
                for applied in results {
                    tally.record(applied, jobs);
                }
                return true;
            }
            // One unreadable monitor record must not hold up every beat of
            // the lane: apply one by one, and give up on that monitor's beat
            // only (it cannot be applied to a record that does not parse).
            Err(StoreError::Corrupt { .. } | StoreError::CorruptField { .. }) => {
                match apply_one_by_one(engine, &inputs, jobs).await {
                    Ok(()) => return true,
                    Err(error) => error,
                }
            }
            Err(error) => error,
        };
        tracing::warn!(beats = inputs.len(), %error, "beats not applied; retrying");
        if !backoff.wait(shutdown).await {
            return false;
        }
    }
}

/// [`Engine::apply`] on each input in turn; a beat of a monitor whose record
/// does not parse is logged and counted (`result="corrupt_monitor"`), then
/// left; any other error stops.
async fn apply_one_by_one(
    engine: &Engine,
    inputs: &[(&str, Input<'_>)],
    jobs: &crate::outbox::Relay,
) -> Result<(), StoreError> {
    let mut tally = Tally::default();
    for (id, input) in inputs {
        match engine.apply(id, *input).await {
            Ok(applied) => tally.record(applied, jobs),
            Err(error @ (StoreError::Corrupt { .. } | StoreError::CorruptField { .. })) => {
                tracing::error!(monitor.id = %id, %error, "beat not applied: the monitor's record does not parse");
                metrics::counter!(metric::EVALUATOR_BEATS, "result" => "corrupt_monitor")
                    .increment(1);
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// What applying beats did, counted per batch (one metrics update per
/// result and batch, not per beat).
#[derive(Default)]
struct Tally([u64; 5]);

impl Tally {
    /// The `result` label of each slot.
    const RESULTS: [&'static str; 5] = [
        "applied",
        "duplicate",
        "late",
        "not_a_beat",
        "unknown_monitor",
    ];

    /// Counts one beat's outcome and hands its alert jobs to the relay.
    fn record(&mut self, applied: Option<Applied>, jobs: &crate::outbox::Relay) {
        let slot = match &applied {
            Some(a) => match a.outcome.beat {
                BeatDisposition::Applied => 0,
                BeatDisposition::Duplicate => 1,
                BeatDisposition::Late => 2,
                BeatDisposition::NotABeat => 3,
            },
            None => 4,
        };
        self.0[slot] += 1;
        for job in applied.into_iter().flat_map(|a| a.jobs) {
            jobs.hand_over(job);
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        for (result, n) in Self::RESULTS.into_iter().zip(self.0) {
            if n > 0 {
                metrics::counter!(metric::EVALUATOR_BEATS, "result" => result).increment(n);
            }
        }
    }
}

/// Publishes the consumer lag as gauges every [`LAG_EVERY`].
async fn watch_lag(mut consumer: jetstream::consumer::PullConsumer, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(LAG_EVERY);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        match consumer.info().await {
            Ok(info) => {
                metrics::gauge!(metric::EVALUATOR_CONSUMER_PENDING).set(info.num_pending as f64);
                metrics::gauge!(metric::EVALUATOR_CONSUMER_UNACKED)
                    .set(info.num_ack_pending as f64);
            }
            Err(error) => tracing::debug!(%error, "cannot read the consumer lag"),
        }
    }
}
