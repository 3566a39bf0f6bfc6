//! Reconcile against kube's tower-test mock API server (the controller-rs fixtures pattern). The
//! mock answers like an API server holding the objects a scenario gives it and records every
//! request; each scenario asserts the exact sequence of requests and the bodies that matter.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Method, Request, Response, StatusCode};
use kube::{Client, client::Body, runtime::controller::Action};
use pipeline_crds::{PipelineDeployment, manifest::from_yaml};
use pipeline_operator::{
    controller::{Context, PodMonitorCrd, reconcile},
    kafka::{KafkaAccess, PartitionSource},
    metrics::OperatorMetrics,
};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The partition lookup: a fixed answer, and the access it was asked with.
struct Partitions {
    answer: Result<i32, String>,
    asked: Mutex<Vec<KafkaAccess>>,
}

impl PartitionSource for Partitions {
    fn partitions(&self, access: &KafkaAccess) -> Result<i32, String> {
        self.asked.lock().unwrap().push(access.clone());
        self.answer.clone()
    }
}

fn pipeline(extra: &str) -> PipelineDeployment {
    let mut pd = from_yaml(
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns, generation: 2}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
        "scenario",
    )
    .unwrap();
    pd.metadata.uid = Some("uid-1".into());
    pd
}

/// `pd` as a reconcile left it: `status` from running `first` through a scenario.
fn after(mut pd: PipelineDeployment, first: &[Call]) -> PipelineDeployment {
    let status = &first
        .iter()
        .find(|c| c.path == STATUS_PATH)
        .expect("a status write")
        .body["status"];
    pd.status = Some(serde_json::from_value(status.clone()).unwrap());
    pd
}

/// One request the operator sent.
#[derive(Debug, Clone)]
struct Call {
    method: Method,
    path: String,
    query: String,
    body: Value,
}

impl Call {
    fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the mock API server holds.
#[derive(Default, Clone)]
struct Cluster {
    /// Secrets by name.
    secrets: HashMap<String, Value>,
    /// Objects a list of this collection path returns.
    lists: HashMap<String, Vec<Value>>,
    /// Paths that answer 500 to a PATCH.
    failing: Vec<String>,
}

fn status_body(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": reason, "reason": reason, "code": code})
}

async fn serve(mut handle: Handle, pd: PipelineDeployment, cluster: Cluster) -> Vec<Call> {
    let mut calls = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or_default().to_owned();
        let bytes = request.into_body().collect_bytes().await.unwrap();
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let (code, answer) = match method.clone() {
            Method::PATCH if cluster.failing.contains(&path) => {
                (500, status_body(500, "InternalError"))
            }
            Method::PATCH if path == STATUS_PATH => {
                let mut object = serde_json::to_value(&pd).unwrap();
                object["status"] = body["status"].clone();
                (200, object)
            }
            Method::PATCH | Method::POST => (200, body.clone()),
            Method::DELETE => (
                200,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
            ),
            Method::GET if path.contains("/secrets/") => {
                let name = path.rsplit('/').next().unwrap();
                match cluster.secrets.get(name) {
                    Some(secret) => (200, secret.clone()),
                    None => (404, status_body(404, "NotFound")),
                }
            }
            Method::GET if query.contains("labelSelector") => {
                let items = cluster.lists.get(&path).cloned().unwrap_or_default();
                (
                    200,
                    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}),
                )
            }
            _ => (404, status_body(404, "NotFound")),
        };
        send.send_response(
            Response::builder()
                .status(StatusCode::from_u16(code).unwrap())
                .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                .unwrap(),
        );
        calls.push(Call {
            method,
            path,
            query,
            body,
        });
    }
    calls
}

struct Scenario {
    pd: PipelineDeployment,
    partitions: Result<i32, String>,
    cluster: Cluster,
    pod_monitor_crd: bool,
}

impl Scenario {
    fn new(pd: PipelineDeployment) -> Self {
        Self {
            pd,
            partitions: Ok(8),
            cluster: Cluster::default(),
            pod_monitor_crd: false,
        }
    }

    fn partitions(mut self, p: Result<i32, String>) -> Self {
        self.partitions = p;
        self
    }

