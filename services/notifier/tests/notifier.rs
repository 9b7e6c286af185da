//! The notifier against the real RabbitMQ (127.0.0.1:5672) and Redis
//! (127.0.0.1:6379) of this machine.
//!
//! Each test runs the real service in-process ([`lifeline_notifier::run`])
//! with its own prefix, an ops listener on port 0 and a webhook receiver of
//! its own on port 0; it publishes alert jobs with the evaluator's
//! publisher and watches what the receiver gets and what Redis records.
//! Conditions are awaited with a deadline; a test's Redis keys, queue and
//! exchange are removed when its harness is dropped, even on failure.

use std::{
    collections::VecDeque,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode, Uri},
};
use lapin::{
    BasicProperties,
    options::{
        BasicPublishOptions, ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};
use lifeline_notifier::{Config, run};
use lifeline_shared::{
    amqp::{ALERT_ROUTING_KEY, Publisher},
    model::{AlertEvent, AlertJob, Channel, ChannelKind, DeliveryRecord, MonitorRef, Reason},
    names::Names,
    store::{Caps, Store},
    token::new_id,
};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const REDIS_URL: &str = "redis://127.0.0.1:6379";
/// Longest wait for any condition.
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `check` until it returns `Some`, or panics after [`DEADLINE`].
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

// --- webhook receiver ---

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Hit {
    path: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Default)]
struct ReceiverState {
    hits: Mutex<Vec<Hit>>,
    /// Statuses to answer, in order; 200 once empty.
    script: Mutex<VecDeque<u16>>,
    /// How long to wait before answering.
    delay: Duration,
}

/// A local HTTP server recording every request.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
    task: JoinHandle<()>,
}

impl Receiver {
    async fn start(script: &[u16], delay: Duration) -> Self {
        let state = Arc::new(ReceiverState {
            script: Mutex::new(script.iter().copied().collect()),
            delay,
            ..Default::default()
        });
        let app = Router::new().fallback(receive).with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }

    fn hits(&self, path: &str) -> Vec<Hit> {
        let hits = self.state.hits.lock().unwrap();
        hits.iter()
            .filter(|h| h.path == format!("/{path}"))
            .cloned()
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.hits.lock().unwrap().push(Hit {
        path: uri.path().to_owned(),
        headers,
        body,
    });
    tokio::time::sleep(state.delay).await;
    let status = state.script.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(status).unwrap()
}

// --- the service under test ---

/// A running notifier with its own prefix, and what the test needs around it.
struct Harness {
    names: Names,
    store: Store,
    publisher: Publisher,
    ops: SocketAddr,
    shutdown: CancellationToken,
    service: Option<JoinHandle<anyhow::Result<()>>>,
}

/// A config for `prefix` with fast retries.
fn test_config(prefix: &str) -> Config {
    let mut config = Config::local(prefix);
    config.retry_delays = vec![Duration::from_millis(50), Duration::from_millis(100)];
    config.webhook_timeout = Duration::from_secs(2);
    config
}

impl Harness {
    /// Starts a notifier on a fresh prefix; `tweak` adjusts its config.
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let prefix = format!("ntf-{}", new_id());
        let mut config = test_config(&prefix);
        tweak(&mut config);
        Self::start_with(config).await
    }

