//! The management API served on a port-0 listener against the real Redis on
//! 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672, each test under its own
//! prefix, its keys and queues deleted on drop (the test kit's `Scope`).

use std::time::Duration;

use base64::{Engine, engine::general_purpose::STANDARD};
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lifeline_api::Config;
use lifeline_shared::{
    amqp,
    model::{
        AlertEvent, AttemptRecord, BeatRecord, BeatStatus, ChannelKind, DeliveryJob,
        DeliveryOutcome, DeliveryRecord, Reason,
    },
    names::{Names, shard_of},
    state::Input,
    store::Store,
    time::{now_ms, rfc3339},
    token,
};
use lifeline_testkit::{Scope, brokers::AMQP_URL, listener, wait_for};
use redis::AsyncCommands;
use reqwest::Method;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-api-key-0123456789";
const PUBLIC_URL: &str = "http://push.example:8080";

/// A Redis connection of the test's own, to look at keys directly.
async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open("redis://127.0.0.1:6379")
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// One API instance on port 0 with a fresh prefix.
struct TestApp {
    base: String,
    http: reqwest::Client,
    store: Store,
    names: Names,
    shutdown: CancellationToken,
    /// Removes the prefix's keys and queues, after `Drop` stopped the API.
    _scope: Scope,
}

impl TestApp {
    async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let scope = Scope::new("api");
        let mut config = Config::local(scope.prefix(), KEY, &format!("{PUBLIC_URL}/"));
        adjust(&mut config);
        let store = Store::open(
            &config.common.redis_url,
            config.common.names.clone(),
            config.caps,
        )
        .unwrap();
        let names = config.common.names.clone();
        let (listener, addr) = listener().await;
        let base = format!("http://{addr}");
        let shutdown = CancellationToken::new();
        tokio::spawn(lifeline_api::run(config, listener, shutdown.clone()));
        Self {
            base,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .unwrap(),
            store,
            names,
            shutdown,
            _scope: scope,
        }
    }

    /// An authenticated request.
    fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(KEY)
    }

    /// Sends a request; returns the status and the JSON body (`null` if empty).
    async fn send(&self, rb: reqwest::RequestBuilder) -> (u16, Value) {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let bytes = r.bytes().await.unwrap();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("non-JSON body ({e}): {bytes:?}"))
        };
        (status, body)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut rb = self.req(method, path);
        if let Some(body) = body {
            rb = rb.json(&body);
        }
        self.send(rb).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn channel(&self, name: &str) -> String {
        let (s, v) = self
            .post(
                "/api/v1/channels",
                json!({"type": "webhook", "name": name, "url": "http://127.0.0.1:9/hook"}),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    async fn monitor(&self, body: Value) -> Value {
        let (s, v) = self.post("/api/v1/monitors", body).await;
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Applies a beat directly through the store, as the evaluator would.
    async fn beat(&self, id: &str, seq: u64, at: i64, status: BeatStatus, msg: Option<&str>) {
        let b = BeatRecord {
            seq,
            at,
            status,
            msg: msg.map(Into::into),
            msg_truncated: false,
            value: Some(seq as f64),
            late: false,
        };
        lifeline_shared::engine::Engine::new(self.store.clone())
            .apply(id, Input::Beat(&b))
            .await
            .unwrap()
            .expect("monitor exists");
    }
}

/// A stand-in for the notifier: takes delivery jobs off the deliveries queue.
struct Rabbit {
    _conn: lapin::Connection,
    ch: lapin::Channel,
    queue: String,
}

impl Rabbit {
    /// Connects and declares the queues (as the API's publisher would).
    async fn connect(names: &Names) -> Self {
        let conn = amqp::connect(AMQP_URL).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        amqp::declare_alerts(&ch, names).await.unwrap();
        Self {
            _conn: conn,
            ch,
            queue: names.deliveries_queue(),
        }
    }

    /// The next delivery job (JSON), if one is queued (acknowledged).
    async fn try_take(&self) -> Option<Value> {
        let msg = self
            .ch
            .basic_get(self.queue.as_str().into(), BasicGetOptions::default())
            .await
            .unwrap()?;
        msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(serde_json::from_slice(&msg.delivery.data).unwrap())
    }

    /// Waits (at most 10 s) for the next delivery job (JSON).
    async fn take(&self) -> Value {
        wait_for(
            Duration::from_secs(10),
            "a delivery job to be published",
            || self.try_take(),
        )
        .await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn field(v: &Value) -> &str {
    v["field"]
        .as_str()
        .unwrap_or_else(|| panic!("no field in {v}"))
}

#[tokio::test]
async fn requests_without_the_right_key_are_refused() {
    let app = TestApp::spawn().await;
    let url = format!("{}/api/v1/monitors", app.base);

    let r = app.http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(r.json::<Value>().await.unwrap()["error"].is_string());

    for auth in [
        "Bearer wrong-key-0123456789",
        "Basic dGVzdDp0ZXN0",
        &format!("Bearer {KEY}x"),
    ] {
        let r = app
            .http
            .get(&url)
            .header("authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{auth}");
        assert!(r.json::<Value>().await.unwrap()["error"].is_string());
    }
    // Nothing was created by a refused write.
    let r = app
        .http
        .post(&url)
        .json(&json!({"name": "x", "timeout": 60}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(app.store.monitor_ids().await.unwrap().is_empty());

    let (s, v) = app.get("/api/v1/monitors").await;
    assert_eq!(s, 200);
    assert_eq!(v, json!({"monitors": []}));
}

#[tokio::test]
async fn ops_routes_need_no_key_and_unknown_routes_answer_json() {
    let app = TestApp::spawn().await;
    for path in ["/healthz", "/readyz"] {
        let r = app
            .http
            .get(format!("{}{path}", app.base))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(r.json::<Value>().await.unwrap()["ok"], true);
    }
    app.get("/api/v1/channels").await;
    let r = app
        .http
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("lifeline_api_requests_total")
    );

    let (s, v) = app.get("/api/v1/nothing-here").await;
    assert_eq!((s, v), (404, json!({"error": "not found"})));
    let (s, v) = app.call(Method::PUT, "/api/v1/monitors", None).await;
    assert_eq!(s, 405);
    assert!(v["error"].is_string());
}

#[tokio::test]
async fn channels_can_be_created_listed_read_and_deleted() {
    let app = TestApp::spawn().await;
    let (s, c) = app
        .post(
            "/api/v1/channels",
            json!({"type": "webhook", "name": "ops", "url": "https://hooks.example.com/x?y=1"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap().to_owned();
    assert_eq!(c["type"], "webhook");
    assert_eq!(c["name"], "ops");
    assert_eq!(c["url"], "https://hooks.example.com/x?y=1");
    assert!(c["created_at"].as_str().unwrap().ends_with('Z'));
    assert!(c["secret"].is_string());

    let second = app.channel("second").await;
    let (s, list) = app.get("/api/v1/channels").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = list["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&id.as_str()) && ids.contains(&second.as_str()));

    // Read back: the same, without the secret.
    let (s, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    let mut shown = c.clone();
    shown.as_object_mut().unwrap().remove("secret");
    assert_eq!((s, &got), (200, &shown));

    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{id}"), None)
        .await;
    assert_eq!((s, v), (204, Value::Null));
    let (s, v) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!((s, v), (404, json!({"error": "channel not found"})));
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn email_and_slack_channels_show_their_destination() {
    let app = TestApp::spawn().await;
    let (s, e) = app
        .post(
            "/api/v1/channels",
            json!({"type": "email", "name": "oncall",
                   "to": ["ops@example.com", "dev+alerts@example.co.uk", "ops@example.com"]}),
        )
        .await;
    assert_eq!(s, 201, "{e}");
    assert_eq!(e["type"], "email");
    assert_eq!(e["name"], "oncall");
    assert_eq!(
        e["to"],
        json!(["ops@example.com", "dev+alerts@example.co.uk"])
    );
    for absent in ["url", "secret", "secret_hint"] {
        assert!(e.get(absent).is_none(), "{absent}: {e}");
    }
    let id = e["id"].as_str().unwrap();
    let (s, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!((s, &got), (200, &e));
    assert_eq!(
        app.store.channel(id).await.unwrap().unwrap().kind,
        ChannelKind::Email {
            to: vec!["ops@example.com".into(), "dev+alerts@example.co.uk".into()]
        }
    );

    let hook = "https://hooks.slack.com/services/T000/B000/XXXXXXXXXXXXXXXX";
    let (s, sl) = app
        .post(
            "/api/v1/channels",
            json!({"type": "slack", "name": "#ops", "url": hook}),
        )
        .await;
    assert_eq!(s, 201, "{sl}");
    assert_eq!(sl["type"], "slack");
    assert_eq!(sl["name"], "#ops");
    // The part of the URL that authorises posting is never shown.
    assert_eq!(sl["url"], "https://hooks.slack.com/services/T000…");
    for absent in ["to", "secret", "secret_hint"] {
        assert!(sl.get(absent).is_none(), "{absent}: {sl}");
    }
    let id = sl["id"].as_str().unwrap();
    let (s, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!((s, &got), (200, &sl));
    let (_, list) = app.get("/api/v1/channels").await;
    assert!(!list.to_string().contains("XXXXXXXX"), "{list}");
    assert_eq!(
        app.store.channel(id).await.unwrap().unwrap().kind,
        ChannelKind::Slack { url: hook.into() }
    );

    // Any http(s) receiver will do (tests use a local one).
    let (s, v) = app
        .post(
            "/api/v1/channels",
            json!({"type": "slack", "name": "local", "url": "http://127.0.0.1:9000/slack"}),
        )
        .await;
    assert_eq!((s, &v["url"]), (201, &json!("http://127.0.0.1:9000/slack")));
}

#[tokio::test]
async fn a_webhook_secret_is_shown_once_and_can_be_rotated() {
    let app = TestApp::spawn().await;
    let (s, c) = app
        .post(
            "/api/v1/channels",
            json!({"type": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let id = c["id"].as_str().unwrap();
    let secret = c["secret"].as_str().unwrap().to_owned();
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").expect("whsec_ prefix"))
        .unwrap();
    assert_eq!(key.len(), 24);
    assert_eq!(c["secret_hint"], format!("{}…", &secret[..10]));
    let stored = |kind: ChannelKind| match kind {
        ChannelKind::Webhook { secret, .. } => secret,
        other => panic!("not a webhook: {}", other.label()),
    };
    assert_eq!(
        stored(app.store.channel(id).await.unwrap().unwrap().kind),
        secret
    );
    // Another channel gets another secret.
    let (_, other) = app
        .post(
            "/api/v1/channels",
            json!({"type": "webhook", "name": "b", "url": "http://127.0.0.1:9/b"}),
        )
        .await;
    assert_ne!(other["secret"], c["secret"]);

    let (s, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!(s, 200);
    assert!(got.get("secret").is_none(), "{got}");
    assert_eq!(got["secret_hint"], c["secret_hint"]);
    let (_, list) = app.get("/api/v1/channels").await;
    for text in [got.to_string(), list.to_string()] {
        assert!(!text.contains(&secret[10..]), "{text}");
    }

    let path = format!("/api/v1/channels/{id}/secret");
    let (s, r) = app.post(&path, json!({})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["id"], id);
    let rotated = r["secret"].as_str().unwrap().to_owned();
    assert!(rotated.starts_with("whsec_"));
    assert_ne!(rotated, secret);
    let ch = app.store.channel(id).await.unwrap().unwrap();
    assert_eq!(ch.name, "ops");
    assert!(
        matches!(&ch.kind, ChannelKind::Webhook { url, .. } if url == "http://127.0.0.1:9/hook")
    );
    assert_eq!(stored(ch.kind), rotated);
    let (_, got) = app.get(&format!("/api/v1/channels/{id}")).await;
    assert_eq!(got["secret_hint"], format!("{}…", &rotated[..10]));
    assert!(got.get("secret").is_none());
    assert!(!got.to_string().contains(&rotated[10..]));
    // Rotation needs no body.
    let (s, again) = app.send(app.req(Method::POST, &path)).await;
    assert_eq!(s, 200, "{again}");
    assert_ne!(again["secret"], r["secret"]);

    // Only webhooks have secrets.
    let (_, e) = app
        .post(
            "/api/v1/channels",
            json!({"type": "email", "name": "m", "to": ["ops@example.com"]}),
        )
        .await;
    let (s, v) = app
        .post(
            &format!("/api/v1/channels/{}/secret", e["id"].as_str().unwrap()),
            json!({}),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    assert_eq!(field(&v), "type");
    let (s, v) = app
        .post("/api/v1/channels/doesnotexist/secret", json!({}))
        .await;
    assert_eq!((s, v), (404, json!({"error": "channel not found"})));
}

#[tokio::test]
async fn bad_channels_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, name) in [
        (json!({"type": "pager", "name": "a"}), "type"),
        (json!({"type": 1, "name": "a"}), "type"),
        (json!({"name": "a", "url": "http://x"}), "type"),
        (
            json!({"type": "webhook", "name": "", "url": "http://x"}),
            "name",
        ),
        (
            json!({"type": "webhook", "name": "a".repeat(201), "url": "http://x"}),
            "name",
        ),
        (
            json!({"type": "webhook", "name": "a", "url": "ftp://x"}),
            "url",
        ),
        (
            json!({"type": "webhook", "name": "a", "url": "http://"}),
            "url",
        ),
        (json!({"type": "webhook", "name": "a"}), "url"),
        (
            json!({"type": "webhook", "name": "a", "url": "http://x", "secret": 1}),
            "secret",
        ),
        (
            json!({"type": "webhook", "name": "a", "url": "http://x", "to": ["a@example.com"]}),
            "to",
        ),
        (json!({"type": "email", "name": "a"}), "to"),
        (
            json!({"type": "email", "name": "a", "to": "ops@example.com"}),
            "to",
        ),
        (json!({"type": "email", "name": "a", "to": []}), "to"),
        (
            json!({"type": "email", "name": "a", "to": ["ops@example.com", "not-an-address"]}),
            "to",
        ),
        (
            json!({"type": "email", "name": "a", "to": ["Ops <ops@example.com>"]}),
            "to",
        ),
        (
            json!({"type": "email", "name": "a", "to": ["ops@example.com\r\nBcc: x@evil.example"]}),
            "to",
        ),
        (
            json!({"type": "email", "name": "a", "to": ["ops@example.com"], "url": "http://x"}),
            "url",
        ),
        (
            json!({"type": "email", "name": "", "to": ["ops@example.com"]}),
            "name",
        ),
        (json!({"type": "slack", "name": "a"}), "url"),
        (
            json!({"type": "slack", "name": "a", "url": "hooks.slack.com/services/x"}),
            "url",
        ),
        (
            json!({"type": "slack", "name": "a", "url": "https://hooks.slack.com/x", "to": []}),
            "to",
        ),
    ] {
        let (s, v) = app.post("/api/v1/channels", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
        assert!(v["error"].is_string(), "{body}: {v}");
    }
    // The bad address is named.
    let (_, v) = app
        .post(
            "/api/v1/channels",
            json!({"type": "email", "name": "a", "to": ["ok@example.com", "Ops <ops@example.com>"]}),
        )
        .await;
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("\"Ops <ops@example.com>\""),
        "{v}"
    );
    let many: Vec<String> = (0..21).map(|i| format!("u{i}@example.com")).collect();
    let (s, v) = app
        .post(
            "/api/v1/channels",
            json!({"type": "email", "name": "a", "to": many}),
        )
        .await;
    assert_eq!((s, field(&v)), (422, "to"), "{v}");
    for raw in ["{oops", "", "[1]"] {
        let rb = app
            .req(Method::POST, "/api/v1/channels")
            .header("content-type", "application/json")
            .body(raw);
        let (s, v) = app.send(rb).await;
        assert_eq!(s, 400, "{raw:?}: {v}");
    }
    assert!(app.store.channels().await.unwrap().is_empty());
}

#[tokio::test]
async fn a_channel_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "a", "timeout": 60, "channels": [ch]}))
        .await;
    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{ch}"), None)
        .await;
    assert_eq!(s, 409, "{v}");
    assert_eq!(v["monitors"], json!([m["id"]]));
    assert!(v["error"].is_string());

    let (s, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/monitors/{}", m["id"].as_str().unwrap()),
            Some(json!({"channels": []})),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/channels/{ch}"), None)
        .await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn creating_a_monitor_returns_its_token_once() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "nightly-backup", "timeout": 3600, "channels": [ch, ch]}))
        .await;
    let id = m["id"].as_str().unwrap();
    let tok = m["token"].as_str().unwrap();
    assert_eq!(tok.len(), token::TOKEN_LEN);
    assert_eq!(m["push_url"], format!("{PUBLIC_URL}/api/push/{tok}"));
    assert_eq!(m["status"], "new");
    assert_eq!(m["name"], "nightly-backup");
    assert_eq!(
        (m["timeout"].as_u64(), m["interval"].as_u64()),
        (Some(3600), Some(3600))
    );
    assert_eq!(m["channels"], json!([ch]));
    assert_eq!(m["last_beat_at"], Value::Null);
    assert_eq!(m["deadline"], Value::Null);
    assert!(m["created_at"].is_string());
    assert_eq!(m["token_hint"], token::hint(tok));

    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(tok))
            .await
            .unwrap()
            .as_deref(),
        Some(id)
    );

    let (s, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(s, 200);
    assert!(
        got.get("token").is_none() && got.get("push_url").is_none(),
        "{got}"
    );
    assert!(!got.to_string().contains(tok));
    for key in [
        "id",
        "name",
        "status",
        "timeout",
        "interval",
        "channels",
        "created_at",
        "last_beat_at",
        "deadline",
        "status_since",
        "token_hint",
    ] {
        assert_eq!(got[key], m[key], "{key}");
    }

    tokio::time::sleep(Duration::from_millis(3)).await;
    let second = app
        .monitor(json!({"name": "b", "timeout": 60, "interval": 30}))
        .await;
    assert_eq!(second["interval"], 30);
    assert_eq!(second["channels"], json!([]));
    let (_, list) = app.get("/api/v1/monitors").await;
    let ids: Vec<&Value> = list["monitors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| &m["id"])
        .collect();
    assert_eq!(ids, [&m["id"], &second["id"]]);
    assert!(!list.to_string().contains(tok));
}

#[tokio::test]
async fn bad_monitor_bodies_are_refused_naming_the_field() {
    let app = TestApp::spawn().await;
    for (body, name) in [
        (json!({"name": "a", "timeout": 0}), "timeout"),
        (json!({"name": "a", "timeout": 2_678_401}), "timeout"),
        (json!({"name": "a", "timeout": "60"}), "timeout"),
        (json!({"name": "a", "timeout": 1.5}), "timeout"),
        (json!({"name": "a"}), "timeout"),
        (json!({"name": "", "timeout": 60}), "name"),
        (json!({"name": "   ", "timeout": 60}), "name"),
        (json!({"name": 5, "timeout": 60}), "name"),
        (json!({"timeout": 60}), "name"),
        (
            json!({"name": "a", "timeout": 60, "interval": 0}),
            "interval",
        ),
        (
            json!({"name": "a", "timeout": 60, "channels": ["nope"]}),
            "channels",
        ),
        (
            json!({"name": "a", "timeout": 60, "channels": "nope"}),
            "channels",
        ),
        (
            json!({"name": "a", "timeout": 60, "colour": "red"}),
            "colour",
        ),
    ] {
        let (s, v) = app.post("/api/v1/monitors", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(name), "{body}: {v}");
    }
    let (_, v) = app
        .post(
            "/api/v1/monitors",
            json!({"name": "a", "timeout": 60, "channels": ["nope"]}),
        )
        .await;
    assert!(v["error"].as_str().unwrap().contains("nope"), "{v}");

    for raw in ["{oops", "", "[1, 2]", "\"text\"", "null"] {
        let rb = app
            .req(Method::POST, "/api/v1/monitors")
            .header("content-type", "application/json")
            .body(raw);
        let (s, v) = app.send(rb).await;
        assert_eq!(s, 400, "{raw:?}: {v}");
        assert!(v["error"].is_string());
    }
    let (s, v) = app
        .send(
            app.req(Method::POST, "/api/v1/monitors")
                .body(format!("{{\"name\":\"{}\"}}", "x".repeat(100_000))),
        )
        .await;
    assert_eq!(s, 413, "{v}");

    assert!(app.store.monitor_ids().await.unwrap().is_empty());
}

#[tokio::test]
async fn unknown_ids_answer_404() {
    let app = TestApp::spawn().await;
    for (method, path) in [
        (Method::GET, "/api/v1/monitors/doesnotexist"),
        (Method::DELETE, "/api/v1/monitors/doesnotexist"),
        (Method::POST, "/api/v1/monitors/doesnotexist/pause"),
        (Method::POST, "/api/v1/monitors/doesnotexist/resume"),
        (Method::POST, "/api/v1/monitors/doesnotexist/token"),
        (Method::GET, "/api/v1/monitors/doesnotexist/beats"),
        (Method::GET, "/api/v1/monitors/doesnotexist/events"),
        (Method::GET, "/api/v1/monitors/not%20an%20id"),
    ] {
        let (s, v) = app.call(method.clone(), path, None).await;
        assert_eq!(
            (s, v),
            (404, json!({"error": "monitor not found"})),
            "{method} {path}"
        );
    }
    let (s, v) = app
        .call(
            Method::PATCH,
            "/api/v1/monitors/doesnotexist",
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!((s, v), (404, json!({"error": "monitor not found"})));
    for (method, path) in [
        (Method::GET, "/api/v1/channels/doesnotexist"),
        (Method::DELETE, "/api/v1/channels/doesnotexist"),
        (Method::POST, "/api/v1/channels/doesnotexist/secret"),
        (Method::POST, "/api/v1/channels/doesnotexist/test"),
        (Method::POST, "/api/v1/channels/not%20an%20id/test"),
    ] {
        let (s, v) = app.call(method.clone(), path, None).await;
        assert_eq!(
            (s, v),
            (404, json!({"error": "channel not found"})),
            "{method} {path}"
        );
    }
    for path in [
        "/api/v1/alerts/doesnotexist.1",
        "/api/v1/alerts/test.doesnotexist",
        "/api/v1/alerts/garbage",
    ] {
        let (s, v) = app.get(path).await;
        assert_eq!((s, v), (404, json!({"error": "alert not found"})), "{path}");
    }
}

#[tokio::test]
async fn pause_and_resume_change_the_status() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();

    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("paused")), "{v}");
    // Pausing twice is harmless.
    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!((s, &v["status"]), (200, &json!("paused")));
    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/resume"), json!({}))
        .await;
    assert_eq!(
        (s, &v["status"]),
        (200, &json!("new")),
        "never beaten: new again"
    );

    let t = now_ms();
    app.beat(id, 1, t, BeatStatus::Up, None).await;
    let (_, v) = app
        .post(&format!("/api/v1/monitors/{id}/pause"), json!({}))
        .await;
    assert_eq!(v["status"], "paused");
    assert_eq!(v["deadline"], Value::Null);
    assert!(
        app.store
            .due_all(i64::MAX, 10)
            .await
            .unwrap()
            .iter()
            .all(|(d, _)| d != id),
        "a paused monitor has no deadline"
    );
    let before = now_ms();
    let (_, v) = app
        .post(&format!("/api/v1/monitors/{id}/resume"), json!({}))
        .await;
    assert_eq!(v["status"], "up");
    let deadline = v["deadline"].as_str().unwrap();
    assert!(deadline >= rfc3339(before + 60_000).as_str(), "{deadline}");
    let (_, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(got["status"], "up");
}

#[tokio::test]
async fn rotating_the_token_revokes_the_old_one() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let old = m["token"].as_str().unwrap();

    let (s, v) = app
        .post(&format!("/api/v1/monitors/{id}/token"), json!({}))
        .await;
    assert_eq!(s, 200, "{v}");
    let new = v["token"].as_str().unwrap();
    assert_ne!(new, old);
    assert_eq!(v["id"], id);
    assert_eq!(v["push_url"], format!("{PUBLIC_URL}/api/push/{new}"));

    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(old))
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(new))
            .await
            .unwrap()
            .as_deref(),
        Some(id)
    );
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.token_hash, token::hash(new));
    let (_, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(got["token_hint"], token::hint(new));
    assert_eq!(got["name"], "a");
}

#[tokio::test]
async fn patching_the_timeout_moves_the_deadline() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 3600})).await;
    let id = m["id"].as_str().unwrap();
    let t = now_ms();
    app.beat(id, 1, t, BeatStatus::Up, None).await;
    let (_, v) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(v["status"], "up");
    assert_eq!(v["deadline"], rfc3339(t + 3_600_000));
    assert_eq!(v["last_beat_at"], rfc3339(t));

    let path = format!("/api/v1/monitors/{id}");
    let (s, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"timeout": 60, "name": "renamed"})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["timeout"], 60);
    assert_eq!(v["interval"], 3600, "interval is kept");
    assert_eq!(v["name"], "renamed");
    assert_eq!(v["status"], "up");
    assert_eq!(v["deadline"], rfc3339(t + 60_000));
    // The deadline index moved in the same write.
    let score: Option<i64> = redis()
        .await
        .zscore(app.store.keys().deadlines(shard_of(id)), id)
        .await
        .unwrap();
    assert_eq!(score, Some(t + 60_000));

    let ch = app.channel("ops").await;
    let (s, v) = app
        .call(
            Method::PATCH,
            &path,
            Some(json!({"channels": [ch, ch], "interval": 30})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((&v["channels"], &v["interval"]), (&json!([ch]), &json!(30)));
    assert_eq!(v["deadline"], rfc3339(t + 60_000));
    let (s, same) = app.call(Method::PATCH, &path, Some(json!({}))).await;
    assert_eq!((s, &same), (200, &v));

    for (body, name) in [
        (json!({"timeout": 0}), "timeout"),
        (json!({"timeout": null}), "timeout"),
        (json!({"name": ""}), "name"),
        (json!({"channels": ["nope"]}), "channels"),
        (json!({"token_hash": "x"}), "token_hash"),
    ] {
        let (s, v) = app.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
    }
    let (s, _) = app.send(app.req(Method::PATCH, &path).body("{oops")).await;
    assert_eq!(s, 400);
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.timeout, 60);
    assert_eq!(
        stored.cfg.token_hash,
        token::hash(m["token"].as_str().unwrap())
    );
}

