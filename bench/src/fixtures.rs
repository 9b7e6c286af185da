//! Monitors written straight into Redis.
//!
//! Creating 100,000 to 1,000,000 monitors through the API would take longer
//! than the benchmarks themselves, so the tool writes them as the API and
//! the evaluator do, through the same code: [`Store::create_monitor`] (the
//! monitor hash, its entry in the monitors index and its hashed push token,
//! exactly what `POST /api/v1/monitors` writes), then [`Store::commit`] (the
//! evaluator's Lua script) to put each monitor in the state it would have
//! after beating — `up`, with its deadline in the shard's deadline index.
//! Push tokens are generated here with [`token::generate`] and stored
//! hashed, as the API does; the plaintext stays in memory for the pushes.

use std::{
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::{StreamExt as _, TryStreamExt as _};
use lifeline_shared::{
    model::{MonitorConfig, MonitorState, Status},
    names::Names,
    store::{Caps, Commit, CommitResult, Store},
    time::now_ms,
    token,
};

/// Redis commands in flight while writing fixtures.
const CONCURRENCY: usize = 1024;

/// Connections the writes are spread over.
const CONNECTIONS: usize = 4;

/// The channel every bench monitor names (no notifier runs: it is never
/// looked up, but makes the stored settings the size of a real monitor's).
pub(crate) const CHANNEL: &str = "benchchannel0001";

/// Stores on several connections, so the client side of the writes is not
/// one connection's bottleneck.
#[derive(Clone)]
pub(crate) struct Stores {
    stores: Vec<Store>,
    url: String,
}

impl Stores {
    pub(crate) fn open(url: &str, names: &Names) -> anyhow::Result<Self> {
        let stores = (0..CONNECTIONS)
            .map(|_| Store::open(url, names.clone(), Caps::default()).context("opening redis"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Self {
            stores,
            url: url.to_owned(),
        })
    }

    pub(crate) fn get(&self, i: usize) -> &Store {
        &self.stores[i % self.stores.len()]
    }

    /// A connection of the bench's own, to look at Redis directly (key
    /// sizes, backlogs, histories), which the services never do.
    pub(crate) async fn redis(&self) -> anyhow::Result<redis::aio::ConnectionManager> {
        let client = redis::Client::open(self.url.as_str())?;
        Ok(client.get_connection_manager().await?)
    }
}

/// The monitors of a run, in creation order.
pub(crate) struct Monitors {
    pub(crate) ids: Vec<String>,
    /// Plaintext push tokens (empty when not asked for).
    pub(crate) tokens: Vec<String>,
}

fn progress(label: &str, done: &AtomicUsize, n: usize) {
    let d = done.fetch_add(1, Ordering::Relaxed) + 1;
    if n >= 200_000 && d.is_multiple_of(n / 10) {
        eprintln!("bench:   {label}: {}%", d * 100 / n);
    }
}

/// Creates `n` monitors with `timeout` seconds, state `new`, exactly as the
/// API does. Returns them with their tokens if `keep_tokens`.
pub(crate) async fn create(
    stores: &Stores,
    n: usize,
    timeout: u32,
    keep_tokens: bool,
) -> anyhow::Result<Monitors> {
    let now = now_ms();
    let ids: Vec<String> = (0..n).map(|_| token::new_id()).collect();
    let tokens: Vec<String> = (0..n).map(|_| token::generate()).collect();
    let done = AtomicUsize::new(0);
    futures::stream::iter(0..n)
        .map(|i| {
            let (id, tok, done) = (&ids[i], &tokens[i], &done);
            async move {
                let cfg = MonitorConfig {
                    name: format!("bench-{i:07}"),
                    timeout,
                    interval: timeout,
                    channels: vec![CHANNEL.into()],
                    created_at: now,
                    token_hash: token::hash(tok),
                    token_hint: token::hint(tok),
                    remind_every: None,
                    confirm: 1,
                };
                stores
                    .get(i)
                    .create_monitor(id, &cfg, &MonitorState::new(now))
                    .await?;
                progress("monitors created", done, n);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;
    Ok(Monitors {
        ids,
        tokens: if keep_tokens { tokens } else { Vec::new() },
    })
}

/// The state of a monitor that beat at `deadline - timeout` and is up.
pub(crate) fn up_state(deadline: i64, timeout: u32) -> MonitorState {
    let last = deadline - i64::from(timeout) * 1000;
    MonitorState {
        status: Status::Up,
        deadline: Some(deadline),
        last_beat_at: Some(last),
        last_seq: 0,
        since: last,
        changes: 1,
        misses: 0,
    }
}

/// Puts each monitor (version 0, just created) in state `up` with the
/// deadline `deadline_of(i)`, through the evaluator's commit script, in
/// index order.
pub(crate) async fn set_up(
    stores: &Stores,
    ids: &[String],
    timeout: u32,
    deadline_of: impl Fn(usize) -> i64,
) -> anyhow::Result<()> {
    let done = AtomicUsize::new(0);
    let n = ids.len();
    let deadline_of = &deadline_of;
    futures::stream::iter(0..n)
        .map(|i| {
            let (id, done) = (&ids[i], &done);
            async move {
                let state = up_state(deadline_of(i), timeout);
                let commit = Commit {
                    prior: None,
                    state: &state,
                    cfg: None,
                    beat: None,
                    changes: &[],
                    alerts: &[],
                };
                match stores.get(i).commit(id, 0, &commit).await? {
                    CommitResult::Committed => {}
                    other => anyhow::bail!("monitor {id}: commit {other:?}"),
                }
                progress("deadlines written", done, n);
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Creates `n` monitors that are up, with deadlines `timeout` seconds from
/// now (nothing fires during a run). Returns them and the time it took.
pub(crate) async fn create_up(
    stores: &Stores,
    n: usize,
    timeout: u32,
) -> anyhow::Result<(Monitors, Duration)> {
    let started = Instant::now();
    let monitors = create(stores, n, timeout, true).await?;
    let deadline = now_ms() + i64::from(timeout) * 1000;
    set_up(stores, &monitors.ids, timeout, |_| deadline).await?;
    Ok((monitors, started.elapsed()))
}
