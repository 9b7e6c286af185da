//! The API's configuration, read from `LIFELINE_*` environment variables
//! (see `lifeline_shared::config` for how, and for the shared ones). Each
//! field names its variable, default and rule once; [`Config::default`]
//! holds the defaults.
//!
//! Start-up fails with a message naming the variable when a value cannot be
//! used. The API key is a secret: it never appears in `Debug` output, logs
//! or those messages.

use std::{fmt, time::Duration};

use lifeline_shared::{
    config::{self, Common, ConfigError, Vars, var},
    store::Caps,
};
use serde::{Deserialize, Deserializer, de::Error as _};

/// Shortest API key accepted.
pub(crate) const API_KEY_MIN_LEN: usize = 16;

/// How long `POST /api/v1/channels/{id}/test` waits for a notifier's answer.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The variable of the API key.
const API_KEY: &str = "LIFELINE_API_KEY";

/// Everything the API service needs to run.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Redis, RabbitMQ and the naming prefix (`LIFELINE_REDIS_URL`,
    /// `LIFELINE_AMQP_URL`, `LIFELINE_PREFIX`, …). RabbitMQ is used only to
    /// send test alerts; the API starts and serves everything else without it.
    #[serde(skip)]
    pub common: Common,
    /// `LIFELINE_API_ADDR`, default `127.0.0.1:8081`: where the API is
    /// served (`host:port`).
    #[serde(rename = "LIFELINE_API_ADDR", deserialize_with = "var::listen_addr")]
    pub addr: String,
    /// `LIFELINE_API_KEY`, required, at least 16 characters: the bearer key
    /// every `/api/v1` request must present. Redacted in `Debug`.
    #[serde(rename = "LIFELINE_API_KEY", deserialize_with = "api_key")]
    pub api_key: String,
    /// `LIFELINE_PUBLIC_URL`, default `http://127.0.0.1:8080` (trailing `/`
    /// trimmed; `http` or `https` with a host): where ingest is reached from
    /// outside; push URLs start with it.
    #[serde(rename = "LIFELINE_PUBLIC_URL", deserialize_with = "public_url")]
    pub public_url: String,
    /// `LIFELINE_HISTORY_BEATS` and `LIFELINE_HISTORY_EVENTS`: history kept
    /// per monitor by the writes the API makes (see [`config::history`]).
    #[serde(skip)]
    pub caps: Caps,
    /// How long a test alert waits for a notifier to report its outcome
    /// before answering 504: [`TEST_TIMEOUT`] (30 s), not read from the
    /// environment (tests shorten it).
    #[serde(skip)]
    pub test_timeout: Duration,
}

/// The defaults; the API key, which has none, is empty (refused by
/// [`Config::from_vars`]).
impl Default for Config {
    fn default() -> Self {
        Self {
            common: Common::default(),
            addr: "127.0.0.1:8081".into(),
            api_key: String::new(),
            public_url: "http://127.0.0.1:8080".into(),
            caps: Caps::default(),
            test_timeout: TEST_TIMEOUT,
        }
    }
}

impl Config {
    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(&Vars::from_env())
    }

    /// Reads the configuration from `vars`.
    pub fn from_vars(vars: &Vars) -> Result<Self, ConfigError> {
        let config = Self {
            common: vars.read()?,
            caps: config::history(vars)?,
            ..vars.read()?
        };
        if config.api_key.is_empty() {
            return Err(ConfigError::new(
                API_KEY,
                format!("is required (at least {API_KEY_MIN_LEN} characters)"),
            ));
        }
        Ok(config)
    }

    /// The defaults with `prefix`, `api_key` and `public_url` (tests):
    /// Redis on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672.
    pub fn local(prefix: &str, api_key: &str, public_url: &str) -> Self {
        Self {
            common: Common::local(prefix),
            api_key: api_key.to_owned(),
            public_url: public_url.trim_end_matches('/').to_owned(),
            ..Self::default()
        }
    }
}

/// At least [`API_KEY_MIN_LEN`] characters; the refusal never shows it.
fn api_key<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let key = String::deserialize(d)?;
    if key.chars().count() < API_KEY_MIN_LEN {
        return Err(D::Error::custom(format!(
            "must be at least {API_KEY_MIN_LEN} characters long"
        )));
    }
    Ok(key)
}

fn public_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let url = String::deserialize(d)?.trim_end_matches('/').to_owned();
    if !is_http_url(&url) {
        return Err(D::Error::custom(format!(
            "{url:?} is not an http(s) URL with a host"
        )));
    }
    Ok(url)
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
            .field("addr", &self.addr)
            .field("api_key", &"***")
            .field("public_url", &self.public_url)
            .field("caps", &self.caps)
            .field("test_timeout", &self.test_timeout)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(vars: &[(&'static str, &str)]) -> Result<Config, ConfigError> {
        Config::from_vars(&Vars::from_pairs(vars.iter().copied()))
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
    fn the_key_is_taken_as_written() {
        // Digits only, with a leading zero: still the same 17 characters.
        let c = read(&[("LIFELINE_API_KEY", " 01234567890123456 ")]).unwrap();
        assert_eq!(c.api_key, "01234567890123456");
        assert_eq!(c.addr, "127.0.0.1:8081");
        let e = read(&[
            ("LIFELINE_API_KEY", "0123456789abcdef"),
            ("LIFELINE_API_ADDR", "127.0.0.1"),
        ])
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid LIFELINE_API_ADDR: "127.0.0.1" is not host:port (e.g. 0.0.0.0:8080)"#
        );
    }

    #[test]
    fn debug_hides_the_key() {
        let c = Config::local("t", "super-secret-api-key", "http://x/");
        assert_eq!(c.public_url, "http://x");
        assert!(!format!("{c:?}").contains("super-secret"));
    }
}
