//! One name prefix per test, and the removal of everything a prefix
//! created in the brokers.
//!
//! Every name a service creates in NATS, Redis or RabbitMQ starts with its
//! configured prefix, so tests run side by side on one set of brokers when
//! each takes a fresh one ([`unique_prefix`], `<tag>-<random>`). What the
//! prefix created is removed afterwards, even when the test failed:
//! [`Scope`] does it on drop. The clean-up is best effort and bounded in
//! time (a private broker may be gone already); it removes
//!
//! * every Redis key matching [`Names::redis_pattern`] (`SCAN`, then
//!   `UNLINK`; never on a hot path of the services);
//! * the JetStream beats stream;
//! * the alerts, deliveries and dead-letter queues and the alerts exchange
//!   by name, and the notifier's delay queues, whose names follow its retry
//!   schedule, by listing `<prefix>.*` with `rabbitmqctl`. Delay queues
//!   dead-letter into the deliveries queue, which the notifier declares
//!   first, so the list (half a second of CPU) is asked for only when that
//!   queue exists.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lifeline_shared::{names::Names, token};

use crate::Brokers;

/// How long a test's clean-up may take before it gives up.
const TEST_LIMIT: Duration = Duration::from_secs(20);

/// A fresh prefix for one test: `<tag>-<random>`.
pub fn unique_prefix(tag: &str) -> String {
    format!("{tag}-{}", token::new_id())
}

/// A test's own prefix; everything created under it in its brokers is
/// removed when the scope is dropped.
#[derive(Debug)]
pub struct Scope {
    names: Names,
    brokers: Brokers,
}

impl Scope {
    /// A fresh prefix `<tag>-<random>` on the machine's brokers.
    pub fn new(tag: &str) -> Self {
        Self::on(tag, &Brokers::local())
    }

    /// A fresh prefix `<tag>-<random>` on `brokers`.
    pub fn on(tag: &str, brokers: &Brokers) -> Self {
        Self {
            names: Names::new(&unique_prefix(tag)).expect("valid prefix"),
            brokers: brokers.clone(),
        }
    }

    /// The names under the prefix.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        self.names.prefix()
    }

    /// The brokers it cleans up.
    pub fn brokers(&self) -> &Brokers {
        &self.brokers
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        cleanup_blocking(&self.brokers, &self.names);
    }
}

/// Removes everything `names` created in `brokers` (see the module
/// header), giving up after `limit`; `false` if it gave up.
pub async fn cleanup(brokers: &Brokers, names: &Names, limit: Duration) -> bool {
    tokio::time::timeout(limit, cleanup_inner(brokers, names))
        .await
        .is_ok()
}

/// [`cleanup`] from synchronous code (a `Drop`, which cannot await, also
/// while a test panics), on a thread with a runtime of its own, for at most
/// 20 s.
pub fn cleanup_blocking(brokers: &Brokers, names: &Names) {
    let (brokers, names) = (brokers.clone(), names.clone());
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(cleanup(&brokers, &names, TEST_LIMIT));
    })
    .join();
}

async fn cleanup_inner(brokers: &Brokers, names: &Names) {
    delete_redis_keys(&brokers.redis_url, &names.redis_pattern()).await;
    if let Some(js) = jetstream(&brokers.nats_url).await {
        let _ = js.delete_stream(names.beats_stream()).await;
    }
    let Some(conn) = amqp(&brokers.amqp_url).await else {
        return;
    };
    let mut queues = vec![
        names.alerts_queue(),
        names.deliveries_queue(),
        names.dead_queue(),
    ];
    if queue_exists(&conn, &names.deliveries_queue()).await {
        queues.extend(rabbit_names("list_queues", &format!("{}.", names.prefix())).await);
        queues.sort();
        queues.dedup();
    }
    delete_amqp(&conn, &queues, &[names.alerts_exchange()]).await;
    let _ = conn.close(200, "cleanup".into()).await;
}

/// What [`cleanup_all`] removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Removed {
    /// Redis keys.
    pub keys: u64,
    /// JetStream streams.
    pub streams: usize,
    /// RabbitMQ queues.
    pub queues: usize,
    /// RabbitMQ exchanges.
    pub exchanges: usize,
}

/// Removes every Redis key, JetStream stream, RabbitMQ queue and exchange
/// whose name starts with `start` (e.g. `bench-`: whatever interrupted
/// runs left behind). An error if NATS does not answer.
pub async fn cleanup_all(brokers: &Brokers, start: &str) -> anyhow::Result<Removed> {
    let keys = delete_redis_keys(&brokers.redis_url, &format!("{start}*")).await;
    let js = async_nats::jetstream::new(async_nats::connect(brokers.nats_url.as_str()).await?);
    let mut listed = js.stream_names();
    let mut streams = Vec::new();
    while let Some(Ok(name)) = futures::StreamExt::next(&mut listed).await {
        if name.starts_with(start) {
            streams.push(name);
        }
    }
    for s in &streams {
        let _ = js.delete_stream(s).await;
    }
    let queues = rabbit_names("list_queues", start).await;
    let exchanges = rabbit_names("list_exchanges", start).await;
    if let Some(conn) = amqp(&brokers.amqp_url).await {
        delete_amqp(&conn, &queues, &exchanges).await;
        let _ = conn.close(200, "cleanup".into()).await;
    }
    Ok(Removed {
        keys,
        streams: streams.len(),
        queues: queues.len(),
        exchanges: exchanges.len(),
    })
}

