//! The store against the local Redis. `Engine::apply_batch` must leave every
//! monitor exactly as applying its inputs one by one would, raise each
//! alert once however often or concurrently a batch runs, and read the
//! push-path outages when a deadline fires. A monitor's hash must round-trip
//! every setting and state value, stay a compact `listpack` in the usual
//! case, and refuse a field that does not parse. Each test uses its own key
//! prefix, removed when the test ends (even when it fails).

use std::collections::{BTreeSet, HashMap};

use lifeline_shared::{
    engine::Engine,
    model::{
        AlertEvent, AlertJob, BeatRecord, BeatStatus, MonitorConfig, MonitorState, Reason, Status,
    },
    names::{Names, shard_of},
    state::Input,
    store::{Caps, Store, StoreError},
    time::now_ms,
    token,
};
use lifeline_testkit::{Scope, brokers::REDIS_URL};

/// A Redis connection of the test's own, to look at keys directly.
async fn redis() -> redis::aio::MultiplexedConnection {
    redis::Client::open(REDIS_URL)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis")
}

/// A store under a fresh prefix whose keys are deleted on drop.
struct TestStore {
    store: Store,
    names: Names,
    _scope: Scope,
}

impl TestStore {
    fn new(tag: &str) -> Self {
        let scope = Scope::new(tag);
        let names = scope.names().clone();
        let store = Store::open(REDIS_URL, names.clone(), Caps::default()).expect("redis url");
        Self {
            store,
            names,
            _scope: scope,
        }
    }

    /// Creates monitor `id` (new, no deadline) with a `timeout` in seconds.
    async fn monitor(&self, id: &str, timeout: u32, created_at: i64) {
        let cfg = MonitorConfig {
            name: id.to_owned(),
            timeout,
            interval: timeout,
            channels: vec!["ch".into()],
            created_at,
            token_hash: token::hash(&format!("token of {id}")),
            token_hint: "tok".to_owned(),
            remind_every: None,
            confirm: 1,
        };
        self.store
            .create_monitor(id, &cfg, &MonitorState::new(created_at))
            .await
            .expect("create monitor");
    }

    /// Monitor `id` (60 s timeout, created at `t`) after one beat at
    /// `t + 1` through a caching store (an evaluator's), which is returned
    /// with a second, uncaching store on the same keys (the API, or another
    /// replica).
    async fn cached_monitor_and_other_writer(&self, id: &str, t: i64) -> (Engine, Engine) {
        let evaluator = self.engine().with_cache(1000);
        let other =
            Engine::new(Store::open(REDIS_URL, self.names.clone(), Caps::default()).unwrap());
        self.monitor(id, 60, t).await;
        let b1 = beat(1, t + 1, BeatStatus::Up);
        evaluator
            .apply_batch(&[(id, Input::Beat(&b1))])
            .await
            .unwrap();
        (evaluator, other)
    }

    /// An engine (without a cache) on this store.
    fn engine(&self) -> Engine {
        Engine::new(self.store.clone())
    }

    async fn state(&self, id: &str) -> MonitorState {
        self.store
            .monitor(id)
            .await
            .expect("read monitor")
            .expect("monitor exists")
            .state
    }

    /// The monitor's score in its shard's deadline index.
    async fn indexed_deadline(&self, id: &str) -> Option<i64> {
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(self.store.keys().deadlines(shard_of(id)))
            .arg(id)
            .query_async(&mut redis().await)
            .await
            .expect("zscore");
        score.map(|s| s as i64)
    }

    async fn outbox(&self) -> Vec<AlertJob> {
        let mut jobs = self.store.outbox_all().await.expect("outbox");
        jobs.sort_by(|a, b| a.alert_id.cmp(&b.alert_id));
        jobs
    }
}

