//! Test harness for cross-service flows: the four Lifeline services run
//! in-process on port 0 against the machine's real NATS, Redis and RabbitMQ,
//! under a fresh name prefix per test, plus a real HTTP webhook receiver.
//! Everything a stack created (Redis keys, the JetStream stream, RabbitMQ
//! queues) is removed when it is dropped.

pub mod procs;

use std::{
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, routing::post};
use lifeline_shared::{names::Names, token};
use serde_json::{Value, json};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// API key used by every test stack.
pub const API_KEY: &str = "test-api-key-0123456789abcdef";

/// Waits until `check` returns `Some`, polling every 50 ms, for at most `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service running in-process.
struct Running {
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        match tokio::time::timeout(Duration::from_secs(20), self.handle).await {
            Ok(Ok(Ok(()))) => {}
            other => panic!("service did not stop cleanly: {other:?}"),
        }
    }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = l.local_addr().expect("local addr");
    (l, addr)
}

/// HTTP access to a running Lifeline: the API (authenticated) and ingest
/// (pushes go round-robin over every ingest replica).
pub struct Client {
    /// The prefix of every broker name the stack uses.
    pub prefix: String,
    /// Base URL of the first ingest replica, e.g. `http://127.0.0.1:41234`.
    pub ingest_url: String,
    /// Base URLs of every ingest replica.
    pub ingest_urls: Vec<String>,
    /// Base URL of the API.
    pub api_url: String,
    /// HTTP client.
    pub http: reqwest::Client,
    next_ingest: std::sync::atomic::AtomicUsize,
}

impl Client {
    /// A client for the given URLs.
    pub fn new(prefix: &str, ingest_urls: Vec<String>, api_url: String) -> Self {
        Self {
            prefix: prefix.to_owned(),
            ingest_url: ingest_urls[0].clone(),
            ingest_urls,
            api_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("http client"),
            next_ingest: Default::default(),
        }
    }

    /// The names the stack's services use.
    pub fn names(&self) -> Names {
        Names::new(&self.prefix).expect("valid prefix")
    }

    /// Waits until every URL answers `/readyz` with 200.
    pub async fn wait_ready(&self, urls: &[String]) {
        for url in urls {
            let readyz = format!("{url}/readyz");
            wait_for(Duration::from_secs(30), &readyz, || {
                let (http, readyz) = (self.http.clone(), readyz.clone());
                async move {
                    let r = http.get(&readyz).send().await.ok()?;
                    r.status().is_success().then_some(())
                }
            })
            .await;
        }
    }

    /// An authenticated API request builder.
    pub fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.api_url))
            .bearer_auth(API_KEY)
    }

    /// Creates a webhook channel; returns its id.
    pub async fn webhook_channel(&self, url: &str) -> String {
        self.channel(json!({"type": "webhook", "name": "ops", "url": url}))
            .await["id"]
            .as_str()
            .expect("channel id")
            .to_owned()
    }

    /// Creates a channel; returns its JSON.
    pub async fn channel(&self, body: Value) -> Value {
        let r = self
            .api(reqwest::Method::POST, "/api/v1/channels")
            .json(&body)
            .send()
            .await
            .expect("create channel");
        assert_eq!(r.status(), 201, "create channel {body}");
        r.json().await.expect("channel json")
    }

    /// Creates a monitor; returns its JSON (with `id`, `token`, `push_url`).
    pub async fn monitor(&self, name: &str, timeout: u64, channels: &[&str]) -> Value {
        let r = self
            .api(reqwest::Method::POST, "/api/v1/monitors")
            .json(&json!({"name": name, "timeout": timeout, "channels": channels}))
            .send()
            .await
            .expect("create monitor");
        assert_eq!(r.status(), 201, "create monitor");
        r.json().await.expect("monitor json")
    }

    /// GETs an API path and returns its JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self
            .api(reqwest::Method::GET, path)
            .send()
            .await
            .expect("api get");
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.expect("json")
    }

    /// Pushes to `/api/push/{token}?{query}` by POST on the next ingest
    /// replica; returns status and JSON body (status 0: no connection).
    pub async fn push(&self, token: &str, query: &str) -> (u16, Value) {
        let i = self
            .next_ingest
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let base = &self.ingest_urls[i % self.ingest_urls.len()];
        let mut url = format!("{base}/api/push/{token}");
        if !query.is_empty() {
            url = format!("{url}?{query}");
        }
        match self.http.post(url).send().await {
            Ok(r) => {
                let status = r.status().as_u16();
                (status, r.json().await.unwrap_or(Value::Null))
            }
            Err(_) => (0, Value::Null),
        }
    }

    /// Sequence number of the newest beat event in the stream (0 if none).
    pub async fn stream_messages(&self) -> u64 {
        let client = async_nats::connect("127.0.0.1:4222").await.expect("nats");
        let js = async_nats::jetstream::new(client);
        let mut stream = js
            .get_stream(self.names().beats_stream())
            .await
            .expect("beats stream");
        stream
            .info()
            .await
            .expect("stream info")
            .state
            .last_sequence
    }
}

