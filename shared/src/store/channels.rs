//! Alert channels: each channel's JSON under its own key, and the index of
//! every channel by creation time.

use redis::Cmd;

use super::{Keys, Result, Store, json, parse};
use crate::model::Channel;

impl Keys {
    /// A channel's JSON.
    pub fn channel(&self, id: &str) -> String {
        format!("{}:channel:{id}", self.prefix)
    }

    /// Index of all channels.
    pub fn channels_index(&self) -> String {
        format!("{}:channels", self.prefix)
    }
}

impl Store {
    /// Creates or replaces a channel.
    pub async fn put_channel(&self, c: &Channel) -> Result<()> {
        let _: () = self
            .conn
            .query(&Cmd::set(self.keys.channel(&c.id), json(c)))
            .await?;
        let _: () = self
            .conn
            .query(&Cmd::zadd(self.keys.channels_index(), &c.id, c.created_at))
            .await?;
        Ok(())
    }

    /// Reads a channel.
    pub async fn channel(&self, id: &str) -> Result<Option<Channel>> {
        let key = self.keys.channel(id);
        let raw: Option<String> = self.conn.query(&Cmd::get(&key)).await?;
        raw.map(|r| parse(&key, &r)).transpose()
    }

    /// All channels, oldest first.
    pub async fn channels(&self) -> Result<Vec<Channel>> {
        let ids: Vec<String> = self
            .conn
            .query(&Cmd::zrange(self.keys.channels_index(), 0, -1))
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(c) = self.channel(&id).await? {
                out.push(c);
            }
        }
        Ok(out)
    }

    /// Deletes a channel. Returns whether it existed.
    pub async fn delete_channel(&self, id: &str) -> Result<bool> {
        let n: i64 = self.conn.query(&Cmd::del(self.keys.channel(id))).await?;
        let _: () = self
            .conn
            .query(&Cmd::zrem(self.keys.channels_index(), id))
            .await?;
        Ok(n > 0)
    }
}