fn beat(seq: u64, at: i64, status: BeatStatus) -> BeatRecord {
    BeatRecord {
        seq,
        at,
        status,
        msg: Some(format!("beat {seq}")),
        msg_truncated: false,
        value: None,
        late: false,
    }
}

/// `got` holds what `expected` holds for monitors `ids`: state, history,
/// indexed deadline, and the same outbox.
async fn same_monitors(got: &TestStore, expected: &TestStore, ids: &[&str]) {
    for &id in ids {
        let state = got.state(id).await;
        assert_eq!(state, expected.state(id).await, "{id}");
        assert_eq!(
            got.store.beats(id, 100).await.unwrap(),
            expected.store.beats(id, 100).await.unwrap(),
            "{id}"
        );
        assert_eq!(
            got.store.events(id, 100).await.unwrap(),
            expected.store.events(id, 100).await.unwrap(),
            "{id}"
        );
        assert_eq!(got.indexed_deadline(id).await, state.deadline, "{id}");
    }
    assert_eq!(got.outbox().await, expected.outbox().await);
}

/// Two stores under fresh prefixes (tagged `a` and `b`), each holding
/// monitors "a" and "b" (60 s timeout) created at the returned time: one to
/// apply inputs one by one, one to apply them another way, then compare.
async fn twin_stores(a: &str, b: &str) -> (TestStore, TestStore, i64) {
    let (first, second) = (TestStore::new(a), TestStore::new(b));
    let t = now_ms();
    for s in [&first, &second] {
        s.monitor("a", 60, t).await;
        s.monitor("b", 60, t).await;
    }
    (first, second, t)
}

#[tokio::test]
async fn a_batch_leaves_monitors_as_sequential_applies_do() {
    let (one_by_one, batched, t) = twin_stores("batch-seq", "batch-bat").await;
    let beats = [
        ("a", beat(1, t + 1, BeatStatus::Up)),
        ("b", beat(2, t + 2, BeatStatus::Up)),
        ("a", beat(4, t + 4, BeatStatus::Down)),
        ("a", beat(3, t + 3, BeatStatus::Up)), // late: recorded, no effect
        ("a", beat(5, t + 5, BeatStatus::Up)),
        ("a", beat(5, t + 5, BeatStatus::Up)), // a redelivery: ignored
    ];
    let inputs: Vec<(&str, Input<'_>)> =
        beats.iter().map(|(id, b)| (*id, Input::Beat(b))).collect();

    let mut expected = Vec::new();
    for &(id, input) in &inputs {
        expected.push(one_by_one.engine().apply(id, input).await.unwrap());
    }
    let got = batched.engine().apply_batch(&inputs).await.unwrap();

    assert_eq!(got.len(), inputs.len());
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        let (g, e) = (g.as_ref().unwrap(), e.as_ref().unwrap());
        assert_eq!(g.before, e.before, "input {i}");
        assert_eq!(g.outcome, e.outcome, "input {i}");
        assert_eq!(g.jobs, e.jobs, "input {i}");
    }
    same_monitors(&batched, &one_by_one, &["a", "b"]).await;

    // And what that is: a's beats in stream order, the late one kept apart.
    let a = batched.state("a").await;
    assert_eq!((a.status, a.last_seq), (Status::Up, 5));
    assert_eq!(a.deadline, Some(t + 5 + 60_000));
    let history = batched.store.beats("a", 100).await.unwrap();
    let seqs: Vec<(u64, bool)> = history.iter().map(|b| (b.seq, b.late)).collect();
    assert_eq!(seqs, [(5, false), (4, false), (1, false), (3, true)]);
    let events: Vec<Reason> = batched
        .store
        .events("a", 100)
        .await
        .unwrap()
        .iter()
        .map(|c| c.reason)
        .collect();
    assert_eq!(
        events,
        [Reason::Recovered, Reason::Reported, Reason::FirstBeat]
    );
    let alerts: Vec<(String, AlertEvent)> = batched
        .outbox()
        .await
        .into_iter()
        .map(|j| (j.alert_id.into_string(), j.event))
        .collect();
    assert_eq!(
        alerts,
        [
            ("a.2".into(), AlertEvent::Down),
            ("a.3".into(), AlertEvent::Up)
        ]
    );
    assert_eq!(batched.state("b").await.last_seq, 2);
    assert_eq!(batched.indexed_deadline("b").await, Some(t + 2 + 60_000));
}

