//! Lifeline's Redis store: everything Lifeline keeps in Redis, one module
//! per concern, each owning its keys and its scripts. Nothing outside this
//! module builds a Redis command, a key or a script, and nothing outside it
//! holds the connection (the `boundary` test checks it).
//!
//! | module | owns |
//! | --- | --- |
//! | `monitors` | monitor hashes and the index of monitors: create, read (one, or many in one round trip), delete |
//! | `commit` | the commit script: a monitor's new state, deadline, history and alert jobs, written at once if its version still matches |
//! | `history` | beat and state-change histories, late beats |
//! | `deadlines` | the deadline index of each shard |
//! | `outbox` | the alert outbox of each shard |
//! | `pushpath` | the push-path watermark and outages (ingest's pulses) |
//! | `tokens` | push token → monitor, the revocation counter |
//! | `channels` | channels, their index, replacing one only as it was read |
//! | `deliveries` | delivery records, attempt logs, delivery claims |
//! | `ratelimit` | push-rate buckets (ingest), destinations' rate-limit slots (notifier) |
//! | `persistence` | whether Redis keeps its data on disk |
//! | `keys` | the key layout and hash tags |
//! | `codec` | the fields of a monitor's hash |
//! | `conn` | the one connection (what a Redis Cluster client will replace) |
//! | `error` | [`StoreError`], which says whether Redis was unavailable |
//!
//! The store reads and writes; it does not decide. Running the monitor
//! state machine on what it reads and committing the outcome, again after a
//! version conflict, is [`crate::engine`]'s.

#[cfg(test)]
mod boundary;
mod channels;
mod codec;
mod commit;
mod conn;
mod deadlines;
mod deliveries;
mod error;
mod history;
mod keys;
mod monitors;
mod outbox;
mod persistence;
mod pushpath;
mod ratelimit;
mod tokens;

pub use channels::ChannelEdit;
pub use commit::{Commit, CommitResult};
pub use error::{Result, StoreError};
pub use history::Caps;
pub use keys::Keys;
pub use persistence::Persistence;
pub use ratelimit::PushTokens;

use crate::names::Names;
use conn::Conn;
use error::{json, parse};

/// Handle to the Redis store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    conn: Conn,
    names: Names,
    keys: Keys,
    caps: Caps,
}

impl Store {
    /// Whether `url` is a Redis URL the store can open; why not if not
    /// (configuration checks it at start).
    pub fn check_url(url: &str) -> std::result::Result<(), String> {
        Conn::check_url(url)
    }

    /// A store on `url`. Connects lazily and reconnects by itself, so a
    /// service starts while Redis is down and answers 503 until it is back;
    /// each command gives up after 2 s.
    pub fn open(url: &str, names: Names, caps: Caps) -> Result<Self> {
        Ok(Self {
            conn: Conn::open(url)?,
            keys: Keys::new(&names),
            names,
            caps,
        })
    }

    /// The names this store uses.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The Redis keys this store uses, for tests and benchmarks that look
    /// at Redis directly.
    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    /// `PING`: whether Redis answers.
    pub async fn ping(&self) -> Result<()> {
        let _: String = self.conn.query(&redis::cmd("PING")).await?;
        Ok(())
    }
}

#[cfg(test)]
impl Store {
    /// Round trips made so far through this store's connection.
    pub(crate) fn round_trips(&self) -> usize {
        self.conn.round_trips()
    }

    /// Deletes every key of this store's prefix (clean-up after a test).
    pub(crate) async fn delete_all(&self) {
        let keys: Vec<String> = self
            .conn
            .query(redis::cmd("KEYS").arg(self.names.redis_pattern()))
            .await
            .unwrap();
        if !keys.is_empty() {
            let _: () = self.conn.query(&redis::Cmd::del(keys)).await.unwrap();
        }
    }
}