/// The four services under one prefix, in-process.
pub struct Stack {
    client: Client,
    tune_notifier: fn(&mut lifeline_notifier::Config),
    /// Ops base URL of the evaluator.
    pub evaluator_url: String,
    ingest: Option<Running>,
    api: Option<Running>,
    evaluator: Option<Running>,
    notifier: Option<Running>,
}

impl std::ops::Deref for Stack {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Stack {
    /// Starts ingest, API, evaluator and notifier under a new prefix `<tag>-<random>`.
    pub async fn start(tag: &str) -> Self {
        Self::start_tuned(tag, |_| {}).await
    }

    /// [`Stack::start`] with the notifier's configuration adjusted by `tune`
    /// (e.g. a shorter retry schedule).
    pub async fn start_tuned(tag: &str, tune: fn(&mut lifeline_notifier::Config)) -> Self {
        let prefix = format!("{tag}-{}", token::new_id());
        let (ingest_l, ingest_addr) = listener().await;
        let ingest_url = format!("http://{ingest_addr}");
        let ingest = {
            let shutdown = CancellationToken::new();
            let handle = tokio::spawn(lifeline_ingest::run(
                lifeline_ingest::Config::local(&prefix),
                ingest_l,
                shutdown.clone(),
            ));
            Running { shutdown, handle }
        };
        let (api_l, api_addr) = listener().await;
        let api = {
            let shutdown = CancellationToken::new();
            let handle = tokio::spawn(lifeline_api::run(
                lifeline_api::Config::local(&prefix, API_KEY, &ingest_url),
                api_l,
                shutdown.clone(),
            ));
            Running { shutdown, handle }
        };
        let mut stack = Self {
            client: Client::new(&prefix, vec![ingest_url], format!("http://{api_addr}")),
            tune_notifier: tune,
            evaluator_url: String::new(),
            ingest: Some(ingest),
            api: Some(api),
            evaluator: None,
            notifier: None,
        };
        stack.start_evaluator().await;
        stack.start_notifier().await;
        let urls = [
            stack.ingest_url.clone(),
            stack.api_url.clone(),
            stack.evaluator_url.clone(),
        ];
        stack.client.wait_ready(&urls).await;
        stack
    }

    /// Starts an evaluator (again).
    pub async fn start_evaluator(&mut self) {
        assert!(self.evaluator.is_none(), "evaluator already running");
        let (l, addr) = listener().await;
        self.evaluator_url = format!("http://{addr}");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(lifeline_evaluator::run(
            lifeline_evaluator::Config::local(&self.prefix),
            l,
            shutdown.clone(),
        ));
        self.evaluator = Some(Running { shutdown, handle });
    }