#[tokio::test]
async fn a_caching_store_applies_beats_as_sequential_applies_do() {
    // The evaluator's store keeps the monitors it wrote: from the second
    // batch on it steps them from its copy instead of reading them.
    let (one_by_one, cached, t) = twin_stores("cache-seq", "cache-bat").await;
    let cache = cached.engine().with_cache(1000);
    let beats = [
        ("a", beat(1, t + 1, BeatStatus::Up)),
        ("b", beat(2, t + 2, BeatStatus::Up)),
        ("a", beat(4, t + 4, BeatStatus::Down)),
        ("a", beat(3, t + 3, BeatStatus::Up)), // late
        ("b", beat(6, t + 6, BeatStatus::Up)),
        ("a", beat(5, t + 5, BeatStatus::Up)),
        ("a", beat(5, t + 5, BeatStatus::Up)), // a redelivery
    ];
    for (id, b) in &beats {
        let e = one_by_one.engine().apply(id, Input::Beat(b)).await.unwrap();
        let g = cache.apply_batch(&[(id, Input::Beat(b))]).await.unwrap();
        let (g, e) = (g[0].as_ref().unwrap(), e.as_ref().unwrap());
        assert_eq!(
            (&g.before, &g.outcome, &g.jobs),
            (&e.before, &e.outcome, &e.jobs),
            "beat {} of {id}",
            b.seq
        );
    }
    same_monitors(&cached, &one_by_one, &["a", "b"]).await;
}

#[tokio::test]
async fn a_stale_cached_copy_is_read_again_not_written_over() {
    let s = TestStore::new("cache-stale");
    let t = now_ms();
    let (evaluator, other) = s.cached_monitor_and_other_writer("a", t).await;

    // The API changes the timeout and renames the monitor meanwhile.
    other
        .apply_with("a", Input::Retime { now: t + 2 }, |cfg| {
            Some(MonitorConfig {
                timeout: 120,
                name: "renamed".into(),
                ..cfg.clone()
            })
        })
        .await
        .unwrap()
        .unwrap();
    let b2 = beat(2, t + 2, BeatStatus::Up);
    let applied = evaluator
        .apply_batch(&[("a", Input::Beat(&b2))])
        .await
        .unwrap();
    let applied = applied[0].as_ref().unwrap();
    assert_eq!(applied.cfg.timeout, 120, "the new settings were read");
    let m = s.store.monitor("a").await.unwrap().unwrap();
    assert_eq!(m.cfg.name, "renamed", "settings not written over");
    assert_eq!(m.state.deadline, Some(t + 2 + 120_000));

    // Another replica applies a beat; the next one here still follows it.
    let b3 = beat(3, t + 3, BeatStatus::Down);
    other.apply("a", Input::Beat(&b3)).await.unwrap().unwrap();
    let b4 = beat(4, t + 4, BeatStatus::Up);
    let applied = evaluator
        .apply_batch(&[("a", Input::Beat(&b4))])
        .await
        .unwrap();
    let applied = applied[0].as_ref().unwrap();
    assert_eq!(applied.before.state.status, Status::Down);
    assert_eq!(applied.jobs.len(), 1, "the recovery alert");
    let seqs: Vec<u64> = s
        .store
        .beats("a", 100)
        .await
        .unwrap()
        .iter()
        .map(|b| b.seq)
        .collect();
    assert_eq!(seqs, [4, 3, 2, 1], "every beat recorded once");
    let alerts: Vec<AlertEvent> = s.outbox().await.iter().map(|j| j.event).collect();
    assert_eq!(alerts, [AlertEvent::Down, AlertEvent::Up]);

    // A deleted monitor is gone for the cache too.
    s.store.delete_monitor(&m).await.unwrap();
    let b5 = beat(5, t + 5, BeatStatus::Up);
    let applied = evaluator
        .apply_batch(&[("a", Input::Beat(&b5))])
        .await
        .unwrap();
    assert!(applied[0].is_none());
    assert!(s.store.monitor("a").await.unwrap().is_none());
}

