//! The API's configuration, read from `LIFELINE_*` environment variables.
//!
//! Start-up fails with a message naming the variable when a value cannot be
//! used. The API key is a secret: it never appears in `Debug` output or logs.

use std::{fmt, time::Duration};

use lifeline_shared::{
    config::{Common, ConfigError},
    store::Caps,
};

/// Shortest API key accepted.
pub(crate) const API_KEY_MIN_LEN: usize = 16;

/// How long `POST /api/v1/channels/{id}/test` waits for a notifier's answer.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Everything the API service needs to run.
#[derive(Clone)]
pub struct Config {
    /// Redis, RabbitMQ and the naming prefix (`LIFELINE_REDIS_URL`,
    /// `LIFELINE_AMQP_URL`, `LIFELINE_PREFIX`, …). RabbitMQ is used only to
    /// send test alerts; the API starts and serves everything else without it.
    pub common: Common,
    /// `LIFELINE_API_KEY`, required, at least 16 characters: the bearer key
    /// every `/api/v1` request must present. Redacted in `Debug`.
    pub api_key: String,
    /// `LIFELINE_PUBLIC_URL`, default `http://127.0.0.1:8080` (trailing `/`
    /// trimmed): where ingest is reached from outside; push URLs start with it.
    pub public_url: String,
    /// `LIFELINE_HISTORY_BEATS` (default 100) and `LIFELINE_HISTORY_EVENTS`
    /// (default 1000): history kept per monitor by the writes the API makes.
    pub caps: Caps,
    /// How long a test alert waits for a notifier to report its outcome
    /// before answering 504: [`TEST_TIMEOUT`] (30 s), not read from the
    /// environment (tests shorten it).
    pub test_timeout: Duration,
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let common = Common::from_env()?;
        Self::from_vars(common, |name| std::env::var(name).ok())
    }

    /// Local defaults for tests: Redis on 127.0.0.1:6379 and RabbitMQ on
    /// 127.0.0.1:5672 under `prefix`.
    pub fn local(prefix: &str, api_key: &str, public_url: &str) -> Self {
        Self {
            common: Common::local(prefix),
            api_key: api_key.to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            caps: Caps::default(),
            test_timeout: TEST_TIMEOUT,
        }
    }

    /// The API's own variables, looked up through `var` (the environment,
    /// or a map in unit tests).
    fn from_vars(
        common: Common,
        var: impl Fn(&'static str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let get = |name| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };

        let api_key = get("LIFELINE_API_KEY").ok_or_else(|| ConfigError {
            name: "LIFELINE_API_KEY",
            reason: format!("is required (at least {API_KEY_MIN_LEN} characters)"),
        })?;
        if api_key.chars().count() < API_KEY_MIN_LEN {
            return Err(ConfigError {
                name: "LIFELINE_API_KEY",
                reason: format!("must be at least {API_KEY_MIN_LEN} characters long"),
            });
        }

        let public_url = get("LIFELINE_PUBLIC_URL")
            .unwrap_or_else(|| "http://127.0.0.1:8080".to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !is_http_url(&public_url) {
            return Err(ConfigError {
                name: "LIFELINE_PUBLIC_URL",
                reason: format!("{public_url:?} is not an http(s) URL with a host"),
            });
        }

        let cap = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(name) {
                None => Ok(default),
                Some(v) => match v.parse::<usize>() {
                    Ok(n) if n >= 1 => Ok(n),
                    _ => Err(ConfigError {
                        name,
                        reason: format!("{v:?} is not a whole number of at least 1"),
                    }),
                },
            }
        };
        let defaults = Caps::default();
        let caps = Caps {
            beats: cap("LIFELINE_HISTORY_BEATS", defaults.beats)?,
            events: cap("LIFELINE_HISTORY_EVENTS", defaults.events)?,
        };

        Ok(Self {
            common,
            api_key,
            public_url,
            caps,
            test_timeout: TEST_TIMEOUT,
        })
    }
}

/// Whether `s` is an absolute `http` or `https` URL with a non-empty host.
pub(crate) fn is_http_url(s: &str) -> bool {
    let Ok(uri) = s.parse::<axum::http::Uri>() else {
        return false;
    };
    matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|h| !h.is_empty())
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("common", &self.common)
            .field("api_key", &"***")
            .field("public_url", &self.public_url)
            .field("caps", &self.caps)
            .field("test_timeout", &self.test_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn read(vars: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<&'static str, String> =
            vars.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        Config::from_vars(Common::local("t"), |name| map.get(name).cloned())
    }

    #[test]
    fn api_key_is_required_and_long() {
        assert_eq!(read(&[]).unwrap_err().name, "LIFELINE_API_KEY");
        assert_eq!(
            read(&[("LIFELINE_API_KEY", "  ")]).unwrap_err().name,
            "LIFELINE_API_KEY"
        );
        let short = read(&[("LIFELINE_API_KEY", "short-key")]).unwrap_err();
        assert_eq!(short.name, "LIFELINE_API_KEY");
        assert!(!short.to_string().contains("short-key"));
    }

    #[test]
    fn defaults_and_trimming() {
        let c = read(&[("LIFELINE_API_KEY", "0123456789abcdef")]).unwrap();
        assert_eq!(c.public_url, "http://127.0.0.1:8080");
        assert_eq!((c.caps.beats, c.caps.events), (100, 1000));
        assert_eq!(c.test_timeout, Duration::from_secs(30));
        let c = read(&[
            ("LIFELINE_API_KEY", "0123456789abcdef"),
            ("LIFELINE_PUBLIC_URL", "https://lifeline.example.com/"),
            ("LIFELINE_HISTORY_BEATS", "20"),
        ])
        .unwrap();
        assert_eq!(c.public_url, "https://lifeline.example.com");
        assert_eq!(c.caps.beats, 20);
    }

    #[test]
    fn bad_values_name_their_variable() {
        let key = ("LIFELINE_API_KEY", "0123456789abcdef");
        for (name, value) in [
            ("LIFELINE_PUBLIC_URL", "ftp://x"),
            ("LIFELINE_PUBLIC_URL", "not a url"),
            ("LIFELINE_HISTORY_BEATS", "0"),
            ("LIFELINE_HISTORY_EVENTS", "many"),
        ] {
            assert_eq!(read(&[key, (name, value)]).unwrap_err().name, name);
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let c = Config::local("t", "super-secret-api-key", "http://x/");
        assert_eq!(c.public_url, "http://x");
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