    /// Reconciles once; returns the action (or the error), the requests, and what the partition
    /// lookup was asked with.
    async fn run_on(
        self,
        ctx_of: impl FnOnce(Client, Arc<Partitions>, bool) -> Arc<Context>,
    ) -> (Result<Action, String>, Vec<Call>, Vec<KafkaAccess>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let partitions = Arc::new(Partitions {
            answer: self.partitions,
            asked: Mutex::new(Vec::new()),
        });
        let ctx = ctx_of(
            Client::new(service, "ns"),
            partitions.clone(),
            self.pod_monitor_crd,
        );
        let server = tokio::spawn(serve(handle, self.pd.clone(), self.cluster));
        let result =
            tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(self.pd), ctx))
                .await
                .expect("reconcile finished")
                .map_err(|e| e.to_string());
        let calls = tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("every client dropped")
            .unwrap();
        let asked = partitions.asked.lock().unwrap().clone();
        (result, calls, asked)
    }

    async fn run(self) -> (Result<Action, String>, Vec<Call>, Vec<KafkaAccess>) {
        let metrics = Arc::new(OperatorMetrics::default());
        let m = metrics.clone();
        let out = self
            .run_on(|client, partitions, crd| {
                Arc::new(Context::new(
                    client,
                    m,
                    "img:1".into(),
                    PodMonitorCrd::fixed(crd),
                    partitions,
                    "operator-0".into(),
                ))
            })
            .await;
        assert!(
            metrics
                .encode()
                .contains("sluice_operator_reconcile_duration_seconds_count 1"),
            "every reconcile is counted and timed"
        );
        out
    }
}

const NS: &str = "/api/v1/namespaces/ns";
const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/ns/pipelinedeployments/p/status";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets";
const PDBS: &str = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets";

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

/// The requests of a successful reconcile with no PDB (suspended) or with one, then `tail`.
fn applied(pdb: bool, tail: &[&str]) -> Vec<String> {
    let mut expected = vec![
        format!("PATCH {NS}/configmaps/p-pipeline"),
        format!("PATCH {NS}/services/p-pods"),
        format!("PATCH {NS}/services/p-metrics"),
        format!("PATCH {STS}/p"),
    ];
    if pdb {
        expected.push(format!("PATCH {PDBS}/p"));
    }
    expected.extend([
        format!("GET {NS}/configmaps"),
        format!("GET {NS}/services"),
        format!("GET {STS}"),
        format!("GET {PDBS}"),
    ]);
    expected.extend(tail.iter().map(|s| (*s).to_owned()));
    expected
}

fn by_path<'a>(calls: &'a [Call], method: Method, path: &str) -> &'a Value {
    &calls
        .iter()
        .find(|c| c.method == method && c.path == path)
        .unwrap_or_else(|| panic!("no {method} {path} in {:?}", lines(calls)))
        .body
}

fn events(calls: &[Call]) -> Vec<(String, String, String)> {
    calls
        .iter()
        .filter(|c| c.path == EVENTS)
        .map(|c| {
            let s = |k: &str| c.body[k].as_str().unwrap_or_default().to_owned();
            (s("type"), s("reason"), s("note"))
        })
        .collect()
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

fn env_of(sts: &Value) -> &Vec<Value> {
    sts["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap()
}

#[tokio::test]
async fn a_new_pipeline_gets_its_children_applied_in_order_a_status_and_a_deployed_event() {
    let (action, calls, _) = Scenario::new(pipeline("  parallelism: 7\n"))
        .partitions(Ok(24))
        .run()
        .await;
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(60))));
    assert_eq!(
        lines(&calls),
        applied(
            true,
            &[&format!("PATCH {STATUS_PATH}"), &format!("POST {EVENTS}")]
        )
    );
    for call in calls.iter().filter(|c| c.method == Method::PATCH) {
        assert!(
            call.query.contains("fieldManager=sluice-operator")
                && call.query.contains("force=true"),
            "server-side apply under one field manager: {}",
            call.query
        );
        if call.path != STATUS_PATH {
            assert_eq!(call.body["metadata"]["ownerReferences"][0]["uid"], "uid-1");
            assert_eq!(
                call.body["metadata"]["ownerReferences"][0]["controller"],
                true
            );
        }
    }
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert_eq!(sts["spec"]["replicas"], 2);
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "3000m");
    assert!(env_of(sts).contains(&json!({"name": "SLUICE_SCALE_FILE", "value": "/etc/sluice/scale.json"})));
    let config = by_path(&calls, Method::PATCH, &format!("{NS}/configmaps/p-pipeline"));
    assert_eq!(
        config["data"]["scale.json"],
        r#"{"parallelism":6,"replicas":2}"#
    );
    let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        (status["parallelism"].clone(), status["replicas"].clone()),
        (json!(6), json!(2))
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "ScalingLimited")["status"], "True");
    let events = events(&calls);
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Normal", "Deployed")
    );
    assert!(
        events[0].2.starts_with("parallelism 6 on 2 pods"),
        "{}",
        events[0].2
    );
}

