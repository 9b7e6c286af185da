//! Evaluator configuration.

use std::time::Duration;

use lifeline_shared::{
    config::{self, Common, ConfigError},
    store::Caps,
};

/// Evaluator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Broker URLs and prefix.
    pub common: Common,
    /// `LIFELINE_TICK_MS`, default 100: how often passed deadlines are
    /// looked for. A deadline is detected at most this long after it passed
    /// (plus the time to write the change).
    pub tick: std::time::Duration,
    /// `LIFELINE_HISTORY_BEATS` (default 100) and `LIFELINE_HISTORY_EVENTS`
    /// (default 1000): history kept per monitor.
    pub caps: Caps,
    /// `LIFELINE_LANES` (1–256, default 4): beats are applied by this many
    /// parallel lanes; one monitor always maps to the same lane, so its
    /// beats apply in order. Fewer lanes commit larger batches (measured,
    /// 64 connections: 2 lanes 27.1k–28.9k pushes/s, 4 lanes 26.3k–28.7k,
    /// 8 lanes 26.7k, 16 lanes 26.0k).
    pub lanes: usize,
    /// How often the outbox is swept for alert jobs whose publication was
    /// interrupted (a crash, RabbitMQ down). Default 5 s.
    pub sweep_every: Duration,
    /// `LIFELINE_MONITOR_CACHE` (default 100000, 0 = off): monitors kept in
    /// memory as this replica last wrote them, so a beat is applied without
    /// reading its monitor first (see `Engine::with_cache`).
    pub monitor_cache: usize,
}

impl Config {
    /// Reads the `LIFELINE_*` variables.
    pub fn from_env() -> Result<Self, ConfigError> {
        let tick: u64 = config::parse("LIFELINE_TICK_MS", 100)?;
        if !(10..=1000).contains(&tick) {
            return Err(ConfigError {
                name: "LIFELINE_TICK_MS",
                reason: "must be between 10 and 1000".into(),
            });
        }
        let lanes: usize = config::parse("LIFELINE_LANES", 4)?;
        if !(1..=256).contains(&lanes) {
            return Err(ConfigError {
                name: "LIFELINE_LANES",
                reason: "must be between 1 and 256".into(),
            });
        }
        Ok(Self {
            common: Common::from_env()?,
            tick: Duration::from_millis(tick),
            caps: Caps {
                beats: config::parse("LIFELINE_HISTORY_BEATS", 100)?,
                events: config::parse("LIFELINE_HISTORY_EVENTS", 1000)?,
            },
            lanes,
            sweep_every: Duration::from_secs(5),
            monitor_cache: config::parse("LIFELINE_MONITOR_CACHE", 100_000)?,
        })
    }

    /// Defaults against the local brokers, with `prefix` (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            tick: Duration::from_millis(100),
            caps: Caps::default(),
            lanes: 4,
            sweep_every: Duration::from_secs(5),
            monitor_cache: 100_000,
        }
    }
}
