//! Typed configuration from `LIFELINE_*` environment variables.
//!
//! # How a service reads its configuration
//!
//! Each service's `Config` is a serde struct: every field is renamed to
//! the exact variable it comes from (`#[serde(rename = "LIFELINE_TICK_MS")]`),
//! documented there with its default and its rule, and parsed by a
//! `deserialize_with` function of [`var`] that applies the rule. The
//! struct's `Default` impl is the one place its defaults are written:
//! `#[serde(default)]` takes every unset variable from it, and
//! `Config::local(prefix)` (tests) starts from it too. What every service
//! shares is read the same way into [`Common`] (broker URLs and the naming
//! prefix), and the history caps the API and the evaluator both honour into
//! [`history`], so a variable read by several services obeys one rule.
//!
//! The variables are collected once, at start, into [`Vars`]: a value is
//! trimmed, and an empty one counts as unset (so `LIFELINE_X=` in a Compose
//! file means "the default"). An invalid value stops the service with a
//! [`ConfigError`] naming the variable, e.g.
//! `invalid LIFELINE_TICK_MS: "abc" is not a whole number`. Secrets
//! (passwords inside URLs, the API key, SMTP credentials) never appear in
//! `Debug` output nor in these messages.
//!
//! # Why figment, and not its `Env` provider (nor envy)
//!
//! figment tracks the key of every value that fails to deserialize, even
//! inside a field's own parser, and hands it back with the error: every
//! message names its variable without each parser having to know it. envy
//! loses the name as soon as a field has a parser of its own (it only adds
//! it for plain numbers), and `#[serde(flatten)]` through it cannot read
//! numbers. figment's `Env` provider, though, guesses a type from each
//! value's text: `0123456789abcdef0` becomes a number, so an all-digit API
//! key would lose its leading zero and a numeric prefix would be refused as
//! "not a string". [`Vars`] is therefore a provider of our own that hands
//! every value over as the text it is; figment's core is used without any
//! feature.

use std::{collections::BTreeMap, fmt, str::FromStr, time::Duration};

use figment::{
    Figment, Metadata, Profile, Provider,
    value::{Dict, Map, Value},
};
use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::{names::Names, store::Caps};

/// Every variable Lifeline reads starts with this.
pub const PREFIX: &str = "LIFELINE_";

/// A configuration variable that is set but cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}: {reason}")]
pub struct ConfigError {
    /// The environment variable, e.g. `LIFELINE_PREFIX`.
    pub name: String,
    /// Why its value was refused.
    pub reason: String,
}

impl ConfigError {
    /// `name`'s value is refused for `reason`.
    pub fn new(name: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            reason: reason.into(),
        }
    }
}

impl From<figment::Error> for ConfigError {
    fn from(error: figment::Error) -> Self {
        use figment::error::Kind;
        let (name, reason) = match &error.kind {
            Kind::MissingField(field) => (field.to_string(), "is required".to_owned()),
            Kind::Message(message) => (error.path.join("."), message.clone()),
            other => (error.path.join("."), other.to_string()),
        };
        Self::new(name, reason)
    }
}

/// The `LIFELINE_*` variables of a process, each value trimmed, empty ones
/// left out (unset). Read once at start; `Debug` shows only the names.
#[derive(Clone, Default)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    /// The process environment's `LIFELINE_*` variables. A value that is
    /// not valid Unicode is kept with its invalid bytes replaced, so it is
    /// refused by its parser instead of silently taken as unset.
    pub fn from_env() -> Self {
        Self::from_pairs(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            Some((k, v.to_string_lossy().into_owned()))
        }))
    }

    /// The `LIFELINE_*` variables among `pairs` (other names are ignored).
    pub fn from_pairs<K, V>(pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: AsRef<str>,
    {
        let values = pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.as_ref().trim().to_owned()))
            .filter(|(k, v)| k.starts_with(PREFIX) && !v.is_empty())
            .collect();
        Self { values }
    }

    /// Whether `name` is set (to something other than blanks).
    pub fn is_set(&self, name: &str) -> bool {
        self.values.contains_key(name)
    }

    /// Reads `T`: a serde struct whose fields are renamed to the variables
    /// they come from. The first value refused names its variable.
    pub fn read<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        Ok(Figment::from(self).extract()?)
    }
}