#[tokio::test]
async fn an_update_of_parallelism_rescales_through_the_scale_file_without_rolling_the_pods() {
    let (_, first, _) = Scenario::new(pipeline("  parallelism: 2\n")).run().await;
    let running = after(pipeline("  parallelism: 8\n"), &first);
    let (_, calls, _) = Scenario::new(running).run().await;
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert_eq!(sts["spec"]["replicas"], 2);
    let config = by_path(&calls, Method::PATCH, &format!("{NS}/configmaps/p-pipeline"));
    assert_eq!(
        config["data"]["scale.json"],
        r#"{"parallelism":8,"replicas":2}"#
    );
    // The pod that keeps running sees the same template (same config hash, same env): only the
    // added pod starts; the slot counts change in place.
    let before = by_path(&first, Method::PATCH, &format!("{STS}/p"));
    let template = |s: &Value| {
        let mut t = s["spec"]["template"].clone();
        // CPU and memory follow the fullest pod's slots (4 now, 2 before).
        t["spec"]["containers"][0]["resources"] = Value::Null;
        t
    };
    assert_eq!(template(sts), template(before));
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"],
        "4000m"
    );
    let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
    assert_eq!(
        (status["parallelism"].clone(), status["replicas"].clone()),
        (json!(8), json!(2))
    );
    assert!(status["lastScaleTime"].is_string(), "{status}");
    assert_eq!(
        events(&calls),
        [(
            "Normal".to_owned(),
            "ScaledUp".to_owned(),
            "parallelism 2 → 8, pods 1 → 2".to_owned()
        )]
    );
    // The same spec again: no scaling, no event, the scale time kept.
    let steady = after(pipeline("  parallelism: 8\n"), &calls);
    let (_, again, _) = Scenario::new(steady).run().await;
    assert!(events(&again).is_empty());
    assert_eq!(
        by_path(&again, Method::PATCH, STATUS_PATH)["status"]["lastScaleTime"],
        status["lastScaleTime"]
    );
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_with_the_field_path_one_event_and_no_retry_loop() {
    let mut invalid = pipeline("  parallelism: 2\n");
    invalid.spec.sink.kafka = None;
    invalid.spec.sink.clickhouse =
        serde_json::from_value(json!({"url": "http://ch:8123", "table": "t"})).unwrap();
    let (action, calls, asked) = Scenario::new(invalid.clone()).run().await;
    assert_eq!(action, Ok(Action::await_change()));
    assert_eq!(
        lines(&calls),
        [format!("PATCH {STATUS_PATH}"), format!("POST {EVENTS}")]
    );
    assert!(
        asked.is_empty(),
        "no Kafka lookup for a spec that cannot run"
    );
    let ready = condition(&calls[0].body["status"], "Ready");
    assert_eq!(
        (ready["status"].clone(), ready["reason"].clone()),
        (json!("False"), json!("InvalidSpec"))
    );
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.sink.clickhouse")
    );
    let events = events(&calls);
    assert_eq!(
        (events[0].0.as_str(), events[0].1.as_str()),
        ("Warning", "InvalidSpec")
    );
    assert!(events[0].2.contains("spec.sink.clickhouse"));
    // Reconciled again unchanged (an operator restart): the same problem is not announced twice.
    let (_, again, _) = Scenario::new(after(invalid, &calls)).run().await;
    assert_eq!(lines(&again), [format!("PATCH {STATUS_PATH}")]);
}

