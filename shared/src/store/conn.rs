//! The one connection to Redis, which every store module talks through and
//! nothing else in the workspace holds.
//!
//! A [`Conn`] sends a command, a pipeline (one round trip, however many
//! commands) or a script call. Keeping the connection behind this one type
//! is what lets Lifeline move to Redis Cluster by changing it alone: every
//! script already touches the keys of one hash slot (see `keys`), so a
//! cluster client routing each command by its first key can stand in for
//! the single connection here.
//!
//! It wraps a `ConnectionManager`, which connects lazily and reconnects by
//! itself: a service starts while Redis is down and answers 503 until it is
//! back. Each command gives up after 2 s. Cloning a `Conn` is cheap (a
//! reference count); the commands of all clones share one multiplexed
//! connection.

use std::time::Duration;

#[cfg(test)]
use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use redis::{
    Cmd, FromRedisValue, Pipeline, RedisResult, Script, ScriptInvocation,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

/// The connection to Redis; cheap to clone.
#[derive(Clone)]
pub(crate) struct Conn {
    inner: ConnectionManager,
    /// Round trips made, for tests that check a hot path's count.
    #[cfg(test)]
    trips: Arc<AtomicUsize>,
}

impl Conn {
    /// A connection to `url`, made when first used.
    pub(crate) fn open(url: &str) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        Ok(Self {
            inner: ConnectionManager::new_lazy_with_config(client, config)?,
            #[cfg(test)]
            trips: Arc::default(),
        })
    }

    /// Whether `url` is a Redis URL the client accepts; why not if not.
    pub(crate) fn check_url(url: &str) -> Result<(), String> {
        use redis::IntoConnectionInfo as _;
        url.into_connection_info()
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// Sends one command.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.count();
        cmd.query_async(&mut self.inner.clone()).await
    }

    /// Sends a pipeline in one round trip.
    pub(crate) async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> RedisResult<T> {
        self.count();
        pipe.query_async(&mut self.inner.clone()).await
    }

    /// Calls a script by its hash, loading it first if Redis does not have
    /// it (after a restart or a `SCRIPT FLUSH`).
    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        call: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        self.count();
        call.invoke_async(&mut self.inner.clone()).await
    }

    /// Loads a script, for a pipeline of calls that met `NOSCRIPT`.
    pub(crate) async fn load(&self, script: &Script) -> RedisResult<()> {
        self.count();
        script.load_async(&mut self.inner.clone()).await?;
        Ok(())
    }

    #[cfg(test)]
    fn count(&self) {
        self.trips.fetch_add(1, Ordering::Relaxed);
    }

    #[cfg(not(test))]
    fn count(&self) {}

    /// Round trips made so far through this connection and its clones
    /// (a script call that had to load its script counts once).
    #[cfg(test)]
    pub(crate) fn round_trips(&self) -> usize {
        self.trips.load(Ordering::Relaxed)
    }
}
