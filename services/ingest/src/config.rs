//! Ingest configuration.

use std::time::Duration;

use lifeline_shared::config::{self, Common, ConfigError};

/// Ingest settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Broker URLs and prefix.
    pub common: Common,
    /// `LIFELINE_TOKEN_CACHE_MS`, default 500: how long a token lookup is
    /// reused. A revoked or rotated token stops working within this time.
    pub token_cache_ttl: Duration,
}

impl Config {
    /// Reads the `LIFELINE_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let ms: u64 = config::parse("LIFELINE_TOKEN_CACHE_MS", 500)?;
        if ms > 1000 {
            return Err(ConfigError {
                name: "LIFELINE_TOKEN_CACHE_MS",
                reason: "must be at most 1000 so revocation takes effect within a second".into(),
            });
        }
        Ok(Self {
            common: Common::from_env()?,
            token_cache_ttl: Duration::from_millis(ms),
        })
    }

    /// Defaults against the local brokers, with `prefix` (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            token_cache_ttl: Duration::from_millis(500),
        }
    }
}