#[tokio::test]
async fn a_tick_is_not_skipped_on_a_stale_cached_copy() {
    let s = TestStore::new("cache-noop");
    let t = now_ms();
    let (evaluator, api) = s.cached_monitor_and_other_writer("a", t).await;
    api.apply("a", Input::Pause { now: t + 2 }).await.unwrap();
    // A beat while paused: the evaluator's copy is now the paused monitor.
    let b2 = beat(2, t + 3, BeatStatus::Up);
    evaluator
        .apply_batch(&[("a", Input::Beat(&b2))])
        .await
        .unwrap();
    assert_eq!(s.state("a").await.status, Status::Paused);
    // Resumed through the API: the clock starts again.
    api.apply("a", Input::Resume { now: t + 4 }).await.unwrap();
    let deadline = s.state("a").await.deadline.expect("a deadline again");
    // The tick after that deadline fires it, though the cached copy says
    // paused (nothing to do).
    let now = deadline + 1;
    let fired = evaluator
        .apply_batch(&[("a", Input::Tick { now })])
        .await
        .unwrap();
    let jobs = &fired[0].as_ref().expect("exists").jobs;
    assert_eq!(jobs.len(), 1, "{fired:?}");
    assert_eq!(jobs[0].event, AlertEvent::Down);
    assert_eq!(s.state("a").await.status, Status::Down);
}

/// `n` monitors `m0..` that beat once at `at` with a 60 s timeout.
async fn beaten_monitors(s: &TestStore, n: usize, at: i64) -> Vec<String> {
    let ids: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        s.monitor(id, 60, at).await;
        let b = beat(i as u64 + 1, at, BeatStatus::Up);
        s.engine()
            .apply(id, Input::Beat(&b))
            .await
            .unwrap()
            .unwrap();
    }
    ids
}

/// A tick at `now` for each of `ids`.
fn ticks(ids: &[String], now: i64) -> Vec<(&str, Input<'static>)> {
    ids.iter()
        .map(|id| (id.as_str(), Input::Tick { now }))
        .collect()
}

#[tokio::test]
async fn a_batched_tick_raises_one_alert_per_passed_deadline_once() {
    let s = TestStore::new("batch-tick");
    let now = now_ms();
    let ids = beaten_monitors(&s, 50, now - 120_000).await;
    s.monitor("quiet", 60, now).await; // never beaten: nothing to fire
    assert!(s.outbox().await.is_empty(), "a first beat alerts nobody");
    let due = s.store.due_all(now, 1000).await.unwrap();
    assert_eq!(due.len(), 50);
    assert!(due.iter().all(|&(_, d)| d == now - 60_000), "{due:?}");

    let mut inputs = ticks(&ids, now);
    inputs.push(("quiet", Input::Tick { now }));
    inputs.push(("gone", Input::Tick { now }));
    let first = s.engine().apply_batch(&inputs).await.unwrap();
    assert_eq!(first.len(), 52);
    for (id, applied) in ids.iter().zip(&first) {
        let applied = applied.as_ref().expect("monitor exists");
        assert_eq!(applied.jobs.len(), 1, "{id}");
        let job = &applied.jobs[0];
        assert_eq!((job.event, job.reason), (AlertEvent::Down, Reason::Timeout));
        assert_eq!(
            (job.monitor.id.as_str(), job.at),
            (id.as_str(), now - 60_000)
        );
    }
    let quiet = first[50].as_ref().expect("quiet exists");
    assert!(quiet.jobs.is_empty() && quiet.outcome.changes.is_empty());
    assert!(first[51].is_none(), "no such monitor");

    let outbox = s.outbox().await;
    assert_eq!(outbox.len(), 50);
    let alerted: BTreeSet<&str> = outbox.iter().map(|j| j.monitor.id.as_str()).collect();
    assert_eq!(alerted.len(), 50, "one alert per monitor");
    assert!(s.store.due_all(now, 1000).await.unwrap().is_empty());
    assert_eq!(s.state("m7").await.status, Status::Down);

    // The same batch again (a retry): nothing new.
    let again = s.engine().apply_batch(&inputs).await.unwrap();
    assert!(
        again[..50]
            .iter()
            .all(|a| a.as_ref().unwrap().jobs.is_empty())
    );
    assert_eq!(s.outbox().await, outbox);
    for id in &ids {
        assert_eq!(s.store.events(id, 100).await.unwrap().len(), 2, "{id}");
    }
}

