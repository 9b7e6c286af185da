//! Typed configuration from `LIFELINE_*` environment variables.
//!
//! Every variable has a default that works on one machine against the
//! standard local ports; an invalid value fails start-up with a message that
//! names the variable. Secrets (passwords inside URLs, API keys) never appear
//! in `Debug` output.

use std::{fmt, str::FromStr};

use crate::names::Names;

/// A configuration variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}: {reason}")]
pub struct ConfigError {
    /// The environment variable, e.g. `LIFELINE_PREFIX`.
    pub name: &'static str,
    /// Why its value was refused.
    pub reason: String,
}

/// Reads `name`, falling back to `default` when unset or empty.
pub fn string(name: &'static str, default: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => default.to_owned(),
    }
}

/// Reads and parses `name`, falling back to `default` when unset or empty.
pub fn parse<T>(name: &'static str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: fmt::Display,
{
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v.trim().parse().map_err(|e: T::Err| ConfigError {
            name,
            reason: format!("{v:?} is not valid: {e}"),
        }),
        _ => Ok(default),
    }
}

/// Replaces the password of a URL such as `amqp://user:pass@host` by `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// Broker connections and the naming prefix, shared by every service.
#[derive(Clone)]
pub struct Common {
    /// `LIFELINE_NATS_URL`, default `nats://127.0.0.1:4222`.
    pub nats_url: String,
    /// `LIFELINE_REDIS_URL`, default `redis://127.0.0.1:6379`.
    pub redis_url: String,
    /// `LIFELINE_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub amqp_url: String,
    /// `LIFELINE_PREFIX`, default `lifeline`: starts every NATS, Redis and
    /// RabbitMQ name; letters, digits, `-` and `_` only.
    pub names: Names,
}

impl Common {
    /// Reads the shared variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let prefix = string("LIFELINE_PREFIX", "lifeline");
        let names = Names::new(&prefix).map_err(|reason| ConfigError {
            name: "LIFELINE_PREFIX",
            reason,
        })?;
        Ok(Self {
            nats_url: string("LIFELINE_NATS_URL", "nats://127.0.0.1:4222"),
            redis_url: string("LIFELINE_REDIS_URL", "redis://127.0.0.1:6379"),
            amqp_url: string("LIFELINE_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
            names,
        })
    }

    /// Local defaults with the given prefix (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            names: Names::new(prefix).expect("valid test prefix"),
        }
    }
}

impl fmt::Debug for Common {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Common")
            .field("nats_url", &redact_url(&self.nats_url))
            .field("redis_url", &redact_url(&self.redis_url))
            .field("amqp_url", &redact_url(&self.amqp_url))
            .field("prefix", &self.names.prefix())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let c = Common::local("t");
        assert!(!format!("{c:?}").contains("guest:guest"));
    }
}
