//! The Lifeline notifier: consumes alert jobs from RabbitMQ and delivers
//! each to every channel of its monitor, recording one delivery per
//! (alert, channel) in Redis.
//!
//! * [`config`]: the typed configuration.
//! * `consumer`: the RabbitMQ subscription, acks, reconnection, shutdown.
//! * `dispatch`: one job to one final record per channel (dedupe, retries).
//! * `channels`: one attempt on one channel type (webhook for now).
//!
//! A job leaves the queue only after every channel has a final record
//! (invariant 6); a job seen again never re-delivers a channel that already
//! succeeded.
//!
//! Metrics (at `/metrics`): counter
//! `lifeline_notifier_deliveries_total{channel_type, outcome}`, one per final
//! record (`channel_type="unknown"` when the channel no longer exists), and
//! histogram `lifeline_notifier_delivery_seconds{channel_type}`, the duration
//! of each attempt.

pub mod config;

mod channels;
mod consumer;
mod dispatch;

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use lifeline_shared::{
    http::{self, ReadyCheck},
    store::{Caps, Store},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use crate::config::Config;
use crate::{channels::Channels, consumer::Consumer, dispatch::Dispatcher};

/// Longest wait for Redis in `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the notifier: serves `/healthz`, `/readyz` and `/metrics` on
/// `ops_listener` and consumes alert jobs until `shutdown` is cancelled.
/// Then it stops consuming, lets the jobs in flight finish and be acked, and
/// returns.
pub async fn run(
    config: Config,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = config.common.names.clone();
    let store = Store::open(&config.common.redis_url, names.clone(), Caps::default())
        .context("invalid LIFELINE_REDIS_URL")?;
    let channels = Channels::new(config.webhook_timeout).context("building the HTTP client")?;
    let dispatcher = Arc::new(Dispatcher::new(
        store.clone(),
        channels,
        config.retry_delays.clone(),
    ));
    let consuming = Arc::new(AtomicBool::new(false));

    let addr = ops_listener.local_addr()?;
    tracing::info!(
        ops.addr = %addr,
        prefix = names.prefix(),
        config = ?config,
        "notifier starting"
    );
    // Stop consuming if the ops server dies, so the process does not run
    // on unobserved.
    let stop = shutdown.child_token();
    let router = http::ops_router(ready_check(store, consuming.clone()));
    let server = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let served = http::serve(ops_listener, router, stop.clone()).await;
            if let Err(e) = &served {
                tracing::error!(error = %e, "ops HTTP server failed; stopping");
                stop.cancel();
            }
            served
        })
    };

    Consumer::new(
        config.common.amqp_url.clone(),
        names,
        config.prefetch,
        dispatcher,
        consuming,
    )
    .run(stop.clone())
    .await;

    stop.cancel();
    server
        .await
        .context("ops HTTP server task")?
        .context("ops HTTP server")?;
    tracing::info!("notifier stopped");
    Ok(())
}

/// `/readyz`: Redis answers `PING`, and the alerts queue is being consumed.
fn ready_check(store: Store, consuming: Arc<AtomicBool>) -> ReadyCheck {
    Arc::new(move || {
        let store = store.clone();
        let consuming = consuming.clone();
        Box::pin(async move {
            let redis = match tokio::time::timeout(READY_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {READY_TIMEOUT:?}")),
            };
            let rabbitmq = if consuming.load(Ordering::Relaxed) {
                Ok(())
            } else {
                Err("not consuming the alerts queue".to_owned())
            };
            vec![("redis", redis), ("rabbitmq", rabbitmq)]
        })
    })
}
