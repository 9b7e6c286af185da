//! How a monitor is laid out in its Redis hash: one short field per
//! setting and per state value, so that Redis keeps the hash in its compact
//! `listpack` encoding.
//!
//! Redis stores a small hash as a `listpack` (one flat allocation, fields
//! and values back to back, numbers as integers) as long as every value is
//! at most `hash-max-listpack-value` bytes (64 by default) and there are at
//! most `hash-max-listpack-entries` fields (128 by default); past either
//! limit it converts the hash, for good, into a `hashtable` with an
//! allocation per field. Lifeline runs on stock Redis, so the layout fits the
//! defaults instead of asking operators to change them. Keeping the
//! settings and the state as two JSON values (229 and 116 bytes) made every
//! monitor a `hashtable` of 680 bytes (`MEMORY USAGE … SAMPLES 0`); the
//! layout below takes 328 bytes for the same monitor (a 13-character name,
//! one channel, `up` with a deadline), and 360 with a 21-character name, two
//! channels and a beat far into the stream. A listpack is one allocation,
//! so its size moves in the allocator's steps (…, 224, 256, 320 bytes): the
//! token hash is kept in base64 rather than hex (43 characters instead of
//! 64), which keeps such a monitor under 256 bytes of listpack (in hex it
//! would take 424 bytes). Everywhere else, `token:<hash>` keys included, the
//! hash is hex.
//!
//! | field | holds | when absent |
//! | ----- | ----- | ----------- |
//! | `n` | [`MonitorConfig::name`] | corrupt |
//! | `t` | [`MonitorConfig::timeout`] (s) | corrupt |
//! | `i` | [`MonitorConfig::interval`] (s) | corrupt |
//! | `c` | [`MonitorConfig::channels`]: the ids joined with `,`, or a JSON array if an id is not made of `A-Z a-z 0-9 - _` | corrupt (no channels: an empty value) |
//! | `a` | [`MonitorConfig::created_at`] (ms) | corrupt |
//! | `h` | [`MonitorConfig::token_hash`]: the SHA-256 in unpadded base64url (a hash that is not 64 lowercase hex digits is kept as is after a `!`) | corrupt |
//! | `k` | [`MonitorConfig::token_hint`] | corrupt |
//! | `r` | [`MonitorConfig::remind_every`] (s) | `None` |
//! | `f` | [`MonitorConfig::confirm`] | corrupt |
//! | `s` | [`MonitorState::status`]: `new`, `up`, `down` or `paused` | corrupt |
//! | `d` | [`MonitorState::deadline`] (ms) | `None` |
//! | `b` | [`MonitorState::last_beat_at`] (ms) | `None` |
//! | `q` | [`MonitorState::last_seq`] | corrupt |
//! | `w` | [`MonitorState::since`] (ms) | corrupt |
//! | `x` | [`MonitorState::changes`] | corrupt |
//! | `m` | [`MonitorState::misses`] | corrupt |
//! | `v` | [`Monitor::ver`], checked and incremented by every write | corrupt |
//!
//! An optional value that is `None` is removed from the hash (an empty value
//! also reads as `None`). Numbers are written in decimal, which the
//! listpack stores as integers. Every value is short except the name (up to
//! 200 characters) and the channel list: a monitor whose name is longer than
//! 64 bytes, or with more than three channels, still works, in a hash that
//! Redis keeps as a `hashtable`.
//!
//! Reading is strict: a missing required field, an unparsable number or an
//! unknown status is an error naming the field, never a default.

use crate::model::{ChannelId, Monitor, MonitorConfig, MonitorState, Status};

/// One field of a monitor hash; the declaration order is the order of
/// [`Field::ALL`] and of the values [`decode`] takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Field {
    Name,
    Timeout,
    Interval,
    Channels,
    CreatedAt,
    TokenHash,
    TokenHint,
    RemindEvery,
    Confirm,
    Status,
    Deadline,
    LastBeatAt,
    LastSeq,
    Since,
    Changes,
    Misses,
    Ver,
}

