//! Email channel: one message to every recipient of the channel, through the
//! SMTP server of `LIFELINE_SMTP_URL` (lettre, rustls).
//!
//! Subject `[Lifeline] <monitor> is DOWN` (`is UP`, `test alert`); a
//! `multipart/alternative` body with a plain-text and an HTML part, both
//! listing the [`Summary`]'s facts (reason, message, since when and for how
//! long, last beat, monitor id). Everything user-supplied is escaped in the
//! HTML part. The `Message-ID` derives from the delivery id, so a duplicate
//! delivery (after a crash) carries the same id as the original.
//!
//! The server's reply decides: 2xx is success, 4xx is retried, 5xx is
//! permanent; a recipient that is not an address is permanent too. The
//! reply (e.g. `250 2.0.0 Ok: queued`) is recorded with the attempt.

use std::time::Duration;

use lettre::{
    AsyncSmtpTransport, AsyncTransport as _, Message, Tokio1Executor,
    message::{Mailbox, MultiPart},
    transport::smtp::{self, response::Response},
};
use lifeline_shared::{config::redact_url, model::DeliveryJob};

use super::{ChannelsError, SendError, Sent, error_chain};
use crate::summary::Summary;

/// The SMTP sender: a pooled transport and the `From` address.
pub(crate) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Email {
    /// A sender through `url` (see [`crate::Config::smtp_url`]) as `from`;
    /// each SMTP command gives up after `timeout`. Connects on first use.
    pub(crate) fn new(url: &str, from: &str, timeout: Duration) -> Result<Self, ChannelsError> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| {
                ChannelsError::Smtp(format!(
                    "LIFELINE_SMTP_URL {:?} is not usable: {e}",
                    redact_url(url)
                ))
            })?
            .timeout(Some(timeout))
            .build();
        let from = from.parse().map_err(|e| {
            ChannelsError::Smtp(format!(
                "LIFELINE_SMTP_FROM {from:?} is not an address: {e}"
            ))
        })?;
        Ok(Self { transport, from })
    }

    /// Sends `job` to `to` once.
    pub(crate) async fn send(
        &self,
        to: &[String],
        job: &DeliveryJob,
        summary: &Summary,
    ) -> Result<Sent, SendError> {
        let message = self.message(to, job, summary)?;
        match self.transport.send(message).await {
            Ok(response) => Ok(Sent {
                http_status: None,
                smtp_reply: Some(reply_text(&response)),
            }),
            Err(e) => Err(classify(&e)),
        }
    }

    fn message(
        &self,
        to: &[String],
        job: &DeliveryJob,
        summary: &Summary,
    ) -> Result<Message, SendError> {
        if to.is_empty() {
            return Err(SendError::Invalid("email channel has no recipient".into()));
        }
        let domain = self.from.email.domain().to_owned();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(summary.subject())
            .message_id(Some(format!("<{}@{domain}>", job.delivery_id)))
            .user_agent(super::USER_AGENT.to_owned());
        for address in to {
            let mailbox: Mailbox = address.parse().map_err(|e| {
                SendError::Invalid(format!(
                    "recipient {address:?} is not an email address: {e}"
                ))
            })?;
            builder = builder.to(mailbox);
        }
        builder
            .multipart(MultiPart::alternative_plain_html(
                plain_body(summary),
                html_body(summary),
            ))
            .map_err(|e| SendError::Invalid(format!("cannot build the email: {e}")))
    }
}

/// `250 2.0.0 Ok: queued as …`.
fn reply_text(response: &Response) -> String {
    let text: Vec<&str> = response.message().collect();
    format!("{} {}", response.code(), text.join(" "))
        .trim()
        .to_owned()
}

/// A negative reply is retried (4xx) or not (5xx); anything else (no
/// connection, TLS, timeout, a garbled reply) is retried.
fn classify(e: &smtp::Error) -> SendError {
    match e.status() {
        Some(code) => {
            let text = std::error::Error::source(e)
                .map(ToString::to_string)
                .unwrap_or_default();
            SendError::Smtp {
                reply: format!("{code} {text}").trim().to_owned(),
                permanent: e.is_permanent(),
            }
        }
        None => SendError::Transport(format!("smtp: {}", error_chain(e))),
    }
}