impl fmt::Debug for Vars {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.values.keys()).finish()
    }
}

impl Provider for Vars {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable").interpolater(|_, path| path.join("."))
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let dict = self
            .values
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect();
        Ok(Profile::Default.collect(dict))
    }
}

/// Parsers of variable values, for `#[serde(deserialize_with = "...")]`.
/// Each receives the value as text (already trimmed, never empty) and
/// refuses it with a reason; the error names the variable on its way out.
/// A refusal never repeats a value that may hold a secret.
pub mod var {
    use super::*;
    use serde::de::Error as _;

    fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        String::deserialize(d)
    }

    fn whole_number<E: serde::de::Error>(v: &str, min: u64, max: u64) -> Result<u64, E> {
        let n: u64 = v
            .parse()
            .map_err(|_| E::custom(format!("{v:?} is not a whole number")))?;
        if n < min || n > max {
            return Err(E::custom(if max == u64::MAX {
                format!("{v:?} is less than {min}")
            } else {
                format!("{v:?} is not from {min} to {max}")
            }));
        }
        Ok(n)
    }

    /// A whole number from `MIN` to `MAX` (`u64::MAX`: no maximum but the
    /// type's), e.g. `var::whole::<_, _, 1, 256>`.
    pub fn whole<'de, D, T, const MIN: u64, const MAX: u64>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64>,
    {
        let v = text(d)?;
        let n = whole_number::<D::Error>(&v, MIN, MAX)?;
        T::try_from(n).map_err(|_| D::Error::custom(format!("{v:?} is too large")))
    }

    /// A duration given in whole milliseconds, from `MIN` to `MAX` ms.
    pub fn millis<'de, D, const MIN: u64, const MAX: u64>(d: D) -> Result<Duration, D::Error>
    where
        D: Deserializer<'de>,
    {
        let v = text(d)?;
        whole_number::<D::Error>(&v, MIN, MAX).map(Duration::from_millis)
    }

    /// Any type with a `FromStr` whose error says what is wrong (and does
    /// not repeat a secret).
    pub fn parsed<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: FromStr,
        T::Err: fmt::Display,
    {
        text(d)?.parse().map_err(D::Error::custom)
    }

    /// A listen address `host:port` (`0.0.0.0:8080`, `[::1]:8080`,
    /// `localhost:8080`); the host is resolved when it is bound.
    pub fn listen_addr<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = text(d)?;
        let port = v.rsplit_once(':').filter(|(host, _)| !host.is_empty());
        match port.map(|(_, port)| port.parse::<u16>()) {
            Some(Ok(_)) => Ok(v),
            _ => Err(D::Error::custom(format!(
                "{v:?} is not host:port (e.g. 0.0.0.0:8080)"
            ))),
        }
    }

    /// A NATS server URL (`nats://host:4222`, or `host:4222`), as the
    /// client parses it.
    pub fn nats_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = text(d)?;
        match v.parse::<async_nats::ServerAddr>() {
            Ok(_) => Ok(v),
            Err(e) => Err(D::Error::custom(format!("{:?}: {e}", redact_url(&v)))),
        }
    }

    /// A Redis URL (`redis://host:6379`, `rediss://…`), as the client
    /// parses it.
    pub fn redis_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = text(d)?;
        match crate::store::Store::check_url(&v) {
            Ok(_) => Ok(v),
            Err(e) => Err(D::Error::custom(format!(
                "{:?} is not a Redis URL: {e}",
                redact_url(&v)
            ))),
        }
    }

    /// An AMQP URL (`amqp://user:pass@host:5672/%2f`), as the client
    /// parses it.
    pub fn amqp_url<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        let v = text(d)?;
        match v.parse::<lapin::uri::AMQPUri>() {
            Ok(_) => Ok(v),
            Err(e) => Err(D::Error::custom(format!(
                "{:?} is not an AMQP URL: {e}",
                redact_url(&v)
            ))),
        }
    }

    /// The naming prefix: 1 to 64 letters, digits, `-` or `_`.
    pub fn prefix<'de, D: Deserializer<'de>>(d: D) -> Result<Names, D::Error> {
        Names::new(&text(d)?).map_err(D::Error::custom)
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
/// `Debug` hides the passwords inside the URLs.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct Common {
    /// `LIFELINE_NATS_URL`, default `nats://127.0.0.1:4222`.
    #[serde(rename = "LIFELINE_NATS_URL", deserialize_with = "var::nats_url")]
    pub nats_url: String,
    /// `LIFELINE_REDIS_URL`, default `redis://127.0.0.1:6379`.
    #[serde(rename = "LIFELINE_REDIS_URL", deserialize_with = "var::redis_url")]
    pub redis_url: String,
    /// `LIFELINE_AMQP_URL`, default `amqp://guest:guest@127.0.0.1:5672/%2f`.
    #[serde(rename = "LIFELINE_AMQP_URL", deserialize_with = "var::amqp_url")]
    pub amqp_url: String,
    /// `LIFELINE_PREFIX`, default `lifeline`: starts every NATS, Redis and
    /// RabbitMQ name; 1 to 64 letters, digits, `-` and `_`.
    #[serde(rename = "LIFELINE_PREFIX", deserialize_with = "var::prefix")]
    pub names: Names,
}

