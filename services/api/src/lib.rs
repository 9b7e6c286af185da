//! Lifeline's management API: monitors, channels, pause/resume, push-token
//! rotation, beat history, state changes and the delivery log, as JSON over
//! HTTP behind an API key.
//!
//! The API writes monitors only through the shared store and the monitor
//! state machine, so a pause, a resume or a new timeout moves the state and
//! the deadline in one atomic write, exactly as the evaluator would; it
//! talks to nothing but Redis. Push tokens are stored hashed and shown in
//! full only when created or rotated (invariant 8). Every refusal is a JSON
//! 4xx naming the field at fault (invariant 7).
//!
//! Entry points take their I/O as arguments: [`run`] serves on a listener
//! until a cancellation token fires, and [`router`] gives the bare router
//! for in-process tests.

use std::sync::Arc;

use lifeline_shared::store::{Store, StoreError};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

mod auth;
mod config;
mod error;
mod input;
mod routes;

pub use config::Config;
pub use error::ApiError;
pub use routes::router;

/// What every handler shares; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) store: Store,
    pub(crate) api_key: Arc<auth::ApiKey>,
    pub(crate) public_url: Arc<str>,
}

impl AppState {
    /// The state for `config`. Redis is connected lazily: the API starts
    /// while Redis is down and answers 503 until it is back.
    pub fn new(config: &Config) -> Result<Self, StoreError> {
        let store = Store::open(
            &config.common.redis_url,
            config.common.names.clone(),
            config.caps,
        )?;
        Ok(Self {
            store,
            api_key: Arc::new(auth::ApiKey::new(&config.api_key)),
            public_url: config.public_url.trim_end_matches('/').into(),
        })
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
/// until `shutdown` is cancelled, letting in-flight requests finish.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let state = AppState::new(&config)?;
    tracing::info!(
        addr = %listener.local_addr()?,
        prefix = config.common.names.prefix(),
        public_url = %config.public_url,
        "api listening"
    );
    lifeline_shared::http::serve(listener, router(state), shutdown).await?;
    tracing::info!("api stopped");
    Ok(())
}
