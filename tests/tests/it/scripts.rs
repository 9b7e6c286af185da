//! `scripts/up` and `scripts/down` as a user runs them, on the workspace's
//! debug binaries (`LIFELINE_BIN_DIR`), each stack with a run directory of
//! its own (`LIFELINE_RUN_DIR`), free ports and a fresh prefix, so these
//! tests run beside every other.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lifeline_testkit::{PrivateServer, Scope, TempDir, binary, free_port, wait_for};
use lifeline_tests::API_KEY;
use serde_json::{Value, json};

const SERVICES: [&str; 4] = ["evaluator", "notifier", "ingest", "api"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// A stack that `scripts/up` runs and `scripts/down` stops; stopped (and its
/// broker names removed) on drop whatever the test did.
struct UpStack {
    env: Vec<(String, String)>,
    run_dir: TempDir,
    /// Removes what the prefix created in the brokers, after `Drop` ran
    /// `scripts/down`.
    _scope: Scope,
    api_url: String,
    ingest_url: String,
}

impl UpStack {
    /// A stack under `<tag>-<random>` with `extra` environment.
    fn new(tag: &str, extra: &[(&str, String)]) -> Self {
        let bin_dir = binary("lifeline-ingest")
            .parent()
            .expect("binary directory")
            .to_owned();
        let run_dir = TempDir::new(tag);
        let scope = Scope::new(tag);
        let prefix = scope.prefix().to_owned();
        let [ingest, api, evaluator, notifier] = [(); 4].map(|_| free_port());
        let mut env: Vec<(String, String)> = [
            ("LIFELINE_BIN_DIR", bin_dir.display().to_string()),
            ("LIFELINE_RUN_DIR", run_dir.path().display().to_string()),
            ("LIFELINE_PREFIX", prefix.clone()),
            ("LIFELINE_API_KEY", API_KEY.to_owned()),
            ("LIFELINE_INGEST_ADDR", format!("127.0.0.1:{ingest}")),
            ("LIFELINE_API_ADDR", format!("127.0.0.1:{api}")),
            ("LIFELINE_EVALUATOR_ADDR", format!("127.0.0.1:{evaluator}")),
            ("LIFELINE_NOTIFIER_ADDR", format!("127.0.0.1:{notifier}")),
            ("UP_TIMEOUT", "120".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        env.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
        env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
        Self {
            env,
            run_dir,
            _scope: scope,
            api_url: format!("http://127.0.0.1:{api}"),
            ingest_url: format!("http://127.0.0.1:{ingest}"),
        }
    }

    /// Runs `scripts/<script>` with the stack's environment (and nothing of
    /// this process's `LIFELINE_*`/`UP_*` beyond it).
    fn script(&self, script: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(repo_root().join("scripts").join(script))
            .current_dir(repo_root());
        for (k, _) in std::env::vars() {
            if k.starts_with("LIFELINE_") || k.starts_with("UP_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)))
            .output()
            .unwrap_or_else(|e| panic!("running scripts/{script}: {e}"))
    }

    /// `scripts/up`, which must succeed; returns what it printed.
    fn up(&self) -> String {
        let out = self.script("up");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "scripts/up failed:\n{text}");
        text
    }

    /// `scripts/down`, which must succeed.
    fn down(&self) -> String {
        let out = self.script("down");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "scripts/down failed:\n{text}");
        text
    }

    /// The pid in the run directory's pid file of `service`.
    fn pid(&self, service: &str) -> Option<u32> {
        std::fs::read_to_string(self.run_dir.path().join(format!("{service}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        reqwest::Client::new()
            .request(method, format!("{}/api/v1{path}", self.api_url))
            .bearer_auth(API_KEY)
    }
}

impl Drop for UpStack {
    fn drop(&mut self) {
        let _ = self.script("down");
    }
}

/// The first word of process `pid`'s command line, if it runs.
fn arg0(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let first = raw.split(|b| *b == 0).next()?;
    (!first.is_empty()).then(|| String::from_utf8_lossy(first).into_owned())
}

/// Busy threads on every core until dropped.
struct CpuLoad(Arc<AtomicBool>, Vec<std::thread::JoinHandle<()>>);

impl CpuLoad {
    fn start(threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let handles = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                })
            })
            .collect();
        Self(stop, handles)
    }
}

impl Drop for CpuLoad {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        for h in self.1.drain(..) {
            let _ = h.join();
        }
    }
}

/// A directory of stand-ins for the service binaries that take `pause`
/// before they exec the real one, as a process does when the machine is
/// busy or the binary is not in the page cache (right after a build): for
/// that long, the process `scripts/up` started is alive but not yet the
/// service.
fn slow_exec_bin_dir(pause: &str) -> TempDir {
    let dir = TempDir::new("slowexec");
    for service in SERVICES {
        let name = format!("lifeline-{service}");
        let path = dir.path().join(&name);
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\nsleep {pause}\nexec '{}' \"$@\"\n",
                binary(&name).display()
            ),
        )
        .expect("write stand-in");
        let chmod = Command::new("chmod")
            .arg("755")
            .arg(&path)
            .status()
            .expect("chmod");
        assert!(chmod.success());
    }
    dir
}

