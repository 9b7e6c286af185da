//! Lifeline ingest: the push endpoint.
//!
//! `GET|POST /api/push/{token}` resolves the token to a monitor, publishes
//! one [`BeatEvent`](lifeline_shared::model::BeatEvent) to NATS JetStream and
//! answers 200 only once JetStream acknowledged it (invariant 1). When NATS
//! or Redis is unreachable it answers 503 so the client retries
//! (invariant 2); a refused request publishes nothing (invariant 7), and
//! every refusal is a JSON 4xx. Each push token may push at a configured
//! rate, counted across replicas ([`limit`]); more is answered 429.
//! Stateless: run any number of replicas behind a load balancer.

mod config;
mod error;
mod limit;
mod publish;
mod pulse;
mod push;
mod tokens;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{Router, extract::DefaultBodyLimit, routing::get};
use lifeline_shared::{backoff::Backoff, http, nats, runtime::Supervisor, store::Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use limit::RateLimit;

/// Shared state of the request handlers.
#[derive(Clone)]
pub(crate) struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    nats: async_nats::Client,
    batcher: publish::Batcher,
    tokens: tokens::TokenCache,
    pulser: pulse::Pulser,
    limiter: Option<limit::Limiter>,
}

/// Connects to the brokers (lazily: the service starts while they are down),
/// starts the background tasks under `tasks` (they stop on its token), and
/// builds the router.
pub async fn build(config: Config, tasks: &mut Supervisor) -> anyhow::Result<Router> {
    let stop = tasks.token();
    let store = Store::open(
        &config.common.redis_url,
        config.common.names.clone(),
        Default::default(),
    )
    .context("opening redis")?;
    let client = nats::connect(&config.common.nats_url)
        .await
        .context("connecting to nats")?;
    let js = async_nats::jetstream::new(client.clone());
    // The stream may not be creatable yet (NATS down): keep trying in the
    // background; publishes answer 503 until it exists.
    tasks.spawn_finite("beats stream set-up", {
        let (js, names, stop) = (js.clone(), config.common.names.clone(), stop.clone());
        async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
            while let Err(error) = nats::ensure_beats_stream(&js, &names).await {
                tracing::warn!(%error, "beats stream not ready, retrying");
                if !backoff.wait(&stop).await {
                    break;
                }
            }
        }
    });
    let (batcher, packing) = publish::Batcher::new(js, config.common.names.beat_batches_subject());
    // Ends once every handle of the batcher (in the router and the tasks
    // below) is gone, after the last beat handed to it is answered.
    tasks.spawn("JetStream publisher", packing);
    let tokens = tokens::TokenCache::new(config.token_cache_ttl);
    let pulser = pulse::Pulser::new(client.clone(), config.common.names.pulse_subject());
    let limiter = config
        .push_limit
        .map(|limit| limit::Limiter::new(limit, store.clone()));
    let state = AppState {
        inner: Arc::new(Inner {
            store,
            nats: client,
            batcher,
            tokens,
            pulser,
            limiter,
        }),
    };
    tasks.spawn("token revocation watcher", {
        let (state, stop) = (state.clone(), stop.clone());
        let store = state.inner.store.clone();
        async move { state.inner.tokens.watch(store, stop).await }
    });
    tasks.spawn_finite("Redis persistence check", {
        let (store, stop) = (state.inner.store.clone(), stop.clone());
        async move { store.warn_if_volatile("ingest", stop).await }
    });
    tasks.spawn("pulser", {
        let state = state.clone();
        async move { state.inner.pulser.run(stop).await }
    });
    Ok(router(state))
}

fn router(state: AppState) -> Router {
    let ready_state = state.clone();
    let ready: http::ReadyCheck = Arc::new(move || {
        let s = ready_state.clone();
        Box::pin(async move {
            let nats = match s.inner.nats.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("{other:?}").to_lowercase()),
            };
            vec![
                ("nats", nats),
                (
                    "redis",
                    s.inner.store.ping().await.map_err(|e| e.to_string()),
                ),
            ]
        })
    });
    // The fallbacks come after the merge so the ops routes answer a wrong
    // method with JSON too.
    Router::new()
        .route(
            "/api/push/{token}",
            get(push::push)
                .post(push::push)
                .fallback(error::push_method_not_allowed),
        )
        .merge(http::ops_router("ingest", ready))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(push::MAX_BODY))
        .with_state(state)
}

/// Serves ingest on `listener` until `shutdown` is cancelled. The server
/// and the background tasks run under one [`Supervisor`]: if any ends on
/// its own, the others are stopped and this returns an error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let mut tasks = Supervisor::new("ingest", &shutdown);
    let app = build(config, &mut tasks).await?;
    tracing::info!(%addr, "ingest listening");
    tasks.spawn("HTTP server", http::serve(listener, app, tasks.token()));
    tasks.run().await?;
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
        let mut config = Config::local("ingest-unit");
        Brokers::unreachable().configure(&mut config.common);
        starts_then_drains(|listener, shutdown| run(config, listener, shutdown)).await;
    }
}
