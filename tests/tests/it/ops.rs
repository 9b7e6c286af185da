//! What an operator sees of a running stack, each service a real process:
//! `/metrics` (every metric described, latencies as histograms with
//! buckets, the build named) and the warning when Redis keeps nothing on
//! disk.

use std::{collections::BTreeMap, time::Duration};

use lifeline_testkit::{Brokers, PrivateServer, Receiver, wait_for};
use lifeline_tests::procs::ProcStack;

/// The metric families of a Prometheus text exposition, by name: its
/// `# TYPE` and `# HELP`, and the sample lines that belong to it.
#[derive(Debug, Default)]
struct Family {
    kind: Option<String>,
    help: Option<String>,
    samples: Vec<String>,
}

fn families(text: &str) -> BTreeMap<String, Family> {
    let mut out: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            out.entry(name.to_owned()).or_default().help = Some(help.to_owned());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a kind");
            out.entry(name.to_owned()).or_default().kind = Some(kind.to_owned());
        } else if !line.starts_with('#') {
            let series = line.split([' ', '{']).next().expect("sample name");
            // A histogram's samples are <name>_bucket, _sum and _count.
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .filter_map(|s| series.strip_suffix(s))
                .find(|base| {
                    out.get(*base)
                        .is_some_and(|f| f.kind.as_deref() == Some("histogram"))
                })
                .unwrap_or(series);
            out.entry(family.to_owned())
                .or_default()
                .samples
                .push(line.to_owned());
        }
    }
    out
}

async fn scrape(http: &reqwest::Client, base: &str) -> String {
    let r = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(r.status(), 200, "{base}/metrics");
    r.text().await.expect("metrics text")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_describes_its_metrics_and_names_its_build() {
    let stack = ProcStack::start("opsmetrics", &Brokers::local(), (1, 1, 1), &[]).await;
    // Traffic, so that each service has recorded what it records: a
    // channel, a monitor, a push applied, a down push alerted (delivered to
    // a receiver that answers).
    let receiver = Receiver::start().await;
    let channel = stack.webhook_channel(&receiver.url).await;
    let m = stack.monitor("metrics", 3600, &[&channel]).await;
    let (id, token) = (m["id"].as_str().unwrap(), m["token"].as_str().unwrap());
    assert_eq!(stack.push(token, "").await.0, 200);
    assert_eq!(stack.push(token, "status=down").await.0, 200);
    let path = format!("/api/v1/monitors/{id}");
    wait_for(Duration::from_secs(30), "the monitor down", || async {
        (stack.get_json(&path).await["status"] == "down").then_some(())
    })
    .await;
    wait_for(Duration::from_secs(30), "the alert delivered", || async {
        (!receiver.hits().is_empty()).then_some(())
    })
    .await;

    let services = [
        (
            "ingest",
            stack.ingest[0].url(),
            "lifeline_ingest_publish_seconds",
        ),
        ("api", stack.api.url(), "lifeline_api_requests_total"),
        (
            "evaluator",
            stack.evaluators[0].url(),
            "lifeline_evaluator_beats_total",
        ),
        (
            "notifier",
            stack.notifiers[0].url(),
            "lifeline_notifier_delivery_seconds",
        ),
    ];
    for (service, url, expected) in services {
        // The notifier records its attempt just after the receiver answers.
        let text = wait_for(Duration::from_secs(10), expected, || async {
            let text = scrape(&stack.http, &url).await;
            text.contains(&format!("# TYPE {expected} "))
                .then_some(text)
        })
        .await;
        let families = families(&text);
        for (name, f) in &families {
            assert!(
                f.help.as_deref().is_some_and(|h| !h.trim().is_empty()),
                "{service}: {name} has no # HELP:\n{text}"
            );
            let kind = f
                .kind
                .as_deref()
                .unwrap_or_else(|| panic!("{service}: {name} has no # TYPE"));
            assert_ne!(
                kind, "summary",
                "{service}: {name} is a summary, not a histogram"
            );
            assert!(!f.samples.is_empty(), "{service}: {name} has no sample");
            if kind == "histogram" {
                assert!(
                    f.samples
                        .iter()
                        .any(|s| s.contains("_bucket{") && s.contains("le=\"+Inf\"")),
                    "{service}: histogram {name} has no buckets:\n{text}"
                );
            }
        }
        let build = &families
            .get("lifeline_build_info")
            .unwrap_or_else(|| panic!("{service}: no lifeline_build_info:\n{text}"))
            .samples;
        assert!(
            build
                .iter()
                .any(|s| s.contains(&format!("service=\"{service}\""))
                    && s.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                    && s.ends_with(" 1")),
            "{service}: build info {build:?}"
        );
        assert!(families.contains_key(expected), "{service}: no {expected}");
    }
    // The latencies are histograms with the documented buckets.
    let ingest = families(&scrape(&stack.http, &stack.ingest[0].url()).await);
    let publish = &ingest["lifeline_ingest_publish_seconds"];
    assert_eq!(publish.kind.as_deref(), Some("histogram"));
    assert!(
        publish.samples.iter().any(|s| s.contains("le=\"0.005\"")),
        "{publish:?}"
    );
}

/// The log lines of every process of the stack that say Redis keeps
/// nothing on disk, by service.
fn volatile_warnings(stack: &ProcStack) -> Vec<String> {
    let logs = stack.logs();
    let mut services = Vec::new();
    let mut current = String::new();
    for line in logs.lines() {
        if let Some(rest) = line.strip_prefix("==== ") {
            current = rest.split(' ').next().unwrap_or("").to_owned();
        } else if line.contains("Redis keeps nothing on disk") && !services.contains(&current) {
            services.push(current.clone());
        }
    }
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_warns_when_its_redis_keeps_nothing_on_disk() {
    let volatile = PrivateServer::redis_volatile().await;
    let brokers = Brokers {
        redis_url: volatile.url(),
        ..Brokers::local()
    };
    let stack = ProcStack::start("opsvolatile", &brokers, (1, 1, 1), &[]).await;
    let all = [
        "lifeline-api",
        "lifeline-evaluator",
        "lifeline-ingest",
        "lifeline-notifier",
    ];
    wait_for(
        Duration::from_secs(30),
        "a warning from every service",
        || async { (volatile_warnings(&stack) == all).then_some(()) },
    )
    .await;
    drop(stack);

    // The same stack on a Redis with an append-only file says nothing of it.
    let durable = PrivateServer::redis().await;
    let brokers = Brokers {
        redis_url: durable.url(),
        ..Brokers::local()
    };
    let stack = ProcStack::start(
        "opsdurable",
        &brokers,
        (1, 1, 1),
        &[("RUST_LOG", "info,lifeline_shared=debug")],
    )
    .await;
    wait_for(
        Duration::from_secs(30),
        "every service to have asked Redis",
        || async {
            (stack.logs().matches("Redis keeps its data on disk").count() >= 4).then_some(())
        },
    )
    .await;
    assert!(volatile_warnings(&stack).is_empty(), "{}", stack.logs());
}