#[tokio::test]
async fn racing_batches_raise_each_alert_once() {
    // Replicas ticking the same monitors at once: their writes conflict,
    // and the losers re-apply alone and find nothing left to fire.
    let s = TestStore::new("batch-race");
    let now = now_ms();
    let ids = beaten_monitors(&s, 50, now - 120_000).await;
    let inputs = ticks(&ids, now);
    let engine = s.engine();
    let runs = futures::future::join_all((0..8).map(|_| engine.apply_batch(&inputs))).await;
    let mut raised: HashMap<String, usize> = HashMap::new();
    for run in runs {
        for applied in run.unwrap() {
            for job in applied.expect("monitor exists").jobs {
                *raised.entry(job.alert_id.into_string()).or_default() += 1;
            }
        }
    }
    assert_eq!(raised.len(), 50, "{raised:?}");
    assert!(raised.values().all(|&n| n == 1), "{raised:?}");
    assert_eq!(s.outbox().await.len(), 50);
    for id in &ids {
        assert_eq!(s.store.monitor(id).await.unwrap().unwrap().ver, 2, "{id}");
    }
}

#[tokio::test]
async fn a_batched_tick_extends_deadlines_inside_an_outage() {
    let s = TestStore::new("batch-outage");
    let now = now_ms();
    let ids = beaten_monitors(&s, 2, now - 120_000).await;
    let deadline = now - 60_000;
    // The push path was down from 1 s before the deadline to 5 s after.
    assert!(
        s.store
            .pulse(deadline - 1_000, 2_000)
            .await
            .unwrap()
            .is_none()
    );
    let outage = s.store.pulse(deadline + 5_000, 2_000).await.unwrap();
    assert!(outage.is_some());

    let held = s
        .engine()
        .apply_batch(&ticks(&ids, deadline + 5_000))
        .await
        .unwrap();
    for (id, applied) in ids.iter().zip(held) {
        let applied = applied.unwrap();
        assert!(applied.jobs.is_empty(), "{id}: extended past the tick");
        assert_eq!(applied.outcome.state.deadline, Some(deadline + 6_000));
        assert_eq!(s.indexed_deadline(id).await, Some(deadline + 6_000));
    }
    let fired = s
        .engine()
        .apply_batch(&ticks(&ids, deadline + 6_000))
        .await
        .unwrap();
    for applied in fired {
        let jobs = applied.unwrap().jobs;
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].at, deadline + 6_000);
    }
}

impl TestStore {
    /// `OBJECT ENCODING` and `MEMORY USAGE … SAMPLES 0` of monitor `id`'s hash.
    async fn footprint(&self, id: &str) -> (String, u64) {
        let key = self.store.keys().monitor(id);
        let mut conn = redis().await;
        let encoding: String = redis::cmd("OBJECT")
            .arg("ENCODING")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("object encoding");
        let bytes: u64 = redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .arg("SAMPLES")
            .arg(0)
            .query_async(&mut conn)
            .await
            .expect("memory usage");
        (encoding, bytes)
    }

