//! The cache of token → monitor lookups, so a push does not cost a Redis
//! round trip to resolve its token.
//!
//! # Revocation within a second
//!
//! The API bumps a counter in Redis whenever it revokes a token (rotation,
//! deletion: [`Store::token_generation`]). Every [`WATCH_EVERY`] a task
//! reads the counter, and when it moved, the whole cache is dropped. A known
//! token's lookup is therefore kept as long as no token is revoked, and a
//! revoked one stops working within about `WATCH_EVERY` plus one Redis round
//! trip. Dropping everything on any revocation is simple and cheap, because
//! revocations are rare: the cache refills with one lookup per busy token.
//!
//! A lookup racing with a revocation (read before it, stored after the
//! counter moved) is not cached: each entry is stored only if the counter
//! did not move since before the lookup was made.
//!
//! When the counter cannot be read (Redis unreachable from this replica but
//! maybe not from the API), lookups fall back to living at most the
//! configured TTL (`LIFELINE_TOKEN_CACHE_MS`), as do lookups of unknown
//! tokens always, so a token created a moment after a client tried it
//! works at once, and a client hammering a wrong token does not hammer Redis.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use lifeline_shared::store::Store;
use tokio_util::sync::CancellationToken;

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 200_000;

/// How often the revocation counter is read.
pub(crate) const WATCH_EVERY: Duration = Duration::from_millis(200);

/// The counter, last read this long ago or more, no longer vouches for
/// cached lookups.
const WATCH_STALE: Duration = Duration::from_millis(700);

/// Token → monitor id (or `None`: unknown), with the lookup's time.
pub(crate) struct TokenCache {
    ttl: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    entries: HashMap<String, (Option<String>, Instant)>,
    /// The revocation counter as last read (`None`: never read).
    generation: Option<i64>,
    /// When `generation` was last read successfully.
    watched_at: Option<Instant>,
}

/// The cache's view of revocations when a lookup started; hand it back to
/// [`TokenCache::put`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct Generation(Option<i64>);

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                generation: None,
                watched_at: None,
            }),
        }
    }

    /// The cached lookup, if still good: `Some(None)` means "known unknown".
    pub(crate) fn get(&self, token: &str) -> Option<Option<String>> {
        let inner = self.inner.lock().expect("token cache lock");
        let watched = inner
            .watched_at
            .is_some_and(|at| at.elapsed() < WATCH_STALE);
        inner
            .entries
            .get(token)
            .filter(|(id, at)| (watched && id.is_some()) || at.elapsed() < self.ttl)
            .map(|(id, _)| id.clone())
    }

    /// Call before a lookup; pass the result to [`TokenCache::put`].
    pub(crate) fn generation(&self) -> Generation {
        Generation(self.inner.lock().expect("token cache lock").generation)
    }

    /// Caches a lookup made after `seen` was taken, unless a revocation was
    /// noticed since.
    pub(crate) fn put(&self, token: &str, monitor_id: Option<String>, seen: Generation) {
        let mut inner = self.inner.lock().expect("token cache lock");
        if inner.generation != seen.0 {
            return;
        }
        if inner.entries.len() >= SWEEP_AT {
            let ttl = self.ttl;
            inner
                .entries
                .retain(|_, (id, at)| id.is_some() || at.elapsed() < ttl);
            // At least SWEEP_AT / 2 inserts before the next sweep, so a
            // sweep costs O(1) per insert even when most entries are live.
            if inner.entries.len() > SWEEP_AT / 2 {
                inner.entries.clear();
            }
        }
        inner
            .entries
            .insert(token.to_owned(), (monitor_id, Instant::now()));
    }

    /// Records a read of the revocation counter; drops every entry if it moved.
    fn observe(&self, generation: i64) {
        let mut inner = self.inner.lock().expect("token cache lock");
        if inner.generation != Some(generation) {
            if inner.generation.is_some() {
                tracing::debug!(
                    entries = inner.entries.len(),
                    "a push token was revoked: token cache dropped"
                );
            }
            inner.entries.clear();
            inner.generation = Some(generation);
        }
        inner.watched_at = Some(Instant::now());
    }

    /// Reads the revocation counter every [`WATCH_EVERY`] until `shutdown`.
    pub(crate) async fn watch(&self, store: Store, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(WATCH_EVERY);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let read = tokio::time::timeout(WATCH_EVERY, store.token_generation()).await;
            match read {
                Ok(Ok(generation)) => self.observe(generation),
                Ok(Err(error)) => {
                    tracing::debug!(%error, "cannot read the token revocation counter")
                }
                Err(_) => tracing::debug!("reading the token revocation counter timed out"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_ttl_when_revocations_are_not_watched() {
        let c = TokenCache::new(Duration::from_millis(30));
        let g = c.generation();
        c.put("a", Some("m".into()), g);
        c.put("b", None, g);
        assert_eq!(c.get("a"), Some(Some("m".into())));
        assert_eq!(c.get("b"), Some(None));
        assert_eq!(c.get("c"), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn watched_known_tokens_live_until_a_revocation() {
        let c = TokenCache::new(Duration::from_millis(30));
        c.observe(7);
        let g = c.generation();
        c.put("a", Some("m".into()), g);
        c.put("b", None, g);
        std::thread::sleep(Duration::from_millis(40));
        c.observe(7);
        assert_eq!(c.get("a"), Some(Some("m".into())), "kept while watched");
        assert_eq!(c.get("b"), None, "unknown tokens still expire");
        c.observe(8);
        assert_eq!(c.get("a"), None, "dropped on revocation");
    }

    #[test]
    fn a_lookup_racing_a_revocation_is_not_cached() {
        let c = TokenCache::new(Duration::from_millis(500));
        c.observe(1);
        let before = c.generation();
        c.observe(2); // revoked while the lookup was in flight
        c.put("a", Some("m".into()), before);
        assert_eq!(c.get("a"), None);
    }

    #[test]
    fn entries_lose_the_watch_guarantee_when_the_counter_goes_stale() {
        let c = TokenCache::new(Duration::from_millis(30));
        c.observe(1);
        c.put("a", Some("m".into()), c.generation());
        std::thread::sleep(WATCH_STALE + Duration::from_millis(10));
        assert_eq!(c.get("a"), None);
    }
}
