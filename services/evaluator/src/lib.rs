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
use lifeline_shared::{
    amqp::Publisher, engine::Engine, http, nats, runtime::Supervisor, store::Store,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// Runs the evaluator until `shutdown` is cancelled; serves `/healthz`,
/// `/readyz` and `/metrics` on `ops_listener`. Every loop runs under one
/// [`Supervisor`]: if any ends on its own, the others are stopped and this
/// returns an error.
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
    let mut tasks = Supervisor::new("evaluator", &shutdown);
    let stop = tasks.token();
    tasks.spawn(
        "ops HTTP server",
        http::serve(
            ops_listener,
            http::ops_router("evaluator", ready),
            stop.clone(),
        ),
    );
    tracing::info!(%addr, "evaluator ops listening");

    tasks.spawn_finite("Redis persistence check", {
        let (store, stop) = (store.clone(), stop.clone());
        async move { store.warn_if_volatile("evaluator", stop).await }
    });

    // The relay, and the remover of confirmed jobs, end once the loops
    // below (holding `jobs_tx` clones) have stopped.
    let (jobs_tx, jobs_rx, remover) = outbox::Relay::new(50_000, store.clone());
    tasks.spawn("outbox remover", remover);
    tasks.spawn(
        "alert relay",
        outbox::relay(publisher.clone(), jobs_tx.clone(), jobs_rx),
    );
    tasks.spawn(
        "outbox sweep",
        outbox::sweep(
            publisher,
            store.clone(),
            jobs_tx.clone(),
            config.sweep_every,
            stop.clone(),
        ),
    );
    tasks.spawn(
        "deadline ticker",
        deadlines::run(engine.clone(), config.tick, jobs_tx.clone(), stop.clone()),
    );
    tasks.spawn(
        "beat consumer",
        consumer::run(js, engine, names, config.lanes, jobs_tx, stop),
    );

    let stopped = tasks.run().await;
    client.drain().await.ok();
    stopped?;
    tracing::info!("evaluator stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use lifeline_testkit::{Brokers, lifecycle::starts_then_drains};

    use super::*;

    /// Started against brokers nobody listens on (it starts all the same),
    /// then cancelled: every task stops and `run` returns `Ok`.
    #[tokio::test]
    async fn cancelled_it_drains_every_task_and_returns_ok() {
        let mut config = Config::local("evaluator-unit");
        Brokers::unreachable().configure(&mut config.common);
        starts_then_drains(|listener, shutdown| run(config, listener, shutdown)).await;
    }
}
