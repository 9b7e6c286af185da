//! Push tokens: each token's SHA-256 points at its monitor (the token
//! itself is never stored, invariant 8), and a revocation counter that
//! every ingest replica watches to drop its cached lookups within a second
//! of a rotation or deletion.

use redis::Cmd;

use super::{Keys, Result, Store};

impl Keys {
    /// Push token (by its SHA-256) → monitor id.
    pub fn token(&self, token_hash: &str) -> String {
        format!("{}:token:{token_hash}", self.prefix)
    }

    /// Counter bumped whenever a push token is revoked (rotation, deletion):
    /// ingest replicas watch it and drop their cached token lookups.
    pub fn token_generation(&self) -> String {
        format!("{}:tokens:gen", self.prefix)
    }
}

impl Store {
    /// The monitor id a push token's hash resolves to.
    pub async fn monitor_for_token(&self, token_hash: &str) -> Result<Option<String>> {
        Ok(self
            .conn
            .query(&Cmd::get(self.keys.token(token_hash)))
            .await?)
    }

    /// Points a new token hash at a monitor (rotation, before the old one is revoked).
    pub async fn add_token(&self, token_hash: &str, id: &str) -> Result<()> {
        let _: () = self
            .conn
            .query(&Cmd::set(self.keys.token(token_hash), id))
            .await?;
        Ok(())
    }

    /// Revokes a push token, then bumps the revocation counter so every
    /// ingest replica drops its cached token lookups.
    pub async fn revoke_token(&self, token_hash: &str) -> Result<()> {
        let mut revoke = redis::pipe();
        revoke
            .del(self.keys.token(token_hash))
            .ignore()
            .incr(self.keys.token_generation(), 1)
            .ignore();
        let _: () = self.conn.pipe(&revoke).await?;
        Ok(())
    }

    /// The revocation counter: 0 until a token is first revoked, then
    /// bumped by each revocation.
    pub async fn token_generation(&self) -> Result<i64> {
        let generation: Option<i64> = self
            .conn
            .query(&Cmd::get(self.keys.token_generation()))
            .await?;
        Ok(generation.unwrap_or(0))
    }
}
