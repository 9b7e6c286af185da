//! A short-lived cache of token → monitor lookups, so a busy monitor does
//! not cost a Redis round trip per push. Entries live at most the configured
//! TTL (≤ 1 s), which bounds how long a revoked token keeps working. Unknown
//! tokens are cached too, so a client hammering a wrong token does not
//! hammer Redis.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

/// Entries kept before expired ones are swept.
const SWEEP_AT: usize = 100_000;

/// Token → monitor id (or `None`: unknown), with the lookup's time.
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached lookup, if still fresh: `Some(None)` means "known unknown".
    pub(crate) fn get(&self, token: &str) -> Option<Option<String>> {
        let entries = self.entries.lock().expect("token cache lock");
        entries
            .get(token)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(id, _)| id.clone())
    }

    pub(crate) fn put(&self, token: &str, monitor_id: Option<String>) {
        let mut entries = self.entries.lock().expect("token cache lock");
        if entries.len() >= SWEEP_AT {
            let ttl = self.ttl;
            entries.retain(|_, (_, at)| at.elapsed() < ttl);
            // At least SWEEP_AT / 2 inserts before the next sweep, so a
            // sweep costs O(1) per insert even when most entries are fresh.
            if entries.len() > SWEEP_AT / 2 {
                entries.clear();
            }
        }
        entries.insert(token.to_owned(), (monitor_id, Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_ttl() {
        let c = TokenCache::new(Duration::from_millis(30));
        c.put("a", Some("m".into()));
        c.put("b", None);
        assert_eq!(c.get("a"), Some(Some("m".into())));
        assert_eq!(c.get("b"), Some(None));
        assert_eq!(c.get("c"), None);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(c.get("a"), None);
    }
}