/// `SCAN … MATCH pattern` and `UNLINK` in batches; how many keys went.
async fn delete_redis_keys(url: &str, pattern: &str) -> u64 {
    let Ok(client) = redis::Client::open(url) else {
        return 0;
    };
    let Ok(Ok(mut conn)) = tokio::time::timeout(
        Duration::from_secs(3),
        client.get_multiplexed_async_connection(),
    )
    .await
    else {
        return 0;
    };
    let mut cursor: u64 = 0;
    let mut deleted = 0;
    loop {
        let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut conn)
            .await;
        let Ok((next, keys)) = r else { break };
        if !keys.is_empty() {
            let n: redis::RedisResult<u64> =
                redis::cmd("UNLINK").arg(&keys).query_async(&mut conn).await;
            deleted += n.unwrap_or(0);
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    deleted
}

async fn jetstream(url: &str) -> Option<async_nats::jetstream::Context> {
    let client = tokio::time::timeout(Duration::from_secs(3), async_nats::connect(url))
        .await
        .ok()?
        .ok()?;
    Some(async_nats::jetstream::new(client))
}

async fn amqp(url: &str) -> Option<lapin::Connection> {
    tokio::time::timeout(
        Duration::from_secs(5),
        lapin::Connection::connect(url, lapin::ConnectionProperties::default()),
    )
    .await
    .ok()?
    .ok()
}

/// Whether `queue` exists (a passive declare, on a channel of its own: a
/// refusal closes the channel).
async fn queue_exists(conn: &lapin::Connection, queue: &str) -> bool {
    let Ok(ch) = conn.create_channel().await else {
        return false;
    };
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let found = ch
        .queue_declare(queue.into(), passive, Default::default())
        .await
        .is_ok();
    let _ = ch.close(200, "checked".into()).await;
    found
}

/// Names of RabbitMQ queues or exchanges (`what`: `list_queues`,
/// `list_exchanges`) starting with `start`, from `rabbitmqctl` (none if it
/// is not available).
async fn rabbit_names(what: &str, start: &str) -> Vec<String> {
    tokio::process::Command::new("rabbitmqctl")
        .args([what, "-q", "--no-table-headers", "name"])
        .stderr(std::process::Stdio::null())
        .output()
        .await
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::trim)
                .filter(|n| n.starts_with(start))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes `queues` and `exchanges`, each on a channel of its own (an
/// error closes a channel).
async fn delete_amqp(conn: &lapin::Connection, queues: &[String], exchanges: &[String]) {
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            let _ = ch.close(200, "deleted".into()).await;
        }
    }
    for x in exchanges {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
            let _ = ch.close(200, "deleted".into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use lapin::options::ExchangeDeclareOptions;
    use lifeline_shared::{amqp, store::Keys};

    use super::*;

    /// Whether exchange `name` exists (passive declare).
    async fn exchange_exists(conn: &lapin::Connection, name: &str) -> bool {
        let ch = conn.create_channel().await.unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        };
        ch.exchange_declare(
            name.into(),
            lapin::ExchangeKind::Direct,
            passive,
            Default::default(),
        )
        .await
        .is_ok()
    }

    /// A scope removes its keys, stream, queues (a delay queue too) and
    /// exchange when dropped, and nothing of another prefix.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scope_removes_what_its_prefix_created_and_nothing_else() {
        let scope = Scope::new("kit");
        let other = Scope::new("kit");
        let (names, brokers) = (scope.names().clone(), Brokers::local());
        let redis = redis::Client::open(brokers.redis_url.as_str()).unwrap();
        let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
        for n in [&names, other.names()] {
            let _: () = redis::cmd("SET")
                .arg(Keys::new(n).monitor("m1"))
                .arg("x")
                .query_async(&mut conn)
                .await
                .unwrap();
        }
        let js = jetstream(&brokers.nats_url).await.unwrap();
        js.create_stream(async_nats::jetstream::stream::Config {
            name: names.beats_stream(),
            subjects: vec![names.beats_subjects()],
            ..Default::default()
        })
        .await
        .unwrap();
        let amqp_conn = amqp::connect(&brokers.amqp_url).await.unwrap();
        let ch = amqp_conn.create_channel().await.unwrap();
        amqp::declare_alerts(&ch, &names).await.unwrap();
        amqp::declare_retry_queue(&ch, &names, 1234).await.unwrap();

        drop(scope);

        let exists: u32 = redis::cmd("EXISTS")
            .arg(Keys::new(&names).monitor("m1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(exists, 0, "the scope's key is gone");
        let kept: u32 = redis::cmd("EXISTS")
            .arg(Keys::new(other.names()).monitor("m1"))
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(kept, 1, "another prefix's key stays");
        assert!(js.get_stream(names.beats_stream()).await.is_err());
        for q in [
            names.alerts_queue(),
            names.deliveries_queue(),
            names.dead_queue(),
            names.retry_queue(1234),
        ] {
            assert!(!queue_exists(&amqp_conn, &q).await, "{q} is gone");
        }
        assert!(!exchange_exists(&amqp_conn, &names.alerts_exchange()).await);
        let _ = amqp_conn.close(200, "bye".into()).await;
    }
}
