//! The notifier's configuration: the shared broker settings plus how many
//! jobs to hold at once, how long one attempt may take, when to retry, and
//! the SMTP server email goes through. Read from `LIFELINE_*` variables (see
//! `lifeline_shared::config` for how, and for the shared ones); each field
//! names its variable, default and rule once, and [`Config::default`] holds
//! the defaults. An invalid value fails start-up naming the variable.

use std::{fmt, time::Duration};

use lettre::{AsyncSmtpTransport, Tokio1Executor, message::Mailbox};
use lifeline_shared::config::{Common, ConfigError, Vars, redact_url, var};
use serde::{Deserialize, Deserializer, de::Error as _};

use crate::retry::RetrySchedule;

/// Default of `LIFELINE_SMTP_URL`.
pub const DEFAULT_SMTP_URL: &str = "smtp://127.0.0.1:25";
/// Default of `LIFELINE_SMTP_FROM`.
pub const DEFAULT_SMTP_FROM: &str = "Lifeline <lifeline@localhost>";

/// Everything [`crate::run`] needs besides its listener and shutdown token.
/// `Debug` hides the SMTP password.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Broker URLs and the naming prefix (`LIFELINE_REDIS_URL`,
    /// `LIFELINE_AMQP_URL`, `LIFELINE_PREFIX`, ...; see [`Common`]).
    #[serde(skip)]
    pub common: Common,
    /// `LIFELINE_NOTIFIER_ADDR`, default `127.0.0.1:8083`: where `/healthz`,
    /// `/readyz` and `/metrics` are served (`host:port`).
    #[serde(
        rename = "LIFELINE_NOTIFIER_ADDR",
        deserialize_with = "var::listen_addr"
    )]
    pub addr: String,
    /// `LIFELINE_NOTIFIER_PREFETCH`, default `32` (at least 1): messages
    /// taken from each of the alerts and deliveries queues before any is
    /// acknowledged, hence how many of each this replica handles at once.
    #[serde(
        rename = "LIFELINE_NOTIFIER_PREFETCH",
        deserialize_with = "var::whole::<_, _, 1, { u16::MAX as u64 }>"
    )]
    pub prefetch: u16,
    /// `LIFELINE_WEBHOOK_TIMEOUT_MS`, default `10000` (at least 1): longest
    /// one delivery attempt may take on any channel (webhook, Slack or
    /// SMTP), connecting included; a timeout is retried.
    #[serde(
        rename = "LIFELINE_WEBHOOK_TIMEOUT_MS",
        deserialize_with = "var::millis::<_, 1, { u64::MAX }>"
    )]
    pub attempt_timeout: Duration,
    /// `LIFELINE_RETRY_SCHEDULE`, default `5s,30s,2m,10m,1h,3h*7`: the
    /// pauses between the attempts of one delivery, as comma-separated
    /// delays with a unit (`ms`, `s`, `m`, `h`), each optionally repeated
    /// with `*N`; `none` for a single attempt. A schedule of `n` steps allows
    /// `n + 1` attempts; then the delivery is dead-lettered. See
    /// [`crate::retry`].
    #[serde(rename = "LIFELINE_RETRY_SCHEDULE", deserialize_with = "var::parsed")]
    pub retry_schedule: RetrySchedule,
    /// `LIFELINE_SMTP_URL`, default `smtp://127.0.0.1:25`: the SMTP server.
    /// `smtp://host:port` is plain SMTP, `smtp://host:587?tls=required`
    /// STARTTLS (`?tls=opportunistic` when offered), `smtps://host:465` TLS
    /// from the start; credentials as `smtps://user:pass@host` (percent-encoded).
    #[serde(rename = "LIFELINE_SMTP_URL", deserialize_with = "smtp_url")]
    pub smtp_url: String,
    /// `LIFELINE_SMTP_FROM`, default `Lifeline <lifeline@localhost>`: the
    /// sender of alert emails (an address, with or without a display name).
    #[serde(rename = "LIFELINE_SMTP_FROM", deserialize_with = "smtp_from")]
    pub smtp_from: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: Common::default(),
            addr: "127.0.0.1:8083".into(),
            prefetch: 32,
            attempt_timeout: Duration::from_secs(10),
            retry_schedule: RetrySchedule::default(),
            smtp_url: DEFAULT_SMTP_URL.into(),
            smtp_from: DEFAULT_SMTP_FROM.into(),
        }
    }
}

/// A variable the notifier no longer reads; set, it is warned about.
const RETIRED_RETRY_DELAYS: &str = "LIFELINE_RETRY_DELAYS_MS";

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads the configuration from `vars`.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        if vars.is_set(RETIRED_RETRY_DELAYS) {
            tracing::warn!(
                "{RETIRED_RETRY_DELAYS} is no longer read; set LIFELINE_RETRY_SCHEDULE instead"
            );
        }
        Ok(Self {
            common: vars.read()?,
            ..vars.read()?
        })
    }

    /// The defaults against the local brokers, with the given prefix (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            ..Self::default()
        }
    }

    /// Every RabbitMQ queue this configuration may create: alerts,
    /// deliveries, dead letters and every delay queue (for tear-down).
    pub fn queues(&self) -> Vec<String> {
        let names = &self.common.names;
        let mut queues = vec![
            names.alerts_queue(),
            names.deliveries_queue(),
            names.dead_queue(),
        ];
        queues.extend(
            self.retry_schedule
                .delay_queues_ms()
                .into_iter()
                .map(|ms| names.retry_queue(ms)),
        );
        queues
    }
}

