//! The notifier against the real RabbitMQ (127.0.0.1:5672) and Redis
//! (127.0.0.1:6379) of this machine, a real SMTP server and local HTTP
//! receivers.
//!
//! Each test runs the real service in-process ([`lifeline_notifier::run`])
//! with its own prefix, an ops listener on port 0, HTTP receivers of its own
//! on port 0 (webhook and Slack; the test kit's, scripted per path) and,
//! where email is involved, a real SMTP server: Debian's `python3-aiosmtpd`,
//! started as a child process on a free port with a small handler that
//! writes each message it accepts, decoded, as JSON. Tests publish alert
//! jobs with the evaluator's publisher and watch what the receivers get,
//! what Redis records and what RabbitMQ holds. Retry schedules are shortened
//! to milliseconds. Conditions are awaited with a deadline; a test's Redis
//! keys, queues (alerts, deliveries, dead letters, every delay queue) and
//! exchange are removed when its harness is dropped, even on failure (the
//! test kit's clean-up).

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use hmac::{Hmac, KeyInit, Mac};
use lapin::{
    BasicProperties,
    options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions},
    types::FieldTable,
};
use lifeline_notifier::{Config, run};
use lifeline_shared::{
    amqp::{ALERT_ROUTING_KEY, Publisher},
    model::{
        AlertEvent, AlertJob, AttemptRecord, Channel, ChannelKind, DeliveryJob, DeliveryOutcome,
        DeliveryRecord, MonitorRef, Reason,
    },
    names::Names,
    store::{Caps, Store},
    time::now_ms,
    token::new_id,
};
use lifeline_testkit::{
    Brokers, Hit, Proc, Receiver, Reply, TempDir,
    brokers::{AMQP_URL, REDIS_URL},
    cleanup_blocking, free_port, listener, unique_prefix, wait_for,
};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for any condition.
const DEADLINE: Duration = Duration::from_secs(30);
/// The shortened retry schedule of these tests: 4 attempts.
const SCHEDULE: &str = "200ms*3";

// --- HTTP receivers (webhooks and Slack): the kit's, scripted per path ---

