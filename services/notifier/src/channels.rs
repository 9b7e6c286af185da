//! Alert channels: how one delivery reaches one channel in one attempt.
//!
//! Each channel type lives in its own submodule (`webhook`, `email`,
//! `slack`) and answers a single question: did this attempt succeed, and if
//! not, is another attempt worth making? Retries, rate limits, records and
//! metrics are the caller's business (`crate::deliver`).
//!
//! What counts as worth retrying: no answer (connection refused, DNS, TLS,
//! the attempt timeout), HTTP 5xx, 408 and 429 (with its `Retry-After`), and
//! SMTP 4xx replies. Everything else is permanent: other HTTP statuses
//! (3xx included, redirects are never followed), SMTP 5xx replies, and
//! settings that cannot work (a bad URL or address).

mod email;
pub(crate) mod slack;
pub(crate) mod webhook;

use std::{error::Error as StdError, time::Duration};

use chrono::DateTime;
use lifeline_shared::model::{Channel, ChannelKind, DeliveryJob};

use crate::summary::Summary;

/// `User-Agent` of every HTTP request.
const USER_AGENT: &str = concat!("Lifeline/", env!("CARGO_PKG_VERSION"));

/// Longest `Retry-After` taken into account.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);

/// A successful attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    /// The receiver's HTTP status, for HTTP-based channels.
    pub(crate) http_status: Option<u16>,
    /// The SMTP server's reply to the message, for email.
    pub(crate) smtp_reply: Option<String>,
}

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// The receiver answered, but not with a 2xx status.
    #[error("receiver answered HTTP {status}")]
    Status {
        /// The status.
        status: u16,
        /// How long the receiver asked to wait (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    /// The SMTP server refused the message.
    #[error("SMTP server replied {reply}")]
    Smtp {
        /// Code and text, e.g. `550 5.1.1 mailbox unavailable`.
        reply: String,
        /// A 5xx reply: retrying will not help.
        permanent: bool,
    },
    /// No answer: connection refused, DNS failure, TLS error...
    #[error("{0}")]
    Transport(String),
    /// No answer within the attempt timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The channel's settings cannot work (e.g. not an http(s) URL, an
    /// invalid address); retrying will not help.
    #[error("invalid channel settings: {0}")]
    Invalid(String),
}

impl SendError {
    /// The HTTP status received, if any.
    pub(crate) fn http_status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The SMTP reply received, if any.
    pub(crate) fn smtp_reply(&self) -> Option<&str> {
        match self {
            Self::Smtp { reply, .. } => Some(reply),
            _ => None,
        }
    }

    /// How long the receiver asked to wait before the next attempt.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether another attempt could succeed.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            Self::Status { status, .. } => *status >= 500 || matches!(status, 408 | 429),
            Self::Smtp { permanent, .. } => !permanent,
            Self::Transport(_) | Self::Timeout(_) => true,
            Self::Invalid(_) => false,
        }
    }
}

/// One client per channel type, shared by every delivery of this process.
pub(crate) struct Channels {
    http: reqwest::Client,
    email: email::Email,
    timeout: Duration,
}

impl Channels {
    /// Builds the clients; `timeout` bounds one attempt on any channel.
    pub(crate) fn new(
        timeout: Duration,
        smtp_url: &str,
        smtp_from: &str,
    ) -> Result<Self, ChannelsError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .user_agent(USER_AGENT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| ChannelsError::Http(error_chain(&e)))?;
        let email = email::Email::new(smtp_url, smtp_from, timeout)?;
        Ok(Self {
            http,
            email,
            timeout,
        })
    }

    /// Makes one attempt to deliver `job` to `channel`, within the timeout.
    pub(crate) async fn send(
        &self,
        channel: &Channel,
        job: &DeliveryJob,
        summary: &Summary,
    ) -> Result<Sent, SendError> {
        let attempt = async {
            match &channel.kind {
                ChannelKind::Webhook { url, secret } => {
                    webhook::send(&self.http, url, secret, job).await
                }
                ChannelKind::Slack { url } => slack::send(&self.http, url, summary).await,
                ChannelKind::Email { to } => self.email.send(to, job, summary).await,
            }
        };
        tokio::time::timeout(self.timeout, attempt)
            .await
            .unwrap_or(Err(SendError::Timeout(self.timeout)))
    }
}

/// The clients could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChannelsError {
    /// The HTTP client.
    #[error("building the HTTP client: {0}")]
    Http(String),
    /// `LIFELINE_SMTP_URL` or `LIFELINE_SMTP_FROM`.
    #[error("{0}")]
    Smtp(String),
}

/// Checks a URL for an HTTP-based channel: it must be http or https.
fn http_url(url: &str, what: &str) -> Result<reqwest::Url, SendError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| SendError::Invalid(format!("{what} url: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(SendError::Invalid(format!(
            "{what} url scheme {:?} is not http or https",
            parsed.scheme()
        )));
    }
    Ok(parsed)
}

/// Sends `request` and turns the answer into the attempt's outcome. Errors
/// never carry the URL: webhook and Slack URLs often embed secrets.
async fn post(request: reqwest::RequestBuilder) -> Result<Sent, SendError> {
    let response = request.send().await.map_err(|e| {
        if e.is_timeout() {
            SendError::Transport(format!("timed out: {}", error_chain(&e.without_url())))
        } else {
            SendError::Transport(error_chain(&e.without_url()))
        }
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(Sent {
            http_status: Some(status.as_u16()),
            smtp_reply: None,
        });
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, lifeline_shared::time::now_ms()));
    Err(SendError::Status {
        status: status.as_u16(),
        retry_after,
    })
}

/// `Retry-After` as seconds or as an HTTP date, relative to `now_ms`;
/// capped at a day.
fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = DateTime::parse_from_rfc2822(value).ok()?.timestamp_millis();
        Duration::from_millis(u64::try_from(at - now_ms).unwrap_or(0))
    };
    Some(wait.min(MAX_RETRY_AFTER))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_failures_are_retried() {
        let status = |status| SendError::Status {
            status,
            retry_after: None,
        };
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).retryable(), "{s}");
        }
        for s in [300, 301, 400, 401, 403, 404, 410, 422] {
            assert!(!status(s).retryable(), "{s}");
        }
        assert!(SendError::Transport("refused".into()).retryable());
        assert!(SendError::Timeout(Duration::from_secs(10)).retryable());
        assert!(!SendError::Invalid("bad".into()).retryable());
        let smtp = |permanent| SendError::Smtp {
            reply: "x".into(),
            permanent,
        };
        assert!(smtp(false).retryable());
        assert!(!smtp(true).retryable());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let now = 1_445_412_480_000; // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(parse_retry_after("1", now), Some(Duration::from_secs(1)));
        assert_eq!(
            parse_retry_after(" 120 ", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("99999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
