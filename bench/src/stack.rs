//! The stack under test: the release binaries of the services, started as
//! child processes under a prefix of the benchmark's own, on free ports,
//! against the machine's brokers — and everything removed again afterwards.
//!
//! Each mode takes a fresh prefix from [`Env::scope`] (`bench-<mode>-<id>`),
//! so its counters start at zero and nothing it writes mixes with other
//! users of the brokers. [`Env::release`] deletes what the prefix created —
//! Redis keys, the NATS stream, the RabbitMQ queues and exchange, with the
//! test kit's clean-up — and `lifeline-bench clean` removes whatever an
//! interrupted run left behind under `bench-*`. The processes, their logs
//! and free ports are the test kit's too.

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Mutex,
    time::Duration,
};

use anyhow::Context as _;
use lifeline_shared::names::Names;
use lifeline_testkit::{Brokers, Proc, Service, free_port};

/// How long a service may take to answer `/readyz`.
pub(crate) const READY_LIMIT: Duration = Duration::from_secs(30);
/// How long removing a prefix may take (a million monitors' keys take a while).
const CLEANUP_LIMIT: Duration = Duration::from_secs(300);

/// What every mode shares: brokers, binaries, output, and the prefixes in
/// use (removed at the end, however the run ends).
pub(crate) struct Env {
    pub(crate) brokers: Brokers,
    pub(crate) bin_dir: PathBuf,
    pub(crate) log_dir: PathBuf,
    /// `RUST_LOG` of the services.
    pub(crate) service_log: String,
    /// `TOKIO_WORKER_THREADS` of every service.
    pub(crate) worker_threads: usize,
    pub(crate) ingest_replicas: usize,
    pub(crate) evaluator_replicas: usize,
    pub(crate) quick: bool,
    /// The command as typed, for the record.
    pub(crate) command: String,
    /// The commit the binaries were built from, as far as git knows.
    pub(crate) code: String,
    /// `BENCHMARKS.md` to update, if any.
    pub(crate) output: Option<PathBuf>,
    pub(crate) http: reqwest::Client,
    prefixes: Mutex<Vec<Names>>,
}

impl Env {
    /// The environment of a run: `global` options, the binaries in
    /// `bin_dir`, `command` as typed, results written to `output` if any.
    pub(crate) fn new(
        global: &crate::cli::Global,
        bin_dir: PathBuf,
        command: String,
        output: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let log_dir = bin_dir
            .parent()
            .map_or_else(|| bin_dir.join("bench-logs"), |t| t.join("bench-logs"));
        std::fs::create_dir_all(&log_dir)
            .with_context(|| format!("creating {}", log_dir.display()))?;
        // Only the latest run's logs are kept.
        if let Ok(dir) = std::fs::read_dir(&log_dir) {
            for e in dir.flatten() {
                if e.file_name().to_string_lossy().ends_with(".log") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(Self {
            brokers: Brokers {
                nats_url: global.nats_url.clone(),
                redis_url: global.redis_url.clone(),
                amqp_url: global.amqp_url.clone(),
            },
            bin_dir,
            log_dir,
            service_log: global.service_log.clone(),
            worker_threads: global.worker_threads.max(1),
            ingest_replicas: global.ingest.max(1),
            evaluator_replicas: global.evaluators.max(1),
            quick: global.quick,
            command,
            code: code_version(),
            output,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()?,
            prefixes: Mutex::new(Vec::new()),
        })
    }

    /// A fresh prefix for one mode, removed by [`Env::release`] or at exit.
    pub(crate) fn scope(&self, tag: &str) -> Names {
        let id = lifeline_shared::token::new_id();
        let names = Names::new(&format!("bench-{tag}-{}", &id[..8])).expect("valid prefix");
        self.prefixes
            .lock()
            .expect("prefix lock")
            .push(names.clone());
        names
    }

    /// Removes everything `names` created in the brokers.
    pub(crate) async fn release(&self, names: &Names) {
        self.cleanup(names).await;
        self.prefixes
            .lock()
            .expect("prefix lock")
            .retain(|n| n != names);
    }

    /// Removes every prefix still in use (at exit, also after an error).
    pub(crate) async fn release_all(&self) {
        let all: Vec<Names> = std::mem::take(&mut *self.prefixes.lock().expect("prefix lock"));
        for names in all {
            self.cleanup(&names).await;
        }
    }

    /// Removes every Redis key, the NATS stream and the RabbitMQ queues and
    /// exchange of `names` (best effort, bounded in time).
    async fn cleanup(&self, names: &Names) {
        if !lifeline_testkit::cleanup(&self.brokers, names, CLEANUP_LIMIT).await {
            eprintln!(
                "bench: cleaning up {} took over {CLEANUP_LIMIT:?}; `lifeline-bench clean` removes the rest",
                names.prefix()
            );
        }
    }

    /// The environment every service process gets.
    fn service_env(&self, names: &Names) -> HashMap<String, String> {
        let mut env = self.brokers.service_env(names);
        env.extend(
            [
                ("LIFELINE_API_KEY", "bench-api-key-not-secret"),
                ("RUST_LOG", &self.service_log),
                ("NO_COLOR", "1"),
                ("TOKIO_WORKER_THREADS", &self.worker_threads.to_string()),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        );
        env
    }
}

/// `c126e6a`, `c126e6a with uncommitted changes`, or `unknown`: the
/// working tree's commit when the run started (scripts/bench builds the
/// binaries from it just before).
fn code_version() -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(sha) => {
            // Changes to the record itself do not count.
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| s.lines().any(|l| !l.ends_with("BENCHMARKS.md")));
            if dirty {
                format!("{sha} with uncommitted changes")
            } else {
                sha
            }
        }
        None => "unknown".into(),
    }
}