impl Default for Common {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            names: Names::new("lifeline").expect("the default prefix is valid"),
        }
    }
}

impl Common {
    /// The defaults with the given prefix (tests).
    pub fn local(prefix: &str) -> Self {
        Self {
            names: Names::new(prefix).expect("valid test prefix"),
            ..Self::default()
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

/// The history kept per monitor, honoured by every service that writes it
/// (the API and the evaluator) with the same rule: at least 1 each, since a
/// cap of 0 would keep nothing. The defaults are [`Caps::default`]'s.
#[derive(Deserialize)]
#[serde(remote = "Caps", default = "Caps::default")]
struct CapsVars {
    /// `LIFELINE_HISTORY_BEATS`, default 100: beats kept per monitor.
    #[serde(
        rename = "LIFELINE_HISTORY_BEATS",
        deserialize_with = "var::whole::<_, _, 1, { u64::MAX }>"
    )]
    beats: usize,
    /// `LIFELINE_HISTORY_EVENTS`, default 1000: state changes kept per
    /// monitor.
    #[serde(
        rename = "LIFELINE_HISTORY_EVENTS",
        deserialize_with = "var::whole::<_, _, 1, { u64::MAX }>"
    )]
    events: usize,
}

#[derive(Deserialize)]
#[serde(transparent)]
struct History(#[serde(with = "CapsVars")] Caps);

/// Reads `LIFELINE_HISTORY_BEATS` and `LIFELINE_HISTORY_EVENTS`.
pub fn history(vars: &Vars) -> Result<Caps, ConfigError> {
    vars.read::<History>().map(|h| h.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::from_pairs(pairs.iter().copied())
    }

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

    #[test]
    fn defaults_when_unset_or_blank() {
        let c: Common = vars(&[("LIFELINE_PREFIX", "  "), ("OTHER", "x")])
            .read()
            .unwrap();
        assert_eq!(c.names.prefix(), "lifeline");
        assert_eq!(c.nats_url, "nats://127.0.0.1:4222");
        assert_eq!(c.redis_url, "redis://127.0.0.1:6379");
        assert_eq!(c.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        let caps = history(&vars(&[])).unwrap();
        assert_eq!((caps.beats, caps.events), (100, 1000));
    }

    #[test]
    fn values_are_trimmed_and_kept_as_text() {
        // A prefix of digits stays text (figment's Env provider would have
        // made it a number and refused it).
        let c: Common = vars(&[
            ("LIFELINE_PREFIX", " 0123 "),
            ("LIFELINE_REDIS_URL", "redis://cache:6380 "),
        ])
        .read()
        .unwrap();
        assert_eq!(c.names.prefix(), "0123");
        assert_eq!(c.redis_url, "redis://cache:6380");
        let caps = history(&vars(&[("LIFELINE_HISTORY_BEATS", " 20 ")])).unwrap();
        assert_eq!((caps.beats, caps.events), (20, 1000));
    }

    #[test]
    fn bad_values_name_their_variable() {
        let refused = |name: &str, value: &str| -> ConfigError {
            let vars = vars(&[(name, value)]);
            match name {
                "LIFELINE_HISTORY_BEATS" | "LIFELINE_HISTORY_EVENTS" => {
                    history(&vars).map(drop).unwrap_err()
                }
                _ => vars.read::<Common>().map(drop).unwrap_err(),
            }
        };
        for (name, value) in [
            ("LIFELINE_PREFIX", "a.b"),
            ("LIFELINE_PREFIX", &"x".repeat(65)),
            ("LIFELINE_NATS_URL", "nats://host:port"),
            ("LIFELINE_REDIS_URL", "http://x"),
            ("LIFELINE_AMQP_URL", "amqp://u:hunter2@host:notaport/"),
            ("LIFELINE_HISTORY_BEATS", "0"),
            ("LIFELINE_HISTORY_EVENTS", "many"),
        ] {
            let e = refused(name, value);
            assert_eq!(e.name, name, "{e}");
            assert!(e.to_string().starts_with(&format!("invalid {name}: ")));
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        assert_eq!(
            refused("LIFELINE_HISTORY_EVENTS", "many").to_string(),
            r#"invalid LIFELINE_HISTORY_EVENTS: "many" is not a whole number"#
        );
        assert_eq!(
            refused("LIFELINE_HISTORY_BEATS", "0").to_string(),
            r#"invalid LIFELINE_HISTORY_BEATS: "0" is less than 1"#
        );
    }

    #[test]
    fn parsers_apply_their_rules() {
        #[derive(Debug, Deserialize)]
        struct T {
            #[serde(rename = "LIFELINE_A", deserialize_with = "var::listen_addr")]
            a: String,
            #[serde(rename = "LIFELINE_N", deserialize_with = "var::whole::<_, _, 1, 256>")]
            n: u16,
            #[serde(
                rename = "LIFELINE_MS",
                deserialize_with = "var::millis::<_, 10, 1000>"
            )]
            ms: Duration,
        }
        let read = |a: &str, n: &str, ms: &str| {
            vars(&[("LIFELINE_A", a), ("LIFELINE_N", n), ("LIFELINE_MS", ms)]).read::<T>()
        };
        let t = read("[::1]:80", "256", "10").unwrap();
        assert_eq!(
            (t.a.as_str(), t.n, t.ms),
            ("[::1]:80", 256, Duration::from_millis(10))
        );
        read("localhost:0", "1", "1000").unwrap();
        for (a, n, ms, name, reason) in [
            (
                "8080",
                "1",
                "10",
                "LIFELINE_A",
                r#""8080" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
            (
                ":8080",
                "1",
                "10",
                "LIFELINE_A",
                r#"":8080" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
            (
                "h:99999",
                "1",
                "10",
                "LIFELINE_A",
                r#""h:99999" is not host:port (e.g. 0.0.0.0:8080)"#,
            ),
            (
                "h:1",
                "257",
                "10",
                "LIFELINE_N",
                r#""257" is not from 1 to 256"#,
            ),
            (
                "h:1",
                "-1",
                "10",
                "LIFELINE_N",
                r#""-1" is not a whole number"#,
            ),
            (
                "h:1",
                "1",
                "9",
                "LIFELINE_MS",
                r#""9" is not from 10 to 1000"#,
            ),
            (
                "h:1",
                "1",
                "1.5",
                "LIFELINE_MS",
                r#""1.5" is not a whole number"#,
            ),
        ] {
            let e = read(a, n, ms).unwrap_err();
            assert_eq!((e.name.as_str(), e.reason.as_str()), (name, reason));
        }
    }

    #[test]
    fn debug_of_vars_shows_names_only() {
        let v = vars(&[("LIFELINE_API_KEY", "super-secret-key-123")]);
        assert!(v.is_set("LIFELINE_API_KEY"));
        assert!(!format!("{v:?}").contains("super-secret"));
    }
}