/// Checks a request's Standard Webhooks signature against `secret`.
fn verify_signature(hit: &Hit, secret: &str) {
    let header = |name: &str| {
        hit.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    let id = header("webhook-id");
    let timestamp = header("webhook-timestamp");
    let ts: i64 = timestamp.parse().expect("unix seconds");
    assert!(
        (ts - now_ms() / 1000).abs() < 60,
        "webhook-timestamp {ts} is not now"
    );
    let key = STANDARD
        .decode(secret.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(&hit.raw);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    assert_eq!(header("webhook-signature"), expected, "signature of {id}");
}

// --- SMTP server ---

/// An aiosmtpd handler: refuses `reject*` recipients for good (550) and
/// `later*` ones for now (451); writes every accepted message, decoded, as
/// one JSON file.
const SMTP_HANDLER: &str = r#"
import email, email.policy, json, os, uuid

class Capture:
    def __init__(self, outdir):
        self.outdir = outdir

    @classmethod
    def from_cli(cls, parser, *args):
        return cls(args[0])

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith('reject'):
            return '550 5.1.1 mailbox unavailable'
        if address.startswith('later'):
            return '451 4.3.0 try again later'
        envelope.rcpt_tos.append(address)
        return '250 OK'

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        text = msg.get_body(('plain',))
        html = msg.get_body(('html',))
        out = {
            'mail_from': envelope.mail_from,
            'rcpt_tos': envelope.rcpt_tos,
            'from': str(msg['from']),
            'to': str(msg['to']),
            'subject': str(msg['subject']),
            'message_id': str(msg['message-id']),
            'content_type': msg.get_content_type(),
            'text': text.get_content() if text is not None else None,
            'html': html.get_content() if html is not None else None,
        }
        path = os.path.join(self.outdir, uuid.uuid4().hex)
        with open(path + '.tmp', 'w') as f:
            json.dump(out, f)
        os.rename(path + '.tmp', path + '.json')
        return '250 2.0.0 Ok: queued'
"#;

/// Debian's Python, which `apt-get install python3-aiosmtpd` extends.
const PYTHON: &str = "/usr/bin/python3";

/// A real SMTP server (aiosmtpd) on a free port, killed on drop, its mail
/// directory removed.
struct SmtpServer {
    // Declared before `dir`: the server dies before its mail is removed.
    _proc: Proc,
    dir: TempDir,
    port: u16,
}

impl SmtpServer {
    async fn start() -> Self {
        let probe = Command::new(PYTHON)
            .args(["-c", "import aiosmtpd"])
            .status();
        assert!(
            probe.is_ok_and(|s| s.success()),
            "these tests need a real SMTP server: install Debian's python3-aiosmtpd \
             (apt-get install -y python3-aiosmtpd) so that {PYTHON} can import aiosmtpd"
        );
        let dir = TempDir::new("smtp");
        std::fs::write(dir.path().join("lifeline_capture.py"), SMTP_HANDLER).unwrap();
        let port = free_port();
        let path = dir.path().to_string_lossy().into_owned();
        let proc = Proc::spawn(
            "aiosmtpd",
            Path::new(PYTHON),
            &[
                "-m",
                "aiosmtpd",
                "-n",
                "-l",
                &format!("127.0.0.1:{port}"),
                "-c",
                "lifeline_capture.Capture",
                &path,
            ],
            &HashMap::from([("PYTHONPATH".to_owned(), path.clone())]),
        );
        let server = Self {
            _proc: proc,
            dir,
            port,
        };
        wait_for(DEADLINE, "the SMTP server to greet", || async {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            let mut banner = [0u8; 3];
            tokio::io::AsyncReadExt::read_exact(&mut conn, &mut banner)
                .await
                .ok()?;
            (&banner == b"220").then_some(())
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message accepted so far.
    fn messages(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                out.push(serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap());
            }
        }
        out
    }
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

/// A config for `prefix` with fast retries and short attempts.
fn test_config(prefix: &str) -> Config {
    let mut config = Config::local(prefix);
    config.retry_schedule = SCHEDULE.parse().unwrap();
    config.attempt_timeout = Duration::from_secs(2);
    // Nothing listens there unless a test starts an SMTP server.
    config.smtp_url = "smtp://127.0.0.1:1".into();
    config.smtp_from = "Lifeline <lifeline@example.com>".into();
    config
}

impl Harness {
    /// Starts a notifier on a fresh prefix; `tweak` adjusts its config.
    async fn start(tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(&unique_prefix("ntf"));
        tweak(&mut config);
        Self::start_with(config).await
    }

    async fn start_with(config: Config) -> Self {
        let names = config.common.names.clone();
        let store = Store::open(REDIS_URL, names.clone(), Caps::default()).unwrap();
        let publisher = Publisher::new(AMQP_URL, names.clone());
        let (listener, ops) = listener().await;
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

    /// Kills the service mid-flight: its tasks are dropped and its
    /// connections closed without settling anything, as when the process
    /// dies (RabbitMQ then requeues what it held unacked).
    async fn kill(&mut self) {
        let service = self.service.take().expect("running");
        service.abort();
        assert!(service.await.unwrap_err().is_cancelled());
        // The ops server runs on its own task: stop it too.
        self.shutdown.cancel();
    }

    async fn put(&self, name: &str, kind: ChannelKind) -> Channel {
        let c = Channel {
            id: new_id().into(),
            name: name.into(),
            kind,
            created_at: 1,
        };
        self.store.put_channel(&c).await.unwrap();
        c
    }

    /// A webhook channel with a fresh secret.
    async fn webhook(&self, url: &str) -> Channel {
        let secret = format!("whsec_{}", STANDARD.encode(new_id().repeat(2)));
        self.put(
            "hook",
            ChannelKind::Webhook {
                url: url.into(),
                secret,
            },
        )
        .await
    }

    async fn slack(&self, url: &str) -> Channel {
        self.put("#ops", ChannelKind::Slack { url: url.into() })
            .await
    }

    async fn email(&self, to: &[&str]) -> Channel {
        self.put(
            "oncall",
            ChannelKind::Email {
                to: to.iter().map(|s| (*s).to_owned()).collect(),
            },
        )
        .await
    }

    async fn publish(&self, job: &AlertJob) {
        self.publisher.publish_alert(job).await.unwrap();
    }

    /// The record of (alert, channel) once it is final.
    async fn final_record(&self, job: &AlertJob, channel: &Channel) -> DeliveryRecord {
        wait_for(DEADLINE, "a final delivery record", || async {
            self.store
                .delivery(&job.alert_id, &channel.id)
                .await
                .unwrap()
                .filter(|r| {
                    r.outcome == DeliveryOutcome::Succeeded || r.outcome == DeliveryOutcome::Failed
                })
        })
        .await
    }

    /// The attempt log of `job` for `channel`.
    async fn attempts(&self, job: &AlertJob, channel: &Channel) -> Vec<AttemptRecord> {
        let all = self.store.attempts(&job.alert_id).await.unwrap();
        all.into_iter()
            .filter(|a| a.channel_id == channel.id)
            .collect()
    }

    /// Takes every message out of the dead-letter queue.
    async fn dead_letters(&self) -> Vec<DeliveryJob> {
        let conn = lifeline_shared::amqp::connect(AMQP_URL).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(msg) = ch
            .basic_get(
                self.names.dead_queue().as_str().into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            out.push(serde_json::from_slice(&msg.delivery.data).unwrap());
        }
        let _ = conn.close(200, "bye".into()).await;
        out
    }

    /// Messages ready in `queue` (not counting those held by a consumer).
    async fn queued(&self, queue: &str) -> u32 {
        let conn = lifeline_shared::amqp::connect(AMQP_URL).await.unwrap();
        let ch = conn.create_channel().await.unwrap();
        let q = ch
            .queue_declare(
                queue.into(),
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

    /// Messages ready in the alerts and deliveries queues together.
    async fn backlog(&self) -> u32 {
        self.queued(&self.names.alerts_queue()).await
            + self.queued(&self.names.deliveries_queue()).await
    }

    /// Waits until no job is ready in the alerts, deliveries or recheck
    /// queues for longer than a recheck takes, so a job passing through a
    /// delay queue cannot be missed.
    async fn wait_quiet(&self) {
        let quiet_since = std::cell::Cell::new(None::<Instant>);
        wait_for(DEADLINE, "the queues to stay empty", || async {
            let busy = self.backlog().await + self.queued(&self.names.retry_queue(1000)).await;
            if busy > 0 {
                quiet_since.set(None);
                return None;
            }
            let since = quiet_since.get().unwrap_or_else(Instant::now);
            quiet_since.set(Some(since));
            (since.elapsed() > Duration::from_millis(1500)).then_some(())
        })
        .await;
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
        // Let a still-running notifier stop first, so that it does not
        // declare again what is being deleted.
        if let Some(service) = &self.service {
            let until = Instant::now() + Duration::from_secs(10);
            while !service.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Best effort, on a runtime of its own so it also runs after a panic.
        cleanup_blocking(&Brokers::local(), &self.names);
    }
}

fn job(channels: &[&Channel]) -> AlertJob {
    let monitor = new_id();
    AlertJob {
        v: 1,
        alert_id: format!("{monitor}.1").into(),
        event: AlertEvent::Down,
        monitor: MonitorRef {
            id: monitor.into(),
            name: "nightly-backup".into(),
        },
        reason: Reason::Reported,
        msg: Some("disk full".into()),
        value: Some(97.5),
        at: 1_700_000_060_000,
        last_beat_at: Some(1_700_000_000_123),
        channels: channels.iter().map(|c| c.id.clone()).collect(),
    }
}

fn delivery_id(job: &AlertJob, channel: &Channel) -> String {
    DeliveryJob::new(job.clone(), &channel.id)
        .delivery_id
        .into_string()
}

fn header(hit: &Hit, name: &str) -> String {
    hit.headers[name].to_str().unwrap().to_owned()
}

fn secret(channel: &Channel) -> &str {
    match &channel.kind {
        ChannelKind::Webhook { secret, .. } => secret,
        _ => panic!("not a webhook"),
    }
}

// --- tests: webhooks ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_gets_one_signed_post_with_the_documented_payload() {
    // Prefetch 1: jobs are handled one after the other.
    let mut h = Harness::start(|c| c.prefetch = 1).await;
    let rx = Receiver::start().await;
    let hook = h.webhook(&rx.url_for("hook")).await;
    let marker = h.webhook(&rx.url_for("marker")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    let rec = h.final_record(&alert, &hook).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Succeeded);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.http_status, Some(200));
    assert_eq!(rec.error, None);
    let log = h.attempts(&alert, &hook).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].outcome, DeliveryOutcome::Succeeded);
    assert_eq!(log[0].attempt, 1);
    assert_eq!(log[0].channel_type, "webhook");
    assert_eq!(log[0].http_status, Some(200));

    // The same alert again (as after an evaluator crash), then a marker.
    h.publish(&alert).await;
    let after = job(&[&marker]);
    h.publish(&after).await;
    assert_eq!(
        h.final_record(&after, &marker).await.outcome,
        DeliveryOutcome::Succeeded
    );
    wait_for(DEADLINE, "both alert jobs settled", || async {
        (h.backlog().await == 0).then_some(())
    })
    .await;

    let hits = rx.requests("hook");
    assert_eq!(hits.len(), 1, "{hits:?}");
    let hit = &hits[0];
    assert_eq!(
        hit.body,
        json!({
            "event": "monitor.down",
            "alert_id": alert.alert_id,
            "monitor": {"id": alert.monitor.id, "name": "nightly-backup"},
            "reason": "reported",
            "msg": "disk full",
            "value": 97.5,
            "at": "2023-11-14T22:14:20.000Z",
            "last_beat_at": "2023-11-14T22:13:20.123Z",
        })
    );
    assert_eq!(header(hit, "content-type"), "application/json");
    assert_eq!(
        header(hit, "user-agent"),
        format!("Lifeline/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(header(hit, "webhook-id"), delivery_id(&alert, &hook));
    verify_signature(hit, secret(&hook));

    // Ops routes.
    assert_eq!(h.get("/healthz").await.0, 200);
    let ready = wait_for(DEADLINE, "/readyz to answer 200", || async {
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
    assert_eq!(h.backlog().await, 0);
    assert_eq!(rx.requests("hook").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_deliver_once() {
    let mut h = Harness::start(|c| c.prefetch = 32).await;
    // A slow receiver, so both copies are in flight together.
    let rx = Receiver::start().await;
    rx.script(
        "hook",
        &[],
        Reply {
            delay: Duration::from_millis(300),
            ..Reply::status(200)
        },
    );
    let hook = h.webhook(&rx.url_for("hook")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    h.publish(&alert).await;
    assert_eq!(
        h.final_record(&alert, &hook).await.outcome,
        DeliveryOutcome::Succeeded
    );
    // The second copy waits for the claim in a delay queue, then is dropped.
    h.wait_quiet().await;
    h.stop().await;
    assert_eq!(h.backlog().await, 0);
    assert_eq!(rx.requests("hook").len(), 1);
    assert_eq!(h.attempts(&alert, &hook).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_go_through_delay_queues_with_the_same_webhook_id() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("hook", &[Reply::status(500); 3], Reply::status(200));
    let hook = h.webhook(&rx.url_for("hook")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    let rec = h.final_record(&alert, &hook).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Succeeded);
    assert_eq!(rec.attempts, 4);
    assert_eq!(rec.http_status, Some(200));
    assert_eq!(rec.error, None);

    let log = h.attempts(&alert, &hook).await;
    let outcomes: Vec<_> = log.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (1, DeliveryOutcome::Retrying),
            (2, DeliveryOutcome::Retrying),
            (3, DeliveryOutcome::Retrying),
            (4, DeliveryOutcome::Succeeded),
        ]
    );
    for a in &log[..3] {
        assert_eq!(a.http_status, Some(500));
        assert_eq!(a.error.as_deref(), Some("receiver answered HTTP 500"));
        let next = a.next_retry_at.expect("a retry time");
        assert!(next - a.at >= 200, "{a:?}");
    }
    assert_eq!(log[3].next_retry_at, None);

    let hits = rx.requests("hook");
    assert_eq!(hits.len(), 4);
    let id = delivery_id(&alert, &hook);
    for hit in &hits {
        assert_eq!(header(hit, "webhook-id"), id);
        verify_signature(hit, secret(&hook));
    }
    for pair in hits.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= Duration::from_millis(190), "retried after {gap:?}");
    }

    h.stop().await;
    assert_eq!(h.backlog().await, 0);
    assert!(h.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_is_dead_lettered_after_one_attempt() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("gone", &[], Reply::status(404));
    let hook = h.webhook(&rx.url_for("gone")).await;

    let alert = job(&[&hook]);
    h.publish(&alert).await;
    let rec = h.final_record(&alert, &hook).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Failed);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.http_status, Some(404));
    assert_eq!(rec.error.as_deref(), Some("receiver answered HTTP 404"));

    let log = h.attempts(&alert, &hook).await;
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].outcome, DeliveryOutcome::Failed);
    assert_eq!(log[0].http_status, Some(404));
    assert_eq!(log[0].next_retry_at, None);

    // Dead-lettered before the record was written.
    let dead = h.dead_letters().await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].delivery_id, delivery_id(&alert, &hook));
    assert_eq!(dead[0].attempt, 1);
    assert_eq!(dead[0].alert, alert);

    h.stop().await;
    assert_eq!(rx.requests("gone").len(), 1);
    assert_eq!(h.backlog().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_channel_gets_a_final_record_even_when_delivery_fails() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("refusing", &[], Reply::status(503));
    // A port nothing listens on.
    let dead_addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let unreachable = h.webhook(&format!("http://{dead_addr}/hook")).await;
    let refusing = h.webhook(&rx.url_for("refusing")).await;
    let missing = Channel {
        id: new_id().into(),
        name: "gone".into(),
        kind: ChannelKind::Webhook {
            url: rx.url_for("missing"),
            secret: String::new(),
        },
        created_at: 1,
    };

    let alert = job(&[&unreachable, &refusing, &missing]);
    h.publish(&alert).await;

    let rec = h.final_record(&alert, &unreachable).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Failed);
    assert_eq!(rec.attempts, 4);
    assert_eq!(rec.http_status, None);
    let error = rec.error.expect("an error is recorded");
    assert!(
        !error.contains(&dead_addr.port().to_string()),
        "url leaked: {error}"
    );

    let rec = h.final_record(&alert, &refusing).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Failed);
    assert_eq!(rec.attempts, 4);
    assert_eq!(rec.http_status, Some(503));

    let rec = h.final_record(&alert, &missing).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Failed);
    assert_eq!(rec.attempts, 1);
    let log = h.attempts(&alert, &missing).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].channel_type, "unknown");
    assert!(
        log[0]
            .error
            .as_deref()
            .unwrap()
            .contains("no longer exists")
    );

    // Each was dead-lettered before its record was written.
    let mut dead: Vec<String> = h
        .dead_letters()
        .await
        .into_iter()
        .map(|j| j.channel_id.into_string())
        .collect();
    dead.sort();
    let mut expected = vec![unreachable.id, refusing.id, missing.id];
    expected.sort();
    assert_eq!(dead, expected);

    h.stop().await;
    assert_eq!(h.backlog().await, 0);
    assert_eq!(rx.requests("refusing").len(), 4);
    assert!(rx.requests("missing").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn test_jobs_get_exactly_one_attempt_and_no_dead_letter() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script("failing", &[], Reply::status(500));
    let failing = h.webhook(&rx.url_for("failing")).await;
    let working = h.webhook(&rx.url_for("working")).await;

    // A test job as the API may publish it: straight to the deliveries queue.
    let mut alert = job(&[&failing]);
    alert.event = AlertEvent::Test;
    alert.reason = Reason::Test;
    let mut test_job = DeliveryJob::new(alert.clone(), &failing.id);
    test_job.test = true;
    h.publisher
        .publish_delivery(&h.names.deliveries_queue(), &test_job)
        .await
        .unwrap();
    let rec = h.final_record(&alert, &failing).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Failed);
    assert_eq!(rec.attempts, 1);
    assert_eq!(rec.http_status, Some(500));
    let log = h.attempts(&alert, &failing).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].outcome, DeliveryOutcome::Failed);

    // A test alert through the alerts queue reaches a webhook as `test`.
    let mut other = job(&[&working]);
    other.event = AlertEvent::Test;
    other.reason = Reason::Test;
    h.publish(&other).await;
    assert_eq!(
        h.final_record(&other, &working).await.outcome,
        DeliveryOutcome::Succeeded
    );
    let hits = rx.requests("working");
    assert_eq!(hits[0].body["event"], "test");
    assert_eq!(hits[0].body["reason"], "test");

    h.stop().await;
    assert_eq!(rx.requests("failing").len(), 1, "never retried");
    assert!(h.dead_letters().await.is_empty(), "never dead-lettered");
    assert_eq!(h.backlog().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_jobs_are_dropped_without_stopping_the_consumers() {
    let mut h = Harness::start(|c| c.prefetch = 1).await;
    let rx = Receiver::start().await;
    let hook = h.webhook(&rx.url_for("hook")).await;

    // The exchange exists once the publisher has published.
    let first = job(&[&hook]);
    h.publish(&first).await;
    h.final_record(&first, &hook).await;

    let conn = lifeline_shared::amqp::connect(AMQP_URL).await.unwrap();
    let ch = conn.create_channel().await.unwrap();
    for (exchange, key) in [
        (h.names.alerts_exchange(), ALERT_ROUTING_KEY.to_owned()),
        (String::new(), h.names.deliveries_queue()),
    ] {
        for body in [&b"not json"[..], br#"{"v":1,"alert_id":"x"}"#] {
            ch.basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        }
    }
    let _ = conn.close(200, "bye".into()).await;

    let after = job(&[&hook]);
    h.publish(&after).await;
    assert_eq!(
        h.final_record(&after, &hook).await.outcome,
        DeliveryOutcome::Succeeded
    );
    wait_for(DEADLINE, "every message settled", || async {
        (h.backlog().await == 0).then_some(())
    })
    .await;

    h.stop().await;
    assert_eq!(h.backlog().await, 0, "malformed jobs are not requeued");
    assert_eq!(rx.requests("hook").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_the_job_on_the_queue() {
    let prefix = unique_prefix("ntf");
    let rx = Receiver::start().await;

    // A notifier whose Redis is unreachable.
    let mut broken = test_config(&prefix);
    broken.common.redis_url = "redis://127.0.0.1:1".into();
    let mut h = Harness::start_with(broken).await;
    let hook = h.webhook(&rx.url_for("hook")).await;
    let alert = job(&[&hook]);
    h.publish(&alert).await;

    let (status, body) = wait_for(DEADLINE, "/readyz to report redis", || async {
        let (status, body) = h.get("/readyz").await;
        body.contains("rabbitmq\":\"ok").then_some((status, body))
    })
    .await;
    assert_eq!(status, 503, "{body}");
    wait_for(DEADLINE, "the job taken by the notifier", || async {
        (h.queued(&h.names.alerts_queue()).await == 0).then_some(())
    })
    .await;
    h.stop().await;
    assert!(rx.requests("hook").is_empty());
    assert_eq!(
        h.queued(&h.names.alerts_queue()).await,
        1,
        "the job went back to the queue"
    );

    // Redis is back (a notifier that can reach it): the job is delivered.
    let mut fixed = Harness::start_with(test_config(&prefix)).await;
    assert_eq!(
        fixed.final_record(&alert, &hook).await.outcome,
        DeliveryOutcome::Succeeded
    );
    fixed.stop().await;
    assert_eq!(rx.requests("hook").len(), 1);
    assert_eq!(fixed.backlog().await, 0);
    drop(h);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notifier_killed_mid_delivery_loses_nothing() {
    let prefix = unique_prefix("ntf");
    let config = || {
        let mut c = test_config(&prefix);
        // The dead notifier's claim outlives it by this plus a margin.
        c.attempt_timeout = Duration::from_secs(1);
        c
    };
    let rx = Receiver::start().await;
    // The first request hangs, so the notifier is killed while making it.
    rx.script(
        "hook",
        &[Reply {
            delay: Duration::from_secs(5),
            ..Reply::status(200)
        }],
        Reply::status(200),
    );
    let mut first = Harness::start_with(config()).await;
    let hook = first.webhook(&rx.url_for("hook")).await;
    let alert = job(&[&hook]);
    first.publish(&alert).await;
    wait_for(DEADLINE, "the request in flight", || async {
        (!rx.requests("hook").is_empty()).then_some(())
    })
    .await;
    first.kill().await;

    let mut second = Harness::start_with(config()).await;
    let rec = second.final_record(&alert, &hook).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("succeeded", 1));
    second.wait_quiet().await;
    second.stop().await;

    let hits = rx.requests("hook");
    assert_eq!(hits.len(), 2, "delivered again, once");
    let id = delivery_id(&alert, &hook);
    for hit in &hits {
        assert_eq!(
            header(hit, "webhook-id"),
            id,
            "a duplicate carries the same id"
        );
        verify_signature(hit, secret(&hook));
    }
    assert_eq!(second.backlog().await, 0);
    drop(first);
}

// --- tests: email ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_goes_through_a_real_smtp_server() {
    let smtp = SmtpServer::start().await;
    let mut h = Harness::start(|c| c.smtp_url = smtp.url()).await;
    let mail = h
        .email(&["ops@example.com", "Oncall <oncall@example.com>"])
        .await;

    let mut down = job(&[&mail]);
    down.msg = Some("<script>alert('x')</script> & more".into());
    h.publish(&down).await;
    let rec = h.final_record(&down, &mail).await;
    assert_eq!(rec.outcome, DeliveryOutcome::Succeeded, "{rec:?}");
    assert_eq!(rec.attempts, 1);
    let log = h.attempts(&down, &mail).await;
    assert_eq!(log[0].channel_type, "email");
    let reply = log[0].smtp_reply.as_deref().expect("the SMTP reply");
    assert!(reply.starts_with("250"), "{reply}");

    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(m["subject"], "[Lifeline] nightly-backup is DOWN");
    assert_eq!(m["content_type"], "multipart/alternative");
    assert_eq!(m["mail_from"], "lifeline@example.com");
    assert_eq!(
        m["rcpt_tos"],
        json!(["ops@example.com", "oncall@example.com"])
    );
    assert_eq!(
        m["message_id"],
        format!("<{}@example.com>", delivery_id(&down, &mail))
    );
    let text = m["text"].as_str().expect("a plain-text part");
    for expected in [
        "nightly-backup is DOWN",
        "the job reported status=down",
        "<script>alert('x')</script> & more",
        "Down since: 2023-11-14 22:14:20 UTC (",
        " ago)",
        "Last beat:  2023-11-14 22:13:20 UTC",
        &down.monitor.id,
    ] {
        assert!(text.contains(expected), "{expected:?} not in:\n{text}");
    }
    let html = m["html"].as_str().expect("an HTML part");
    assert!(!html.contains("<script>"), "unescaped:\n{html}");
    for expected in [
        "nightly-backup is DOWN",
        "the job reported status=down",
        "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more",
        "2023-11-14 22:14:20 UTC",
        "2023-11-14 22:13:20 UTC",
        &down.monitor.id,
    ] {
        assert!(html.contains(expected), "{expected:?} not in:\n{html}");
    }

    // A recovery says so.
    let mut up = job(&[&mail]);
    up.event = AlertEvent::Up;
    up.reason = Reason::Recovered;
    h.publish(&up).await;
    assert_eq!(
        h.final_record(&up, &mail).await.outcome,
        DeliveryOutcome::Succeeded
    );
    let subjects: Vec<String> = smtp
        .messages()
        .iter()
        .map(|m| m["subject"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        subjects.contains(&"[Lifeline] nightly-backup is UP".to_owned()),
        "{subjects:?}"
    );

    h.stop().await;
    assert_eq!(h.backlog().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_refusals_are_permanent_and_deferrals_retried() {
    let smtp = SmtpServer::start().await;
    let mut h = Harness::start(|c| c.smtp_url = smtp.url()).await;
    let rejected = h.email(&["reject@example.com"]).await;
    let deferred = h.email(&["later@example.com"]).await;
    let invalid = h.email(&["not an address"]).await;

    let alert = job(&[&rejected, &deferred, &invalid]);
    h.publish(&alert).await;

    let rec = h.final_record(&alert, &rejected).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("failed", 1));
    let log = h.attempts(&alert, &rejected).await;
    let reply = log[0].smtp_reply.as_deref().unwrap();
    assert!(reply.starts_with("550"), "{reply}");

    let rec = h.final_record(&alert, &invalid).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("failed", 1));
    assert!(rec.error.unwrap().contains("not an email address"));

    let rec = h.final_record(&alert, &deferred).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("failed", 4));
    let log = h.attempts(&alert, &deferred).await;
    assert_eq!(log.len(), 4);
    assert!(
        log[..3]
            .iter()
            .all(|a| a.outcome == DeliveryOutcome::Retrying)
    );
    assert!(
        log[0].smtp_reply.as_deref().unwrap().starts_with("451"),
        "{log:?}"
    );

    assert_eq!(h.dead_letters().await.len(), 3);
    assert!(smtp.messages().is_empty());
    h.stop().await;
}

// --- tests: Slack ---

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_honours_retry_after_and_one_message_per_second() {
    let mut h = Harness::start(|_| {}).await;
    let rx = Receiver::start().await;
    rx.script(
        "limited",
        &[Reply {
            retry_after: Some(1),
            ..Reply::status(429)
        }],
        Reply::status(200),
    );
    let limited = h.slack(&rx.url_for("limited")).await;
    let busy = h.slack(&rx.url_for("busy")).await;

    // A 429 with Retry-After: 1, then 200: one delivery, after the wait.
    let alert = job(&[&limited]);
    h.publish(&alert).await;
    let rec = h.final_record(&alert, &limited).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("succeeded", 2));
    let log = h.attempts(&alert, &limited).await;
    assert_eq!(log[0].outcome, DeliveryOutcome::Retrying);
    assert_eq!(log[0].http_status, Some(429));
    assert!(log[0].next_retry_at.unwrap() - log[0].at >= 1000, "{log:?}");
    let hits = rx.requests("limited");
    assert_eq!(hits.len(), 2);
    let waited = hits[1].at - hits[0].at;
    assert!(waited >= Duration::from_secs(1), "retried after {waited:?}");

    // The payload: a fallback text and blocks.
    let body = &hits[1].body;
    let text = body["text"].as_str().expect("text");
    assert!(text.contains(":red_circle:"), "{text}");
    assert!(text.contains("nightly-backup is DOWN"), "{text}");
    let blocks = body["blocks"].as_array().expect("blocks");
    assert_eq!(blocks[0]["type"], "header");
    assert_eq!(
        blocks[0]["text"]["text"],
        ":red_circle: nightly-backup is DOWN"
    );
    let all = body["blocks"].to_string();
    for expected in [
        "the job reported status=down",
        "disk full",
        "Down since",
        "2023-11-14 22:13:20 UTC",
        &alert.monitor.id,
    ] {
        assert!(all.contains(expected), "{expected:?} not in {all}");
    }

    // Two alerts for one webhook URL: at least a second apart.
    let first = job(&[&busy]);
    let second = job(&[&busy]);
    h.publish(&first).await;
    h.publish(&second).await;
    assert_eq!(
        h.final_record(&first, &busy).await.outcome,
        DeliveryOutcome::Succeeded
    );
    assert_eq!(
        h.final_record(&second, &busy).await.outcome,
        DeliveryOutcome::Succeeded
    );
    let hits = rx.requests("busy");
    assert_eq!(hits.len(), 2);
    let gap = hits[1].at - hits[0].at;
    assert!(gap >= Duration::from_secs(1), "only {gap:?} apart");
    // Waiting for the rate limit is not an attempt.
    assert_eq!(h.attempts(&first, &busy).await.len(), 1);
    assert_eq!(h.attempts(&second, &busy).await.len(), 1);

    h.stop().await;
    assert_eq!(h.backlog().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_slack_holds_up_neither_email_nor_webhook() {
    let smtp = SmtpServer::start().await;
    let mut h = Harness::start(|c| c.smtp_url = smtp.url()).await;
    let rx = Receiver::start().await;
    // Slack answers 500, slowly, every time.
    rx.script(
        "slack",
        &[],
        Reply {
            delay: Duration::from_millis(1500),
            ..Reply::status(500)
        },
    );
    let slack = h.slack(&rx.url_for("slack")).await;
    let mail = h.email(&["ops@example.com"]).await;
    let hook = h.webhook(&rx.url_for("hook")).await;

    let alert = job(&[&slack, &mail, &hook]);
    let published = Instant::now();
    h.publish(&alert).await;
    let email_rec = h.final_record(&alert, &mail).await;
    let hook_rec = h.final_record(&alert, &hook).await;
    let took = published.elapsed();
    assert_eq!(email_rec.outcome, DeliveryOutcome::Succeeded);
    assert_eq!(hook_rec.outcome, DeliveryOutcome::Succeeded);
    assert!(
        took < Duration::from_millis(1500),
        "email and webhook waited for Slack: {took:?}"
    );

    let rec = h.final_record(&alert, &slack).await;
    assert_eq!((rec.outcome.as_str(), rec.attempts), ("failed", 4));
    assert_eq!(rx.requests("slack").len(), 4);

    h.stop().await;
    assert_eq!(smtp.messages().len(), 1, "the email is sent once");
    assert_eq!(rx.requests("hook").len(), 1, "the webhook is called once");
    assert_eq!(h.dead_letters().await.len(), 1);
    assert_eq!(h.backlog().await, 0);
}