    /// Stops the evaluator, letting it finish what it holds.
    pub async fn stop_evaluator(&mut self) {
        self.evaluator
            .take()
            .expect("evaluator running")
            .stop()
            .await;
    }

    /// Starts a notifier.
    pub async fn start_notifier(&mut self) {
        assert!(self.notifier.is_none(), "notifier already running");
        let (l, _) = listener().await;
        let shutdown = CancellationToken::new();
        let mut config = lifeline_notifier::Config::local(&self.prefix);
        (self.tune_notifier)(&mut config);
        let handle = tokio::spawn(lifeline_notifier::run(config, l, shutdown.clone()));
        self.notifier = Some(Running { shutdown, handle });
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for s in [
            self.ingest.take(),
            self.api.take(),
            self.evaluator.take(),
            self.notifier.take(),
        ]
        .into_iter()
        .flatten()
        {
            s.shutdown.cancel();
            s.handle.abort();
        }
        let names = self.names();
        cleanup_blocking(names);
    }
}

/// [`cleanup`] from synchronous code (a `Drop`).
pub fn cleanup_blocking(names: Names) {
    cleanup_blocking_at(names, procs::Brokers::local());
}

/// [`cleanup_at`] from synchronous code.
pub fn cleanup_blocking_at(names: Names, brokers: procs::Brokers) {
    // Drop cannot await: clean up on a thread with its own runtime.
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
        rt.block_on(cleanup_at(names, &brokers));
    })
    .join();
}

/// Every RabbitMQ queue whose name starts with the prefix (via rabbitmqctl).
async fn queues_of(names: &Names) -> Vec<String> {
    let out = tokio::process::Command::new("rabbitmqctl")
        .args(["list_queues", "-q", "--no-table-headers", "name"])
        .output()
        .await;
    let Ok(out) = out else { return Vec::new() };
    let mine = format!("{}.", names.prefix());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|q| q.starts_with(&mine))
        .map(str::to_owned)
        .collect()
}

/// Removes everything a prefix created in the local brokers (best effort).
pub async fn cleanup(names: Names) {
    cleanup_at(names, &procs::Brokers::local()).await;
}

/// Removes everything a prefix created in Redis, NATS and RabbitMQ (best
/// effort, with short time limits: a private broker may be gone already).
pub async fn cleanup_at(names: Names, brokers: &procs::Brokers) {
    let _ = tokio::time::timeout(Duration::from_secs(20), cleanup_inner(names, brokers)).await;
}

