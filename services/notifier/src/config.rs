//! The notifier's configuration: the shared broker settings plus how many
//! jobs to hold at once and how patiently to deliver them. Read from
//! `LIFELINE_*` variables; an invalid value fails start-up naming the variable.

use std::time::Duration;

use lifeline_shared::config::{self, Common, ConfigError};

/// Everything [`crate::run`] needs besides its listener and shutdown token.
#[derive(Clone, Debug)]
pub struct Config {
    /// Broker URLs and the naming prefix (`LIFELINE_REDIS_URL`,
    /// `LIFELINE_AMQP_URL`, `LIFELINE_PREFIX`, ...; see [`Common`]).
    pub common: Common,
    /// `LIFELINE_NOTIFIER_PREFETCH`, default `32`: alert jobs taken from
    /// RabbitMQ before any is acknowledged, hence jobs processed concurrently
    /// by this replica. At least 1.
    pub prefetch: u16,
    /// `LIFELINE_WEBHOOK_TIMEOUT_MS`, default `10000`: longest wait for a
    /// webhook receiver to answer one attempt, connection included.
    pub webhook_timeout: Duration,
    /// `LIFELINE_RETRY_DELAYS_MS`, default `1000,2000`: pauses between
    /// attempts of one delivery, as a comma-separated list of milliseconds
    /// (`none` for a single attempt). A delivery makes at most
    /// `retry_delays.len() + 1` attempts before it is recorded as failed.
    /// Retries happen in-process for now.
    pub retry_delays: Vec<Duration>,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = Common::from_env()?;
        let prefetch: u16 = config::parse("LIFELINE_NOTIFIER_PREFETCH", 32)?;
        if prefetch == 0 {
            return Err(ConfigError {
                name: "LIFELINE_NOTIFIER_PREFETCH",
                reason: "must be at least 1".into(),
            });
        }
        let timeout_ms: u64 = config::parse("LIFELINE_WEBHOOK_TIMEOUT_MS", 10_000)?;
        if timeout_ms == 0 {
            return Err(ConfigError {
                name: "LIFELINE_WEBHOOK_TIMEOUT_MS",
                reason: "must be at least 1".into(),
            });
        }
        let retry_delays = parse_delays(&config::string("LIFELINE_RETRY_DELAYS_MS", "1000,2000"))
            .map_err(|reason| ConfigError {
            name: "LIFELINE_RETRY_DELAYS_MS",
            reason,
        })?;
        Ok(Self {
            common,
            prefetch,
            webhook_timeout: Duration::from_millis(timeout_ms),
            retry_delays,
        })
    }

    /// The defaults against the local brokers, with the given prefix (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            prefetch: 32,
            webhook_timeout: Duration::from_secs(10),
            retry_delays: vec![Duration::from_secs(1), Duration::from_secs(2)],
        }
    }
}

/// Parses `1000,2000` (milliseconds) or `none`.
fn parse_delays(raw: &str) -> Result<Vec<Duration>, String> {
    if raw.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|part| {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|e| format!("{raw:?}: {part:?} is not a number of milliseconds: {e}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_as_milliseconds() {
        assert_eq!(
            parse_delays("1000, 2000").unwrap(),
            [Duration::from_secs(1), Duration::from_secs(2)]
        );
        assert!(parse_delays("none").unwrap().is_empty());
        assert!(parse_delays("1s").is_err());
        assert!(parse_delays("1000,").is_err());
    }
}