#[tokio::test]
async fn reminders_and_confirm_are_validated_shown_and_applied() {
    let app = TestApp::spawn().await;
    // Defaults: no reminders, the first missed deadline alerts.
    let m = app.monitor(json!({"name": "plain", "timeout": 60})).await;
    assert_eq!(
        (&m["remind_every"], &m["confirm"]),
        (&Value::Null, &json!(1))
    );
    assert_eq!(
        (&m["misses"], &m["next_reminder_at"]),
        (&json!(0), &Value::Null)
    );
    let m = app
        .monitor(json!({"name": "nulls", "timeout": 60, "remind_every": null, "confirm": null}))
        .await;
    assert_eq!(
        (&m["remind_every"], &m["confirm"]),
        (&Value::Null, &json!(1))
    );

    let m = app
        .monitor(json!({"name": "a", "timeout": 60, "remind_every": 600, "confirm": 3}))
        .await;
    let id = m["id"].as_str().unwrap();
    assert_eq!(
        (&m["remind_every"], &m["confirm"]),
        (&json!(600), &json!(3))
    );
    let (_, got) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(
        (&got["remind_every"], &got["confirm"]),
        (&json!(600), &json!(3))
    );
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.cfg.remind_every, stored.cfg.confirm),
        (Some(600), 3)
    );

    let before = app.store.monitor_ids().await.unwrap().len();
    for (extra, name) in [
        (json!({"remind_every": 0}), "remind_every"),
        (json!({"remind_every": 2_678_401}), "remind_every"),
        (json!({"remind_every": -60}), "remind_every"),
        (json!({"remind_every": 1.5}), "remind_every"),
        (json!({"remind_every": "60"}), "remind_every"),
        (json!({"remind_every": false}), "remind_every"),
        (json!({"confirm": 0}), "confirm"),
        (json!({"confirm": 11}), "confirm"),
        (json!({"confirm": -2}), "confirm"),
        (json!({"confirm": 2.5}), "confirm"),
        (json!({"confirm": "2"}), "confirm"),
    ] {
        let mut body = json!({"name": "x", "timeout": 60});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let (s, v) = app.post("/api/v1/monitors", body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains(name), "{body}: {v}");
    }
    assert_eq!(app.store.monitor_ids().await.unwrap().len(), before);

    // PATCH: each alone, other settings kept; bad values refused by name.
    let path = format!("/api/v1/monitors/{id}");
    let (s, v) = app
        .call(Method::PATCH, &path, Some(json!({"confirm": 10})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["remind_every"], &v["confirm"]),
        (&json!(600), &json!(10))
    );
    for (body, name) in [
        (json!({"confirm": null}), "confirm"),
        (json!({"confirm": 0}), "confirm"),
        (json!({"confirm": 11}), "confirm"),
        (json!({"remind_every": 0}), "remind_every"),
        (json!({"remind_every": "off"}), "remind_every"),
        (json!({"remind_every": 2_678_401}), "remind_every"),
    ] {
        let (s, v) = app.call(Method::PATCH, &path, Some(body.clone())).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert_eq!(field(&v), name, "{body}: {v}");
    }
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(
        (stored.cfg.remind_every, stored.cfg.confirm),
        (Some(600), 10)
    );

    // Down (reported): the next reminder is shown and indexed, no deadline.
    let t = now_ms();
    app.beat(id, 1, t, BeatStatus::Down, Some("failed")).await;
    let (_, v) = app.get(&path).await;
    assert_eq!(v["status"], "down");
    assert_eq!(v["deadline"], Value::Null);
    assert_eq!(v["next_reminder_at"], rfc3339(t + 600_000));
    let score = |app: &TestApp| {
        let key = app.store.keys().deadlines(shard_of(id));
        async move {
            let s: Option<i64> = redis().await.zscore(key, id).await.unwrap();
            s
        }
    };
    assert_eq!(score(&app).await, Some(t + 600_000));
    // Reminders off: nothing scheduled any more.
    let (s, v) = app
        .call(Method::PATCH, &path, Some(json!({"remind_every": null})))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (&v["remind_every"], &v["next_reminder_at"]),
        (&Value::Null, &Value::Null)
    );
    assert_eq!(score(&app).await, None);
    // On again, every minute: the first one a minute from now at the latest.
    let before = now_ms();
    let (_, v) = app
        .call(Method::PATCH, &path, Some(json!({"remind_every": 60})))
        .await;
    assert_eq!(v["remind_every"], 60);
    let next = score(&app).await.expect("a reminder is scheduled");
    assert!(
        (before + 60_000..=now_ms() + 60_000).contains(&next),
        "{next}"
    );
    assert_eq!(v["next_reminder_at"], rfc3339(next));

    // Confirm: a missed deadline short of the count shows as a miss.
    let m = app
        .monitor(json!({"name": "c", "timeout": 60, "confirm": 2}))
        .await;
    let id = m["id"].as_str().unwrap();
    let t0 = now_ms() - 90_000;
    app.beat(id, 1, t0, BeatStatus::Up, None).await;
    let ticked = lifeline_shared::engine::Engine::new(app.store.clone())
        .apply(id, Input::Tick { now: now_ms() })
        .await
        .unwrap()
        .unwrap();
    assert!(ticked.jobs.is_empty());
    let (_, v) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!((&v["status"], &v["misses"]), (&json!("up"), &json!(1)));
    assert_eq!(v["deadline"], rfc3339(t0 + 120_000));
}

