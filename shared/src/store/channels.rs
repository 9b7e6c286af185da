//! Alert channels: each channel's JSON under its own key, and the index of
//! every channel by creation time. An edit of a stored channel (a webhook's
//! new signing secret) is written only if the channel is still exactly as
//! read, so it never resurrects a deleted channel nor silently loses to a
//! concurrent edit.

use std::sync::LazyLock;

use redis::{Cmd, Script};

use super::{CommitResult, Keys, Result, Store, json, parse};
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

/// A channel read to be edited: change [`ChannelEdit::channel`], then
/// [`Store::replace_channel`] writes it if the stored channel is still as
/// read.
#[derive(Debug)]
pub struct ChannelEdit {
    /// The channel as read, to edit.
    pub channel: Channel,
    /// Where it was read.
    key: String,
    /// Its JSON as read, which the replacement compares.
    read: String,
}

// Replaces a channel only if it is still exactly as read.
// KEYS: channel. ARGV: JSON as read, new JSON.
const REPLACE_LUA: &str = r#"
local current = redis.call('GET', KEYS[1])
if not current then return -1 end
if current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
return 1
"#;

static REPLACE: LazyLock<Script> = LazyLock::new(|| Script::new(REPLACE_LUA));

impl Store {
    /// Creates or replaces a channel.
    pub async fn put_channel(&self, c: &Channel) -> Result<()> {
        let _: () = self
            .conn
            .query(&Cmd::set(self.keys.channel(&c.id), json(c)))
            .await?;
        let _: () = self
            .conn
            .query(&Cmd::zadd(
                self.keys.channels_index(),
                c.id.as_str(),
                c.created_at,
            ))
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

    /// Reads a channel to edit it.
    pub async fn channel_to_edit(&self, id: &str) -> Result<Option<ChannelEdit>> {
        let key = self.keys.channel(id);
        let raw: Option<String> = self.conn.query(&Cmd::get(&key)).await?;
        let Some(read) = raw else {
            return Ok(None);
        };
        Ok(Some(ChannelEdit {
            channel: parse(&key, &read)?,
            key,
            read,
        }))
    }

    /// Writes an edited channel if the stored one is still as read:
    /// [`CommitResult::Conflict`] if it changed since (read it again),
    /// [`CommitResult::Missing`] if it was deleted.
    pub async fn replace_channel(&self, edit: &ChannelEdit) -> Result<CommitResult> {
        let mut call = REPLACE.key(&edit.key);
        call.arg(&edit.read).arg(json(&edit.channel));
        let answer: i64 = self.conn.invoke(&call).await?;
        Ok(CommitResult::of(answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{model::ChannelKind, names::Names, store::Caps, token::new_id};

    /// An edit lands only on the channel as read: not over a concurrent
    /// edit, not on a deleted channel.
    #[tokio::test]
    async fn an_edit_is_written_only_over_the_channel_as_read() {
        let names = Names::new(&format!("unit-channels-{}", new_id())).unwrap();
        let store = Store::open("redis://127.0.0.1:6379", names, Caps::default()).unwrap();
        let channel = Channel {
            id: "c1".into(),
            name: "ops".into(),
            kind: ChannelKind::Email {
                to: vec!["ops@example.com".into()],
            },
            created_at: 1,
        };
        store.put_channel(&channel).await.unwrap();
        let mut first = store.channel_to_edit("c1").await.unwrap().unwrap();
        let mut second = store.channel_to_edit("c1").await.unwrap().unwrap();
        first.channel.name = "first".into();
        second.channel.name = "second".into();
        let won = store.replace_channel(&first).await.unwrap();
        let lost = store.replace_channel(&second).await.unwrap();
        let stored = store.channel("c1").await.unwrap().unwrap();
        store.delete_channel("c1").await.unwrap();
        let gone = store.replace_channel(&first).await.unwrap();
        store.delete_all().await;

        assert_eq!(won, CommitResult::Committed);
        assert_eq!(lost, CommitResult::Conflict);
        assert_eq!(stored.name, "first");
        assert_eq!(gone, CommitResult::Missing);
    }
}
