//! Test harness for cross-service flows: the four Lifeline services run
//! in-process on port 0 against the machine's real NATS, Redis and RabbitMQ,
//! under a fresh name prefix per test, and an HTTP [`Client`] for the API
//! and ingest. Everything a stack created (Redis keys, the JetStream
//! stream, RabbitMQ queues) is removed when it is dropped. The plumbing —
//! prefixes and their clean-up, waiting, ports, the webhook receiver — is
//! the test kit's (`lifeline-testkit`).

pub mod procs;

use std::time::Duration;

use lifeline_shared::names::Names;
use lifeline_testkit::{Scope, brokers::NATS_URL, listener, wait_for};
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// API key used by every test stack.
pub const API_KEY: &str = "test-api-key-0123456789abcdef";

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
        let client = async_nats::connect(NATS_URL).await.expect("nats");
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
    /// Removes what the prefix created, after `Drop` stopped the services.
    _scope: Scope,
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
        let scope = Scope::new(tag);
        let prefix = scope.prefix().to_owned();
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
            _scope: scope,
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
    }
}
