//! Lifeline's management API: monitors, channels, pause/resume, push-token
//! and signing-secret rotation, test alerts, beat history, state changes and
//! the delivery log, as JSON over HTTP behind an API key.
//!
//! The API writes monitors only through the shared store and the monitor
//! state machine, so a pause, a resume or a new timeout moves the state and
//! the deadline in one atomic write, exactly as the evaluator would. It
//! talks to Redis, and to RabbitMQ only to send a test alert (one delivery
//! job straight to the deliveries queue), so everything else keeps working
//! while RabbitMQ is down. Push tokens and webhook signing secrets are
//! shown in full only when created or rotated (invariant 8). Every refusal
//! is a JSON 4xx naming the field at fault (invariant 7), and nothing is
//! published for a refused request.
//!
//! Entry points take their I/O as arguments: [`run`] serves on a listener
//! until a cancellation token fires, and [`router`] gives the bare router
//! for in-process tests.

use std::{sync::Arc, time::Duration};

use lifeline_shared::{
    amqp::Publisher,
    engine::Engine,
    runtime::Supervisor,
    store::{Store, StoreError},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod auth;
mod config;
mod error;
mod input;
mod routes;

pub use config::{Config, TEST_TIMEOUT};
pub use error::ApiError;
pub use routes::router;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Store,
    /// Steps monitors through the state machine (pause, resume, new settings).
    pub(crate) engine: Engine,
    pub(crate) api_key: Arc<auth::ApiKey>,
    pub(crate) public_url: Arc<str>,
    /// Sends test alerts; connects on first use, reconnects after a failure.
    pub(crate) publisher: Arc<Publisher>,
    /// How long a test alert waits for its outcome.
    pub(crate) test_timeout: Duration,
    /// Cancelled when the service stops: a test alert still waiting for its
    /// outcome answers at once instead of holding the shutdown up.
    pub(crate) shutdown: CancellationToken,
}

impl AppState {
    /// The state for `config`. Redis and RabbitMQ are connected lazily: the
    /// API starts while either is down and answers 503 where it needs one
    /// until it is back.
    pub fn new(config: &Config) -> Result<Self, StoreError> {
        let store = Store::open(
            &config.common.redis_url,
            config.common.names.clone(),
            config.caps,
        )?;
        Ok(Self {
            engine: Engine::new(store.clone()),
            store,
            api_key: Arc::new(auth::ApiKey::new(&config.api_key)),
            public_url: config.public_url.trim_end_matches('/').into(),
            publisher: Arc::new(Publisher::new(
                &config.common.amqp_url,
                config.common.names.clone(),
            )),
            test_timeout: config.test_timeout,
            shutdown: CancellationToken::new(),
        })
    }

    /// The same state, with waits cut short once `shutdown` is cancelled.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// The store the API reads and writes.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The push URL of a token.
    pub(crate) fn push_url(&self, token: &str) -> String {
        format!("{}/api/push/{token}", self.public_url)
    }
}

/// Serves the API (and `/healthz`, `/readyz`, `/metrics`) on `listener`
/// until `shutdown` is cancelled, letting in-flight requests finish. The
/// server runs under a [`Supervisor`]: should it end on its own, this
/// returns an error.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = Supervisor::new("api", &shutdown);
    let stop = tasks.token();
    let state = AppState::new(&config)?.with_shutdown(stop.clone());
    tracing::info!(
        addr = %listener.local_addr()?,
        prefix = config.common.names.prefix(),
        public_url = %config.public_url,
        "api listening"
    );
    tasks.spawn_finite("Redis persistence check", {
        let (store, stop) = (state.store.clone(), stop.clone());
        async move { store.warn_if_volatile("api", stop).await }
    });
    tasks.spawn(
        "HTTP server",
        lifeline_shared::http::serve(listener, router(state), stop),
    );
    tasks.run().await?;
    tracing::info!("api stopped");
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
        let mut config = Config::local("api-unit", "0123456789abcdef", "http://127.0.0.1:8080");
        Brokers::unreachable().configure(&mut config.common);
        starts_then_drains(|listener, shutdown| run(config, listener, shutdown)).await;
    }
}