async fn cleanup_inner(names: Names, brokers: &procs::Brokers) {
    if let Ok(client) = redis::Client::open(brokers.redis_url.as_str())
        && let Ok(mut conn) = client.get_multiplexed_async_connection().await
    {
        let mut cursor: u64 = 0;
        loop {
            let r: redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(names.redis_pattern())
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await;
            let Ok((next, keys)) = r else { break };
            if !keys.is_empty() {
                let _: redis::RedisResult<()> =
                    redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    if let Ok(Ok(client)) = tokio::time::timeout(
        Duration::from_secs(3),
        async_nats::connect(brokers.nats_url.as_str()),
    )
    .await
    {
        let js = async_nats::jetstream::new(client);
        let _ = js.delete_stream(names.beats_stream()).await;
    }
    if let Ok(conn) =
        lapin::Connection::connect(&brokers.amqp_url, lapin::ConnectionProperties::default()).await
    {
        if let Ok(ch) = conn.create_channel().await {
            let mut queues = queues_of(&names).await;
            queues.extend([
                names.alerts_queue(),
                names.deliveries_queue(),
                names.dead_queue(),
            ]);
            queues.sort();
            queues.dedup();
            for q in queues {
                let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
            }
            let _ = ch
                .exchange_delete(names.alerts_exchange().as_str().into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "cleanup".into()).await;
    }
}

/// One answered webhook request.
#[derive(Clone, Debug)]
pub struct Hit {
    /// `webhook-id` header.
    pub id: Option<String>,
    /// `webhook-timestamp` header.
    pub timestamp: Option<String>,
    /// `webhook-signature` header.
    pub signature: Option<String>,
    /// The raw body.
    pub raw: Vec<u8>,
    /// The body as JSON (`null` if it is not JSON).
    pub body: Value,
}

#[derive(Clone)]
struct ReceiverState {
    hits: Arc<Mutex<Vec<Hit>>>,
    started: Arc<Mutex<Vec<Option<String>>>>,
    hang_first: usize,
    fail_first: usize,
    fail_status: StatusCode,
}

/// A webhook receiver on port 0: records every request; can be told to
/// hang on, or fail, its first requests.
#[derive(Clone)]
pub struct Receiver {
    /// Its URL.
    pub url: String,
    state: ReceiverState,
}

async fn receive(
    State(s): State<ReceiverState>,
    headers: axum::http::HeaderMap,
    raw: axum::body::Bytes,
) -> StatusCode {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let id = header("webhook-id");
    let n = {
        let mut started = s.started.lock().expect("receiver lock");
        started.push(id.clone());
        started.len()
    };
    if n <= s.hang_first {
        std::future::pending::<()>().await;
    }
    if n <= s.hang_first + s.fail_first {
        return s.fail_status;
    }
    s.hits.lock().expect("receiver lock").push(Hit {
        id,
        timestamp: header("webhook-timestamp"),
        signature: header("webhook-signature"),
        body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
        raw: raw.to_vec(),
    });
    StatusCode::OK
}

impl Receiver {
    /// Starts a receiver that answers 200.
    pub async fn start() -> Self {
        Self::start_with(0, 0, StatusCode::OK).await
    }

    /// Starts a receiver whose first `n` requests never get an answer.
    pub async fn start_hanging(n: usize) -> Self {
        Self::start_with(n, 0, StatusCode::OK).await
    }

    /// Starts a receiver that answers `status` to its first `n` requests.
    pub async fn start_failing(n: usize, status: u16) -> Self {
        Self::start_with(0, n, StatusCode::from_u16(status).expect("status")).await
    }

    async fn start_with(hang_first: usize, fail_first: usize, fail_status: StatusCode) -> Self {
        let state = ReceiverState {
            hits: Arc::default(),
            started: Arc::default(),
            hang_first,
            fail_first,
            fail_status,
        };
        let (l, addr) = listener().await;
        let app = Router::new()
            .route("/hook", post(receive))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(l, app).await });
        Self {
            url: format!("http://{addr}/hook"),
            state,
        }
    }

    /// Every request answered 200 so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.state.hits.lock().expect("receiver lock").clone()
    }

    /// Every body answered 200 so far.
    pub fn received(&self) -> Vec<Value> {
        self.hits().into_iter().map(|h| h.body).collect()
    }

    /// The `webhook-id` of every request answered 200.
    pub fn webhook_ids(&self) -> Vec<Option<String>> {
        self.hits().into_iter().map(|h| h.id).collect()
    }

    /// The `webhook-id` of every request begun (answered, failed or hanging).
    pub fn started(&self) -> Vec<Option<String>> {
        self.state.started.lock().expect("receiver lock").clone()
    }

    /// Alerts received with this `event` (e.g. `monitor.down`).
    pub fn events(&self, event: &str) -> Vec<Value> {
        self.received()
            .into_iter()
            .filter(|v| v["event"] == event)
            .collect()
    }

    /// Waits until `n` alerts with `event` were received; returns them.
    pub async fn wait_events(&self, event: &str, n: usize, limit: Duration) -> Vec<Value> {
        let what = format!("{n} {event} alert(s)");
        wait_for(limit, &what, || {
            let got = self.events(event);
            async move { (got.len() >= n).then_some(got) }
        })
        .await
    }
}
