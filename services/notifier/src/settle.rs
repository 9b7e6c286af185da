//! What becomes of a queue's message once its worker is done with it
//! ([`Settle`]), and the parse every worker starts with ([`parse_job`]).
//!
//! The workers (`fanout`, `deliver`) answer with a [`Settle`]; the
//! `consumer` acts on it. Both sides import this module, never each other,
//! so the consumer depends on its workers and no worker on the consumer.

use lifeline_shared::model::WIRE_VERSION;
use serde::{Deserialize, de::DeserializeOwned};

/// What to do with a message once its worker is done with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Settle {
    /// Done: remove it from the queue.
    Ack,
    /// Not done: hand it back to the queue (after a pause).
    Requeue,
    /// Not a job: drop it.
    Reject,
}

/// Parses a job, or says how to settle a message that is not one: rejected
/// when malformed, requeued (for a newer notifier) when of a newer version.
pub(crate) fn parse_job<T: DeserializeOwned>(data: &[u8], what: &str) -> Result<T, Settle> {
    /// Just the version of a job that does not parse as this version's.
    #[derive(Deserialize)]
    struct Versioned {
        v: u8,
    }
    serde_json::from_slice(data).map_err(|e| {
        if let Ok(Versioned { v }) = serde_json::from_slice(data)
            && v > WIRE_VERSION
        {
            tracing::warn!(
                job.v = v,
                "{what} has a newer wire version; handing it back for a newer notifier"
            );
            return Settle::Requeue;
        }
        tracing::error!(bytes = data.len(), error = %e, "malformed {what}; rejecting it");
        Settle::Reject
    })
}
