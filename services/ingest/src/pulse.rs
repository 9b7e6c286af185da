//! Pulses: every replica publishes one into the beats stream every 250 ms.
//!
//! They tell evaluators up to when the push path (this service and NATS)
//! worked: evaluators fire deadlines only up to the newest pulse, and a gap
//! between pulses is recorded as an outage whose length extends the
//! deadlines that fell inside it. A replica that has not got a pulse through
//! for a second sends one before accepting a beat, so after an outage the
//! evaluators always learn of the gap before they see the beats that follow.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use lifeline_shared::{
    model::{Pulse, WIRE_VERSION},
    time::now_ms,
};
use tokio_util::sync::CancellationToken;

/// Time between pulses.
pub(crate) const INTERVAL: Duration = Duration::from_millis(250);

/// A pulse older than this must be renewed before a beat is accepted.
const FRESH: Duration = Duration::from_secs(1);

/// Sends pulses and remembers the last one JetStream acknowledged.
pub(crate) struct Pulser {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    subject: String,
    last_ok: Mutex<Option<Instant>>,
}

impl Pulser {
    pub(crate) fn new(client: async_nats::Client, subject: String) -> Self {
        Self {
            js: async_nats::jetstream::new(client.clone()),
            client,
            subject,
            last_ok: Mutex::new(None),
        }
    }

    /// Publishes one pulse; true once JetStream acknowledged it.
    pub(crate) async fn send(&self) -> bool {
        // Never queue a pulse in a disconnected client: it would be sent
        // after the outage and look like proof the path worked during it.
        if !matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        ) {
            return false;
        }
        let body = serde_json::to_vec(&Pulse {
            v: WIRE_VERSION,
            at: now_ms(),
        })
        .expect("pulses serialize");
        let acked = tokio::time::timeout(Duration::from_secs(1), async {
            self.js
                .publish(self.subject.clone(), body.into())
                .await?
                .await
                .map_err(async_nats::Error::from)
        })
        .await;
        let ok = matches!(acked, Ok(Ok(_)));
        if ok {
            *self.last_ok.lock().expect("pulse lock") = Some(Instant::now());
        }
        ok
    }

    /// True if a pulse got through within the last second, or one does now.
    pub(crate) async fn ensure_fresh(&self) -> bool {
        let fresh = self
            .last_ok
            .lock()
            .expect("pulse lock")
            .is_some_and(|t| t.elapsed() < FRESH);
        fresh || self.send().await
    }

    /// Pulses every [`INTERVAL`] until `shutdown`.
    pub(crate) async fn run(&self, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let ok = self.send().await;
            if ok == failing {
                if ok {
                    tracing::info!("pulses get through again");
                } else {
                    tracing::warn!("pulse not acknowledged by JetStream: the push path is down");
                }
                failing = !ok;
            }
        }
    }
}
