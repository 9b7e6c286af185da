//! Real processes for failure tests: the Lifeline binaries as child
//! processes that can be killed with SIGKILL, and private broker instances
//! (nats-server, redis-server) on free ports with their own stores, which a
//! test may stop and restart without disturbing other tests.
//!
//! Every child is killed when its handle is dropped; logs go to
//! `target/test-logs/`.

use std::{
    collections::HashMap,
    net::TcpListener as StdListener,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
    time::Duration,
};

/// The workspace's `target/` directory.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Path of a Lifeline binary, built (debug) on first use.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("cargo build runs");
        assert!(status.success(), "building the service binaries failed");
    });
    target_dir().join("debug").join(name)
}

/// A free TCP port on 127.0.0.1 (bound then released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn log_file(label: &str) -> (std::fs::File, PathBuf) {
    static SEQ: Mutex<u32> = Mutex::new(0);
    let n = {
        let mut s = SEQ.lock().expect("seq lock");
        *s += 1;
        *s
    };
    let dir = target_dir().join("test-logs");
    std::fs::create_dir_all(&dir).expect("log dir");
    let path = dir.join(format!("{label}-{}-{n}.log", std::process::id()));
    (std::fs::File::create(&path).expect("log file"), path)
}

/// A child process, killed on drop.
pub struct Proc {
    label: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` with `args` and extra `env`, logging to a file.
    pub fn spawn(
        label: &str,
        program: &std::path::Path,
        args: &[&str],
        env: &HashMap<String, String>,
    ) -> Self {
        let (out, log) = log_file(label);
        let err = out.try_clone().expect("log clone");
        let child = Command::new(program)
            .args(args)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", program.display()));
        Self {
            label: label.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, waiting up to `limit` for a clean exit; SIGKILL after that.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        let Some(mut c) = self.child.take() else {
            return true;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        false
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Its label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// What it has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Waits until 127.0.0.1:`port` accepts connections.
pub async fn wait_port(port: u16, limit: Duration) {
    crate::wait_for(
        limit,
        &format!("port {port} to accept connections"),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// Which broker a [`PrivateServer`] runs.
#[derive(Clone, Copy, Debug)]
enum Kind {
    /// nats-server with JetStream and a file store.
    Nats,
    /// redis-server with an append-only file, fsynced on every write.
    Redis,
}

/// A private broker on a free port with a data directory of its own, which
/// a test may kill (SIGKILL) and restart on the same port and data.
pub struct PrivateServer {
    /// Its port.
    pub port: u16,
    kind: Kind,
    dir: tempdir::Dir,
    proc: Option<Proc>,
}

impl PrivateServer {
    /// A nats-server with JetStream.
    pub async fn nats() -> Self {
        Self::start(Kind::Nats).await
    }

    /// A redis-server with an append-only file.
    pub async fn redis() -> Self {
        Self::start(Kind::Redis).await
    }

    async fn start(kind: Kind) -> Self {
        let mut s = Self {
            port: free_port(),
            kind,
            dir: tempdir::Dir::new(&format!("{kind:?}").to_lowercase()),
            proc: None,
        };
        s.restart().await;
        s
    }

    /// Its URL.
    pub fn url(&self) -> String {
        match self.kind {
            Kind::Nats => format!("nats://127.0.0.1:{}", self.port),
            Kind::Redis => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// Kills it (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// (Re)starts it on the same port and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port.to_string();
        let dir = self.dir.path().to_string_lossy().into_owned();
        let (program, args): (&str, Vec<&str>) = match self.kind {
            Kind::Nats => (
                "nats-server",
                vec!["-a", "127.0.0.1", "-p", &port, "-js", "-sd", &dir],
            ),
            Kind::Redis => (
                "redis-server",
                vec![
                    "--port",
                    &port,
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    &dir,
                    "--appendonly",
                    "yes",
                    "--appendfsync",
                    "always",
                    "--save",
                    "",
                ],
            ),
        };
        self.proc = Some(Proc::spawn(
            program,
            std::path::Path::new(program),
            &args,
            &HashMap::new(),
        ));
        wait_port(self.port, Duration::from_secs(20)).await;
    }
}

/// A private RabbitMQ node on free ports, with its own data directory
/// (owned by the `rabbitmq` user, as `rabbitmq-server` drops to it).
pub struct PrivateRabbit {
    /// Its AMQP port.
    pub port: u16,
    dist_port: u16,
    node: String,
    dir: tempdir::Dir,
    proc: Option<Proc>,
}

impl PrivateRabbit {
    /// Starts it (about 10 s).
    pub async fn start() -> Self {
        let dir = tempdir::Dir::new("rabbit");
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq", &dir.path().to_string_lossy()])
            .status();
        let _ = Command::new("chmod")
            .args(["755", &dir.path().to_string_lossy()])
            .status();
        let mut r = Self {
            port: free_port(),
            dist_port: free_port(),
            node: format!("lifeline-{}@localhost", lifeline_shared::token::new_id()),
            dir,
            proc: None,
        };
        r.restart().await;
        r
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Kills the node (SIGKILL to the Erlang VM).
    pub fn kill(&mut self) {
        let pid_file = self.dir.path().join("pid");
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
            let _ = std::fs::remove_file(&pid_file);
        }
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }

    /// (Re)starts it on the same ports and data directory.
    pub async fn restart(&mut self) {
        self.kill();
        let d = self.dir.path().to_string_lossy().into_owned();
        let env: HashMap<String, String> = [
            ("HOME", d.clone()),
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".into()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{d}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{d}/log")),
            ("RABBITMQ_FEATURE_FLAGS_FILE", format!("{d}/ff")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{d}/plugins")),
            ("RABBITMQ_PID_FILE", format!("{d}/pid")),
            ("RABBITMQ_CONFIG_FILE", format!("{d}/rabbitmq")),
            (
                "RABBITMQ_ADVANCED_CONFIG_FILE",
                format!("{d}/advanced.config"),
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        self.proc = Some(Proc::spawn(
            "rabbitmq",
            std::path::Path::new("rabbitmq-server"),
            &[],
            &env,
        ));
        wait_port(self.port, Duration::from_secs(90)).await;
        // The port opens before the broker accepts logins: wait for a real connection.
        let url = self.url();
        crate::wait_for(
            Duration::from_secs(60),
            "rabbitmq accepting connections",
            || {
                let url = url.clone();
                async move {
                    let c =
                        lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
                            .await
                            .ok()?;
                    let _ = c.close(200, "ready".into()).await;
                    Some(())
                }
            },
        )
        .await;
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A temporary directory removed on drop (std only).
pub mod tempdir {
    use std::path::{Path, PathBuf};

    /// The directory.
    pub struct Dir(PathBuf);

    impl Dir {
        /// Creates `$TMPDIR/lifeline-<label>-<random>`.
        pub fn new(label: &str) -> Self {
            let p = std::env::temp_dir().join(format!(
                "lifeline-{label}-{}",
                lifeline_shared::token::new_id()
            ));
            std::fs::create_dir_all(&p).expect("temp dir");
            Self(p)
        }

        /// Its path.
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Where the brokers are.
#[derive(Clone, Debug)]
pub struct Brokers {
    /// NATS URL.
    pub nats_url: String,
    /// Redis URL.
    pub redis_url: String,
    /// RabbitMQ URL.
    pub amqp_url: String,
}

impl Brokers {
    /// The machine's brokers on their standard ports.
    pub fn local() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".into(),
            redis_url: "redis://127.0.0.1:6379".into(),
            amqp_url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
        }
    }
}

/// One service process and its HTTP port.
pub struct Service {
    /// The process.
    pub proc: Proc,
    /// Its HTTP (or ops HTTP) port.
    pub port: u16,
}

impl Service {
    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The four services as real processes, any number of replicas each.
pub struct ProcStack {
    client: crate::Client,
    env: HashMap<String, String>,
    /// Ingest replicas.
    pub ingest: Vec<Service>,
    /// The API.
    pub api: Service,
    /// Evaluator replicas (a killed one stays in the list, stopped).
    pub evaluators: Vec<Service>,
    /// Notifier replicas.
    pub notifiers: Vec<Service>,
    brokers: Brokers,
}

impl std::ops::Deref for ProcStack {
    type Target = crate::Client;

    fn deref(&self) -> &crate::Client {
        &self.client
    }
}

impl ProcStack {
    /// Starts `n_ingest` ingest, one API, `n_eval` evaluator and `n_notif`
    /// notifier processes under a new prefix, with `extra` environment, and
    /// waits until every one is ready.
    pub async fn start(
        tag: &str,
        brokers: &Brokers,
        (n_ingest, n_eval, n_notif): (usize, usize, usize),
        extra: &[(&str, &str)],
    ) -> Self {
        let prefix = format!("{tag}-{}", lifeline_shared::token::new_id());
        let ingest_ports: Vec<u16> = (0..n_ingest).map(|_| free_port()).collect();
        let ingest_urls: Vec<String> = ingest_ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect();
        let mut env: HashMap<String, String> = [
            ("LIFELINE_PREFIX", prefix.as_str()),
            ("LIFELINE_NATS_URL", brokers.nats_url.as_str()),
            ("LIFELINE_REDIS_URL", brokers.redis_url.as_str()),
            ("LIFELINE_AMQP_URL", brokers.amqp_url.as_str()),
            ("LIFELINE_API_KEY", crate::API_KEY),
            ("LIFELINE_PUBLIC_URL", ingest_urls[0].as_str()),
            ("RUST_LOG", "info"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let api_port = free_port();
        let api = Self::spawn_with(&env, "lifeline-api", "LIFELINE_API_ADDR", api_port);
        let mut stack = Self {
            client: crate::Client::new(
                &prefix,
                ingest_urls,
                format!("http://127.0.0.1:{api_port}"),
            ),
            ingest: ingest_ports
                .into_iter()
                .map(|p| Self::spawn_with(&env, "lifeline-ingest", "LIFELINE_INGEST_ADDR", p))
                .collect(),
            api,
            evaluators: Vec::new(),
            notifiers: Vec::new(),
            env,
            brokers: brokers.clone(),
        };
        for _ in 0..n_eval {
            stack.spawn_evaluator();
        }
        for _ in 0..n_notif {
            stack.spawn_notifier();
        }
        let mut urls: Vec<String> = stack.ingest.iter().map(Service::url).collect();
        urls.push(stack.api.url());
        urls.extend(stack.evaluators.iter().map(Service::url));
        urls.extend(stack.notifiers.iter().map(Service::url));
        stack.client.wait_ready(&urls).await;
        stack
    }

    fn spawn_with(env: &HashMap<String, String>, bin: &str, addr_var: &str, port: u16) -> Service {
        let mut env = env.clone();
        env.insert(addr_var.to_owned(), format!("127.0.0.1:{port}"));
        Service {
            proc: Proc::spawn(bin, &binary(bin), &[], &env),
            port,
        }
    }

    /// Starts one more evaluator; returns its index.
    pub fn spawn_evaluator(&mut self) -> usize {
        let s = Self::spawn_with(
            &self.env,
            "lifeline-evaluator",
            "LIFELINE_EVALUATOR_ADDR",
            free_port(),
        );
        self.evaluators.push(s);
        self.evaluators.len() - 1
    }

    /// Starts one more notifier; returns its index.
    pub fn spawn_notifier(&mut self) -> usize {
        let s = Self::spawn_with(
            &self.env,
            "lifeline-notifier",
            "LIFELINE_NOTIFIER_ADDR",
            free_port(),
        );
        self.notifiers.push(s);
        self.notifiers.len() - 1
    }

    /// Restarts ingest replica `i` on its port (after a kill).
    pub fn respawn_ingest(&mut self, i: usize) {
        let port = self.ingest[i].port;
        self.ingest[i] =
            Self::spawn_with(&self.env, "lifeline-ingest", "LIFELINE_INGEST_ADDR", port);
    }

    /// Every log line of every process, for diagnostics and secret checks.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for s in self
            .ingest
            .iter()
            .chain([&self.api])
            .chain(&self.evaluators)
            .chain(&self.notifiers)
        {
            out.push_str(&format!("==== {} (pid {})\n", s.proc.label(), s.proc.pid()));
            out.push_str(&s.proc.log());
        }
        out
    }
}

impl Drop for ProcStack {
    fn drop(&mut self) {
        for s in self
            .ingest
            .iter_mut()
            .chain([&mut self.api])
            .chain(self.evaluators.iter_mut())
            .chain(self.notifiers.iter_mut())
        {
            s.proc.kill9();
        }
        crate::cleanup_blocking_at(self.names(), self.brokers.clone());
    }
}
