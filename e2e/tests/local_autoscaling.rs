//! Local mode end to end, with real parts only: tansu as the broker, Debian's Prometheus scraping
//! the runtime processes through the file-based service discovery that `pipeline-operator local`
//! writes, and the autoscaler reading Prometheus. `loadgen` drives a load step above one slot's
//! capacity (each record costs 2 ms of simulated work: 500 records/s per slot).
//!
//! - `a_load_step_scales_up_promptly_drains_scales_down_and_keeps_the_output_exact`: the first
//!   overloaded decisions scale up (within 2), lag drains, the pipeline scales down after the load
//!   falls and the delay passes, the process whose slots changed in place is never restarted,
//!   and every window of the output equals a reference computed from the input topic.
//! - `with_prometheus_gone_the_autoscaler_holds_and_never_scales_down`: a pipeline that waits to
//!   scale down loses its metrics source; it holds its parallelism, reporting NoMetrics.
//!
//! tansu serves a fetch that starts inside a record batch from the next batch (FACTS.md), so the
//! load is produced one record per batch: rebalances then lose nothing.

mod common;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{cleanup, scratch};
use pipeline_e2e::{
    broker::Tansu,
    process::{runtime_binary, workspace_binary},
    prometheus::Prometheus,
};
use serde_json::Value;

const NAME: &str = "sensors";

fn manifest(dir: &Path, parallelism: i32, scale_down_delay: &str) -> PathBuf {
    let path = dir.join("pipeline.yaml");
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: PipelineDeployment
metadata: {{name: {NAME}, namespace: e2e}}
spec:
  kafka:
    bootstrapServers: 'replaced:9092'
    properties: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500'}}
  source: {{topic: readings, startingOffsets: earliest, format: {{type: json}}}}
  transform:
    keyBy: device_id
    sourceKeyed: true
    timestamp: {{field: ts}}
    watermark: {{maxOutOfOrderness: 3s}}
  window: {{tumbling: {{size: 10s}}}}
  aggregates:
    - {{name: n, function: count}}
    - {{name: lo, function: min, field: temperature}}
    - {{name: hi, function: max, field: temperature}}
    - {{name: mean, function: avg, field: temperature}}
  sink: {{kafka: {{topic: out}}}}
  checkpoint:
    interval: 1s
    storage: {{volume: {{claimName: unused-in-local-mode}}}}
  parallelism: {parallelism}
  resources: {{slotsPerPod: 2, cpuPerSlot: 250m, memoryPerSlot: 256Mi}}
  autoscaler:
    enabled: true
    minParallelism: 1
    maxParallelism: 6
    metrics: {{prometheus: {{url: 'http://replaced:9090'}}}}
    interval: 3s
    metricsWindow: 9s
    targetUtilization: 0.7
    catchUpDuration: 20s
    lagTarget: 5s
    scaleDownDelay: {scale_down_delay}
    maxScaleDownFactor: 0.75
"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `pipeline-operator local` as a user runs it, its terminal output in `dir/local.out`.
fn local_mode(dir: &Path, manifest: &Path, tansu: &Tansu, prometheus: &Prometheus) -> Child {
    let out = std::fs::File::create(dir.join("local.out")).unwrap();
    Command::new(workspace_binary("pipeline-operator"))
        .arg("local")
        .arg("-f")
        .arg(manifest)
        .args(["--bootstrap-servers", &tansu.bootstrap])
        .args(["--prometheus", &prometheus.url])
        .arg("--dir")
        .arg(dir.join("local"))
        .arg("--targets-file")
        .arg(prometheus.targets_file())
        .arg("--runtime")
        .arg(runtime_binary())
        .args(["--env", "SLUICE_SIMULATED_RECORD_COST=2ms"])
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .unwrap()
}

fn loadgen(dir: &Path, tansu: &Tansu, profile: &str) -> Child {
    let out = std::fs::File::create(dir.join("loadgen.out")).unwrap();
    Command::new(workspace_binary("loadgen"))
        .args([
            "-b",
            &tansu.bootstrap,
            "-t",
            "readings",
            "--keys",
            "300",
            "--quiet",
        ])
        .args(["--profile", profile, "--close-after", "15s"])
        .args(["--out-of-order", "0.05", "--max-disorder", "2s"])
        .args(["-X", "batch.num.messages=1"])
        .stderr(out)
        .spawn()
        .unwrap()
}

fn stop(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// One autoscaler evaluation as local mode reported it in `status.json`.
#[derive(Clone, Debug)]
struct Evaluation {
    at: Instant,
    result: String,
    reason: String,
    decided: Option<i64>,
    parallelism: Option<i64>,
    arrival: Option<f64>,
    lag_seconds: Option<f64>,
}

/// Reads `dir/local/status.json` and appends the evaluation when it is new.
fn observe(dir: &Path, seen: &mut Vec<Evaluation>, last: &mut String) {
    let Ok(text) = std::fs::read_to_string(dir.join("local/status.json")) else {
        return;
    };
    let Ok(status) = serde_json::from_str::<Value>(&text) else {
        return;
    };
    let a = &status["autoscaler"];
    let Some(time) = a["lastEvaluationTime"].as_str() else {
        return;
    };
    if time == last {
        return;
    }
    time.clone_into(last);
    let e = Evaluation {
        at: Instant::now(),
        result: a["result"].as_str().unwrap_or_default().to_owned(),
        reason: a["reason"].as_str().unwrap_or_default().to_owned(),
        decided: a["decidedParallelism"].as_i64(),
        parallelism: status["parallelism"].as_i64(),
        arrival: a["inputs"]["arrivalRate"].as_f64(),
        lag_seconds: a["inputs"]["lagSeconds"].as_f64(),
    };
    eprintln!(
        "evaluation: {} decided {:?} arrival {:?} lag {:?}s: {}",
        e.result, e.decided, e.arrival, e.lag_seconds, e.reason
    );
    seen.push(e);
}

/// Per (device, window start): count, min, max, sum of temperature.
type Reference = BTreeMap<(String, i64), (u64, f64, f64, f64)>;

fn reference(values: &[Vec<u8>]) -> Reference {
    let mut out = Reference::new();
    for bytes in values {
        let v: Value = serde_json::from_slice(bytes).expect("the load has no malformed records");
        let device = v["device_id"].as_str().unwrap().to_owned();
        if device.starts_with("close-") {
            continue;
        }
        let t = v["temperature"].as_f64().unwrap();
        let start = v["ts"].as_i64().unwrap().div_euclid(10_000) * 10_000;
        let e = out
            .entry((device, start))
            .or_insert((0, f64::MAX, f64::MIN, 0.0));
        e.0 += 1;
        e.1 = e.1.min(t);
        e.2 = e.2.max(t);
        e.3 += t;
    }
    out
}

fn written(dir: &Path) -> usize {
    let text = std::fs::read_to_string(dir.join("loadgen.out")).unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix("loadgen: wrote "))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("loadgen did not finish: {text}"))
}

