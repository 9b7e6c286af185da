//! The evaluator's configuration, read from `LIFELINE_*` variables (see
//! `lifeline_shared::config` for how, and for the shared ones). Each field
//! names its variable, default and rule once; [`Config::default`] holds the
//! defaults.

use std::time::Duration;

use lifeline_shared::{
    config::{self, Common, ConfigError, Vars, var},
    store::Caps,
};
use serde::Deserialize;

/// Evaluator settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Broker URLs and prefix (see [`Common`]).
    #[serde(skip)]
    pub common: Common,
    /// `LIFELINE_EVALUATOR_ADDR`, default `127.0.0.1:8082`: where
    /// `/healthz`, `/readyz` and `/metrics` are served (`host:port`).
    #[serde(
        rename = "LIFELINE_EVALUATOR_ADDR",
        deserialize_with = "var::listen_addr"
    )]
    pub addr: String,
    /// `LIFELINE_TICK_MS`, default 100 (10–1000): how often passed
    /// deadlines are looked for. A deadline is detected at most this long
    /// after it passed (plus the time to write the change).
    #[serde(
        rename = "LIFELINE_TICK_MS",
        deserialize_with = "var::millis::<_, 10, 1000>"
    )]
    pub tick: Duration,
    /// `LIFELINE_HISTORY_BEATS` and `LIFELINE_HISTORY_EVENTS`: history kept
    /// per monitor (see [`config::history`]).
    #[serde(skip)]
    pub caps: Caps,
    /// `LIFELINE_LANES` (1–256, default 4): beats are applied by this many
    /// parallel lanes; one monitor always maps to the same lane, so its
    /// beats apply in order. Fewer lanes commit larger batches (measured,
    /// 64 connections: 2 lanes 27.1k–28.9k pushes/s, 4 lanes 26.3k–28.7k,
    /// 8 lanes 26.7k, 16 lanes 26.0k).
    #[serde(
        rename = "LIFELINE_LANES",
        deserialize_with = "var::whole::<_, _, 1, 256>"
    )]
    pub lanes: usize,
    /// How often the outbox is swept for alert jobs whose publication was
    /// interrupted (a crash, RabbitMQ down): 5 s, not read from the
    /// environment (tests shorten it).
    #[serde(skip)]
    pub sweep_every: Duration,
    /// `LIFELINE_MONITOR_CACHE` (default 100000, 0 = off): monitors kept in
    /// memory as this replica last wrote them, so a beat is applied without
    /// reading its monitor first (see `Engine::with_cache`).
    #[serde(
        rename = "LIFELINE_MONITOR_CACHE",
        deserialize_with = "var::whole::<_, _, 0, { u64::MAX }>"
    )]
    pub monitor_cache: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: Common::default(),
            addr: "127.0.0.1:8082".into(),
            tick: Duration::from_millis(100),
            caps: Caps::default(),
            lanes: 4,
            sweep_every: Duration::from_secs(5),
            monitor_cache: 100_000,
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
            caps: config::history(vars)?,
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
        assert_eq!(c.addr, "127.0.0.1:8082");
        assert_eq!(c.tick, Duration::from_millis(100));
        assert_eq!((c.lanes, c.monitor_cache), (4, 100_000));
        assert_eq!((c.caps.beats, c.caps.events), (100, 1000));
        assert_eq!(c.common.names.prefix(), "lifeline");
        let local = Config::local("t");
        assert_eq!(
            (local.addr, local.tick, local.lanes),
            (c.addr, c.tick, c.lanes)
        );
    }

    #[test]
    fn values_are_read() {
        let c = read(&[
            ("LIFELINE_EVALUATOR_ADDR", "0.0.0.0:9000"),
            ("LIFELINE_TICK_MS", "10"),
            ("LIFELINE_LANES", "256"),
            ("LIFELINE_MONITOR_CACHE", "0"),
            ("LIFELINE_HISTORY_EVENTS", "5"),
            ("LIFELINE_PREFIX", "ev1"),
        ])
        .unwrap();
        assert_eq!(c.addr, "0.0.0.0:9000");
        assert_eq!(c.tick, Duration::from_millis(10));
        assert_eq!((c.lanes, c.monitor_cache, c.caps.events), (256, 0, 5));
        assert_eq!(c.common.names.prefix(), "ev1");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value, reason) in [
            ("LIFELINE_TICK_MS", "abc", r#""abc" is not a whole number"#),
            ("LIFELINE_TICK_MS", "5", r#""5" is not from 10 to 1000"#),
            ("LIFELINE_LANES", "0", r#""0" is not from 1 to 256"#),
            (
                "LIFELINE_MONITOR_CACHE",
                "-1",
                r#""-1" is not a whole number"#,
            ),
            ("LIFELINE_HISTORY_BEATS", "0", r#""0" is less than 1"#),
            (
                "LIFELINE_EVALUATOR_ADDR",
                "8082",
                r#""8082" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
            (
                "LIFELINE_PREFIX",
                "a b",
                r#""a b" must be 1-64 ASCII letters, digits, '-' or '_'"#,
            ),
        ] {
            let e = read(&[(name, value)]).unwrap_err();
            assert_eq!((e.name.as_str(), e.reason.as_str()), (name, reason));
        }
        assert_eq!(
            read(&[("LIFELINE_TICK_MS", "abc")])
                .unwrap_err()
                .to_string(),
            r#"invalid LIFELINE_TICK_MS: "abc" is not a whole number"#
        );
    }
}