impl Field {
    /// Every field, in declaration order.
    pub(crate) const ALL: [Self; 17] = [
        Self::Name,
        Self::Timeout,
        Self::Interval,
        Self::Channels,
        Self::CreatedAt,
        Self::TokenHash,
        Self::TokenHint,
        Self::RemindEvery,
        Self::Confirm,
        Self::Status,
        Self::Deadline,
        Self::LastBeatAt,
        Self::LastSeq,
        Self::Since,
        Self::Changes,
        Self::Misses,
        Self::Ver,
    ];

    /// The field's name in the hash.
    pub(crate) const fn key(self) -> &'static str {
        match self {
            Self::Name => "n",
            Self::Timeout => "t",
            Self::Interval => "i",
            Self::Channels => "c",
            Self::CreatedAt => "a",
            Self::TokenHash => "h",
            Self::TokenHint => "k",
            Self::RemindEvery => "r",
            Self::Confirm => "f",
            Self::Status => "s",
            Self::Deadline => "d",
            Self::LastBeatAt => "b",
            Self::LastSeq => "q",
            Self::Since => "w",
            Self::Changes => "x",
            Self::Misses => "m",
            Self::Ver => "v",
        }
    }

    /// The model field it holds, for error messages.
    const fn meaning(self) -> &'static str {
        match self {
            Self::Name => "name",
            Self::Timeout => "timeout",
            Self::Interval => "interval",
            Self::Channels => "channels",
            Self::CreatedAt => "created_at",
            Self::TokenHash => "token_hash",
            Self::TokenHint => "token_hint",
            Self::RemindEvery => "remind_every",
            Self::Confirm => "confirm",
            Self::Status => "status",
            Self::Deadline => "deadline",
            Self::LastBeatAt => "last_beat_at",
            Self::LastSeq => "last_seq",
            Self::Since => "since",
            Self::Changes => "changes",
            Self::Misses => "misses",
            Self::Ver => "ver",
        }
    }
}

/// The field that holds a monitor's version (what every write checks).
pub(crate) const VER: &str = Field::Ver.key();

/// A monitor hash field that is missing or does not parse.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {problem}", .field.meaning())]
pub(crate) struct FieldError {
    /// The field.
    pub(crate) field: Field,
    /// What is wrong with it.
    pub(crate) problem: String,
}

/// Writes to a monitor hash: values to set and fields to remove.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Writes {
    /// Fields and their new values.
    pub(crate) set: Vec<(Field, String)>,
    /// Fields to remove (optional values that are `None`).
    pub(crate) unset: Vec<Field>,
}

impl Writes {
    /// Writes every settings field.
    pub(crate) fn config(&mut self, cfg: &MonitorConfig) -> &mut Self {
        self.put(Field::Name, cfg.name.clone());
        self.put(Field::Timeout, cfg.timeout.to_string());
        self.put(Field::Interval, cfg.interval.to_string());
        self.put(Field::Channels, encode_channels(&cfg.channels));
        self.put(Field::CreatedAt, cfg.created_at.to_string());
        self.put(Field::TokenHash, encode_token_hash(&cfg.token_hash));
        self.put(Field::TokenHint, cfg.token_hint.clone());
        self.put_opt(Field::RemindEvery, cfg.remind_every);
        self.put(Field::Confirm, cfg.confirm.to_string());
        self
    }

    /// Writes every state field.
    pub(crate) fn state(&mut self, st: &MonitorState) -> &mut Self {
        self.put(Field::Status, status_str(st.status).to_owned());
        self.put_opt(Field::Deadline, st.deadline);
        self.put_opt(Field::LastBeatAt, st.last_beat_at);
        self.put(Field::LastSeq, st.last_seq.to_string());
        self.put(Field::Since, st.since.to_string());
        self.put(Field::Changes, st.changes.to_string());
        self.put(Field::Misses, st.misses.to_string());
        self
    }