/// The plain-text part.
pub(crate) fn plain_body(s: &Summary) -> String {
    let width = s.facts.iter().map(|f| f.label.len()).max().unwrap_or(0) + 1;
    let mut out = format!("{}\n\n", s.headline);
    for f in &s.facts {
        out.push_str(&format!(
            "{:<width$} {}\n",
            format!("{}:", f.label),
            f.value
        ));
    }
    out.push_str("\n-- \nSent by Lifeline.\n");
    out
}

/// The HTML part; every value is escaped.
pub(crate) fn html_body(s: &Summary) -> String {
    let colour = match s.event {
        lifeline_shared::model::AlertEvent::Down => "#c62828",
        lifeline_shared::model::AlertEvent::Up => "#2e7d32",
        lifeline_shared::model::AlertEvent::Test => "#1565c0",
    };
    let mut rows = String::new();
    for f in &s.facts {
        rows.push_str(&format!(
            "<tr><th style=\"text-align:left;padding:2px 12px 2px 0;vertical-align:top\">{}</th>\
             <td style=\"padding:2px 0;white-space:pre-wrap\">{}</td></tr>\n",
            escape(f.label),
            escape(&f.value)
        ));
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body style=\"font-family:sans-serif\">\n\
         <h2 style=\"color:{colour}\">{title}</h2>\n\
         <table>\n{rows}</table>\n\
         <p style=\"color:#777\">Sent by Lifeline.</p>\n</body></html>\n",
        title = escape(&s.headline),
    )
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use lifeline_shared::model::{AlertEvent, AlertJob, MonitorRef, Reason, WIRE_VERSION};

    use super::*;

    fn job() -> DeliveryJob {
        DeliveryJob::new(
            AlertJob {
                v: WIRE_VERSION,
                alert_id: "m1.2".into(),
                event: AlertEvent::Down,
                monitor: MonitorRef {
                    id: "m1".into(),
                    name: "<b>backup</b> & co".into(),
                },
                reason: Reason::Reported,
                msg: Some("<script>alert(1)</script>".into()),
                value: None,
                at: 1_700_000_060_000,
                last_beat_at: Some(1_700_000_000_000),
                channels: vec!["c1".into()],
            },
            &"c1".into(),
        )
    }

    fn email() -> Email {
        Email::new(
            "smtp://127.0.0.1:25",
            "Lifeline <lifeline@example.com>",
            Duration::from_secs(1),
        )
        .unwrap()
    }

    #[test]
    fn user_text_is_escaped_in_html() {
        let s = Summary::new(&job().alert, None, 1_700_000_120_000);
        let html = html_body(&s);
        assert!(!html.contains("<script>"), "{html}");
        assert!(
            html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
            "{html}"
        );
        assert!(
            html.contains("&lt;b&gt;backup&lt;/b&gt; &amp; co is DOWN"),
            "{html}"
        );
        let text = plain_body(&s);
        assert!(text.starts_with("<b>backup</b> & co is DOWN\n"), "{text}");
        assert!(
            text.contains("Message:    <script>alert(1)</script>\n"),
            "{text}"
        );
    }

    // The pooled transport needs a Tokio runtime even when nothing is sent.
    #[tokio::test]
    async fn messages_carry_a_stable_id_and_both_parts() {
        let j = job();
        let s = Summary::new(&j.alert, None, 1_700_000_120_000);
        let raw = String::from_utf8(
            email()
                .message(&["ops@example.com".into()], &j, &s)
                .unwrap()
                .formatted(),
        )
        .unwrap();
        assert!(
            raw.contains("Message-ID: <msg_m1.2_c1@example.com>"),
            "{raw}"
        );
        assert!(raw.contains("multipart/alternative"), "{raw}");
        assert!(raw.contains("text/plain"), "{raw}");
        assert!(raw.contains("text/html"), "{raw}");
    }

    #[tokio::test]
    async fn bad_recipients_are_permanent() {
        let j = job();
        let s = Summary::new(&j.alert, None, 0);
        for to in [vec![], vec!["not an address".to_owned()]] {
            let err = email().message(&to, &j, &s).unwrap_err();
            assert!(!err.retryable(), "{to:?}: {err}");
        }
    }
}