fn check_output(tansu: &Tansu, total: usize) {
    let input = tansu.consume("readings", Duration::from_secs(60), |got| {
        got.len() >= total
    });
    assert_eq!(input.len(), total, "the input topic reads back whole");
    let values: Vec<Vec<u8>> = input.into_iter().filter_map(|c| c.value).collect();
    let expected = reference(&values);
    let output = tansu.consume("out", Duration::from_secs(90), |got| {
        let keys: std::collections::BTreeSet<(String, i64)> = got
            .iter()
            .filter_map(|c| serde_json::from_slice::<Value>(c.value.as_deref()?).ok())
            .map(|v| {
                (
                    v["device_id"].as_str().unwrap_or_default().to_owned(),
                    v["window_start"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        expected.keys().all(|k| keys.contains(k))
    });
    let mut got: BTreeMap<(String, i64), Value> = BTreeMap::new();
    for c in &output {
        let v: Value = serde_json::from_slice(c.value.as_deref().unwrap()).unwrap();
        let key = (
            v["device_id"].as_str().unwrap().to_owned(),
            v["window_start"].as_i64().unwrap(),
        );
        if let Some(before) = got.get(&key) {
            assert_eq!(before, &v, "a repeated window must be identical");
        }
        got.insert(key, v);
    }
    let mut wrong = Vec::new();
    for (key, (n, lo, hi, sum)) in &expected {
        let Some(v) = got.get(key) else {
            wrong.push(format!("{key:?}: missing"));
            continue;
        };
        let mean = sum / *n as f64;
        let ok = v["n"].as_u64() == Some(*n)
            && v["lo"].as_f64() == Some(*lo)
            && v["hi"].as_f64() == Some(*hi)
            && v["mean"]
                .as_f64()
                .is_some_and(|m| (m - mean).abs() <= 1e-9 * mean.abs().max(1.0));
        if !ok {
            wrong.push(format!(
                "{key:?}: got {v}, expected n {n} lo {lo} hi {hi} mean {mean}"
            ));
        }
    }
    let extra = got
        .keys()
        .filter(|k| !k.0.starts_with("close-") && !expected.contains_key(k))
        .count();
    assert!(
        wrong.is_empty() && extra == 0,
        "{} of {} windows wrong, {extra} not in the input: {:?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(5)]
    );
    eprintln!("{} windows exact", expected.len());
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_load_step_scales_up_promptly_drains_scales_down_and_keeps_the_output_exact() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", 6), ("out", 3)]);
    let dir = scratch("local-autoscaling");
    let prometheus = Prometheus::start(&dir.join("prometheus"), &[]);
    let manifest = manifest(&dir, 1, "10s");
    let mut local = local_mode(&dir, &manifest, &tansu, &prometheus);
    // One slot does 500/s: 150/s is 30% of it, 800/s needs 3 slots at the 70% target.
    let step_at = Instant::now() + Duration::from_secs(20);
    let drop_at = step_at + Duration::from_secs(40);
    let mut load = loadgen(&dir, &tansu, "steps:150@20s,800@40s,150@40s");
    let (mut seen, mut last) = (Vec::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(200);
    let mut load_done = false;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        observe(&dir, &mut seen, &mut last);
        load_done = load_done || load.try_wait().unwrap().is_some();
        let scaled_down = seen
            .iter()
            .any(|e| e.result == "ScaleDown" && e.at > drop_at);
        if load_done && scaled_down {
            break;
        }
    }
    assert!(
        load.wait().unwrap().success(),
        "loadgen failed: see {}",
        dir.display()
    );
    let total = written(&dir);
    check_output(&tansu, total);
    stop(&mut local);

    let decided: Vec<&Evaluation> = seen
        .iter()
        .filter(|e| matches!(e.result.as_str(), "ScaleUp" | "NoChange" | "ScaleDown"))
        .collect();
    // Decisions after the step (the first may still average the quiet minute before it).
    let after_step: Vec<&&Evaluation> = decided
        .iter()
        .filter(|e| e.at > step_at && e.at < drop_at)
        .collect();
    let first_up = after_step.iter().position(|e| e.result == "ScaleUp");
    assert!(
        first_up.is_some_and(|i| i < 2),
        "the first scale-up must come within 2 decisions of the step: {after_step:#?}"
    );
    let peak = seen.iter().filter_map(|e| e.decided).max().unwrap_or(1);
    assert!(
        peak >= 3,
        "800/s needs 3 slots of 500/s at 70%: peak {peak}"
    );
    let last_up = seen.iter().rposition(|e| e.result == "ScaleUp").unwrap();
    let first_down = seen.iter().position(|e| e.result == "ScaleDown").unwrap();
    assert!(
        seen[last_up..first_down]
            .iter()
            .any(|e| e.lag_seconds.is_some_and(|l| l < 5.0)),
        "lag drains below the 5 s target after the scale-up: {seen:#?}"
    );
    assert!(
        seen[first_down].at > drop_at,
        "no scale-down before the load fell"
    );
    assert!(
        seen[first_down].decided.unwrap_or(peak) < peak,
        "the scale-down lowers the parallelism"
    );
    // Pod 0 changed its slots in place (1 → 2 → ...) and was never restarted.
    let log = std::fs::read_to_string(dir.join(format!("local/logs/{NAME}-0.log"))).unwrap();
    assert_eq!(
        log.matches("\"runtime started\"").count(),
        1,
        "pod 0 started once"
    );
    assert!(
        log.contains("slots rescaled in place"),
        "pod 0 rescaled in place"
    );
    let out = std::fs::read_to_string(dir.join("local.out")).unwrap();
    assert!(!out.contains("ProcessExited"), "no process died: {out}");
    cleanup(&dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn with_prometheus_gone_the_autoscaler_holds_and_never_scales_down() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("readings", 6), ("out", 3)]);
    let dir = scratch("local-outage");
    let prometheus = Prometheus::start(&dir.join("prometheus"), &[]);
    // Two slots for a load one slot carries at 30%: a scale-down waits for its 15 s delay.
    let manifest = manifest(&dir, 2, "15s");
    let mut local = local_mode(&dir, &manifest, &tansu, &prometheus);
    let mut load = loadgen(&dir, &tansu, "constant:150");
    let (mut seen, mut last) = (Vec::new(), String::new());
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        observe(&dir, &mut seen, &mut last);
        if seen
            .last()
            .is_some_and(|e| e.reason.contains("before scaling down"))
        {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|e| e.reason.contains("before scaling down")),
        "a scale-down is pending: {seen:#?}"
    );
    drop(prometheus);
    let outage = seen.len();
    let until = Instant::now() + Duration::from_secs(30);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_millis(500));
        observe(&dir, &mut seen, &mut last);
    }
    stop(&mut load);
    stop(&mut local);
    let after = &seen[outage..];
    assert!(after.len() >= 5, "evaluations went on: {after:#?}");
    assert!(
        after
            .iter()
            .all(|e| e.result != "ScaleDown" && e.result != "ScaleUp"),
        "no rescale without metrics: {after:#?}"
    );
    assert!(
        after
            .iter()
            .skip(1)
            .all(|e| e.result == "NoMetrics" && e.parallelism == Some(2)),
        "holds at 2 and says why: {after:#?}"
    );
    cleanup(&dir);
}
