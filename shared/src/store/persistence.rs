//! Whether the Redis a service uses keeps what it is given.
//!
//! Monitors, channels, tokens and states live only in Redis. A Redis started
//! with `--save "" --appendonly no` (as many development machines run it)
//! loses all of them when it restarts, and nothing in Lifeline could notice
//! afterwards: every monitor would simply be gone. So each service asks once
//! at start (`CONFIG GET appendonly`, `CONFIG GET save`) and warns, naming
//! the risk, when neither an append-only file nor RDB save points are on.
//! `scripts/up` avoids it by running a Redis of its own with an append-only
//! file.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Result, Store};

/// What the Redis keeps on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persistence {
    /// `appendonly yes`: every write goes to an append-only file.
    pub append_only: bool,
    /// The RDB save points (`save`), empty when none.
    pub save_points: String,
}

impl Persistence {
    /// True when a restart of Redis keeps the data (up to the last second
    /// with an append-only file, up to the last snapshot with RDB alone).
    pub fn keeps_data(&self) -> bool {
        self.append_only || !self.save_points.trim().is_empty()
    }
}

/// The one field of a `CONFIG GET` reply (`[name, value]`), if there.
fn config_value(reply: Vec<String>) -> Option<String> {
    reply.into_iter().nth(1)
}

impl Store {
    /// What the Redis keeps on disk; `None` when it does not say (a managed
    /// Redis may refuse `CONFIG`).
    pub async fn persistence(&self) -> Result<Option<Persistence>> {
        let mut ask = redis::pipe();
        ask.cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .cmd("CONFIG")
            .arg("GET")
            .arg("save");
        let (aof, save): (Vec<String>, Vec<String>) = match self.conn.pipe(&ask).await {
            Ok(replies) => replies,
            Err(e)
                if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(e.into()),
        };
        let (Some(aof), Some(save)) = (config_value(aof), config_value(save)) else {
            return Ok(None);
        };
        Ok(Some(Persistence {
            append_only: aof == "yes",
            save_points: save,
        }))
    }

    /// Logs a warning if the Redis keeps nothing on disk. Asks until Redis
    /// answers (a service starts while Redis is down), at most for a minute
    /// and never past `shutdown`; a service runs this once at start.
    pub async fn warn_if_volatile(&self, service: &'static str, shutdown: CancellationToken) {
        let until = tokio::time::Instant::now() + Duration::from_secs(60);
        let answer = loop {
            match self.persistence().await {
                Ok(answer) => break answer,
                Err(_) if tokio::time::Instant::now() < until => {}
                Err(e) => {
                    tracing::debug!(error = %e, "could not ask Redis whether it keeps its data");
                    return;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        };
        match answer {
            Some(p) if !p.keeps_data() => tracing::warn!(
                service,
                "Redis keeps nothing on disk (appendonly no, no save points): if it restarts, \
                 every monitor, channel, token and state is lost. Run it with --appendonly yes \
                 (scripts/up runs its own that way)"
            ),
            Some(p) => tracing::debug!(
                append_only = p.append_only,
                save_points = p.save_points,
                "Redis keeps its data on disk"
            ),
            None => tracing::info!(
                service,
                "Redis refused CONFIG GET: cannot tell whether it keeps its data on disk"
            ),
        }
    }
}
