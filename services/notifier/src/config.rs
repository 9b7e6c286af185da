//! The notifier's configuration: the shared broker settings plus how many
//! jobs to hold at once, how long one attempt may take, when to retry, and
//! the SMTP server email goes through. Read from `LIFELINE_*` variables; an
//! invalid value fails start-up naming the variable.

use std::{fmt, time::Duration};

use lettre::{AsyncSmtpTransport, Tokio1Executor, message::Mailbox};
use lifeline_shared::config::{self, Common, ConfigError, redact_url};

use crate::retry::{DEFAULT_SCHEDULE, RetrySchedule};

/// Default of `LIFELINE_SMTP_URL`.
pub const DEFAULT_SMTP_URL: &str = "smtp://127.0.0.1:25";
/// Default of `LIFELINE_SMTP_FROM`.
pub const DEFAULT_SMTP_FROM: &str = "Lifeline <lifeline@localhost>";

/// Everything [`crate::run`] needs besides its listener and shutdown token.
/// `Debug` hides the SMTP password.
#[derive(Clone)]
pub struct Config {
    /// Broker URLs and the naming prefix (`LIFELINE_REDIS_URL`,
    /// `LIFELINE_AMQP_URL`, `LIFELINE_PREFIX`, ...; see [`Common`]).
    pub common: Common,
    /// `LIFELINE_NOTIFIER_PREFETCH`, default `32`: messages taken from each
    /// of the alerts and deliveries queues before any is acknowledged, hence
    /// how many of each this replica handles at once. At least 1.
    pub prefetch: u16,
    /// `LIFELINE_WEBHOOK_TIMEOUT_MS`, default `10000`: longest one delivery
    /// attempt may take on any channel (webhook, Slack or SMTP), connecting
    /// included; a timeout is retried.
    pub attempt_timeout: Duration,
    /// `LIFELINE_RETRY_SCHEDULE`, default `5s,30s,2m,10m,1h,3h*7`: the
    /// pauses between the attempts of one delivery, as comma-separated
    /// delays with a unit (`ms`, `s`, `m`, `h`), each optionally repeated
    /// with `*N`; `none` for a single attempt. A schedule of `n` steps allows
    /// `n + 1` attempts; then the delivery is dead-lettered. See
    /// [`crate::retry`].
    pub retry_schedule: RetrySchedule,
    /// `LIFELINE_SMTP_URL`, default `smtp://127.0.0.1:25`: the SMTP server.
    /// `smtp://host:port` is plain SMTP, `smtp://host:587?tls=required`
    /// STARTTLS (`?tls=opportunistic` when offered), `smtps://host:465` TLS
    /// from the start; credentials as `smtps://user:pass@host` (percent-encoded).
    pub smtp_url: String,
    /// `LIFELINE_SMTP_FROM`, default `Lifeline <lifeline@localhost>`: the
    /// sender of alert emails.
    pub smtp_from: String,
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
        let raw = config::string("LIFELINE_RETRY_SCHEDULE", DEFAULT_SCHEDULE);
        let retry_schedule = raw.parse().map_err(|reason| ConfigError {
            name: "LIFELINE_RETRY_SCHEDULE",
            reason,
        })?;
        if std::env::var_os("LIFELINE_RETRY_DELAYS_MS").is_some() {
            tracing::warn!(
                "LIFELINE_RETRY_DELAYS_MS is no longer read; set LIFELINE_RETRY_SCHEDULE instead"
            );
        }
        let smtp_url = config::string("LIFELINE_SMTP_URL", DEFAULT_SMTP_URL);
        check_smtp_url(&smtp_url).map_err(|reason| ConfigError {
            name: "LIFELINE_SMTP_URL",
            reason,
        })?;
        let smtp_from = config::string("LIFELINE_SMTP_FROM", DEFAULT_SMTP_FROM);
        smtp_from.parse::<Mailbox>().map_err(|e| ConfigError {
            name: "LIFELINE_SMTP_FROM",
            reason: format!("{smtp_from:?} is not an email address: {e}"),
        })?;
        Ok(Self {
            common,
            prefetch,
            attempt_timeout: Duration::from_millis(timeout_ms),
            retry_schedule,
            smtp_url,
            smtp_from,
        })
    }

    /// The defaults against the local brokers, with the given prefix (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            common: Common::local(prefix),
            prefetch: 32,
            attempt_timeout: Duration::from_secs(10),
            retry_schedule: RetrySchedule::default(),
            smtp_url: DEFAULT_SMTP_URL.into(),
            smtp_from: DEFAULT_SMTP_FROM.into(),
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
}