#[tokio::test]
async fn unreachable_kafka_is_a_condition_an_event_and_a_retry_not_a_crash() {
    let (action, calls, _) = Scenario::new(pipeline(""))
        .partitions(Err("broker k:9092 unreachable".into()))
        .run()
        .await;
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
    assert_eq!(
        lines(&calls),
        [format!("PATCH {STATUS_PATH}"), format!("POST {EVENTS}")]
    );
    let status = &calls[0].body["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "KafkaUnreachable");
    assert_eq!(status["phase"], "Degraded");
    assert_eq!(events(&calls)[0].1, "KafkaUnreachable");
}

#[tokio::test]
async fn sasl_credentials_are_read_from_the_secret_for_the_partition_lookup() {
    let sasl = "  kafka: {bootstrapServers: 'k:9096', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: kafka-user, passwordKey: pw}}}\n";
    let mut pd = pipeline("");
    pd.spec.kafka = pipeline_crds::manifest::from_yaml(
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p}}\nspec:\n{sasl}  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n"),
        "t",
    )
    .unwrap()
    .spec
    .kafka;
    let mut scenario = Scenario::new(pd.clone());
    scenario.cluster.secrets.insert(
        "kafka-user".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-user", "namespace": "ns"},
               "data": {"username": "YWxpY2U=", "pw": "czNjcjN0"}}),
    );
    let (_, calls, asked) = scenario.run().await;
    assert_eq!(
        lines(&calls)[..2],
        [
            format!("GET {NS}/secrets/kafka-user"),
            format!("PATCH {NS}/configmaps/p-pipeline")
        ],
        "the Secret is read once, before anything is applied"
    );
    let p = &asked[0].properties;
    assert_eq!(
        (
            p["sasl.username"].as_str(),
            p["sasl.password"].as_str(),
            p["sasl.mechanism"].as_str()
        ),
        ("alice", "s3cr3t", "SCRAM-SHA-512")
    );
    assert_eq!(p["security.protocol"], "sasl_ssl");
    // The pods get the credentials by reference only.
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert!(!sts.to_string().contains("s3cr3t"));
    assert!(sts.to_string().contains("kafka-user"));

    // Without the Secret: a condition naming it, an event, no children, a retry.
    let (action, missing, asked) = Scenario::new(pd).run().await;
    assert!(asked.is_empty());
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
    assert_eq!(
        lines(&missing),
        [
            format!("GET {NS}/secrets/kafka-user"),
            format!("PATCH {STATUS_PATH}"),
            format!("POST {EVENTS}")
        ]
    );
    let ready = condition(&missing[1].body["status"], "Ready");
    assert_eq!(ready["reason"], "CredentialsUnavailable");
    assert!(
        ready["message"].as_str().unwrap().contains(
            "Secret ns/kafka-user (from spec.kafka.sasl.credentialsSecret) does not exist"
        ),
        "{ready}"
    );
}

#[tokio::test]
async fn suspend_scales_to_zero_deletes_the_disruption_budget_and_announces_it() {
    let (_, first, _) = Scenario::new(pipeline("")).run().await;
    let pdb = by_path(&first, Method::PATCH, &format!("{PDBS}/p")).clone();
    let mut scenario = Scenario::new(after(pipeline("  suspend: true\n"), &first));
    // The cluster holds the budget applied before, and one of another pipeline with our labels.
    let mut foreign = pdb.clone();
    foreign["metadata"]["name"] = json!("q");
    foreign["metadata"]["ownerReferences"][0]["uid"] = json!("uid-2");
    scenario
        .cluster
        .lists
        .insert(PDBS.into(), vec![pdb, foreign]);
    let (_, calls, _) = scenario.run().await;
    assert_eq!(
        lines(&calls),
        applied(
            false,
            &[
                &format!("DELETE {PDBS}/p"),
                &format!("PATCH {STATUS_PATH}"),
                &format!("POST {EVENTS}")
            ]
        )
    );
    assert_eq!(
        by_path(&calls, Method::PATCH, &format!("{STS}/p"))["spec"]["replicas"],
        0
    );
    let list = calls
        .iter()
        .find(|c| c.line() == format!("GET {PDBS}"))
        .unwrap();
    assert!(
        list.query.contains("app.kubernetes.io%2Finstance%3Dp"),
        "children are listed by the pipeline's labels: {}",
        list.query
    );
    assert_eq!(
        by_path(&calls, Method::PATCH, STATUS_PATH)["status"]["phase"],
        "Suspended"
    );
    assert_eq!(events(&calls)[0].1, "Suspended");
}