/// Started and stopped again and again with every core busy and the
/// binaries slow to exec, `scripts/up` never loses track of a service it
/// started: after each `up` every pid file names a live process running
/// its service's binary, and after each `down` every one of them is gone
/// and its port free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_and_down_under_cpu_load_never_orphan_a_service() {
    let slow = slow_exec_bin_dir("0.3");
    let stack = UpStack::new(
        "scriptsupdown",
        &[
            ("LIFELINE_REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            ("LIFELINE_BIN_DIR", slow.path().display().to_string()),
        ],
    );
    let load = CpuLoad::start(4);
    for round in 1..=6 {
        let said = stack.up();
        let mut pids = Vec::new();
        for service in SERVICES {
            let pid = stack
                .pid(service)
                .unwrap_or_else(|| panic!("round {round}: no pid file for {service}:\n{said}"));
            let arg0 = arg0(pid).unwrap_or_else(|| {
                panic!("round {round}: {service} ({pid}) is not running:\n{said}")
            });
            assert!(
                arg0.ends_with(&format!("/lifeline-{service}")),
                "round {round}: pid file of {service} names {arg0}"
            );
            pids.push((service, pid));
        }
        let health = reqwest::get(format!("{}/healthz", stack.ingest_url))
            .await
            .expect("ingest answers");
        assert_eq!(health.status(), 200);

        let said = stack.down();
        for (service, pid) in pids {
            assert!(
                arg0(pid).is_none_or(|a| !a.ends_with(&format!("/lifeline-{service}"))),
                "round {round}: {service} ({pid}) still runs after scripts/down:\n{said}"
            );
            assert!(
                stack.pid(service).is_none(),
                "round {round}: {service}'s pid file left"
            );
        }
        for (key, value) in &stack.env {
            if key.ends_with("_ADDR") {
                assert!(
                    std::net::TcpListener::bind(value).is_ok(),
                    "round {round}: {value} ({key}) still taken after scripts/down"
                );
            }
        }
    }
    drop(load);
}

/// With a Redis that keeps nothing on disk in place of the machine's,
/// `scripts/up` runs Lifeline's own with an append-only file: monitors,
/// channels and states created through the API survive a SIGKILL of that
/// Redis and the next `scripts/up`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_survive_a_hard_kill_of_the_stacks_redis() {
    let found = PrivateServer::redis_volatile().await;
    let own_port = free_port();
    let stack = UpStack::new(
        "scriptsredis",
        &[
            ("UP_DEFAULT_REDIS_URL", found.url()),
            ("UP_OWN_REDIS_PORT", own_port.to_string()),
        ],
    );
    let said = stack.up();
    assert!(
        said.contains(&format!("starting Lifeline's own on 127.0.0.1:{own_port}")),
        "{said}"
    );

    // What a user builds: a channel, three monitors, one of them beating.
    let r = stack
        .api(reqwest::Method::POST, "/channels")
        .json(&json!({"type": "webhook", "name": "ops", "url": "http://127.0.0.1:9/hook"}))
        .send()
        .await
        .expect("create channel");
    assert_eq!(r.status(), 201);
    let channel: Value = r.json().await.expect("channel");
    let mut monitors = Vec::new();
    for name in ["backup", "sync", "report"] {
        let r = stack
            .api(reqwest::Method::POST, "/monitors")
            .json(&json!({"name": name, "timeout": 3600, "channels": [channel["id"]]}))
            .send()
            .await
            .expect("create monitor");
        assert_eq!(r.status(), 201);
        monitors.push(r.json::<Value>().await.expect("monitor"));
    }
    let token = monitors[0]["token"].as_str().expect("token");
    let pushed = reqwest::Client::new()
        .post(format!("{}/api/push/{token}", stack.ingest_url))
        .send()
        .await
        .expect("push");
    assert_eq!(pushed.status(), 200);
    let list = |stack: &UpStack| {
        let req = stack.api(reqwest::Method::GET, "/monitors");
        async move {
            let r = req.send().await.ok()?;
            if !r.status().is_success() {
                return None;
            }
            let v: Value = r.json().await.ok()?;
            let mut seen: Vec<(String, String)> = v["monitors"]
                .as_array()?
                .iter()
                .map(|m| {
                    (
                        m["name"].as_str().unwrap_or("").to_owned(),
                        m["status"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect();
            seen.sort();
            Some(seen)
        }
    };
    let expected = vec![
        ("backup".to_owned(), "up".to_owned()),
        ("report".to_owned(), "new".to_owned()),
        ("sync".to_owned(), "new".to_owned()),
    ];
    wait_for(Duration::from_secs(30), "the beat applied", || async {
        (list(&stack).await? == expected).then_some(())
    })
    .await;

    // The hard way: SIGKILL, no chance to write anything more.
    let pid_file = stack.run_dir.path().join("redis/redis.pid");
    let pid = std::fs::read_to_string(&pid_file).expect("own Redis pid file");
    let killed = Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .expect("kill");
    assert!(killed.success());
    wait_for(Duration::from_secs(10), "the own Redis gone", || async {
        std::net::TcpListener::bind(("127.0.0.1", own_port))
            .ok()
            .map(|_| ())
    })
    .await;

    let said = stack.up();
    assert!(said.contains("starting Lifeline's own"), "{said}");
    let seen = wait_for(Duration::from_secs(30), "the monitors back", || async {
        let seen = list(&stack).await?;
        (seen == expected).then_some(seen)
    })
    .await;
    assert_eq!(seen, expected);
    let r = stack
        .api(reqwest::Method::GET, "/channels")
        .send()
        .await
        .expect("list channels");
    let channels: Value = r.json().await.expect("channels");
    assert_eq!(channels["channels"][0]["id"], channel["id"], "{channels}");

    // scripts/down stops the Redis it started, too.
    stack.down();
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", own_port)).is_ok(),
        "Lifeline's own Redis still runs after scripts/down"
    );
}
