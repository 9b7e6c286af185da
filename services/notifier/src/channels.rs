//! Alert channels: how one alert reaches one channel in one attempt.
//!
//! Each channel type lives in its own submodule and answers a single
//! question: did this attempt succeed, and if not, is another attempt worth
//! making? Retries, delivery records and metrics are the caller's business
//! ([`crate::dispatch`]), so a new channel type (email, Slack) only adds a
//! variant here.

pub(crate) mod webhook;

use std::{error::Error as StdError, time::Duration};

use lifeline_shared::model::{AlertJob, Channel, ChannelKind};

/// A successful attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The receiver's HTTP status, for HTTP-based channels.
    pub(crate) http_status: Option<u16>,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The receiver answered, but not with a 2xx status.
    #[error("receiver answered HTTP {0}")]
    Status(u16),
    /// No answer: connection refused, DNS failure, timeout, TLS error...
    #[error("{0}")]
    Transport(String),
    /// The channel's settings cannot work (e.g. not an http(s) URL); retrying
    /// will not help.
    #[error("invalid channel settings: {0}")]
    Invalid(String),
}

impl SendError {
    /// The HTTP status received, if any.
    pub(crate) fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status(s) => Some(*s),
            _ => None,
        }
    }

    /// Whether another attempt could succeed.
    pub(crate) fn retryable(&self) -> bool {
        !matches!(self, Self::Invalid(_))
    }
}

/// The label of a channel type in logs and metrics (`webhook`).
pub(crate) fn kind_label(kind: &ChannelKind) -> &'static str {
    kind.label()
}

/// One client per channel type, shared by every delivery of this process.
pub(crate) struct Channels {
    webhook: webhook::Webhook,
}

impl Channels {
    /// Builds the clients; `webhook_timeout` bounds one webhook attempt.
    pub(crate) fn new(webhook_timeout: Duration) -> Result<Self, reqwest::Error> {
        Ok(Self {
            webhook: webhook::Webhook::new(webhook_timeout)?,
        })
    }

    /// Makes one attempt to deliver `job` to `channel`.
    pub(crate) async fn send(&self, channel: &Channel, job: &AlertJob) -> Result<Sent, SendError> {
        match &channel.kind {
            ChannelKind::Webhook { url, .. } => self.webhook.send(url, job).await,
            other => Err(SendError::Invalid(format!(
                "{} channels are not supported by this notifier",
                other.label()
            ))),
        }
    }
}

/// An error and its sources on one line (`a: b: c`).
pub(crate) fn error_chain(e: &dyn StdError) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