#[tokio::test]
async fn history_is_newest_first_with_deliveries() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let m = app
        .monitor(json!({"name": "a", "timeout": 60, "channels": [ch]}))
        .await;
    let id = m["id"].as_str().unwrap();
    let t = now_ms() - 10_000;
    app.beat(id, 10, t, BeatStatus::Up, Some("first")).await;
    app.beat(id, 11, t + 1000, BeatStatus::Up, None).await;
    app.beat(id, 12, t + 2000, BeatStatus::Down, Some("backup-failed"))
        .await;
    // A late beat: older than the newest, appended at the tail of the history.
    app.beat(id, 5, t + 500, BeatStatus::Up, Some("late")).await;

    let (s, v) = app.get(&format!("/api/v1/monitors/{id}/beats")).await;
    assert_eq!(s, 200);
    let beats = v["beats"].as_array().unwrap();
    let ats: Vec<&str> = beats.iter().map(|b| b["at"].as_str().unwrap()).collect();
    assert_eq!(
        ats,
        [
            rfc3339(t + 2000),
            rfc3339(t + 1000),
            rfc3339(t + 500),
            rfc3339(t)
        ]
    );
    assert_eq!(beats[0]["status"], "down");
    assert_eq!(beats[0]["msg"], "backup-failed");
    assert_eq!(beats[0]["value"], 12.0);
    assert_eq!(beats[0]["late"], false);
    assert_eq!(beats[0]["msg_truncated"], false);
    assert_eq!(beats[1]["msg"], Value::Null);
    assert_eq!(
        (&beats[2]["msg"], &beats[2]["late"]),
        (&json!("late"), &json!(true))
    );

    let (_, v) = app
        .get(&format!("/api/v1/monitors/{id}/beats?limit=2"))
        .await;
    assert_eq!(v["beats"].as_array().unwrap().len(), 2);
    assert_eq!(v["beats"][0]["at"], rfc3339(t + 2000));
    for bad in ["0", "1001", "abc", "-1"] {
        let (s, v) = app
            .get(&format!("/api/v1/monitors/{id}/beats?limit={bad}"))
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert_eq!(field(&v), "limit");
    }

    let alert_id = format!("{id}.2");
    let rec = DeliveryRecord {
        outcome: DeliveryOutcome::Succeeded,
        attempts: 2,
        at: t + 3000,
        http_status: Some(200),
        error: None,
        next_retry_at: None,
    };
    app.store.put_delivery(&alert_id, &ch, &rec).await.unwrap();
    let first = AttemptRecord {
        at: t + 2100,
        channel_id: ch.clone().into(),
        channel_type: "webhook".into(),
        attempt: 1,
        outcome: DeliveryOutcome::Retrying,
        http_status: Some(503),
        smtp_reply: None,
        error: Some("HTTP 503".into()),
        next_retry_at: Some(t + 3000),
        duration_ms: 12,
    };
    let second = AttemptRecord {
        at: t + 3000,
        attempt: 2,
        outcome: DeliveryOutcome::Succeeded,
        http_status: Some(200),
        error: None,
        next_retry_at: None,
        duration_ms: 8,
        ..first.clone()
    };
    for a in [&first, &second] {
        app.store.append_attempt(&alert_id, a).await.unwrap();
    }

    let (s, v) = app.get(&format!("/api/v1/monitors/{id}/events")).await;
    assert_eq!(s, 200, "{v}");
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 2, "{v}");
    assert_eq!(events[0]["reason"], "reported");
    assert_eq!(
        (&events[0]["from"], &events[0]["to"]),
        (&json!("up"), &json!("down"))
    );
    assert_eq!(events[0]["msg"], "backup-failed");
    assert_eq!(events[0]["alert_id"], alert_id);
    assert_eq!(
        events[0]["deliveries"],
        json!([{
            "channel_id": ch, "outcome": "succeeded", "attempts": 2,
            "at": rfc3339(t + 3000), "http_status": 200, "error": null,
            "next_retry_at": null,
        }])
    );
    assert_eq!(
        events[0]["attempts"],
        json!([
            {
                "at": rfc3339(t + 2100), "channel_id": ch, "channel_type": "webhook",
                "attempt": 1, "outcome": "retrying", "http_status": 503, "smtp_reply": null,
                "error": "HTTP 503", "next_retry_at": rfc3339(t + 3000), "duration_ms": 12,
            },
            {
                "at": rfc3339(t + 3000), "channel_id": ch, "channel_type": "webhook",
                "attempt": 2, "outcome": "succeeded", "http_status": 200, "smtp_reply": null,
                "error": null, "next_retry_at": null, "duration_ms": 8,
            },
        ])
    );
    assert_eq!(events[1]["reason"], "first_beat");
    assert_eq!(events[1]["alert_id"], Value::Null);
    assert_eq!(events[1]["deliveries"], json!([]));
    assert_eq!(events[1]["attempts"], json!([]));
    let (_, one) = app
        .get(&format!("/api/v1/monitors/{id}/events?limit=1"))
        .await;
    assert_eq!(one["events"].as_array().unwrap().len(), 1);

    let (s, v) = app.get(&format!("/api/v1/alerts/{alert_id}")).await;
    assert_eq!(s, 200);
    assert_eq!(v["alert_id"], alert_id);
    assert_eq!(v["deliveries"], events[0]["deliveries"]);
    assert_eq!(v["attempts"], events[0]["attempts"]);
    let (s, _) = app.get(&format!("/api/v1/alerts/{id}.99")).await;
    assert_eq!(s, 404);

    // An alert whose first attempt is logged but not yet recorded per channel.
    let pending = format!("{id}.3");
    app.store.append_attempt(&pending, &first).await.unwrap();
    let (s, v) = app.get(&format!("/api/v1/alerts/{pending}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["deliveries"], json!([]));
    assert_eq!(v["attempts"][0]["outcome"], "retrying");
}

#[tokio::test]
async fn deleting_a_monitor_removes_it_and_its_token() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let tok = m["token"].as_str().unwrap();
    app.beat(id, 1, now_ms(), BeatStatus::Up, None).await;

    let (s, v) = app
        .call(Method::DELETE, &format!("/api/v1/monitors/{id}"), None)
        .await;
    assert_eq!((s, v), (204, Value::Null));
    let (s, _) = app.get(&format!("/api/v1/monitors/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(
        app.store
            .monitor_for_token(&token::hash(tok))
            .await
            .unwrap(),
        None
    );
    assert!(app.store.monitor_ids().await.unwrap().is_empty());
    assert!(app.store.beats(id, 10).await.unwrap().is_empty());
    let score: Option<i64> = redis()
        .await
        .zscore(app.store.keys().deadlines(shard_of(id)), id)
        .await
        .unwrap();
    assert_eq!(score, None);
    let (s, _) = app
        .call(Method::DELETE, &format!("/api/v1/monitors/{id}"), None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn unreachable_redis_answers_503() {
    let app = TestApp::spawn_with(|c| c.common.redis_url = "redis://127.0.0.1:1".into()).await;
    let (s, v) = app.get("/api/v1/monitors").await;
    assert_eq!((s, v), (503, json!({"error": "storage unavailable"})));
    let (s, v) = app
        .post("/api/v1/monitors", json!({"name": "a", "timeout": 60}))
        .await;
    assert_eq!((s, v), (503, json!({"error": "storage unavailable"})));
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let r = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The key is still checked first.
    let r = app
        .http
        .get(format!("{}/api/v1/monitors", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_racing_edits_leave_exactly_one_live_token() {
    let app = TestApp::spawn().await;
    let m = app.monitor(json!({"name": "a", "timeout": 60})).await;
    let id = m["id"].as_str().unwrap();
    let path = format!("/api/v1/monitors/{id}");
    let token_path = format!("{path}/token");
    let mut last = String::new();
    for i in 0..15 {
        let rotate = app.post(&token_path, json!({}));
        let edit = app.call(
            Method::PATCH,
            &path,
            Some(json!({"name": format!("n{i}"), "timeout": 60 + i})),
        );
        let ((rs, rv), (es, ev)) = tokio::join!(rotate, edit);
        assert_eq!((rs, es), (200, 200), "{rv} {ev}");
        last = rv["token"].as_str().unwrap().to_owned();
    }
    let stored = app.store.monitor(id).await.unwrap().unwrap();
    assert_eq!(stored.cfg.token_hash, token::hash(&last));
    assert_eq!(stored.cfg.name, "n14");
    let live: Vec<String> = redis()
        .await
        .keys(app.store.keys().token("*"))
        .await
        .unwrap();
    assert_eq!(live, [app.store.keys().token(&token::hash(&last))]);
}

/// The job a test alert publishes, checked field by field.
fn assert_is_test_job(raw: &Value, channel_id: &str) -> DeliveryJob {
    assert_eq!(raw["test"], true, "{raw}");
    assert_eq!(raw["alert"]["event"], "test", "{raw}");
    assert_eq!(raw["alert"]["reason"], "test", "{raw}");
    let job: DeliveryJob = serde_json::from_value(raw.clone()).unwrap();
    assert!(job.test);
    assert_eq!(job.attempt, 0);
    assert_eq!(job.channel_id, channel_id);
    assert_eq!(job.alert.event, AlertEvent::Test);
    assert_eq!(job.alert.reason, Reason::Test);
    assert_eq!(job.alert.channels, [channel_id]);
    assert_eq!(
        (
            job.alert.monitor.id.as_str(),
            job.alert.monitor.name.as_str()
        ),
        ("test", "Lifeline test alert")
    );
    assert_eq!(
        job.alert.msg.as_deref(),
        Some("This is a test alert from Lifeline.")
    );
    assert!(job.alert.alert_id.starts_with("test."), "{raw}");
    assert_eq!(
        job.delivery_id,
        format!("msg_{}_{channel_id}", job.alert.alert_id)
    );
    job
}

#[tokio::test]
async fn a_test_alert_is_queued_for_a_notifier_and_answers_its_outcome() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let rabbit = Rabbit::connect(&app.names).await;

    // A refused request publishes nothing.
    let (s, _) = app
        .post("/api/v1/channels/doesnotexist/test", json!({}))
        .await;
    assert_eq!(s, 404);
    assert!(rabbit.try_take().await.is_none());

    // The test stands in for the notifier: one attempt, then the record.
    let notifier = async {
        let job = assert_is_test_job(&rabbit.take().await, &ch);
        let alert_id = &job.alert.alert_id;
        let at = now_ms();
        let attempt = AttemptRecord {
            at,
            channel_id: ch.clone().into(),
            channel_type: "webhook".into(),
            attempt: 1,
            outcome: DeliveryOutcome::Succeeded,
            http_status: Some(204),
            smtp_reply: None,
            error: None,
            next_retry_at: None,
            duration_ms: 7,
        };
        app.store.append_attempt(alert_id, &attempt).await.unwrap();
        let record = DeliveryRecord {
            outcome: DeliveryOutcome::Succeeded,
            attempts: 1,
            at,
            http_status: Some(204),
            error: None,
            next_retry_at: None,
        };
        app.store
            .put_delivery(alert_id, &ch, &record)
            .await
            .unwrap();
        (job, at)
    };
    let path = format!("/api/v1/channels/{ch}/test");
    let ((s, v), (job, at)) = tokio::join!(app.post(&path, json!({})), notifier);
    assert_eq!(s, 200, "{v}");
    let alert_id = job.alert.alert_id;
    assert_eq!(
        v,
        json!({
            "alert_id": alert_id, "channel_id": ch, "outcome": "succeeded",
            "http_status": 204, "smtp_reply": null, "error": null,
            "attempts": [{
                "at": rfc3339(at), "channel_id": ch, "channel_type": "webhook",
                "attempt": 1, "outcome": "succeeded", "http_status": 204,
                "smtp_reply": null, "error": null, "next_retry_at": null, "duration_ms": 7,
            }],
        })
    );
    // Exactly one job was published.
    assert!(rabbit.try_take().await.is_none());

    // The delivery log keeps it.
    let (s, log) = app.get(&format!("/api/v1/alerts/{alert_id}")).await;
    assert_eq!(s, 200, "{log}");
    assert_eq!(log["deliveries"][0]["outcome"], "succeeded");
    assert_eq!(log["attempts"], v["attempts"]);
}

#[tokio::test]
async fn a_failed_test_delivery_answers_200_with_the_reason() {
    let app = TestApp::spawn().await;
    let (s, c) = app
        .post(
            "/api/v1/channels",
            json!({"type": "email", "name": "oncall", "to": ["ops@example.com"]}),
        )
        .await;
    assert_eq!(s, 201, "{c}");
    let ch = c["id"].as_str().unwrap().to_owned();
    let rabbit = Rabbit::connect(&app.names).await;

    let reply = "550 5.1.1 <ops@example.com>: Recipient address rejected";
    let notifier = async {
        let job = assert_is_test_job(&rabbit.take().await, &ch);
        let alert_id = &job.alert.alert_id;
        let at = now_ms();
        // The record first, the attempt a little later: the answer still
        // carries the attempt.
        let record = DeliveryRecord {
            outcome: DeliveryOutcome::Failed,
            attempts: 1,
            at,
            http_status: None,
            error: Some(reply.into()),
            next_retry_at: None,
        };
        app.store
            .put_delivery(alert_id, &ch, &record)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
        let attempt = AttemptRecord {
            at,
            channel_id: ch.clone().into(),
            channel_type: "email".into(),
            attempt: 1,
            outcome: DeliveryOutcome::Failed,
            http_status: None,
            smtp_reply: Some(reply.into()),
            error: Some(reply.into()),
            next_retry_at: None,
            duration_ms: 31,
        };
        app.store.append_attempt(alert_id, &attempt).await.unwrap();
        job
    };
    let path = format!("/api/v1/channels/{ch}/test");
    let ((s, v), job) = tokio::join!(app.post(&path, json!({})), notifier);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["alert_id"], job.alert.alert_id.as_str());
    assert_eq!(v["outcome"], "failed");
    assert_eq!(v["http_status"], Value::Null);
    assert_eq!(v["smtp_reply"], reply);
    assert_eq!(v["error"], reply);
    let attempts = v["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{v}");
    assert_eq!(attempts[0]["channel_type"], "email");
    assert_eq!(attempts[0]["outcome"], "failed");
}

#[tokio::test]
async fn a_test_alert_nobody_answers_is_a_504_naming_the_alert() {
    let app = TestApp::spawn_with(|c| c.test_timeout = Duration::from_millis(300)).await;
    let ch = app.channel("ops").await;
    let started = std::time::Instant::now();
    let (s, v) = app
        .post(&format!("/api/v1/channels/{ch}/test"), json!({}))
        .await;
    assert_eq!(s, 504, "{v}");
    assert_eq!(v["error"], "no notifier answered within 300 ms");
    assert!(started.elapsed() < Duration::from_secs(5));
    let alert_id = v["alert_id"].as_str().unwrap();
    // The job was published all the same, for a notifier to deliver later.
    let rabbit = Rabbit::connect(&app.names).await;
    let job = assert_is_test_job(&rabbit.take().await, &ch);
    assert_eq!(job.alert.alert_id, alert_id);
    // A pending alert has no log yet.
    let (s, _) = app.get(&format!("/api/v1/alerts/{alert_id}")).await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn a_test_alert_waiting_at_shutdown_answers_at_once() {
    let app = TestApp::spawn().await;
    let ch = app.channel("ops").await;
    let started = std::time::Instant::now();
    let stop = async {
        let rabbit = Rabbit::connect(&app.names).await;
        rabbit.take().await;
        app.shutdown.cancel();
    };
    let path = format!("/api/v1/channels/{ch}/test");
    let ((s, v), ()) = tokio::join!(app.post(&path, json!({})), stop);
    assert_eq!(s, 503, "{v}");
    assert!(v["alert_id"].as_str().unwrap().starts_with("test."), "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_test_alert_without_rabbitmq_is_a_503_and_the_rest_works() {
    let app = TestApp::spawn_with(|c| {
        c.common.amqp_url = "amqp://guest:guest@127.0.0.1:1/%2f".into();
    })
    .await;
    let ch = app.channel("ops").await;
    let (s, v) = app
        .post(&format!("/api/v1/channels/{ch}/test"), json!({}))
        .await;
    assert_eq!(
        (s, v),
        (503, json!({"error": "message broker unavailable"}))
    );
    let r = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = app.get(&format!("/api/v1/channels/{ch}")).await;
    assert_eq!(s, 200);
}