    async fn hset(&self, id: &str, field: &str, value: &str) {
        let _: () = redis::cmd("HSET")
            .arg(self.store.keys().monitor(id))
            .arg(field)
            .arg(value)
            .query_async(&mut redis().await)
            .await
            .expect("hset");
    }

    async fn hexists(&self, id: &str, field: &str) -> bool {
        redis::cmd("HEXISTS")
            .arg(self.store.keys().monitor(id))
            .arg(field)
            .query_async(&mut redis().await)
            .await
            .expect("hexists")
    }
}

/// Settings as the API writes them: a generated token, channels with
/// generated ids.
fn settings(name: &str, channels: usize, created_at: i64) -> MonitorConfig {
    let tok = token::generate();
    MonitorConfig {
        name: name.to_owned(),
        timeout: 3600,
        interval: 3600,
        channels: (0..channels).map(|_| token::new_id().into()).collect(),
        created_at,
        token_hash: token::hash(&tok),
        token_hint: token::hint(&tok),
        remind_every: None,
        confirm: 1,
    }
}

#[tokio::test]
async fn a_typical_monitor_is_a_small_listpack() {
    let s = TestStore::new("layout-small");
    let t = now_ms();
    let cfg = settings("nightly-db-backup-eu1", 2, t);
    s.store
        .create_monitor("typical", &cfg, &MonitorState::new(t))
        .await
        .unwrap();
    let (encoding, created) = s.footprint("typical").await;
    assert_eq!(encoding, "listpack");
    // A beat far into the stream: the state's numbers at their widest.
    let b = beat(1 << 40, t + 1, BeatStatus::Up);
    s.engine().apply("typical", Input::Beat(&b)).await.unwrap();
    let (encoding, committed) = s.footprint("typical").await;
    eprintln!("monitor hash: {created} B created, {committed} B after a beat ({encoding})");
    assert_eq!(encoding, "listpack");
    // As two JSON values (settings, state) the same monitor took ~680 B.
    assert!(committed < 400, "{committed} B");
    let m = s.store.monitor("typical").await.unwrap().unwrap();
    assert_eq!((m.cfg, m.state.last_seq, m.ver), (cfg, 1 << 40, 1));
}

