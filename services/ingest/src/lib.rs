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

use std::sync::Arc;

use anyhow::Context as _;
use axum::{Router, extract::DefaultBodyLimit, routing::get};
use lifeline_shared::{http, nats, store::Store};
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

/// Connects to the brokers (lazily: the service starts while they are down)
/// and builds the router.
/// Pulses stop when `shutdown` is cancelled.
pub async fn build(config: Config, shutdown: CancellationToken) -> anyhow::Result<Router> {
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
    let names = config.common.names.clone();
    let js_setup = js.clone();
    // The stream may not be creatable yet (NATS down): keep trying in the
    // background; publishes answer 503 until it exists.
    tokio::spawn(async move {
        let mut delay = std::time::Duration::from_millis(200);
        loop {
            match nats::ensure_beats_stream(&js_setup, &names).await {
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "beats stream not ready, retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(std::time::Duration::from_secs(5));
                }
            }
        }
    });
    let batcher = publish::Batcher::start(js, config.common.names.beat_batches_subject());
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
    let watching = state.clone();
    let store = state.inner.store.clone();
    let watch_shutdown = shutdown.clone();
    tokio::spawn(async move { watching.inner.tokens.watch(store, watch_shutdown).await });
    let checking = state.inner.store.clone();
    let check_shutdown = shutdown.clone();
    tokio::spawn(async move { checking.warn_if_volatile("ingest", check_shutdown).await });
    let pulsing = state.clone();
    tokio::spawn(async move { pulsing.inner.pulser.run(shutdown).await });
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

/// Serves ingest on `listener` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let app = build(config, shutdown.clone()).await?;
    tracing::info!(%addr, "ingest listening");
    http::serve(listener, app, shutdown).await?;
    Ok(())
}
