//! The evaluator's copy of the monitors it wrote last, so that applying a
//! beat does not have to read the monitor back first.
//!
//! An entry is exactly what the hash holds at the entry's version: every
//! write to a monitor goes through the commit script, which checks the
//! version and increments it, so a commit expecting a cached version either
//! finds the hash unchanged since this replica wrote it (and the cached
//! state is the truth) or fails with a conflict, after which the monitor is
//! read afresh. A stale entry therefore costs a retry, never a wrong write.
//! A step that writes nothing is not checked that way, so one decided from
//! a cached copy is decided again from a read (a stale copy of a paused
//! monitor must not keep a tick from firing the deadline of the resumed
//! one).
//!
//! With several evaluator replicas, a monitor's beats land on any of them,
//! and the copy another replica holds is often stale; retries would then
//! cost more than the reads they save. So the cache keeps a running share
//! of entries found stale (on a conflict, or by comparing with a read) and
//! is consulted only while that share is low: one replica gets the saving,
//! several fall back to reading every monitor, as without a cache.

use std::{collections::HashMap, sync::Mutex};

use crate::model::{Monitor, MonitorId};

/// Above this share of stale entries the cache is not consulted.
const STALE_LIMIT: f64 = 0.1;

/// Weight of one observation in the running share.
const ALPHA: f64 = 0.01;

/// Monitors as this replica last wrote them, at most `cap` of them.
#[derive(Debug)]
pub(crate) struct MonitorCache {
    cap: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<MonitorId, Monitor>,
    /// Running share of entries found stale.
    stale: f64,
}

impl MonitorCache {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            cap,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether entries are fresh often enough to skip reads.
    pub(crate) fn trusted(&self) -> bool {
        self.lock().stale < STALE_LIMIT
    }

    /// The cached copy of `id`.
    pub(crate) fn get(&self, id: &str) -> Option<Monitor> {
        self.lock().map.get(id).cloned()
    }

    /// The version of the cached copy of `id`.
    pub(crate) fn ver(&self, id: &str) -> Option<u64> {
        self.lock().map.get(id).map(|m| m.ver)
    }

    /// Counts one entry found fresh or stale.
    pub(crate) fn observe(&self, fresh: bool) {
        let mut inner = self.lock();
        let x = if fresh { 0.0 } else { 1.0 };
        inner.stale += ALPHA * (x - inner.stale);
    }

    /// Keeps `m` as written. When full, a random eighth of the entries goes
    /// (cheaper than tracking recency, and a miss only costs the read it
    /// would have done). With more monitors beating in turn than the cache
    /// holds, many beats still find their copy (half again as many monitors
    /// as entries: about 40 %); starting over instead would find none, each
    /// copy being dropped before its monitor's next beat.
    pub(crate) fn put(&self, m: Monitor) {
        let mut inner = self.lock();
        if inner.map.len() >= self.cap && !inner.map.contains_key(&m.id) {
            inner.map.retain(|_, _| rand::random::<u8>() >= 32);
            // A small cache may keep every entry by chance: one goes then.
            if inner.map.len() >= self.cap
                && let Some(id) = inner.map.keys().next().cloned()
            {
                inner.map.remove(&id);
            }
        }
        if self.cap > 0 {
            inner.map.insert(m.id.clone(), m);
        }
    }

    /// Drops the copy of `id`.
    pub(crate) fn forget(&self, id: &str) {
        self.lock().map.remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{MonitorConfig, MonitorState};

    fn monitor(id: &str, ver: u64) -> Monitor {
        Monitor {
            id: id.into(),
            cfg: MonitorConfig {
                name: "n".into(),
                timeout: 60,
                interval: 0,
                channels: Vec::new(),
                created_at: 0,
                token_hash: String::new(),
                token_hint: String::new(),
                remind_every: None,
                confirm: 1,
            },
            state: MonitorState::new(0),
            ver,
        }
    }

    #[test]
    fn stops_being_trusted_when_entries_go_stale_and_recovers() {
        let cache = MonitorCache::new(10);
        assert!(cache.trusted());
        // Two replicas: every other entry stale.
        for i in 0..200 {
            cache.observe(i % 2 == 0);
        }
        assert!(!cache.trusted());
        for _ in 0..400 {
            cache.observe(true);
        }
        assert!(cache.trusted());
    }

    /// Monitors beating in turn, half again as many as the cache holds:
    /// many beats still find their monitor's copy (none did when a full
    /// cache started over).
    #[test]
    fn keeps_many_copies_when_more_monitors_beat_than_it_holds() {
        let cache = MonitorCache::new(1000);
        let ids: Vec<String> = (0..1500).map(|i| format!("m{i}")).collect();
        let (mut hits, mut beats) = (0, 0);
        for round in 0..20 {
            for id in &ids {
                let hit = cache.get(id).is_some();
                if round >= 5 {
                    beats += 1;
                    hits += usize::from(hit);
                }
                cache.put(monitor(id, round));
            }
        }
        let share = hits as f64 / beats as f64;
        assert!(share > 0.3, "{hits} of {beats} beats found their copy");
        assert!(cache.lock().map.len() <= 1000);
    }

    #[test]
    fn holds_at_most_cap_entries() {
        let cache = MonitorCache::new(3);
        for i in 0..10 {
            cache.put(monitor(&format!("m{i}"), i));
            assert!(cache.lock().map.len() <= 3);
        }
        assert_eq!(cache.ver("m9"), Some(9));
        cache.put(monitor("m9", 10));
        assert_eq!(cache.get("m9").map(|m| m.ver), Some(10));
        cache.forget("m9");
        assert!(cache.get("m9").is_none());
        let off = MonitorCache::new(0);
        off.put(monitor("m1", 1));
        assert!(off.get("m1").is_none());
    }
}
