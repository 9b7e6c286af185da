//! NATS JetStream: the connection and the beats stream.
//!
//! Beats live in one work-queue stream on file storage: a message leaves the
//! stream only when an evaluator acknowledged it after committing it to
//! Redis, so an accepted push survives the loss of any process
//! (invariant 1).

use std::time::Duration;

use async_nats::jetstream::{self, stream};

use crate::names::Names;

/// Connects to NATS. Succeeds while NATS is down: the client keeps
/// reconnecting in the background and requests fail fast meanwhile.
pub async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .request_timeout(Some(Duration::from_secs(2)))
        .max_reconnects(None)
        .connect(url)
        .await
}

/// The configuration of the beats stream.
pub fn beats_stream_config(names: &Names) -> stream::Config {
    stream::Config {
        name: names.beats_stream(),
        subjects: vec![names.beats_subjects()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// Creates the beats stream if it does not exist.
pub async fn ensure_beats_stream(
    js: &jetstream::Context,
    names: &Names,
) -> anyhow::Result<stream::Stream> {
    Ok(js.get_or_create_stream(beats_stream_config(names)).await?)
}
