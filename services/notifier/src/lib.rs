//! The Lifeline notifier: turns alert jobs from RabbitMQ into deliveries
//! to email, Slack and signed webhooks, with retries through delay queues,
//! dead letters, and a delivery log in Redis.
//!
//! * [`config`]: the typed configuration; [`retry`]: the retry schedule.
//! * `consumer`: the two RabbitMQ subscriptions (alerts, deliveries), acks,
//!   reconnection, shutdown; `settle`: what its workers answer it (ack,
//!   requeue, reject), so no worker depends on the consumer.
//! * `fanout`: one alert job to one delivery job per channel.
//! * `deliver`: one delivery job, one attempt, and where the job goes next
//!   (done, a delay queue, the dead-letter queue), recorded; `decide`: that
//!   decision, a pure function; `record`: what an attempt leaves in Redis.
//! * `channels`: one attempt on one channel type (webhook, email, Slack);
//!   `summary`: the alert in words, for email and Slack.
//!
//! RabbitMQ topology (prefix `P`): `P.alerts` → fan-out → `P.deliveries` →
//! attempt → `P.retry.<ms>` (TTL, dead-lettered back to `P.deliveries`) or
//! `P.dead`. Every message is acked only after its successors are confirmed
//! by the broker, so a notifier killed at any point loses nothing
//! (invariant 6); duplicates it may cause carry the same `webhook-id` (or
//! email `Message-ID`), and a delivery with a final record is never
//! attempted again.
//!
//! Metrics (at `/metrics`): counter
//! `lifeline_notifier_deliveries_total{channel_type, outcome}`, one per
//! attempt, with outcome `succeeded`, `retrying` or `failed` (the last is
//! final; `channel_type="unknown"` when the channel no longer exists);
//! histogram `lifeline_notifier_delivery_seconds{channel_type}`, the duration
//! of each attempt; counter
//! `lifeline_notifier_dead_lettered_total{channel_type}`, deliveries sent to
//! the dead-letter queue.

pub mod config;
pub mod retry;

mod channels;
mod consumer;
mod decide;
mod deliver;
mod fanout;
mod record;
mod settle;
mod summary;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use lifeline_shared::{
    amqp::Publisher,
    http::{self, ReadyCheck},
    runtime::Supervisor,
    store::{Caps, Store},
    token::new_id,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    channels::Channels,
    consumer::{Consumer, Work},
    deliver::Deliverer,
    fanout::Fanout,
};
pub use crate::{config::Config, retry::RetrySchedule};

/// Longest wait for Redis in `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the notifier: serves `/healthz`, `/readyz` and `/metrics` on
/// `ops_listener` and consumes alert and delivery jobs until `shutdown` is
/// cancelled. Then it stops consuming, lets the jobs in flight finish and be
/// settled, and returns.
pub async fn run(
    config: Config,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = config.common.names.clone();
    let store = Store::open(&config.common.redis_url, names.clone(), Caps::default())
        .context("invalid LIFELINE_REDIS_URL")?;
    let channels = Channels::new(config.attempt_timeout, &config.smtp_url, &config.smtp_from)
        .context("building the channel clients")?;
    let publisher = Arc::new(Publisher::new(&config.common.amqp_url, names.clone()));
    let replica = format!("notifier-{}", new_id());
    let fanout = Arc::new(Fanout::new(store.clone(), publisher.clone()));
    let deliverer = Arc::new(Deliverer::new(
        store.clone(),
        publisher,
        channels,
        config.retry_schedule.clone(),
        replica.clone(),
        config.attempt_timeout,
    ));
    let alerts_consuming = Arc::new(AtomicBool::new(false));
    let deliveries_consuming = Arc::new(AtomicBool::new(false));

    let addr = ops_listener.local_addr()?;
    tracing::info!(
        ops.addr = %addr,
        prefix = names.prefix(),
        replica = %replica,
        config = ?config,
        "notifier starting"
    );
    // Every task runs under one supervisor: if the ops server or a consumer
    // ends on its own, the others stop and the process exits in error
    // rather than running on unobserved or half-deaf.
    let mut tasks = Supervisor::new("notifier", &shutdown);
    let stop = tasks.token();
    tasks.spawn_finite("Redis persistence check", {
        let (store, stop) = (store.clone(), stop.clone());
        async move { store.warn_if_volatile("notifier", stop).await }
    });
    let router = http::ops_router(
        "notifier",
        ready_check(
            store,
            [alerts_consuming.clone(), deliveries_consuming.clone()],
        ),
    );
    tasks.spawn(
        "ops HTTP server",
        http::serve(ops_listener, router, stop.clone()),
    );
    let consumer = |work, consuming| {
        Consumer::new(
            config.common.amqp_url.clone(),
            names.clone(),
            config.prefetch,
            work,
            consuming,
        )
        .run(stop.clone())
    };
    tasks.spawn(
        "alerts consumer",
        consumer(Work::Fanout(fanout), alerts_consuming),
    );
    tasks.spawn(
        "deliveries consumer",
        consumer(Work::Deliver(deliverer), deliveries_consuming),
    );
    tasks.run().await?;
    tracing::info!("notifier stopped");
    Ok(())
}

/// `/readyz`: Redis answers `PING`, and both queues are being consumed.
fn ready_check(store: Store, consuming: [Arc<AtomicBool>; 2]) -> ReadyCheck {
    Arc::new(move || {
        let store = store.clone();
        let consuming = consuming.clone();
        Box::pin(async move {
            let redis = match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
            };
            let rabbitmq = if consuming.iter().all(|c| c.load(Ordering::Relaxed)) {
                Ok(())
            } else {
                Err("not consuming the alerts and deliveries queues".to_owned())
            };
            vec![("redis", redis), ("rabbitmq", rabbitmq)]
        })
    })
}

#[cfg(test)]
mod tests {
    use lifeline_testkit::{Brokers, lifecycle::starts_then_drains};

    use super::*;

    /// Started against brokers nobody listens on (it starts all the same),
    /// then cancelled: every task stops and `run` returns `Ok`.
    #[tokio::test]
    async fn cancelled_it_drains_every_task_and_returns_ok() {
        let mut config = Config::local("notifier-unit");
        Brokers::unreachable().configure(&mut config.common);
        starts_then_drains(|listener, shutdown| run(config, listener, shutdown)).await;
    }
}