    /// Writes the state fields that differ from `prior` (what the hash
    /// holds at the version the commit expects): a beat usually moves only
    /// the deadline, the last beat time and sequence.
    pub(crate) fn state_since(&mut self, prior: &MonitorState, st: &MonitorState) -> &mut Self {
        if prior.status != st.status {
            self.put(Field::Status, status_str(st.status).to_owned());
        }
        if prior.deadline != st.deadline {
            self.put_opt(Field::Deadline, st.deadline);
        }
        if prior.last_beat_at != st.last_beat_at {
            self.put_opt(Field::LastBeatAt, st.last_beat_at);
        }
        if prior.last_seq != st.last_seq {
            self.put(Field::LastSeq, st.last_seq.to_string());
        }
        if prior.since != st.since {
            self.put(Field::Since, st.since.to_string());
        }
        if prior.changes != st.changes {
            self.put(Field::Changes, st.changes.to_string());
        }
        if prior.misses != st.misses {
            self.put(Field::Misses, st.misses.to_string());
        }
        self
    }

    fn put(&mut self, field: Field, value: String) {
        self.set.push((field, value));
    }

    fn put_opt(&mut self, field: Field, value: Option<impl ToString>) {
        match value {
            Some(v) => self.put(field, v.to_string()),
            None => self.unset.push(field),
        }
    }
}

/// The monitor `id` from the values of [`Field::ALL`] as `HMGET` answers
/// them; `None` if the hash does not exist (every value absent).
pub(crate) fn decode(id: &str, values: Vec<Option<String>>) -> Result<Option<Monitor>, FieldError> {
    if values.iter().all(Option::is_none) {
        return Ok(None);
    }
    let row = Row(values);
    let cfg = MonitorConfig {
        name: row.required(Field::Name)?.to_owned(),
        timeout: row.number(Field::Timeout)?,
        interval: row.number(Field::Interval)?,
        channels: decode_channels(Field::Channels, row.required(Field::Channels)?)?,
        created_at: row.number(Field::CreatedAt)?,
        token_hash: decode_token_hash(Field::TokenHash, row.required(Field::TokenHash)?)?,
        token_hint: row.required(Field::TokenHint)?.to_owned(),
        remind_every: row.optional_number(Field::RemindEvery)?,
        confirm: row.number(Field::Confirm)?,
    };
    let state = MonitorState {
        status: parse_status(Field::Status, row.required(Field::Status)?)?,
        deadline: row.optional_number(Field::Deadline)?,
        last_beat_at: row.optional_number(Field::LastBeatAt)?,
        last_seq: row.number(Field::LastSeq)?,
        since: row.number(Field::Since)?,
        changes: row.number(Field::Changes)?,
        misses: row.number(Field::Misses)?,
    };
    Ok(Some(Monitor {
        id: id.into(),
        cfg,
        state,
        ver: row.number(Field::Ver)?,
    }))
}

/// `HMGET` values indexed by [`Field`].
struct Row(Vec<Option<String>>);

impl Row {
    fn get(&self, field: Field) -> Option<&str> {
        self.0.get(field as usize).and_then(|v| v.as_deref())
    }

    fn required(&self, field: Field) -> Result<&str, FieldError> {
        self.get(field).ok_or_else(|| invalid(field, "is missing"))
    }

    fn number<T: std::str::FromStr>(&self, field: Field) -> Result<T, FieldError> {
        parse_number(field, self.required(field)?)
    }

    fn optional_number<T: std::str::FromStr>(&self, field: Field) -> Result<Option<T>, FieldError> {
        match self.get(field) {
            None | Some("") => Ok(None),
            Some(raw) => parse_number(field, raw).map(Some),
        }
    }
}

fn invalid(field: Field, problem: impl Into<String>) -> FieldError {
    FieldError {
        field,
        problem: problem.into(),
    }
}

