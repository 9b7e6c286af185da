//! Ingest's configuration, read from `LIFELINE_*` variables (see
//! `lifeline_shared::config` for how, and for the shared ones). Each field
//! names its variable, default and rule once; [`Config::default`] holds the
//! defaults.

use std::time::Duration;

use lifeline_shared::config::{Common, ConfigError, Vars, var};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::limit::RateLimit;

/// Ingest settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Broker URLs and prefix (see [`Common`]).
    #[serde(skip)]
    pub common: Common,
    /// `LIFELINE_INGEST_ADDR`, default `127.0.0.1:8080`: where the push
    /// endpoint, `/healthz`, `/readyz` and `/metrics` are served
    /// (`host:port`).
    #[serde(rename = "LIFELINE_INGEST_ADDR", deserialize_with = "var::listen_addr")]
    pub addr: String,
    /// `LIFELINE_TOKEN_CACHE_MS`, default 500 (0–1000, so a revocation takes
    /// effect within a second): how long a lookup of an unknown token is
    /// reused, and a known token's while revocations cannot be watched
    /// (Redis unreachable); while they can, a known token's lookup is kept
    /// until any token is revoked (see the `tokens` module).
    #[serde(
        rename = "LIFELINE_TOKEN_CACHE_MS",
        deserialize_with = "var::millis::<_, 0, 1000>"
    )]
    pub token_cache_ttl: Duration,
    /// How often one push token may push (`LIFELINE_PUSH_RATE` and
    /// `LIFELINE_PUSH_BURST`, documented on `PushVars`); `None`: no limit.
    #[serde(skip)]
    pub push_limit: Option<RateLimit>,
}

/// The two variables of the push limit, read together into
/// [`Config::push_limit`].
#[derive(Deserialize)]
#[serde(default)]
struct PushVars {
    /// `LIFELINE_PUSH_RATE`, default `10/s`: `<n>/s`, `<n>/m`, `<n>/h` (`n`
    /// from 1 to 1000000) or `off`: how often one push token may push,
    /// sustained, counted across every replica sharing the prefix; more is
    /// answered 429 (see [`RateLimit`]). `None`: off.
    #[serde(rename = "LIFELINE_PUSH_RATE", deserialize_with = "rate")]
    rate: Option<RateLimit>,
    /// `LIFELINE_PUSH_BURST`, default 20 (1–1000000): how many pushes one
    /// token may make at once, from idle, before the rate applies.
    #[serde(
        rename = "LIFELINE_PUSH_BURST",
        deserialize_with = "var::whole::<_, _, 1, { RateLimit::MAX as u64 }>"
    )]
    burst: u32,
}

impl Default for PushVars {
    fn default() -> Self {
        Self {
            rate: Some(RateLimit::DEFAULT),
            burst: RateLimit::DEFAULT.burst,
        }
    }
}

impl PushVars {
    fn limit(&self) -> Option<RateLimit> {
        self.rate.map(|rate| RateLimit {
            burst: self.burst,
            ..rate
        })
    }
}

/// A rate without its burst (set from `LIFELINE_PUSH_BURST` afterwards).
fn rate<'de, D: Deserializer<'de>>(d: D) -> Result<Option<RateLimit>, D::Error> {
    RateLimit::parse(&String::deserialize(d)?, 1).map_err(D::Error::custom)
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: Common::default(),
            addr: "127.0.0.1:8080".into(),
            token_cache_ttl: Duration::from_millis(500),
            push_limit: PushVars::default().limit(),
        }
    }
}

impl Config {
    /// Reads the `LIFELINE_*` variables of the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads the configuration from `vars`.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        Ok(Self {
            common: vars.read()?,
            push_limit: vars.read::<PushVars>()?.limit(),
            ..vars.read()?
        })
    }

    /// The defaults, against the local brokers, with `prefix` (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            ..Self::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(&Vars::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults() {
        let c = read(&[]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8080");
        assert_eq!(c.token_cache_ttl, Duration::from_millis(500));
        assert_eq!(c.push_limit, Some(RateLimit::DEFAULT));
        let local = Config::local("t");
        assert_eq!(local.push_limit, c.push_limit);
        assert_eq!(local.common.names.prefix(), "t");
    }

    #[test]
    fn the_push_limit_comes_from_two_variables() {
        let c = read(&[("LIFELINE_PUSH_RATE", "6/m"), ("LIFELINE_PUSH_BURST", "3")]).unwrap();
        assert_eq!(
            c.push_limit,
            Some(RateLimit {
                count: 6,
                period: Duration::from_secs(60),
                burst: 3
            })
        );
        let c = read(&[("LIFELINE_PUSH_RATE", "OFF")]).unwrap();
        assert_eq!(c.push_limit, None);
        let c = read(&[("LIFELINE_PUSH_BURST", "1000000")]).unwrap();
        assert_eq!(c.push_limit.unwrap().burst, 1_000_000);
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value, reason) in [
            (
                "LIFELINE_TOKEN_CACHE_MS",
                "1001",
                r#""1001" is not from 0 to 1000"#,
            ),
            (
                "LIFELINE_TOKEN_CACHE_MS",
                "abc",
                r#""abc" is not a whole number"#,
            ),
            (
                "LIFELINE_PUSH_RATE",
                "10/d",
                r#""10/d" must be <n>/s, <n>/m, <n>/h or off, e.g. 10/s"#,
            ),
            (
                "LIFELINE_PUSH_BURST",
                "0",
                r#""0" is not from 1 to 1000000"#,
            ),
            (
                "LIFELINE_INGEST_ADDR",
                "localhost",
                r#""localhost" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
            (
                "LIFELINE_NATS_URL",
                "nats://host:port",
                r#""nats://host:port": NATS server URL is invalid: invalid port number"#,
            ),
        ] {
            let e = read(&[(name, value)]).unwrap_err();
            assert_eq!((e.name.as_str(), e.reason.as_str()), (name, reason));
        }
    }
}
