//! Where the brokers are: the machine's NATS, Redis and RabbitMQ on their
//! standard ports (the services' own defaults; `scripts/brokers` makes sure
//! they answer), or any others a test or the benchmark names instead — and
//! how a service process is told.

use std::collections::HashMap;

use lifeline_shared::{config::Common, names::Names};

/// NATS with JetStream on this machine.
pub const NATS_URL: &str = "nats://127.0.0.1:4222";
/// Redis on this machine.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// RabbitMQ on this machine, as guest/guest on the default vhost.
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The three brokers a stack uses. Each field may be overridden, e.g. with
/// a [`crate::PrivateServer`]'s URL: `Brokers { nats_url, ..Brokers::local() }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Brokers {
    /// NATS URL.
    pub nats_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// RabbitMQ (AMQP) URL.
    pub amqp_url: String,
}

impl Brokers {
    /// The machine's brokers on their standard ports.
    pub fn local() -> Self {
        Self {
            nats_url: NATS_URL.into(),
            redis_url: REDIS_URL.into(),
            amqp_url: AMQP_URL.into(),
        }
    }

    /// Brokers nobody listens on (port 1): a service started against them
    /// must still start, answer `/healthz`, and stop cleanly.
    pub fn unreachable() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:1".into(),
            redis_url: "redis://127.0.0.1:1".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:1/%2f".into(),
        }
    }

    /// Points a service's configuration at these brokers (its prefix is
    /// left as it is).
    pub fn configure(&self, common: &mut Common) {
        common.nats_url.clone_from(&self.nats_url);
        common.redis_url.clone_from(&self.redis_url);
        common.amqp_url.clone_from(&self.amqp_url);
    }

    /// The environment that points a service process at these brokers
    /// under `names`' prefix (`LIFELINE_PREFIX`, `LIFELINE_NATS_URL`,
    /// `LIFELINE_REDIS_URL`, `LIFELINE_AMQP_URL`).
    pub fn service_env(&self, names: &Names) -> HashMap<String, String> {
        [
            ("LIFELINE_PREFIX", names.prefix()),
            ("LIFELINE_NATS_URL", &self.nats_url),
            ("LIFELINE_REDIS_URL", &self.redis_url),
            ("LIFELINE_AMQP_URL", &self.amqp_url),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}