/// Starts `program` as service `kind` (`ingest`, `evaluator`, `api`,
/// `notifier`, `trivial`) on `port`, its output in
/// `<log_dir>/<kind>-<port>-<pid>.log`; killed when dropped.
pub(crate) fn spawn(
    env: &Env,
    kind: &str,
    program: &Path,
    args: &[&str],
    vars: &HashMap<String, String>,
    port: u16,
) -> anyhow::Result<Service> {
    let log = env
        .log_dir
        .join(format!("{kind}-{port}-{}.log", std::process::id()));
    let proc = Proc::start(kind, program, args, vars, log).with_context(|| {
        format!(
            "{} is built by `cargo build --release --bins` (scripts/bench does it)",
            program.display()
        )
    })?;
    Ok(Service { proc, port })
}

/// Which services to start.
#[derive(Clone, Debug, Default)]
pub(crate) struct Spec {
    /// Evaluator replicas started with the rest (default: `--evaluators`).
    pub(crate) evaluators: Option<usize>,
    pub(crate) api: bool,
    pub(crate) notifier: bool,
    /// Extra environment for every service.
    pub(crate) env: Vec<(String, String)>,
}

/// Spawns one `kind` service (`ingest`, `evaluator`, …) of `names` on a
/// free port.
fn spawn_kind(
    env: &Env,
    names: &Names,
    spec: &Spec,
    kind: &'static str,
) -> anyhow::Result<Service> {
    let mut vars = env.service_env(names);
    vars.extend(spec.env.iter().cloned());
    let port = free_port();
    vars.insert(
        format!("LIFELINE_{}_ADDR", kind.to_uppercase()),
        format!("127.0.0.1:{port}"),
    );
    spawn(
        env,
        kind,
        &env.bin_dir.join(format!("lifeline-{kind}")),
        &[],
        &vars,
        port,
    )
}

/// The running services of one prefix.
pub(crate) struct Stack {
    pub(crate) ingest: Vec<Service>,
    pub(crate) evaluators: Vec<Service>,
    pub(crate) others: Vec<Service>,
}

impl Stack {
    /// Starts the services (evaluators first, as `scripts/up` does) and
    /// waits until each answers `/readyz`.
    pub(crate) async fn start(env: &Env, names: &Names, spec: &Spec) -> anyhow::Result<Self> {
        let evaluators = spec.evaluators.unwrap_or(env.evaluator_replicas);
        let mut stack = Self {
            evaluators: (0..evaluators)
                .map(|_| spawn_kind(env, names, spec, "evaluator"))
                .collect::<anyhow::Result<_>>()?,
            ingest: Vec::new(),
            others: Vec::new(),
        };
        if spec.notifier {
            stack.others.push(spawn_kind(env, names, spec, "notifier")?);
        }
        stack.ingest = (0..env.ingest_replicas)
            .map(|_| spawn_kind(env, names, spec, "ingest"))
            .collect::<anyhow::Result<_>>()?;
        if spec.api {
            stack.others.push(spawn_kind(env, names, spec, "api")?);
        }
        for s in stack.all_mut() {
            s.wait_ready(&env.http, "/readyz", READY_LIMIT).await?;
        }
        Ok(stack)
    }