fn parse_number<T: std::str::FromStr>(field: Field, raw: &str) -> Result<T, FieldError> {
    raw.parse()
        .map_err(|_| invalid(field, format!("`{raw}` is not a number in range")))
}

fn status_str(status: Status) -> &'static str {
    match status {
        Status::New => "new",
        Status::Up => "up",
        Status::Down => "down",
        Status::Paused => "paused",
    }
}

fn parse_status(field: Field, raw: &str) -> Result<Status, FieldError> {
    match raw {
        "new" => Ok(Status::New),
        "up" => Ok(Status::Up),
        "down" => Ok(Status::Down),
        "paused" => Ok(Status::Paused),
        _ => Err(invalid(field, format!("`{raw}` is not a status"))),
    }
}

/// Whether a channel id can go in a comma-joined list: the ids the API
/// accepts (`input::plausible_id`, and `token::new_id` ones) all can.
fn plain_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn encode_channels(channels: &[ChannelId]) -> String {
    if channels.iter().all(|c| plain_id(c)) {
        channels
            .iter()
            .map(ChannelId::as_str)
            .collect::<Vec<_>>()
            .join(",")
    } else {
        serde_json::to_string(channels).expect("strings serialize")
    }
}

fn decode_channels(field: Field, raw: &str) -> Result<Vec<ChannelId>, FieldError> {
    let not_a_list = || invalid(field, format!("`{raw}` is not a list of channel ids"));
    if raw.starts_with('[') {
        return serde_json::from_str(raw).map_err(|_| not_a_list());
    }
    if raw.is_empty() {
        return Ok(Vec::new());
    }
    raw.split(',')
        .map(|id| plain_id(id).then(|| id.into()).ok_or_else(not_a_list))
        .collect()
}

/// The base64url alphabet (RFC 4648 §5).
const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Bytes in a SHA-256 digest.
const DIGEST_LEN: usize = 32;

/// A token hash as stored: the digest in base64url, or `!` and the hash as
/// given if it is not 64 lowercase hex digits.
fn encode_token_hash(hex: &str) -> String {
    let digest: Option<Vec<u8>> = (hex.len() == 2 * DIGEST_LEN)
        .then(|| {
            hex.as_bytes()
                .chunks(2)
                .map(|pair| Some((hex_digit(pair[0])? << 4) | hex_digit(pair[1])?))
                .collect()
        })
        .flatten();
    let Some(digest) = digest else {
        return format!("!{hex}");
    };
    let mut out = String::with_capacity(43);
    let (mut acc, mut bits) = (0u32, 0u32);
    for b in digest {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 6 {
            bits -= 6;
            out.push(char::from(BASE64URL[(acc >> bits) as usize & 63]));
        }
        acc &= (1 << bits) - 1;
    }
    if bits > 0 {
        out.push(char::from(BASE64URL[(acc << (6 - bits)) as usize & 63]));
    }
    out
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// The token hash (hex) that [`encode_token_hash`] stored as `raw`.
fn decode_token_hash(field: Field, raw: &str) -> Result<String, FieldError> {
    if let Some(verbatim) = raw.strip_prefix('!') {
        return Ok(verbatim.to_owned());
    }
    let not_a_hash = || invalid(field, format!("`{raw}` is not a token hash"));
    let mut digest = Vec::with_capacity(DIGEST_LEN);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in raw.bytes() {
        let v = BASE64URL
            .iter()
            .position(|&a| a == c)
            .ok_or_else(not_a_hash)?;
        acc = (acc << 6) | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            digest.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // Exactly a digest, and no stray bits: one encoding per hash.
    if digest.len() != DIGEST_LEN || bits >= 6 || acc != 0 {
        return Err(not_a_hash());
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut hex = String::with_capacity(2 * DIGEST_LEN);
    for b in digest {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    Ok(hex)
}

#[cfg(test)]
mod tests;
