//! What can go wrong in the store, sorted for its callers: Redis cannot
//! serve right now (ask again later; an HTTP service answers 503), Redis
//! refused a command (a bug), or a stored record this version cannot read.
//! The sorting of Redis's own error kinds happens here, once, so no caller
//! looks at them.

/// A Redis failure, or a record that does not parse.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Redis cannot serve right now: unreachable, the connection dropped or
    /// timed out, or it is loading its data, failing over or read-only.
    /// Asking again later may succeed (an HTTP service answers 503).
    #[error("redis unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis refused a command or a script: a bug, or a Redis set up to
    /// forbid it. Asking again will not help.
    #[error("redis: {0}")]
    Redis(#[source] redis::RedisError),
    /// A stored record is not what this version expects.
    #[error("corrupt record at {key}: {error}")]
    Corrupt {
        /// The key read.
        key: String,
        /// The parse error.
        error: serde_json::Error,
    },
    /// A field of a monitor's hash is missing or does not parse.
    #[error("corrupt record at {key}, field `{field}`: {problem}")]
    CorruptField {
        /// The key read.
        key: String,
        /// The hash field.
        field: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl StoreError {
    /// Whether Redis could not serve (see [`StoreError::Unavailable`]).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<redis::RedisError> for StoreError {
    /// Sorts a Redis error: "cannot serve right now", or a refusal.
    fn from(e: redis::RedisError) -> Self {
        use redis::{ErrorKind, ServerErrorKind};
        let unavailable = e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
            || matches!(
                e.kind(),
                ErrorKind::ClusterConnectionNotFound
                    | ErrorKind::Server(
                        ServerErrorKind::BusyLoading
                            | ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                            | ServerErrorKind::ReadOnly
                    )
            );
        if unavailable {
            Self::Unavailable(e)
        } else {
            Self::Redis(e)
        }
    }
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A JSON record read at `key`.
pub(super) fn parse<T: serde::de::DeserializeOwned>(key: &str, raw: &str) -> Result<T> {
    serde_json::from_str(raw).map_err(|error| StoreError::Corrupt {
        key: key.to_owned(),
        error,
    })
}

/// A record as JSON.
pub(super) fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("model types serialize")
}

#[cfg(test)]
mod tests {
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    use super::*;

    #[test]
    fn redis_not_serving_is_told_from_a_refused_command() {
        let sort = |e: RedisError| StoreError::from(e).is_unavailable();
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(sort(io.into()));
        for kind in [
            ServerErrorKind::BusyLoading,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
            ServerErrorKind::MasterDown,
            ServerErrorKind::ReadOnly,
        ] {
            assert!(sort((ErrorKind::Server(kind), "x").into()), "{kind:?}");
        }
        for kind in [ServerErrorKind::ResponseError, ServerErrorKind::NoScript] {
            assert!(!sort((ErrorKind::Server(kind), "x").into()), "{kind:?}");
        }
        assert!(!sort((ErrorKind::UnexpectedReturnType, "x").into()));
    }
}
