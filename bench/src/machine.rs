//! The machine a benchmark ran on, and what its processes used meanwhile:
//! cores, memory and CPU model for the record; CPU time and resident memory
//! of each process from `/proc`, and how much CPU *other* processes took
//! during a measurement, so a number taken on a busy machine says so.

use std::{
    collections::BTreeMap,
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// What the machine is.
#[derive(Clone, Debug)]
pub(crate) struct Machine {
    pub(crate) cores: usize,
    pub(crate) mem_total_kb: u64,
    pub(crate) cpu_model: String,
    pub(crate) kernel: String,
}

impl Machine {
    /// Reads `/proc`.
    pub(crate) fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_else(|| "unknown".into());
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            mem_total_kb: meminfo("MemTotal").unwrap_or(0),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map(|s| s.trim().to_owned())
                .unwrap_or_default(),
        }
    }

    /// One line for the record.
    pub(crate) fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB memory, Linux {}",
            self.cores,
            self.cpu_model,
            self.mem_total_kb as f64 / 1024.0 / 1024.0,
            self.kernel
        )
    }
}

fn meminfo(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// The 1-, 5- and 15-minute load averages.
pub(crate) fn loadavg() -> (f64, f64, f64) {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = text.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    (
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    )
}

/// Resident memory of a process, in KiB.
pub(crate) fn rss_kb(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// User plus system CPU time of a process (all its threads), in clock ticks.
pub(crate) fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime from a `/proc/<pid>/stat` line (fields 14 and 15; the
/// command name in parentheses may itself contain spaces).
pub(crate) fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state): utime is field 14, stime 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// (busy, total) clock ticks of all CPUs since boot, from `/proc/stat`.
fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = v.iter().take(8).sum();
    // idle and iowait are not busy.
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn clk_tck() -> f64 {
    static TCK: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TCK.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Pids of the processes whose command name is `comm` (e.g. `nats-server`).
pub(crate) fn pids_named(comm: &str) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(Path::new("/proc").join(pid.to_string()).join("comm"))
                .is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// The brokers' processes on this machine, by label.
pub(crate) fn broker_pids() -> Vec<(String, Vec<u32>)> {
    [
        ("nats-server", "nats-server"),
        ("redis-server", "redis-server"),
        ("rabbitmq", "beam.smp"),
    ]
    .into_iter()
    .map(|(label, comm)| (label.to_owned(), pids_named(comm)))
    .filter(|(_, pids)| !pids.is_empty())
    .collect()
}

/// CPU used by labelled groups of processes over a span of time.
pub(crate) struct CpuWatch {
    groups: Vec<(String, Vec<u32>, u64)>,
    machine_busy: u64,
    machine_total: u64,
    started: Instant,
}

/// What [`CpuWatch::stop`] measured: percent of one core per group, and of
/// the whole machine.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuUsage {
    /// (label, % of one core).
    pub(crate) groups: Vec<(String, f64)>,
    /// Busy share of all cores, in % of one core (200 % = two cores).
    pub(crate) machine: f64,
    /// Busy share not accounted for by the groups, in % of one core.
    pub(crate) others: f64,
    /// Cores of the machine.
    pub(crate) cores: usize,
}

impl CpuWatch {
    /// Starts watching `groups` of pids.
    pub(crate) fn start(groups: Vec<(String, Vec<u32>)>) -> Self {
        let (machine_busy, machine_total) = machine_ticks();
        Self {
            groups: groups
                .into_iter()
                .map(|(label, pids)| {
                    let t = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
                    (label, pids, t)
                })
                .collect(),
            machine_busy,
            machine_total,
            started: Instant::now(),
        }
    }

    /// CPU used since [`CpuWatch::start`].
    pub(crate) fn stop(&self) -> CpuUsage {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let tck = clk_tck();
        let pct = |ticks: u64| ticks as f64 / tck / secs * 100.0;
        let mut accounted = 0;
        let groups = self
            .groups
            .iter()
            .map(|(label, pids, t0)| {
                let t: u64 = pids.iter().filter_map(|p| cpu_ticks(*p)).sum();
                let d = t.saturating_sub(*t0);
                accounted += d;
                (label.clone(), pct(d))
            })
            .collect();
        let (busy, total) = machine_ticks();
        let busy = busy.saturating_sub(self.machine_busy);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        // The machine's ticks count every core: scale to wall time.
        let wall_ticks = total.saturating_sub(self.machine_total) as f64 / cores as f64;
        let machine = if wall_ticks > 0.0 {
            busy as f64 / wall_ticks * 100.0
        } else {
            0.0
        };
        let others = (machine - pct(accounted)).max(0.0);
        CpuUsage {
            groups,
            machine,
            others,
            cores,
        }
    }
}

impl CpuUsage {
    /// `ingest 95 %, evaluator 60 %, …` (100 % = one core).
    /// CPU time per event at `rate` events/s, by group and in all, and the
    /// rate all cores could sustain at that cost: the figure to compare
    /// across runs when the machine's speed varies.
    pub(crate) fn per_event(&self, rate: f64) -> String {
        if rate <= 0.0 {
            return "n/a".into();
        }
        // % of one core → µs of CPU per second → per event.
        let us = |pct: f64| pct * 10_000.0 / rate;
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|(l, p)| format!("{l} {:.1} µs", us(*p)))
            .collect();
        parts.push(format!("other processes {:.1} µs", us(self.others)));
        let all = us(self.machine);
        format!(
            "{}; **{all:.1} µs** in all — {} per second if all {} cores did nothing else",
            parts.join(", "),
            crate::report::fmt_int((self.cores as f64 * 1e6 / all) as u64),
            self.cores
        )
    }

    pub(crate) fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .groups
            .iter()
            .map(|(l, p)| format!("{l} {p:.0} %"))
            .collect();
        parts.push(format!("other processes {:.0} %", self.others));
        format!(
            "{} (100 % = one core; the machine's {} cores were {:.0} % busy in all)",
            parts.join(", "),
            self.cores,
            self.machine / self.cores as f64
        )
    }
}

/// Samples the resident memory of labelled processes in the background.
pub(crate) struct RssWatch {
    samples: Arc<Mutex<BTreeMap<String, (u64, u64)>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RssWatch {
    /// Samples every `every` until stopped.
    pub(crate) fn start(procs: Vec<(String, u32)>, every: Duration) -> Self {
        let samples: Arc<Mutex<BTreeMap<String, (u64, u64)>>> = Arc::default();
        let s = samples.clone();
        let task = tokio::spawn(async move {
            loop {
                for (label, pid) in &procs {
                    if let Some(kb) = rss_kb(*pid) {
                        let mut map = s.lock().expect("rss lock");
                        let e = map.entry(label.clone()).or_insert((0, 0));
                        e.0 = e.0.max(kb);
                        e.1 = kb;
                    }
                }
                tokio::time::sleep(every).await;
            }
        });
        Self { samples, task }
    }

    /// (label, peak KiB, last KiB) of each process.
    pub(crate) fn stop(self) -> Vec<(String, u64, u64)> {
        self.task.abort();
        self.samples
            .lock()
            .expect("rss lock")
            .iter()
            .map(|(l, (peak, last))| (l.clone(), *peak, *last))
            .collect()
    }
}

/// KiB as MiB for a table.
pub(crate) fn fmt_mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_survive_spaces_in_the_name() {
        let stat = "1234 (tokio worker (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        assert!(rss_kb(me).unwrap() > 0);
        assert!(cpu_ticks(me).is_some());
        assert!(Machine::read().cores >= 1);
    }
}
