//! Lifeline evaluator: keeps every monitor's state and deadline, and raises
//! one alert job per state change.
//!
//! Three loops share one Redis store:
//! * [`consumer`] applies beat events from the shared durable JetStream
//!   consumer, acknowledging each only after its outcome is in Redis
//!   (invariant 1); beats of one monitor are applied in stream order;
//! * [`deadlines`] fires passed deadlines every tick, including those that
//!   passed while every evaluator was stopped (invariant 4);
//! * [`outbox`] publishes the alert jobs that state changes wrote into the
//!   Redis outbox, and removes each only after RabbitMQ confirmed it.
//!
//! Every state change is one version-checked Redis script, so any number of
//! replicas can run these loops at once without doubling an alert
//! (invariant 3).

mod config;
mod consumer;
mod deadlines;
mod outbox;

use std::sync::Arc;

use anyhow::Context as _;
use lifeline_shared::{amqp::Publisher, engine::Engine, http, nats, store::Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs the evaluator until `shutdown` is cancelled; serves `/healthz`,
/// `/readyz` and `/metrics` on `ops_listener`.
pub async fn run(
    config: Config,
    ops_listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = config.common.names.clone();
    let store = Store::open(&config.common.redis_url, names.clone(), config.caps)
        .context("opening redis")?;
    let engine = Engine::new(store.clone()).with_cache(config.monitor_cache);
    let client = nats::connect(&config.common.nats_url)
        .await
        .context("connecting to nats")?;
    let js = async_nats::jetstream::new(client.clone());
    let publisher = Arc::new(Publisher::new(&config.common.amqp_url, names.clone()));

    let ready: http::ReadyCheck = {
        let (store, client, publisher) = (store.clone(), client.clone(), publisher.clone());
        Arc::new(move || {
            let (store, client, publisher) = (store.clone(), client.clone(), publisher.clone());
            Box::pin(async move {
                let nats = match client.connection_state() {
                    async_nats::connection::State::Connected => Ok(()),
                    other => Err(format!("{other:?}").to_lowercase()),
                };
                vec![
                    ("nats", nats),
                    ("redis", store.ping().await.map_err(|e| e.to_string())),
                    (
                        "rabbitmq",
                        publisher.ready().await.map_err(|e| e.to_string()),
                    ),
                ]
            })
        })
    };
    let addr = ops_listener.local_addr()?;
    let ops = tokio::spawn(http::serve(
        ops_listener,
        http::ops_router("evaluator", ready),
        shutdown.clone(),
    ));
    tracing::info!(%addr, "evaluator ops listening");

    let volatile = tokio::spawn({
        let (store, shutdown) = (store.clone(), shutdown.clone());
        async move { store.warn_if_volatile("evaluator", shutdown).await }
    });

    let (jobs_tx, jobs_rx) = outbox::Relay::new(50_000, store.clone());
    let relay = tokio::spawn(outbox::relay(publisher.clone(), jobs_tx.clone(), jobs_rx));
    let sweeper = tokio::spawn(outbox::sweep(
        publisher,
        store.clone(),
        jobs_tx.clone(),
        config.sweep_every,
        shutdown.clone(),
    ));
    let ticker = tokio::spawn(deadlines::run(
        engine.clone(),
        config.tick,
        jobs_tx.clone(),
        shutdown.clone(),
    ));
    let consumer = tokio::spawn(consumer::run(
        js,
        engine,
        names,
        config.lanes,
        jobs_tx,
        shutdown.clone(),
    ));

    consumer.await?;
    ticker.await?;
    relay.await?;
    sweeper.await?;
    ops.await??;
    volatile.await?;
    client.drain().await.ok();
    tracing::info!("evaluator stopped");
    Ok(())
}