fn smtp_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?;
    check_smtp_url(&url).map_err(D::Error::custom)?;
    Ok(url)
}

fn smtp_from<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let from = String::deserialize(d)?;
    match from.parse::<Mailbox>() {
        Ok(_) => Ok(from),
        Err(e) => Err(D::Error::custom(format!(
            "{from:?} is not an email address: {e}"
        ))),
    }
}

/// Whether lettre accepts `url` (scheme, `tls` parameter, host).
pub(crate) fn check_smtp_url(url: &str) -> Result<(), String> {
    AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
        .map(drop)
        .map_err(|e| format!("{:?} is not usable: {e}", redact_url(url)))
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("addr", &self.addr)
            .field("prefetch", &self.prefetch)
            .field("attempt_timeout", &self.attempt_timeout)
            .field("retry_schedule", &self.retry_schedule)
            .field("smtp_url", &redact_url(&self.smtp_url))
            .field("smtp_from", &self.smtp_from)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smtp_urls_of_every_documented_form_are_accepted() {
        for url in [
            "smtp://127.0.0.1:25",
            "smtp://mail.example.com:587?tls=required",
            "smtp://mail.example.com?tls=opportunistic",
            "smtps://user:p%40ss@mail.example.com:465",
        ] {
            check_smtp_url(url).unwrap_or_else(|e| panic!("{url}: {e}"));
        }
        for url in ["http://x", "smtp://x?tls=maybe", "not a url"] {
            assert!(check_smtp_url(url).is_err(), "{url}");
        }
    }

    #[test]
    fn debug_hides_the_smtp_password() {
        let mut c = Config::local("t");
        c.smtp_url = "smtps://user:hunter2@mail.example.com:465".into();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("3h*7"), "{shown}");
    }

    #[test]
    fn the_default_sender_is_an_address() {
        DEFAULT_SMTP_FROM.parse::<Mailbox>().unwrap();
    }

    fn read(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(&Vars::from_pairs(pairs.iter().copied()))
    }

    #[test]
    fn defaults_and_values() {
        let c = read(&[]).unwrap();
        assert_eq!(c.addr, "127.0.0.1:8083");
        assert_eq!(c.prefetch, 32);
        assert_eq!(c.attempt_timeout, Duration::from_secs(10));
        assert_eq!(c.retry_schedule.to_string(), "5s,30s,2m,10m,1h,3h*7");
        assert_eq!(
            (c.smtp_url.as_str(), c.smtp_from.as_str()),
            (DEFAULT_SMTP_URL, DEFAULT_SMTP_FROM)
        );
        let c = read(&[
            ("LIFELINE_NOTIFIER_PREFETCH", "1"),
            ("LIFELINE_WEBHOOK_TIMEOUT_MS", "250"),
            ("LIFELINE_RETRY_SCHEDULE", "none"),
            ("LIFELINE_SMTP_URL", "smtps://u:p@mail.example.com:465"),
            ("LIFELINE_SMTP_FROM", "ops@example.com"),
            ("LIFELINE_RETRY_DELAYS_MS", "1000"),
        ])
        .unwrap();
        assert_eq!(c.prefetch, 1);
        assert_eq!(c.attempt_timeout, Duration::from_millis(250));
        assert_eq!(c.retry_schedule.to_string(), "none");
        assert_eq!(c.smtp_from, "ops@example.com");
    }

    #[test]
    fn bad_values_name_their_variable() {
        for (name, value, reason) in [
            (
                "LIFELINE_NOTIFIER_PREFETCH",
                "0",
                r#""0" is not from 1 to 65535"#,
            ),
            (
                "LIFELINE_NOTIFIER_PREFETCH",
                "70000",
                r#""70000" is not from 1 to 65535"#,
            ),
            ("LIFELINE_WEBHOOK_TIMEOUT_MS", "0", r#""0" is less than 1"#),
            (
                "LIFELINE_WEBHOOK_TIMEOUT_MS",
                "10s",
                r#""10s" is not a whole number"#,
            ),
            (
                "LIFELINE_NOTIFIER_ADDR",
                "0.0.0.0",
                r#""0.0.0.0" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
        ] {
            let e = read(&[(name, value)]).unwrap_err();
            assert_eq!((e.name.as_str(), e.reason.as_str()), (name, reason));
        }
        for (name, value) in [
            ("LIFELINE_RETRY_SCHEDULE", "5 parsecs"),
            ("LIFELINE_SMTP_URL", "smtp://user:hunter2@x?tls=maybe"),
            ("LIFELINE_SMTP_FROM", "not an address"),
            ("LIFELINE_AMQP_URL", "amqp://guest:hunter2@host:port/"),
        ] {
            let e = read(&[(name, value)]).unwrap_err();
            assert_eq!(e.name, name, "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
    }
}
