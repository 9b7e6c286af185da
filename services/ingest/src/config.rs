//! Ingest configuration.

use std::time::Duration;

use lifeline_shared::config::{self, Common, ConfigError};

use crate::limit::RateLimit;

/// Ingest settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Broker URLs and prefix.
    pub common: Common,
    /// `LIFELINE_TOKEN_CACHE_MS`, default 500: how long a lookup of an
    /// unknown token is reused, and a known token's while revocations cannot
    /// be watched (Redis unreachable); while they can, a known token's lookup
    /// is kept until any token is revoked (see the `tokens` module).
    pub token_cache_ttl: Duration,
    /// `LIFELINE_PUSH_RATE` (default `10/s`: `<n>/s`, `<n>/m`, `<n>/h` or
    /// `off`) and `LIFELINE_PUSH_BURST` (default 20): how often one push
    /// token may push, sustained and at once, counted across every replica
    /// sharing the prefix; more is answered 429 (see [`RateLimit`]).
    /// `None`: no limit.
    pub push_limit: Option<RateLimit>,
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
        let burst: u32 = config::parse("LIFELINE_PUSH_BURST", RateLimit::DEFAULT.burst)?;
        if !(1..=RateLimit::MAX).contains(&burst) {
            return Err(ConfigError {
                name: "LIFELINE_PUSH_BURST",
                reason: format!("{burst} must be from 1 to {}", RateLimit::MAX),
            });
        }
        let rate = config::string("LIFELINE_PUSH_RATE", "10/s");
        let push_limit = RateLimit::parse(&rate, burst).map_err(|reason| ConfigError {
            name: "LIFELINE_PUSH_RATE",
            reason,
        })?;
        Ok(Self {
            common: Common::from_env()?,
            token_cache_ttl: Duration::from_millis(ms),
            push_limit,
        })
    }

    /// Defaults against the local brokers, with `prefix` (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            token_cache_ttl: Duration::from_millis(500),
            push_limit: Some(RateLimit::DEFAULT),
        }
    }
}