#[tokio::test]
async fn a_pipeline_being_deleted_is_left_to_the_garbage_collector() {
    let mut pd = pipeline("");
    pd.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    let (action, calls, asked) = Scenario::new(pd).run().await;
    assert_eq!(action, Ok(Action::await_change()));
    assert!(calls.is_empty(), "{:?}", lines(&calls));
    assert!(asked.is_empty());
}

#[tokio::test]
async fn a_pod_monitor_is_applied_and_pruned_with_the_rest_where_its_crd_exists() {
    let mut scenario = Scenario::new(pipeline(""));
    scenario.pod_monitor_crd = true;
    let (_, calls, _) = scenario.run().await;
    let monitors = "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors";
    let l = lines(&calls);
    assert_eq!(l[5], format!("PATCH {monitors}/p"));
    assert_eq!(l[10], format!("GET {monitors}"));
    let monitor = by_path(&calls, Method::PATCH, &format!("{monitors}/p"));
    assert_eq!(monitor["kind"], "PodMonitor");
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert!(
        sts["spec"]["template"]["metadata"]["annotations"]
            .get("prometheus.io/scrape")
            .is_none(),
        "a PodMonitor replaces the scrape annotations"
    );
}

#[tokio::test]
async fn a_spec_change_rolls_the_pods_through_the_config_hash() {
    let hash = |calls: &[Call]| {
        by_path(calls, Method::PATCH, &format!("{STS}/p"))["spec"]["template"]["metadata"]
            ["annotations"]["sluice.dev/config-hash"]
            .clone()
    };
    let config = |calls: &[Call]| {
        by_path(calls, Method::PATCH, &format!("{NS}/configmaps/p-pipeline"))["data"]
            ["pipeline.yaml"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (_, before, _) = Scenario::new(pipeline("")).run().await;
    let (_, after, _) = Scenario::new(pipeline("  transform: {filter: 'record.x > 1'}\n"))
        .run()
        .await;
    assert_ne!(hash(&before), hash(&after));
    assert!(!config(&before).contains("filter"));
    assert!(config(&after).contains("record.x > 1"));
}

#[tokio::test]
async fn a_failed_apply_is_an_error_to_retry_with_one_warning_event_per_interval_until_it_succeeds()
{
    let metrics = Arc::new(OperatorMetrics::default());
    // The operator's memory of sent error events, kept across the reconciles: two failures, a
    // success, a failure.
    let sent = Arc::new(Mutex::new(HashMap::new()));
    let mut runs = Vec::new();
    let mut results = Vec::new();
    for failing in [true, true, false, true] {
        let mut scenario = Scenario::new(pipeline(""));
        if failing {
            scenario.cluster.failing = vec![format!("{NS}/configmaps/p-pipeline")];
        }
        let (m, sent) = (metrics.clone(), sent.clone());
        let (result, calls, _) = scenario
            .run_on(move |client, partitions, _| {
                let mut ctx = Context::new(
                    client,
                    m,
                    "img:1".into(),
                    PodMonitorCrd::fixed(false),
                    partitions,
                    "operator-0".into(),
                );
                ctx.error_events = sent;
                Arc::new(ctx)
            })
            .await;
        results.push(result);
        runs.push(calls);
    }
    assert!(results[0].as_ref().unwrap_err().contains("kubernetes API"));
    assert!(results[2].is_ok());
    assert_eq!(
        lines(&runs[0]),
        [
            format!("PATCH {NS}/configmaps/p-pipeline"),
            format!("POST {EVENTS}")
        ]
    );
    let first = events(&runs[0]);
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str()),
        ("Warning", "ReconcileFailed")
    );
    assert_eq!(
        lines(&runs[1]),
        [format!("PATCH {NS}/configmaps/p-pipeline")],
        "the retry 15 s later sends no second event"
    );
    assert_eq!(
        events(&runs[3])[0].1,
        "ReconcileFailed",
        "a failure after a success is news again"
    );
    assert!(
        metrics
            .encode()
            .contains("sluice_operator_reconciles_total{result=\"error\"} 3")
    );
}