    /// Starts `n` more evaluator replicas and waits until they are ready.
    pub(crate) async fn add_evaluators(
        &mut self,
        env: &Env,
        names: &Names,
        spec: &Spec,
        n: usize,
    ) -> anyhow::Result<()> {
        let first = self.evaluators.len();
        for _ in 0..n {
            self.evaluators
                .push(spawn_kind(env, names, spec, "evaluator")?);
        }
        for s in &mut self.evaluators[first..] {
            s.wait_ready(&env.http, "/readyz", READY_LIMIT).await?;
        }
        Ok(())
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut Service> {
        self.evaluators
            .iter_mut()
            .chain(self.ingest.iter_mut())
            .chain(self.others.iter_mut())
    }

    /// Every service.
    pub(crate) fn all(&self) -> impl Iterator<Item = &Service> {
        self.evaluators
            .iter()
            .chain(self.ingest.iter())
            .chain(self.others.iter())
    }

    /// An error naming the first service that has exited.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        for s in self.all_mut() {
            s.check_alive()?;
        }
        Ok(())
    }

    /// The ingest replicas' addresses.
    pub(crate) fn ingest_addrs(&self) -> Vec<SocketAddr> {
        self.ingest.iter().map(Service::addr).collect()
    }

    /// Pids by label (`ingest`, `evaluator`: replicas together) for CPU
    /// accounting.
    pub(crate) fn pid_groups(&self) -> Vec<(String, Vec<u32>)> {
        let mut groups: Vec<(String, Vec<u32>)> = Vec::new();
        for s in self.all() {
            let kind = s.proc.label();
            match groups.iter_mut().find(|(k, _)| k == kind) {
                Some((_, pids)) => pids.push(s.proc.pid()),
                None => groups.push((kind.to_owned(), vec![s.proc.pid()])),
            }
        }
        groups
    }

    /// (label, pid) of each process, replicas numbered.
    pub(crate) fn labelled_pids(&self) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        for kind in ["ingest", "evaluator", "api", "notifier"] {
            let of_kind: Vec<&Service> = self.all().filter(|s| s.proc.label() == kind).collect();
            for (i, s) in of_kind.iter().enumerate() {
                let label = if of_kind.len() > 1 {
                    format!("{kind} #{}", i + 1)
                } else {
                    kind.to_owned()
                };
                out.push((label, s.proc.pid()));
            }
        }
        out
    }

    /// The sum over evaluator replicas of the Prometheus series `name` whose
    /// labels include `label` (e.g. `result="applied"`); a series not yet
    /// rendered counts as zero.
    pub(crate) async fn evaluator_metric(
        &self,
        http: &reqwest::Client,
        name: &str,
        label: &str,
    ) -> anyhow::Result<f64> {
        let mut total = 0.0;
        for e in &self.evaluators {
            let text = http
                .get(format!("{}/metrics", e.url()))
                .send()
                .await?
                .error_for_status()?
                .text()
                .await?;
            total += metric_sum(&text, name, label);
        }
        Ok(total)
    }
}

/// Sums the samples of `name` (exactly that metric) whose label set
/// contains `label` (or any, if `label` is empty) in Prometheus text.
pub(crate) fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let (labels, value) = if let Some(r) = rest.strip_prefix('{') {
                let (labels, v) = r.split_once('}')?;
                (labels, v)
            } else if rest.starts_with(' ') {
                ("", rest)
            } else {
                return None; // another metric sharing the name's start
            };
            if !label.is_empty() && !labels.split(',').any(|l| l.trim() == label) {
                return None;
            }
            value.split_whitespace().next()?.parse::<f64>().ok()
        })
        .sum()
}

/// `lifeline-bench clean`: removes everything under any `bench-*` prefix —
/// what an interrupted run left behind.
pub(crate) async fn clean_all(brokers: &Brokers) -> anyhow::Result<()> {
    let removed = lifeline_testkit::cleanup_all(brokers, "bench-").await?;
    println!("redis: {} keys removed", removed.keys);
    println!("nats: {} streams removed", removed.streams);
    println!(
        "rabbitmq: {} queues, {} exchanges removed",
        removed.queues, removed.exchanges
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_sums_pick_the_series_asked_for() {
        let text = "# HELP lifeline_evaluator_beats_total x\n\
            # TYPE lifeline_evaluator_beats_total counter\n\
            lifeline_evaluator_beats_total{result=\"applied\"} 1200\n\
            lifeline_evaluator_beats_total{result=\"late\"} 3\n\
            lifeline_evaluator_beats_total_other{result=\"applied\"} 99\n\
            lifeline_evaluator_outages_total 2\n";
        assert_eq!(
            metric_sum(text, "lifeline_evaluator_beats_total", "result=\"applied\""),
            1200.0
        );
        assert_eq!(
            metric_sum(text, "lifeline_evaluator_beats_total", ""),
            1203.0
        );
        assert_eq!(
            metric_sum(text, "lifeline_evaluator_outages_total", ""),
            2.0
        );
        assert_eq!(
            metric_sum(text, "lifeline_evaluator_beats_total", "result=\"x\""),
            0.0
        );
    }
}