    async fn start_with(config: Config) -> Self {
        let names = config.common.names.clone();
        let store = Store::open(REDIS_URL, names.clone(), Caps::default()).unwrap();
        let publisher = Publisher::new(AMQP_URL, names.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ops = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let service = tokio::spawn(run(config, listener, shutdown.clone()));
        Self {
            names,
            store,
            publisher,
            ops,
            shutdown,
            service: Some(service),
        }
    }

    /// Cancels the service and waits for it to return cleanly.
    async fn stop(&mut self) {
        self.shutdown.cancel();
        let service = self.service.take().expect("running");
        tokio::time::timeout(DEADLINE, service)
            .await
            .expect("notifier stops in time")
            .expect("notifier task")
            .expect("notifier returns Ok");
    }

    async fn channel(&self, url: &str) -> Channel {
        let c = Channel {
            id: new_id(),
            name: "test".into(),
            kind: ChannelKind::Webhook {
                url: url.into(),
                secret: String::new(),
            },
            created_at: 1,
        };
        self.store.put_channel(&c).await.unwrap();
        c
    }

    async fn publish(&self, job: &AlertJob) {
        self.publisher.publish_alert(job).await.unwrap();
    }

    async fn record(&self, job: &AlertJob, channel_id: &str) -> DeliveryRecord {
        wait_for("a delivery record", || async {
            self.store
                .delivery(&job.alert_id, channel_id)
                .await
                .unwrap()
        })
        .await
    }

    /// Messages ready in the alerts queue (not counting those held by a consumer).
    async fn queued(&self) -> u32 {
        let conn = lifeline_shared::amqp::connect(AMQP_URL).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                self.names.alerts_queue().as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let _ = conn.close(200, "bye".into()).await;
        q.message_count()
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://{}{path}", self.ops))
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let names = self.names.clone();
        // Best effort, on a runtime of its own so it also runs after a panic.
        let cleaned = std::thread::spawn(move || {
            tokio::runtime::Runtime::new()
                .unwrap()
                .block_on(clean_up(names))
        })
        .join();
        if let Ok(Err(e)) = cleaned {
            eprintln!("clean-up failed: {e}");
        }
    }
}

async fn clean_up(names: Names) -> anyhow::Result<()> {
    let client = redis::Client::open(REDIS_URL)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(names.redis_pattern())
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await?;
        if !keys.is_empty() {
            let _: () = redis::cmd("DEL").arg(keys).query_async(&mut conn).await?;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let amqp = lifeline_shared::amqp::connect(AMQP_URL).await?;
    let ch = amqp.create_channel().await?;
    ch.queue_delete(
        names.alerts_queue().as_str().into(),
        QueueDeleteOptions::default(),
    )
    .await?;
    ch.exchange_delete(
        names.alerts_exchange().as_str().into(),
        ExchangeDeleteOptions::default(),
    )
    .await?;
    let _ = amqp.close(200, "bye".into()).await;
    Ok(())
}

fn job(channels: &[&Channel]) -> AlertJob {
    let monitor = new_id();
    AlertJob {
        v: 1,
        alert_id: format!("{monitor}.1"),
        event: AlertEvent::Down,
        monitor: MonitorRef {
            id: monitor,
            name: "nightly backup".into(),
        },
        reason: Reason::Reported,
        msg: Some("disk full".into()),
        value: Some(97.5),
        at: 1_700_000_060_000,
        last_beat_at: Some(1_700_000_000_123),
        channels: channels.iter().map(|c| c.id.clone()).collect(),
    }
}

// --- tests ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivers_one_post_with_the_documented_payload_and_never_twice() {
    // Prefetch 1: jobs are handled one after the other, so once a later job
    // is delivered every earlier one has been settled.
    let mut h = Harness::start(|c| c.prefetch = 1).await;
    let rx = Receiver::start(&[], Duration::ZERO).await;
    let hook = h.channel(&rx.url("hook")).await;
    let marker = h.channel(&rx.url("marker")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    let rec = h.record(&alert, &hook.id).await;
    assert_eq!(rec.outcome, "succeeded");
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.http_status, Some(200));
    assert_eq!(rec.error, None);

    // The same job again (as after an evaluator crash), then a marker job.
    h.publish(&alert).await;
    let after = job(&[&marker]);
    h.publish(&after).await;
    assert_eq!(h.record(&after, &marker.id).await.outcome, "succeeded");

    let hits = rx.hits("hook");
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(
        hit.body,
        json!({
            "event": "monitor.down",
            "alert_id": alert.alert_id,
            "monitor": {"id": alert.monitor.id, "name": "nightly backup"},
            "reason": "reported",
            "msg": "disk full",
            "value": 97.5,
            "at": "2023-11-14T22:14:20.000Z",
            "last_beat_at": "2023-11-14T22:13:20.123Z",
        })
    );
    assert_eq!(hit.headers["content-type"], "application/json");
    assert_eq!(
        hit.headers["user-agent"],
        format!("Lifeline/{}", env!("CARGO_PKG_VERSION")).as_str()
    );

    // Ops routes.
    assert_eq!(h.get("/healthz").await.0, 200);
    let ready = wait_for("/readyz to answer 200", || async {
        let (status, body) = h.get("/readyz").await;
        (status == 200).then_some(body)
    })
    .await;
    assert!(ready.contains("rabbitmq"), "{ready}");
    let (_, metrics) = h.get("/metrics").await;
    assert!(
        metrics.contains("lifeline_notifier_deliveries_total"),
        "{metrics}"
    );

    h.stop().await;
    assert_eq!(h.queued().await, 0);
    assert_eq!(rx.hits("hook").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_deliver_once() {
    let mut h = Harness::start(|c| c.prefetch = 32).await;
    // A slow receiver, so both copies are in flight together.
    let rx = Receiver::start(&[], Duration::from_millis(300)).await;
    let hook = h.channel(&rx.url("hook")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    h.publish(&alert).await;
    assert_eq!(h.record(&alert, &hook.id).await.outcome, "succeeded");
    wait_for("both copies taken by the notifier", || async {
        (h.queued().await == 0).then_some(())
    })
    .await;
    // Shutdown settles every job in flight before it returns.
    h.stop().await;
    assert_eq!(h.queued().await, 0);
    assert_eq!(rx.hits("hook").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_until_the_receiver_accepts() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start(&[500, 500], Duration::ZERO).await;
    let hook = h.channel(&rx.url("hook")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    let rec = h.record(&alert, &hook.id).await;
    assert_eq!(rec.outcome, "succeeded");
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.http_status, Some(200));
    assert_eq!(rec.error, None);

    h.stop().await;
    assert_eq!(rx.hits("hook").len(), 3);
    assert_eq!(h.queued().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_gets_a_final_record_even_when_delivery_fails() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start(&[500, 500, 500], Duration::ZERO).await;
    // A port nothing listens on.
    let dead_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let dead = h.channel(&format!("http://{dead_addr}/hook")).await;
    let refusing = h.channel(&rx.url("refusing")).await;
    let missing = Channel {
        id: new_id(),
        name: "gone".into(),
        kind: ChannelKind::Webhook {
            url: rx.url("missing"),
            secret: String::new(),
        },
        created_at: 1,
    };

    let alert = job(&[&dead, &refusing, &missing]);
    h.publish(&alert).await;

    let rec = h.record(&alert, &dead.id).await;
    assert_eq!(rec.outcome, "failed");
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.http_status, None);
    let error = rec.error.expect("an error is recorded");
    assert!(
        !error.contains(&dead_addr.to_string()),
        "url leaked: {error}"
    );

    let rec = h.record(&alert, &refusing.id).await;
    assert_eq!(rec.outcome, "failed");
    assert_eq!(rec.attempts, 3);
    assert_eq!(rec.http_status, Some(500));

    let rec = h.record(&alert, &missing.id).await;
    assert_eq!(rec.outcome, "failed");
    assert_eq!(rec.attempts, 0);

    h.stop().await;
    assert_eq!(
        h.queued().await,
        0,
        "the job is acked once all are recorded"
    );
    assert_eq!(rx.hits("refusing").len(), 3);
    assert!(rx.hits("missing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_are_dropped_without_stopping_the_consumer() {
    let mut h = Harness::start(|c| c.prefetch = 1).await;
    let rx = Receiver::start(&[], Duration::ZERO).await;
    let hook = h.channel(&rx.url("hook")).await;

    // The exchange exists once the publisher has published.
    let first = job(&[&hook]);
    h.publish(&first).await;
    h.record(&first, &hook.id).await;

    let conn = lifeline_shared::amqp::connect(AMQP_URL).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for body in [&b"not json"[..], br#"{"v":1,"alert_id":"x"}"#] {
        ch.basic_publish(
            h.names.alerts_exchange().as_str().into(),
            ALERT_ROUTING_KEY.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let _ = conn.close(200, "bye".into()).await;

    let after = job(&[&hook]);
    h.publish(&after).await;
    assert_eq!(h.record(&after, &hook.id).await.outcome, "succeeded");

    h.stop().await;
    assert_eq!(h.queued().await, 0, "malformed jobs are not requeued");
    assert_eq!(rx.hits("hook").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_the_job_on_the_queue() {
    let prefix = format!("ntf-{}", new_id());
    let rx = Receiver::start(&[], Duration::ZERO).await;

    // A notifier whose Redis is unreachable.
    let mut broken = test_config(&prefix);
    broken.common.redis_url = "redis://127.0.0.1:1".into();
    let mut h = Harness::start_with(broken).await;
    let hook = h.channel(&rx.url("hook")).await;
    let alert = job(&[&hook]);
    h.publish(&alert).await;

    let (status, body) = wait_for("/readyz to report redis", || async {
        let (status, body) = h.get("/readyz").await;
        body.contains("rabbitmq\":\"ok").then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    wait_for("the job taken by the notifier", || async {
        (h.queued().await == 0).then_some(())
    })
    .await;
    h.stop().await;
    assert!(rx.hits("hook").is_empty());
    assert_eq!(h.queued().await, 1, "the job went back to the queue");

    // Redis is back (a notifier that can reach it): the job is delivered.
    let mut fixed = Harness::start_with(test_config(&prefix)).await;
    assert_eq!(fixed.record(&alert, &hook.id).await.outcome, "succeeded");
    fixed.stop().await;
    assert_eq!(rx.hits("hook").len(), 1);
    assert_eq!(fixed.queued().await, 0);
    drop(h);
}