#[tokio::test]
async fn settings_and_state_round_trip_through_commits() {
    let s = TestStore::new("layout-commit");
    let t = now_ms();
    let cfg = settings("reminded", 1, t);
    s.store
        .create_monitor("r", &cfg, &MonitorState::new(t))
        .await
        .unwrap();
    let b = beat(9, t + 1, BeatStatus::Down);
    s.engine().apply("r", Input::Beat(&b)).await.unwrap();

    // New settings with every optional value set, in the same write as a step.
    let reminded = MonitorConfig {
        name: "reminded, renamed".to_owned(),
        timeout: 60,
        interval: 30,
        channels: vec!["ops".into(), "on-call_2".into()],
        remind_every: Some(600),
        confirm: 3,
        ..cfg.clone()
    };
    let applied = s
        .engine()
        .apply_with("r", Input::Retime { now: t + 2 }, |_| {
            Some(reminded.clone())
        })
        .await
        .unwrap()
        .unwrap();
    let m = s.store.monitor("r").await.unwrap().unwrap();
    assert_eq!(
        (&m.cfg, &m.state, m.ver),
        (&reminded, &applied.outcome.state, 2)
    );
    assert_eq!(m.state.status, Status::Down);
    assert_eq!(m.state.deadline, Some(t + 2 + 600_000), "next reminder");
    assert!(s.hexists("r", "r").await && s.hexists("r", "d").await);

    // Back to no reminders: the optional values are removed, not left behind.
    let plain = MonitorConfig {
        remind_every: None,
        ..reminded
    };
    let applied = s
        .engine()
        .apply_with("r", Input::Retime { now: t + 3 }, |_| Some(plain.clone()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(applied.outcome.state.deadline, None);
    let m = s.store.monitor("r").await.unwrap().unwrap();
    assert_eq!(
        (&m.cfg, &m.state, m.ver),
        (&plain, &applied.outcome.state, 3)
    );
    assert!(!s.hexists("r", "r").await && !s.hexists("r", "d").await);
    assert_eq!(s.indexed_deadline("r").await, None);
}

#[tokio::test]
async fn a_long_name_and_many_channels_still_round_trip() {
    let s = TestStore::new("layout-large");
    let t = now_ms();
    let cfg = settings(&"é".repeat(200), 20, t);
    s.store
        .create_monitor("large", &cfg, &MonitorState::new(t))
        .await
        .unwrap();
    let b = beat(1, t + 1, BeatStatus::Up);
    let applied = s
        .engine()
        .apply("large", Input::Beat(&b))
        .await
        .unwrap()
        .unwrap();
    let (encoding, _) = s.footprint("large").await;
    assert_eq!(encoding, "hashtable", "values over 64 B");
    let m = s.store.monitor("large").await.unwrap().unwrap();
    assert_eq!((&m.cfg, &m.state, m.ver), (&cfg, &applied.outcome.state, 1));
}

#[tokio::test]
async fn a_field_that_does_not_parse_is_a_corrupt_record() {
    let s = TestStore::new("layout-corrupt");
    let t = now_ms();
    s.monitor("m", 60, t).await;
    s.hset("m", "t", "sixty").await;
    match s.store.monitor("m").await {
        Err(StoreError::CorruptField {
            key,
            field,
            problem,
        }) => {
            assert_eq!((key, field), (s.store.keys().monitor("m"), "t"));
            assert!(problem.contains("sixty"), "{problem}");
        }
        other => panic!("{other:?}"),
    }
    let b = beat(1, t + 1, BeatStatus::Up);
    let batch = s.engine().apply_batch(&[("m", Input::Beat(&b))]).await;
    assert!(matches!(
        batch,
        Err(StoreError::CorruptField { field: "t", .. })
    ));

    s.hset("m", "t", "60").await;
    let _: () = redis::cmd("HDEL")
        .arg(s.store.keys().monitor("m"))
        .arg("s")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let err = s.engine().apply("m", Input::Beat(&b)).await.unwrap_err();
    assert!(
        matches!(err, StoreError::CorruptField { field: "s", .. }),
        "{err}"
    );
    assert!(err.to_string().contains("status is missing"), "{err}");
}

/// Redis forgets its scripts when it restarts (or on `SCRIPT FLUSH`): the
/// next commit loads the script again instead of failing the batch.
#[tokio::test]
async fn a_commit_after_redis_forgot_its_scripts_loads_them_again() {
    let s = TestStore::new("store-noscript");
    let t = now_ms();
    s.monitor("m1", 60, t).await;
    let b1 = beat(1, t + 1, BeatStatus::Up);
    s.engine()
        .apply_batch(&[("m1", Input::Beat(&b1))])
        .await
        .expect("first beat");
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut redis().await)
        .await
        .expect("script flush");
    let b2 = beat(2, t + 2, BeatStatus::Up);
    let applied = s
        .engine()
        .apply_batch(&[("m1", Input::Beat(&b2))])
        .await
        .expect("a beat after SCRIPT FLUSH is applied");
    assert!(applied[0].is_some());
    let state = s.state("m1").await;
    assert_eq!((state.last_seq, state.last_beat_at), (2, Some(t + 2)));
    assert_eq!(s.indexed_deadline("m1").await, Some(t + 2 + 60_000));
}
