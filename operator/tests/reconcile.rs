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
    group_state::{GroupState, GroupStateError},
    install::{DefaultServiceAccount, Install},
    kafka::{KafkaAccess, PartitionLookupError, PartitionSource},
    metrics::OperatorMetrics,
};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The partition lookup: a fixed answer, and the access it was asked with.
struct Partitions {
    answer: Result<i32, PartitionLookupError>,
    asked: Mutex<Vec<KafkaAccess>>,
}

impl PartitionSource for Partitions {
    fn partitions(&self, access: &KafkaAccess) -> Result<i32, PartitionLookupError> {
        self.asked.lock().unwrap().push(access.clone());
        self.answer.clone()
    }
}

/// What the lookup says when no broker answers: the metadata request times out.
fn broker_unreachable() -> PartitionLookupError {
    PartitionLookupError::Metadata {
        topic: "in".into(),
        source: rdkafka::error::KafkaError::MetadataFetch(
            rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
        ),
    }
}

/// The consumer-group state: fixed answers, and what was deleted.
#[derive(Default)]
struct Groups {
    /// Whether the group has committed offsets.
    committed: bool,
    /// Why deleting fails, if it does.
    delete_error: Option<String>,
    /// Each deletion: (group, internal topics).
    deleted: Mutex<Vec<(String, Vec<String>)>>,
}

impl GroupState for Groups {
    fn has_committed_offsets(&self, _: &KafkaAccess, _: &str) -> Result<bool, GroupStateError> {
        Ok(self.committed)
    }

    fn delete(
        &self,
        _: &KafkaAccess,
        group: &str,
        topics: &[String],
    ) -> Result<(), GroupStateError> {
        if let Some(error) = &self.delete_error {
            return Err(GroupStateError::Request {
                what: error.clone(),
                source: rdkafka::error::KafkaError::AdminOp(
                    rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure,
                ),
            });
        }
        self.deleted
            .lock()
            .unwrap()
            .push((group.to_owned(), topics.to_vec()));
        Ok(())
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
    /// Objects a GET of their path returns.
    objects: HashMap<String, Value>,
}

/// `(api group, resource[/subresource], verb, name)` of a request, as RBAC sees it.
fn authorization(
    method: &Method,
    path: &str,
    query: &str,
) -> (String, String, String, Option<String>) {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match segments.first() {
        Some(&"api") => (String::new(), &segments[2..]),
        _ => (segments[1].to_owned(), &segments[3..]),
    };
    let rest = if rest.first() == Some(&"namespaces") && rest.len() >= 3 {
        &rest[2..]
    } else {
        rest
    };
    let name = rest.get(1).map(|n| (*n).to_owned());
    let resource = match rest.get(2) {
        Some(sub) => format!("{}/{sub}", rest[0]),
        None => rest[0].to_owned(),
    };
    let verb = match *method {
        Method::GET if name.is_none() && query.contains("watch=true") => "watch",
        Method::GET if name.is_none() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PATCH => "patch",
        Method::PUT => "update",
        Method::DELETE => "delete",
        _ => "other",
    };
    (group, resource, verb.to_owned(), name)
}

/// Every `(group, resource, verb)` any scenario of this binary requested.
static REQUESTED: Mutex<std::collections::BTreeSet<(String, String, String)>> =
    Mutex::new(std::collections::BTreeSet::new());

/// Whether the operator's RBAC rules (the chart's Roles) allow the request.
fn permitted(method: &Method, path: &str, query: &str) -> bool {
    use pipeline_operator::backend::kube::rbac;
    let (group, resource, verb, name) = authorization(method, path, query);
    let rules: Vec<rbac::Rule> = rbac::namespaced()
        .into_iter()
        .chain(rbac::cluster())
        .collect();
    rbac::allows(&rules, &group, &resource, &verb, name.as_deref())
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
        let (group, resource, verb, _) = authorization(&method, &path, &query);
        REQUESTED.lock().unwrap().insert((group, resource, verb));
        let (code, answer) = match method.clone() {
            _ if !permitted(&method, &path, &query) => (403, status_body(403, "Forbidden")),
            Method::PATCH if cluster.failing.contains(&path) => {
                (500, status_body(500, "InternalError"))
            }
            Method::PATCH if path == PD_PATH => {
                let mut object = serde_json::to_value(&pd).unwrap();
                object["metadata"]["finalizers"] = body["metadata"]["finalizers"].clone();
                (200, object)
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
            Method::GET if cluster.objects.contains_key(&path) => {
                (200, cluster.objects[&path].clone())
            }
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

/// The context every scenario reconciles with (image `img:1`, instance `operator-0`).
fn context(
    client: Client,
    metrics: Arc<OperatorMetrics>,
    partitions: Arc<Partitions>,
    pod_monitor_crd: bool,
    install: Install,
) -> Context {
    Context::new(
        client,
        metrics,
        "img:1".into(),
        PodMonitorCrd::fixed(pod_monitor_crd),
        partitions,
        "operator-0".into(),
        install,
    )
}

struct Scenario {
    pd: PipelineDeployment,
    partitions: Result<i32, PartitionLookupError>,
    cluster: Cluster,
    pod_monitor_crd: bool,
    install: Install,
    groups: Arc<Groups>,
}

impl Scenario {
    fn new(pd: PipelineDeployment) -> Self {
        Self {
            pd,
            partitions: Ok(8),
            cluster: Cluster::default(),
            pod_monitor_crd: false,
            install: Install::default(),
            groups: Arc::new(Groups::default()),
        }
    }

    fn install(mut self, install: Install) -> Self {
        self.install = install;
        self
    }

    fn partitions(mut self, p: Result<i32, PartitionLookupError>) -> Self {
        self.partitions = p;
        self
    }

    /// Reconciles once; returns the action (or the error), the requests, and what the partition
    /// lookup was asked with.
    async fn run_on(
        self,
        ctx_of: impl FnOnce(Client, Arc<Partitions>, bool, Install) -> Context,
    ) -> (Result<Action, String>, Vec<Call>, Vec<KafkaAccess>) {
        let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let partitions = Arc::new(Partitions {
            answer: self.partitions,
            asked: Mutex::new(Vec::new()),
        });
        let mut ctx = ctx_of(
            Client::new(service, "ns"),
            partitions.clone(),
            self.pod_monitor_crd,
            self.install,
        );
        ctx.group_state = self.groups.clone();
        let ctx = Arc::new(ctx);
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
        for call in &calls {
            assert!(
                permitted(&call.method, &call.path, &call.query),
                "the operator's RBAC rules do not allow {} ({:?})",
                call.line(),
                authorization(&call.method, &call.path, &call.query)
            );
        }
        let asked = partitions.asked.lock().unwrap().clone();
        (result, calls, asked)
    }

    async fn run(self) -> (Result<Action, String>, Vec<Call>, Vec<KafkaAccess>) {
        let metrics = Arc::new(OperatorMetrics::default());
        let m = metrics.clone();
        let out = self
            .run_on(|client, partitions, crd, install| context(client, m, partitions, crd, install))
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
const PD_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/ns/pipelinedeployments/p";
const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/ns/pipelinedeployments/p/status";
const JOBS: &str = "/apis/batch/v1/namespaces/ns/jobs";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/ns/events";
const STS: &str = "/apis/apps/v1/namespaces/ns/statefulsets";
const PDBS: &str = "/apis/policy/v1/namespaces/ns/poddisruptionbudgets";

fn lines(calls: &[Call]) -> Vec<String> {
    calls.iter().map(Call::line).collect()
}

/// The children of a pipeline `p` with no PDB (suspended) or with one, in apply order.
fn children(pdb: bool) -> Vec<String> {
    let mut children = vec![
        format!("{NS}/configmaps/p-pipeline"),
        format!("{NS}/services/p-pods"),
        format!("{NS}/services/p-metrics"),
        format!("{STS}/p"),
    ];
    if pdb {
        children.push(format!("{PDBS}/p"));
    }
    children
}

/// The requests of a first successful reconcile with no PDB (suspended) or with one, then
/// `tail`: each child read (is it ours?), then applied, then the prune's lists.
fn applied(pdb: bool, tail: &[&str]) -> Vec<String> {
    let mut expected: Vec<String> = children(pdb).iter().map(|c| format!("GET {c}")).collect();
    expected.extend(children(pdb).iter().map(|c| format!("PATCH {c}")));
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

/// The `scale.json` the runtime ConfigMap was applied with.
fn scale_json(calls: &[Call]) -> &str {
    by_path(calls, Method::PATCH, &format!("{NS}/configmaps/p-pipeline"))["data"]["scale.json"]
        .as_str()
        .expect("a scale file in the ConfigMap")
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
    assert!(
        env_of(sts)
            .contains(&json!({"name": "SLUICE_SCALE_FILE", "value": "/etc/sluice/scale.json"}))
    );
    assert_eq!(scale_json(&calls), r#"{"parallelism":6,"replicas":2}"#);
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
    assert_eq!(scale_json(&calls), r#"{"parallelism":8,"replicas":2}"#);
    // Same config hash and env: a fixed pipeline's pods are re-sized (CPU follows the fullest
    // pod's slots, 4 now, 2 before), nothing else of the template changes. (Under the
    // autoscaler pods are sized for full pods and the template does not change at all.)
    let before = by_path(&first, Method::PATCH, &format!("{STS}/p"));
    let template = |s: &Value| {
        let mut t = s["spec"]["template"].clone();
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
        serde_json::from_value(json!({"url": "http://ch:8123", "table": "t", "createTable": true}))
            .unwrap();
    // Invalid: a stateless pipeline writes into a table the user creates.
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
            .contains("spec.sink.clickhouse.createTable")
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
async fn the_installation_fills_in_checkpoint_storage_prometheus_and_the_service_account_and_refuses_images_it_does_not_allow()
 {
    let install = Install {
        default_prometheus_url: Some("http://prometheus.monitoring:9090".into()),
        default_checkpoint: Some(
            serde_json::from_value(json!({"bucket": "sluice-checkpoints", "region": "eu-west-1"}))
                .unwrap(),
        ),
        default_service_account: Some(DefaultServiceAccount {
            name: "sluice-runtime".into(),
            namespaces: Vec::new(),
        }),
        runtime_image_pull_policy: None,
        runtime_disruption_budget: Default::default(),
        runtime_pod_defaults: None,
        allowed_images: vec!["img".into()],
    };
    let pd = pipeline("  autoscaler: {enabled: true}\n");
    let (action, calls, _) = Scenario::new(pd).install(install.clone()).run().await;
    assert!(action.is_ok(), "{action:?}");
    let config = by_path(
        &calls,
        Method::PATCH,
        &format!("{NS}/configmaps/p-pipeline"),
    )["data"]["pipeline.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(config.contains("sluice-checkpoints"), "{config}");
    assert!(config.contains("eu-west-1"), "{config}");
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert_eq!(
        sts["spec"]["template"]["spec"]["serviceAccountName"],
        json!("sluice-runtime")
    );

    let mut foreign = pipeline("");
    foreign.spec.image = Some("attacker.io/miner:1".into());
    let (action, calls, _) = Scenario::new(foreign).install(install).run().await;
    assert_eq!(action, Ok(Action::await_change()));
    let ready = condition(&calls[0].body["status"], "Ready");
    assert_eq!(ready["reason"], json!("InvalidSpec"));
    assert!(ready["message"].as_str().unwrap().contains("spec.image"));
    assert!(
        !calls.iter().any(|c| c.path.starts_with(STS)),
        "no pods with a refused image"
    );
}

#[tokio::test]
async fn checkpoints_on_a_local_directory_are_refused_in_the_cluster() {
    let pd = pipeline("  checkpoint: {storage: {local: {path: /tmp/x}}}\n");
    let (action, calls, _) = Scenario::new(pd).run().await;
    assert_eq!(action, Ok(Action::await_change()));
    let ready = condition(&calls[0].body["status"], "Ready");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("spec.checkpoint.storage.local")
    );
}

#[tokio::test]
async fn unreachable_kafka_is_a_condition_an_event_and_a_retry_not_a_crash() {
    let (action, calls, _) = Scenario::new(pipeline(""))
        .partitions(Err(broker_unreachable()))
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

/// The runtime pods' report of the source partitions (an `AWS_MSK_IAM` pipeline's only source).
struct Reported(Option<i32>);

impl pipeline_operator::autoscale::source::Sources for Reported {
    fn source(
        &self,
        _: &pipeline_crds::autoscaler::MetricsSource,
    ) -> Result<
        Arc<dyn pipeline_operator::autoscale::source::MetricsSource>,
        pipeline_operator::autoscale::source::PrometheusUrlError,
    > {
        panic!("no autoscaler in these scenarios")
    }

    fn reported_partitions<'a>(
        &'a self,
        _: &'a pipeline_operator::autoscale::source::Target,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Option<i32>, pipeline_operator::autoscale::source::ScrapeError>,
    > {
        let reported = self.0;
        Box::pin(async move { Ok(reported) })
    }
}

fn msk_iam_pipeline(extra: &str) -> PipelineDeployment {
    let mut pd = from_yaml(
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns, generation: 2}}\nspec:\n  kafka: {{bootstrapServers: 'b-1.msk.example:9098', securityProtocol: SASL_SSL, sasl: {{mechanism: AWS_MSK_IAM, region: eu-west-1}}}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
        "scenario",
    )
    .unwrap();
    pd.metadata.uid = Some("uid-1".into());
    pd
}

async fn reconcile_msk_iam(
    pd: PipelineDeployment,
    reported: Option<i32>,
) -> (Result<Action, String>, Vec<Call>, Vec<KafkaAccess>) {
    let metrics = Arc::new(OperatorMetrics::default());
    Scenario::new(pd)
        .run_on(move |client, partitions, crd, install| {
            let mut ctx = context(client, metrics, partitions, crd, install);
            ctx.metrics_sources = Arc::new(Reported(reported));
            ctx
        })
        .await
}

#[tokio::test]
async fn an_msk_iam_pipeline_is_never_looked_up_with_the_operators_identity_and_starts_at_its_parallelism_until_its_pods_report()
 {
    let (action, calls, asked) =
        reconcile_msk_iam(msk_iam_pipeline("  parallelism: 2\n"), None).await;
    assert!(
        asked.is_empty(),
        "the operator connected to Kafka: {asked:?}"
    );
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
    assert_eq!(scale_json(&calls), r#"{"parallelism":2,"replicas":1}"#);
    let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False");
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("AWS_MSK_IAM")
            && message.contains("pipeline_source_partitions")
            && message.contains("no runtime pod has reported them yet"),
        "{message}"
    );
    // No Secret is read for the connection: there is none.
    assert!(
        !lines(&calls).iter().any(|l| l.contains("/secrets/")),
        "{:?}",
        lines(&calls)
    );
}

#[tokio::test]
async fn an_msk_iam_pipeline_is_sized_from_the_partitions_its_pods_report() {
    let (action, calls, asked) = reconcile_msk_iam(msk_iam_pipeline(""), Some(12)).await;
    assert!(
        asked.is_empty(),
        "the operator connected to Kafka: {asked:?}"
    );
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(60))));
    let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
    assert_eq!(status["partitions"], 12);
    assert_eq!(condition(status, "Degraded")["status"], "False", "{status}");
    assert_eq!(status["parallelism"], 12);
    assert_eq!(scale_json(&calls), r#"{"parallelism":12,"replicas":3}"#);
}

#[tokio::test]
async fn a_suspend_or_an_image_fix_is_applied_through_a_broker_outage_with_the_last_known_partitions()
 {
    let (_, first, _) = Scenario::new(pipeline("  parallelism: 6\n"))
        .partitions(Ok(12))
        .run()
        .await;
    let running = after(pipeline("  parallelism: 6\n  image: img:2\n"), &first);
    let (action, calls, _) = Scenario::new(running)
        .partitions(Err(broker_unreachable()))
        .run()
        .await;
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert_eq!(
        sts["spec"]["template"]["spec"]["containers"][0]["image"],
        "img:2"
    );
    assert_eq!(scale_json(&calls), r#"{"parallelism":6,"replicas":2}"#);
    let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
    let ready = condition(status, "Ready");
    assert_eq!(
        (ready["status"].as_str(), ready["reason"].as_str()),
        (Some("False"), Some("KafkaUnreachable"))
    );
    assert!(
        ready["message"].as_str().unwrap().contains(&format!(
            "{}; applied with the last known count (12)",
            broker_unreachable()
        )),
        "{ready}"
    );
    assert_eq!(status["partitions"], 12);
    assert_eq!(events(&calls)[0].1, "KafkaUnreachable");

    let suspended = after(pipeline("  parallelism: 6\n  suspend: true\n"), &first);
    let (_, calls, _) = Scenario::new(suspended)
        .partitions(Err(broker_unreachable()))
        .run()
        .await;
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    assert_eq!(sts["spec"]["replicas"], 0, "suspended during the outage");
    assert_eq!(
        by_path(&calls, Method::PATCH, STATUS_PATH)["status"]["phase"],
        "Suspended"
    );
}

#[tokio::test]
async fn sasl_credentials_are_read_from_a_secret_marked_for_pipelines_for_the_partition_lookup() {
    let sasl = "  kafka: {bootstrapServers: 'k:9096', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: kafka-user, passwordKey: pw}}}\n";
    let mut pd = pipeline("");
    pd.spec.kafka = pipeline_crds::manifest::from_yaml(
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p}}\nspec:\n{sasl}  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n"),
        "t",
    )
    .unwrap()
    .spec
    .kafka;
    let secret = |labels: Value| {
        json!({"apiVersion": "v1", "kind": "Secret",
               "metadata": {"name": "kafka-user", "namespace": "ns", "labels": labels},
               "data": {"username": "YWxpY2U=", "pw": "czNjcjN0"}})
    };
    let mut scenario = Scenario::new(pd.clone());
    scenario.cluster.secrets.insert(
        "kafka-user".into(),
        secret(json!({"sluice.dev/pipeline-credentials": "true"})),
    );
    let (_, calls, asked) = scenario.run().await;
    assert_eq!(
        lines(&calls)[..2],
        [
            format!("GET {NS}/secrets/kafka-user"),
            format!("GET {NS}/configmaps/p-pipeline")
        ],
        "the Secret is read once, before anything is read or applied"
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
    let (action, missing, asked) = Scenario::new(pd.clone()).run().await;
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

    // A Secret the namespace has not marked for pipelines is neither used nor mounted.
    let mut unmarked = Scenario::new(pd);
    unmarked
        .cluster
        .secrets
        .insert("kafka-user".into(), secret(json!({"team": "payments"})));
    let (action, calls, asked) = unmarked.run().await;
    assert!(asked.is_empty(), "no credentials go to any broker");
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
    assert!(
        !calls.iter().any(|c| c.path.starts_with(STS)),
        "no pods mount it"
    );
    let ready = condition(&calls[1].body["status"], "Ready");
    assert_eq!(ready["reason"], "CredentialsUnavailable");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("label it sluice.dev/pipeline-credentials=true"),
        "{ready}"
    );
}

#[tokio::test]
async fn a_client_certificate_for_mutual_tls_is_read_for_the_lookup_and_mounted_in_the_pods() {
    let mut pd = pipeline("");
    pd.spec.kafka = serde_json::from_value(json!({"bootstrapServers": "k:9093",
        "securityProtocol": "SSL", "tls": {"clientCertificateSecret": {"name": "client"}}}))
    .unwrap();
    let mut scenario = Scenario::new(pd);
    scenario.cluster.secrets.insert(
        "client".into(),
        json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
               "metadata": {"name": "client", "namespace": "ns",
                            "labels": {"sluice.dev/pipeline-credentials": "true"}},
               "data": {"tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}}),
    );
    let (_, calls, asked) = scenario.run().await;
    let p = &asked[0].properties;
    assert_eq!(
        (p["ssl.certificate.pem"].as_str(), p["ssl.key.pem"].as_str()),
        ("CERT", "KEY")
    );
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    let text = sts.to_string();
    assert!(
        !text.contains("KEY") && !text.contains("S0VZ"),
        "by reference only"
    );
    let volumes = sts["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap();
    assert!(
        volumes
            .iter()
            .any(|v| v["secret"]["secretName"] == "client"),
        "{volumes:?}"
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
async fn every_verb_of_the_rbac_rules_is_one_the_operator_uses() {
    use pipeline_operator::{
        autoscale::source::{Endpoints, Target},
        backend::kube::rbac,
        controller::PodEndpoints,
    };
    // What exercises each rule: a new pipeline where the PodMonitor CRD is looked up, a suspend
    // (prune deletes), SASL credentials (a Secret), and the direct scrape's pod list.
    let (_, first, _) = Scenario::new(pipeline(""))
        .run_on(|client, partitions, _, install| {
            let metrics = Arc::new(OperatorMetrics::default());
            let mut ctx = context(client.clone(), metrics, partitions, true, install);
            ctx.kube.pod_monitor_crd = PodMonitorCrd::detect();
            ctx
        })
        .await;
    // Children an earlier version named differently, of every kind: pruned.
    let mut renamed = Scenario::new(pipeline(""));
    renamed.pod_monitor_crd = true;
    for (path, api_version, kind) in [
        (format!("{NS}/configmaps"), "v1", "ConfigMap"),
        (format!("{NS}/services"), "v1", "Service"),
        (STS.to_owned(), "apps/v1", "StatefulSet"),
        (PDBS.to_owned(), "policy/v1", "PodDisruptionBudget"),
        (
            "/apis/monitoring.coreos.com/v1/namespaces/ns/podmonitors".to_owned(),
            "monitoring.coreos.com/v1",
            "PodMonitor",
        ),
    ] {
        renamed.cluster.lists.insert(
            path,
            vec![json!({"apiVersion": api_version, "kind": kind, "metadata": {
                "name": "old", "namespace": "ns",
                "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1", "kind": "PipelineDeployment",
                    "name": "p", "uid": "uid-1", "controller": true}]}})],
        );
    }
    let (_, calls, _) = renamed.run().await;
    assert_eq!(
        calls.iter().filter(|c| c.method == Method::DELETE).count(),
        5,
        "{:?}",
        lines(&calls)
    );
    let _ = Scenario::new(after(pipeline("  suspend: true\n"), &first))
        .run()
        .await;
    let sasl = "{bootstrapServers: 'k:9096', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: u}}}";
    let mut pd = pipeline("");
    pd.spec.kafka = serde_json::from_value(
        serde_json::to_value(serde_norway::from_str::<Value>(sasl).unwrap()).unwrap(),
    )
    .unwrap();
    let _ = Scenario::new(pd).run().await;
    // A deletion under deletionPolicy: delete (finalizer, StatefulSet, pods, the cleanup Job).
    let _ = a_whole_cleanup().await;
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, pipeline(""), Cluster::default()));
    let target = Target {
        namespace: "ns".into(),
        name: "p".into(),
    };
    PodEndpoints::new(Client::new(service, "ns"))
        .endpoints(&target)
        .await
        .unwrap();
    server.await.unwrap();

    let requested = REQUESTED.lock().unwrap().clone();
    let used = |group: &str, resource: &str, verb: &str| {
        requested.contains(&(group.to_owned(), resource.to_owned(), verb.to_owned()))
    };
    let mut unused = Vec::new();
    for rule in rbac::namespaced().iter().chain(rbac::cluster().iter()) {
        for resource in &rule.resources {
            for verb in &rule.verbs {
                let group = rule.api_group.as_str();
                let why_unseen = match *verb {
                    // Server-side apply of an object that does not exist is authorized as create.
                    "create" if used(group, resource, "patch") => true,
                    // The controller's watches (list, then watch) run outside reconcile.
                    "list" | "watch"
                        if resource == "pipelinedeployments"
                            || rbac::WATCHED_CHILDREN.contains(&resource.as_str()) =>
                    {
                        true
                    }
                    _ => used(group, resource, verb),
                };
                if !why_unseen {
                    unused.push(format!("{verb} {group}/{resource}"));
                }
            }
        }
    }
    assert!(unused.is_empty(), "rules no request needs: {unused:?}");
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
    assert_eq!(
        l[5],
        format!("GET {monitors}/p"),
        "read before its first apply"
    );
    assert_eq!(l[11], format!("PATCH {monitors}/p"));
    assert_eq!(l[16], format!("GET {monitors}"));
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
            .run_on(move |client, partitions, _, install| {
                let mut ctx = context(client, m, partitions, false, install);
                ctx.error_events = sent;
                ctx
            })
            .await;
        results.push(result);
        runs.push(calls);
    }
    assert!(results[0].as_ref().unwrap_err().contains("kubernetes API"));
    assert!(results[2].is_ok());
    let reads: Vec<String> = children(true).iter().map(|c| format!("GET {c}")).collect();
    assert_eq!(
        lines(&runs[0]),
        [
            &reads[..],
            &[
                format!("PATCH {NS}/configmaps/p-pipeline"),
                format!("POST {EVENTS}")
            ]
        ]
        .concat()
    );
    let first = events(&runs[0]);
    assert_eq!(
        (first[0].0.as_str(), first[0].1.as_str()),
        ("Warning", "ReconcileFailed")
    );
    assert_eq!(
        lines(&runs[1]),
        [&reads[..], &[format!("PATCH {NS}/configmaps/p-pipeline")]].concat(),
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

mod autoscaling {
    //! The autoscaler inside reconcile: a scripted metrics source and a fixed clock.

    use std::collections::{BTreeMap, BTreeSet};

    use futures::future::BoxFuture;
    use pipeline_operator::autoscale::{
        observation::{Observation, PartitionObservation, SlotObservation, Unknown},
        policy::Input,
        source::{MetricsSource, PrometheusUrlError, Query, ScrapeError, Sources, Target},
    };

    use super::*;

    /// Answers every read with the same input, and remembers the queries.
    struct Scripted {
        input: Input,
        queries: Mutex<Vec<Query>>,
    }

    impl MetricsSource for Scripted {
        fn read<'a>(&'a self, _: &'a Target, query: Query) -> BoxFuture<'a, Input> {
            self.queries.lock().unwrap().push(query);
            let input = self.input.clone();
            Box::pin(async move { input })
        }
    }

    struct Fixed(Arc<Scripted>);

    impl Sources for Fixed {
        fn source(
            &self,
            _: &pipeline_crds::autoscaler::MetricsSource,
        ) -> Result<Arc<dyn MetricsSource>, PrometheusUrlError> {
            Ok(self.0.clone())
        }

        fn reported_partitions<'a>(
            &'a self,
            _: &'a Target,
        ) -> BoxFuture<'a, Result<Option<i32>, ScrapeError>> {
            Box::pin(async { Ok(None) })
        }
    }

    /// 24 partitions sharing `arrival` and `lag`; `p` slots each `busy`, processing `processed`.
    fn window(p: i32, arrival: f64, lag: f64, processed: f64, busy: f64) -> Observation {
        let partitions = (0..24)
            .map(|i| {
                let share = PartitionObservation {
                    lag: lag / 24.0,
                    arrival_rate: arrival / 24.0,
                };
                (format!("in/{i}"), share)
            })
            .collect();
        let slots = (0..p)
            .map(|j| {
                let slot = SlotObservation {
                    busy,
                    backpressure: 0.0,
                    processing_rate: processed / f64::from(p),
                };
                (format!("p-0/{j}"), slot)
            })
            .collect::<BTreeMap<_, _>>();
        Observation::new(
            arrival,
            arrival,
            processed,
            partitions,
            slots,
            BTreeSet::new(),
            300.0,
            10.0,
        )
    }

    const NOW: f64 = 1_800_000_000.0;

    const AUTOSCALED: &str = "  parallelism: 2\n  autoscaler: {enabled: true}\n";

    /// A metrics source with a bug.
    struct Panicking;

    impl Sources for Panicking {
        fn source(
            &self,
            _: &pipeline_crds::autoscaler::MetricsSource,
        ) -> Result<Arc<dyn MetricsSource>, PrometheusUrlError> {
            panic!("a bug in a metrics source")
        }

        fn reported_partitions<'a>(
            &'a self,
            _: &'a Target,
        ) -> BoxFuture<'a, Result<Option<i32>, ScrapeError>> {
            panic!("a bug in a metrics source")
        }
    }

    #[tokio::test]
    async fn a_panic_in_reconcile_fails_only_that_reconcile_is_counted_and_backs_off() {
        let pd = running(AUTOSCALED).await;
        let metrics = Arc::new(OperatorMetrics::default());
        let m = metrics.clone();
        let (result, _, _) = Scenario::new(pd)
            .partitions(Ok(24))
            .run_on(move |client, partitions, crd, install| {
                let mut ctx = context(client, m, partitions, crd, install);
                ctx.metrics_sources = Arc::new(Panicking);
                ctx.clock = Arc::new(|| NOW);
                ctx
            })
            .await;
        let error = result.unwrap_err();
        assert!(
            error.contains("reconcile panicked: a bug in a metrics source"),
            "{error}"
        );
        let text = metrics.encode();
        assert!(
            text.contains("sluice_operator_reconciles_total{result=\"panic\"} 1"),
            "{text}"
        );
        // Retries back off per object: 5 s, doubling, at most 5 minutes.
        let waits: Vec<u64> = (1..=9)
            .map(|n| pipeline_operator::controller::retry_after(n).as_secs())
            .collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
    }

    /// Reconciles `pd` once at `now` with the autoscaler reading `input`.
    async fn autoscale(
        pd: PipelineDeployment,
        input: Input,
        now: f64,
    ) -> (Vec<Call>, Arc<Scripted>, Arc<OperatorMetrics>) {
        let scripted = Arc::new(Scripted {
            input,
            queries: Mutex::new(Vec::new()),
        });
        let sources = Arc::new(Fixed(scripted.clone()));
        let metrics = Arc::new(OperatorMetrics::default());
        let m = metrics.clone();
        let (result, calls, _) = Scenario::new(pd)
            .partitions(Ok(24))
            .run_on(move |client, partitions, crd, install| {
                let mut ctx = context(client, m, partitions, crd, install);
                ctx.metrics_sources = sources;
                ctx.clock = Arc::new(move || now);
                ctx
            })
            .await;
        assert_eq!(result, Ok(Action::requeue(Duration::from_secs(30))));
        (calls, scripted, metrics)
    }

    /// A pipeline running 2 slots under the autoscaler (its first reconcile done).
    async fn running(extra: &str) -> PipelineDeployment {
        let (_, first, _) = Scenario::new(pipeline(extra))
            .partitions(Ok(24))
            .run()
            .await;
        after(pipeline(extra), &first)
    }

    fn known(o: Observation) -> Input {
        Input {
            observation: Ok(o),
            stable_at: None,
        }
    }

    fn scale_file(calls: &[Call]) -> Value {
        serde_json::from_str(scale_json(calls)).unwrap()
    }

    fn autoscaler_status(calls: &[Call]) -> Value {
        by_path(calls, Method::PATCH, STATUS_PATH)["status"].clone()
    }

    fn reasons(calls: &[Call]) -> Vec<String> {
        events(calls).into_iter().map(|e| e.1).collect()
    }

    #[tokio::test]
    async fn a_scale_up_decision_is_applied_in_place_explained_and_counted() {
        let (_, first_calls, _) = Scenario::new(pipeline(AUTOSCALED))
            .partitions(Ok(24))
            .run()
            .await;
        let pd = after(pipeline(AUTOSCALED), &first_calls);
        let lagging = known(window(2, 14_000.0, 300_000.0, 10_000.0, 1.0));
        let (calls, scripted, metrics) = autoscale(pd, lagging, NOW).await;
        let query = scripted.queries.lock().unwrap()[0];
        assert_eq!((query.expect.slots, query.expect.partitions), (2, 24));
        assert_eq!(query.settling_since, None);
        assert_eq!(scale_file(&calls), json!({"parallelism": 5, "replicas": 2}));
        // The pod template is the one the pipeline ran with: no pod restarts.
        let template = |calls: &[Call]| {
            by_path(calls, Method::PATCH, &format!("{STS}/p"))["spec"]["template"].clone()
        };
        assert_eq!(template(&calls), template(&first_calls));
        let status = autoscaler_status(&calls);
        let a = &status["autoscaler"];
        assert_eq!(a["result"], "ScaleUp");
        assert_eq!(
            (
                a["decidedParallelism"].clone(),
                a["recommendedParallelism"].clone()
            ),
            (json!(5), json!(5))
        );
        assert_eq!(a["inputs"]["arrivalRate"], 14_000.0);
        assert!(
            a["reason"].as_str().unwrap().contains("scale up to 5"),
            "{a}"
        );
        assert_eq!(a["rescale"]["from"], 2);
        assert_eq!(
            (status["lag"].clone(), status["busy"].clone()),
            (json!(300_000), json!(1.0))
        );
        assert_eq!(status["phase"], "Scaling");
        let reasons = reasons(&calls);
        assert!(
            reasons.contains(&"ScaledUp".to_owned())
                && reasons.contains(&"AutoscalerScaleUp".to_owned()),
            "{reasons:?}"
        );
        let text = metrics.encode();
        assert!(
            text.contains(
                "sluice_autoscaler_recommended_parallelism{namespace=\"ns\",pipeline=\"p\"} 5"
            ),
            "{text}"
        );
        assert!(text.contains("sluice_autoscaler_decisions_total{namespace=\"ns\",pipeline=\"p\",direction=\"up\",reason=\"ScaleUp\"} 1"), "{text}");

        // The next reconcile within the interval reads no metrics and keeps the decision; the
        // one after waits for the rescale to settle.
        let scaled = after(pipeline(AUTOSCALED), &calls);
        let (again, scripted, _) = autoscale(
            scaled.clone(),
            known(window(5, 0.0, 0.0, 0.0, 0.0)),
            NOW + 10.0,
        )
        .await;
        assert!(scripted.queries.lock().unwrap().is_empty());
        assert_eq!(scale_file(&again)["parallelism"], 5);
        let settling = Input {
            observation: Err(Unknown::Missing("a rescale is settling".into())),
            stable_at: None,
        };
        let (later, scripted, _) = autoscale(scaled, settling, NOW + 30.0).await;
        assert_eq!(
            scripted.queries.lock().unwrap()[0].settling_since,
            Some(NOW)
        );
        assert_eq!(autoscaler_status(&later)["autoscaler"]["result"], "Held");
        assert_eq!(scale_file(&later)["parallelism"], 5);
    }

    #[tokio::test]
    async fn recommend_only_writes_the_recommendation_and_changes_nothing() {
        let spec = "  parallelism: 2\n  autoscaler: {enabled: true, mode: recommendOnly}\n";
        let pd = running(spec).await;
        let (calls, _, _) = autoscale(
            pd,
            known(window(2, 14_000.0, 300_000.0, 10_000.0, 1.0)),
            NOW,
        )
        .await;
        assert_eq!(scale_file(&calls)["parallelism"], 2);
        let a = &autoscaler_status(&calls)["autoscaler"];
        assert_eq!(
            (
                a["recommendedParallelism"].clone(),
                a["decidedParallelism"].clone()
            ),
            (json!(5), Value::Null)
        );
        assert_eq!(reasons(&calls), ["AutoscalerRecommendation"]);
    }

    #[tokio::test]
    async fn unknown_metrics_hold_the_parallelism_and_warn_once() {
        let pd = running(AUTOSCALED).await;
        let unknown = Input {
            observation: Err(Unknown::Partial("1 of 2 slots reported".into())),
            stable_at: None,
        };
        let (calls, _, _) = autoscale(pd, unknown.clone(), NOW).await;
        assert_eq!(scale_file(&calls)["parallelism"], 2);
        let a = &autoscaler_status(&calls)["autoscaler"];
        assert_eq!(a["result"], "NoMetrics");
        assert!(
            a["reason"]
                .as_str()
                .unwrap()
                .contains("1 of 2 slots reported"),
            "{a}"
        );
        assert_eq!(events(&calls)[0].0, "Warning");
        assert_eq!(reasons(&calls), ["AutoscalerMetricsUnknown"]);
        // Still unknown at the next evaluation: no second Event.
        let (again, _, _) =
            autoscale(after(pipeline(AUTOSCALED), &calls), unknown, NOW + 30.0).await;
        assert!(events(&again).is_empty());
    }

    #[tokio::test]
    async fn a_sink_bound_pipeline_is_not_scaled_up_and_says_so() {
        let spec = "  parallelism: 4\n  autoscaler: {enabled: true}\n";
        let pd = running(spec).await;
        let mut o = window(4, 14_000.0, 2_000_000.0, 9_000.0, 0.45);
        o.backpressure_mean = 0.55;
        o.backpressure_max = 0.6;
        let (calls, _, _) = autoscale(pd, known(o), NOW).await;
        assert_eq!(scale_file(&calls)["parallelism"], 4);
        let status = autoscaler_status(&calls);
        assert_eq!(status["autoscaler"]["vetoes"], json!(["SinkBound"]));
        let limited = condition(&status, "ScalingLimited");
        assert_eq!(
            (limited["status"].clone(), limited["reason"].clone()),
            (json!("True"), json!("SinkBound"))
        );
        assert!(
            limited["message"]
                .as_str()
                .unwrap()
                .contains("the sink is the bottleneck"),
            "{limited}"
        );
        assert_eq!(reasons(&calls), ["AutoscalerSinkBound"]);
    }

    #[tokio::test]
    async fn a_scale_down_waits_for_the_delay_then_applies_and_survives_an_operator_restart() {
        let spec = "  parallelism: 12\n  autoscaler: {enabled: true, scaleDownDelay: 5m}\n";
        let pd = running(spec).await;
        let quiet = || known(window(12, 6_000.0, 0.0, 6_000.0, 0.1));
        let (first, _, _) = autoscale(pd, quiet(), NOW).await;
        assert_eq!(scale_file(&first)["parallelism"], 12);
        assert_eq!(
            autoscaler_status(&first)["autoscaler"]["vetoes"],
            json!(["ScaleDownDelay"])
        );
        // A new operator (new context, nothing in memory) reads the pending scale-down from status.
        let (later, _, _) = autoscale(after(pipeline(spec), &first), quiet(), NOW + 300.0).await;
        assert_eq!(
            scale_file(&later)["parallelism"],
            6,
            "at most half of the slots go at once"
        );
        assert_eq!(
            autoscaler_status(&later)["autoscaler"]["result"],
            "ScaleDown"
        );
        assert!(reasons(&later).contains(&"AutoscalerScaleDown".to_owned()));
    }

    #[tokio::test]
    async fn kubectl_scale_overrides_the_autoscaler_decision_and_the_autoscaler_resumes_from_it() {
        let pd = running(AUTOSCALED).await;
        let (scaled, _, _) = autoscale(
            pd,
            known(window(2, 14_000.0, 300_000.0, 10_000.0, 1.0)),
            NOW,
        )
        .await;
        assert_eq!(scale_file(&scaled)["parallelism"], 5);
        // `kubectl scale pd/p --replicas 3` writes spec.parallelism through the scale subresource.
        let by_hand = "  parallelism: 3\n  autoscaler: {enabled: true}\n";
        let pd = after(pipeline(by_hand), &scaled);
        let (calls, scripted, _) =
            autoscale(pd, known(window(5, 9_000.0, 0.0, 9_000.0, 0.5)), NOW + 5.0).await;
        assert_eq!(
            scale_file(&calls)["parallelism"],
            3,
            "{}",
            autoscaler_status(&calls)
        );
        let a = &autoscaler_status(&calls)["autoscaler"];
        assert_eq!(a["specParallelism"], 3);
        assert_eq!(a["decidedParallelism"], Value::Null);
        // The evaluation started afresh: no rescale of the old decision to wait for.
        assert_eq!(scripted.queries.lock().unwrap()[0].settling_since, None);
    }
}

/// A pipeline that names a Secret in every field that can name one.
fn pipeline_with_every_secret_reference() -> PipelineDeployment {
    let mut pd = pipeline("");
    pd.spec = from_yaml(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka:\n    bootstrapServers: k:9096\n    securityProtocol: SASL_SSL\n    sasl: {mechanism: PLAIN, credentialsSecret: {name: sasl}}\n    tls: {caSecret: {name: ca}, clientCertificateSecret: {name: client}}\n    schemaRegistryUrl: https://registry:8081\n    schemaRegistryCredentialsSecret: {name: registry}\n  source: {topic: in}\n  checkpoint: {storage: {s3: {bucket: snapshots, credentialsSecret: {name: s3}}}}\n  sink: {clickhouse: {url: 'http://ch:8123', table: t, credentialsSecret: {name: clickhouse}}}\n",
        "t",
    )
    .unwrap()
    .spec;
    pd
}

/// A Secret with every key any reference reads, labelled `labels`.
fn secret_with_every_key(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "ns", "labels": labels},
           "data": {"username": "dQ==", "password": "cA==", "ca.crt": "Q0E=",
                    "tls.crt": "Q0VSVA==", "tls.key": "S0VZ"}})
}

#[tokio::test]
async fn every_secret_a_pod_would_receive_must_be_marked_for_pipelines() {
    let pd = pipeline_with_every_secret_reference();
    let references = pd.spec.secret_references();
    assert_eq!(references.len(), 6);
    let marked = json!({"sluice.dev/pipeline-credentials": "true"});
    for unmarked in &references {
        let mut scenario = Scenario::new(pd.clone());
        for reference in &references {
            let labels = if reference.name == unmarked.name {
                json!({"team": "payments"})
            } else {
                marked.clone()
            };
            scenario.cluster.secrets.insert(
                reference.name.to_owned(),
                secret_with_every_key(reference.name, labels),
            );
        }
        let (action, calls, asked) = scenario.run().await;
        assert_eq!(action, Ok(Action::requeue(Duration::from_secs(30))));
        assert!(asked.is_empty(), "{}: no lookup", unmarked.field);
        assert!(
            !calls.iter().any(
                |c| c.method == Method::PATCH && c.path.contains("/configmaps/")
                    || c.path.starts_with(STS)
            ),
            "{}: nothing is applied: {:?}",
            unmarked.field,
            lines(&calls)
        );
        let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
        let ready = condition(status, "Ready");
        assert_eq!(
            ready["reason"], "CredentialsUnavailable",
            "{}",
            unmarked.field
        );
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "Secret ns/{} (from {}) is not marked",
                unmarked.name, unmarked.field
            )),
            "{message}"
        );
    }

    // All marked: each one reaches the pods, by reference, and no other Secret does.
    let mut scenario = Scenario::new(pd.clone());
    for reference in &references {
        scenario.cluster.secrets.insert(
            reference.name.to_owned(),
            secret_with_every_key(reference.name, marked.clone()),
        );
    }
    let (_, calls, asked) = scenario.run().await;
    assert_eq!(asked.len(), 1);
    let sts = by_path(&calls, Method::PATCH, &format!("{STS}/p"));
    let pod = &sts["spec"]["template"]["spec"];
    let mut received: Vec<String> = env_of(sts)
        .iter()
        .filter_map(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str())
        .chain(
            pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|v| v["secret"]["secretName"].as_str()),
        )
        .map(str::to_owned)
        .collect();
    received.sort();
    received.dedup();
    let mut gated: Vec<String> = references.iter().map(|r| r.name.to_owned()).collect();
    gated.sort();
    assert_eq!(received, gated);
    let registry_user = env_of(sts)
        .iter()
        .find(|e| e["name"] == "SLUICE_SCHEMA_REGISTRY_USER")
        .expect("the registry's credentials reach the runtime");
    assert_eq!(
        registry_user["valueFrom"]["secretKeyRef"]["name"],
        "registry"
    );
}

#[tokio::test]
async fn a_child_whose_name_is_taken_by_an_object_it_does_not_own_is_left_alone() {
    let theirs = json!([{"apiVersion": "sluice.dev/v1alpha1", "kind": "PipelineDeployment",
                         "name": "other", "uid": "uid-other", "controller": true}]);
    for (path, api_version, kind, owners) in [
        (
            format!("{NS}/configmaps/p-pipeline"),
            "v1",
            "ConfigMap",
            json!(null),
        ),
        (
            format!("{NS}/services/p-metrics"),
            "v1",
            "Service",
            json!(null),
        ),
        (format!("{STS}/p"), "apps/v1", "StatefulSet", theirs.clone()),
        (
            format!("{PDBS}/p"),
            "policy/v1",
            "PodDisruptionBudget",
            theirs.clone(),
        ),
    ] {
        let name = path.rsplit('/').next().unwrap().to_owned();
        let mut scenario = Scenario::new(pipeline(""));
        scenario.cluster.objects.insert(
            path.clone(),
            json!({"apiVersion": api_version, "kind": kind,
                   "metadata": {"name": name, "namespace": "ns", "ownerReferences": owners}}),
        );
        let (action, calls, _) = scenario.run().await;
        assert_eq!(
            action,
            Ok(Action::requeue(Duration::from_secs(60))),
            "{kind}"
        );
        let patched: Vec<&Call> = calls
            .iter()
            .filter(|c| c.method == Method::PATCH && c.path != STATUS_PATH)
            .collect();
        assert!(
            patched.is_empty(),
            "{kind}: nothing is applied: {patched:?}"
        );
        assert!(
            !calls.iter().any(|c| c.method == Method::DELETE),
            "{kind}: nothing is pruned"
        );
        let status = &by_path(&calls, Method::PATCH, STATUS_PATH)["status"];
        let ready = condition(status, "Ready");
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "NameConflict", "{kind}");
        let message = ready["message"].as_str().unwrap();
        assert!(
            message.contains(&format!(
                "{kind} {name} already exists and is not owned by this pipeline"
            )),
            "{message}"
        );
        if owners.is_array() {
            assert!(message.contains("PipelineDeployment/other"), "{message}");
        }
        let events = events(&calls);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].0.as_str(), events[0].1.as_str()),
            ("Warning", "NameConflict")
        );
        assert!(events[0].2.contains(&name), "{events:?}");
    }

    // An existing child the pipeline controls is applied as usual.
    let mut scenario = Scenario::new(pipeline(""));
    scenario.cluster.objects.insert(
        format!("{NS}/services/p-metrics"),
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "p-metrics",
               "namespace": "ns", "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1",
               "kind": "PipelineDeployment", "name": "p", "uid": "uid-1", "controller": true}]}}),
    );
    let (action, calls, _) = scenario.run().await;
    assert_eq!(action, Ok(Action::requeue(Duration::from_secs(60))));
    assert!(lines(&calls).contains(&format!("PATCH {NS}/services/p-metrics")));
}

/// A pipeline with `deletionPolicy: delete` (and S3 checkpoints when `checkpoints`) that is
/// being deleted, asked `seconds_ago`, with the finalizer on.
fn deleted(checkpoints: bool, seconds_ago: f64) -> PipelineDeployment {
    let extra = if checkpoints {
        "  deletionPolicy: delete\n  checkpoint: {storage: {s3: {bucket: bucket-b}}}\n"
    } else {
        "  deletionPolicy: delete\n"
    };
    let mut pd = pipeline(extra);
    pd.metadata.finalizers = Some(vec!["sluice.dev/cleanup".into()]);
    let asked =
        k8s_openapi::jiff::Timestamp::from_millisecond(((NOW - seconds_ago) * 1000.0) as i64)
            .unwrap();
    pd.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(asked));
    pd
}

/// Seconds since the epoch the deletion scenarios run at.
const NOW: f64 = 1_796_205_600.0;

fn owned_by_p(api_version: &str, kind: &str, name: &str) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name, "namespace": "ns",
        "ownerReferences": [{"apiVersion": "sluice.dev/v1alpha1", "kind": "PipelineDeployment",
            "name": "p", "uid": "uid-1", "controller": true}]}})
}

fn runtime_pod() -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p-0", "namespace": "ns"}})
}

fn cleanup_job(uid: &str, status: Value) -> Value {
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "p-cleanup", "namespace": "ns",
        "annotations": {"sluice.dev/pipeline-uid": uid}},
        "spec": {"template": {"spec": {"containers": []}}}, "status": status})
}

/// Reconciles `scenario` at [`NOW`].
async fn at_now(scenario: Scenario) -> (Result<Action, String>, Vec<Call>) {
    let metrics = Arc::new(OperatorMetrics::default());
    let (result, calls, _) = scenario
        .run_on(move |client, partitions, crd, install| {
            let mut ctx = context(client, metrics, partitions, crd, install);
            ctx.clock = Arc::new(|| NOW);
            ctx
        })
        .await;
    (result, calls)
}

/// The three reconciles of a whole cleanup: pods still running, then the Job started, then the
/// Job done; with what each requested and what the group state deleted.
async fn a_whole_cleanup() -> Vec<(
    Result<Action, String>,
    Vec<Call>,
    Vec<(String, Vec<String>)>,
)> {
    let sts = format!("{STS}/p");
    let pods = format!("{NS}/pods");
    let mut runs = Vec::new();
    let mut cluster = Cluster::default();
    cluster
        .objects
        .insert(sts.clone(), owned_by_p("apps/v1", "StatefulSet", "p"));
    cluster.lists.insert(pods.clone(), vec![runtime_pod()]);
    let steps = [
        cluster.clone(),
        Cluster::default(),
        Cluster {
            objects: HashMap::from([(
                format!("{JOBS}/p-cleanup"),
                cleanup_job("uid-1", json!({"succeeded": 1})),
            )]),
            ..Cluster::default()
        },
    ];
    for cluster in steps {
        let mut scenario = Scenario::new(deleted(true, 60.0));
        scenario.cluster = cluster;
        let groups = scenario.groups.clone();
        let (result, calls) = at_now(scenario).await;
        let deleted = groups.deleted.lock().unwrap().clone();
        runs.push((result, calls, deleted));
    }
    runs
}

#[tokio::test]
async fn a_pipeline_with_deletion_policy_delete_gets_its_finalizer_before_anything_is_applied() {
    let (_, calls, _) = Scenario::new(pipeline("  deletionPolicy: delete\n"))
        .run()
        .await;
    assert_eq!(
        lines(&calls)[0],
        format!("PATCH {PD_PATH}"),
        "{:?}",
        lines(&calls)
    );
    assert_eq!(
        calls[0].body["metadata"]["finalizers"],
        json!(["sluice.dev/cleanup"])
    );
    assert!(lines(&calls).contains(&format!("PATCH {STS}/p")));
    // Retain (the default) holds no finalizer, and one left from delete is taken off.
    let (_, calls, _) = Scenario::new(pipeline("")).run().await;
    assert!(!lines(&calls).contains(&format!("PATCH {PD_PATH}")));
    let mut switched = pipeline("");
    switched.metadata.finalizers = Some(vec!["other.io/keep".into(), "sluice.dev/cleanup".into()]);
    let (_, calls, _) = Scenario::new(switched).run().await;
    assert_eq!(
        by_path(&calls, Method::PATCH, PD_PATH)["metadata"]["finalizers"],
        json!(["other.io/keep"]),
        "another controller's finalizer is kept"
    );
}

#[tokio::test]
async fn deleting_a_pipeline_stops_its_pods_then_deletes_the_group_then_its_checkpoints_by_job() {
    let runs = a_whole_cleanup().await;
    // 1: the StatefulSet is deleted; a pod is still there, so nothing else happens yet.
    let (action, calls, deleted) = &runs[0];
    assert_eq!(*action, Ok(Action::requeue(Duration::from_secs(5))));
    assert_eq!(
        lines(calls),
        [
            format!("GET {STS}/p"),
            format!("DELETE {STS}/p"),
            format!("GET {NS}/pods")
        ]
    );
    assert!(
        calls[2].query.contains("sluice.dev%2Fpipeline%3Dp"),
        "{}",
        calls[2].query
    );
    assert!(
        deleted.is_empty(),
        "no group deletion while a member may run"
    );
    // 2: no pod left: the group and its repartition topic go, and the cleanup Job starts.
    let (action, calls, deleted) = &runs[1];
    assert_eq!(*action, Ok(Action::requeue(Duration::from_secs(5))));
    assert_eq!(
        *deleted,
        [(
            "sluice.ns.p".to_owned(),
            vec!["sluice.ns.p-repartition".to_owned()]
        )]
    );
    let job = by_path(calls, Method::POST, JOBS);
    assert_eq!(
        job["metadata"]["annotations"]["sluice.dev/pipeline-uid"],
        "uid-1"
    );
    assert_eq!(
        job["spec"]["template"]["spec"]["containers"][0]["args"],
        json!(["cleanup"])
    );
    assert!(
        !lines(calls).contains(&format!("PATCH {PD_PATH}")),
        "the finalizer stays"
    );
    assert_eq!(events(calls)[0].1, "CleanupStarted");
    // 3: the Job succeeded: it is deleted, then the finalizer. The Job's existence says the
    // Kafka state is gone: it is not deleted again.
    let (action, calls, deleted) = &runs[2];
    assert_eq!(*action, Ok(Action::await_change()));
    assert!(deleted.is_empty(), "{deleted:?}");
    let tail: Vec<String> = lines(calls).into_iter().rev().take(3).collect();
    assert_eq!(
        tail,
        [
            format!("POST {EVENTS}"),
            format!("PATCH {PD_PATH}"),
            format!("DELETE {JOBS}/p-cleanup"),
        ]
    );
    assert_eq!(
        by_path(calls, Method::PATCH, PD_PATH)["metadata"]["finalizers"],
        json!([])
    );
    let (kind, reason, note) = &events(calls)[0];
    assert_eq!((kind.as_str(), reason.as_str()), ("Normal", "CleanedUp"));
    assert!(
        note.contains("sluice.ns.p") && note.contains("p-cleanup"),
        "{note}"
    );
}

#[tokio::test]
async fn a_pipeline_without_checkpoints_is_released_once_its_group_is_deleted() {
    let (action, calls) = at_now(Scenario::new(deleted(false, 60.0))).await;
    assert_eq!(action, Ok(Action::await_change()));
    assert!(
        !lines(&calls).iter().any(|l| l.contains("/jobs")),
        "{:?}",
        lines(&calls)
    );
    assert_eq!(
        by_path(&calls, Method::PATCH, PD_PATH)["metadata"]["finalizers"],
        json!([])
    );
}

#[tokio::test]
async fn a_failing_cleanup_is_retried_then_given_up_after_its_deadline_with_a_warning() {
    let failing = || Groups {
        delete_error: Some("broker down".into()),
        ..Groups::default()
    };
    let mut scenario = Scenario::new(deleted(false, 60.0));
    scenario.groups = Arc::new(failing());
    let (action, calls) = at_now(scenario).await;
    assert!(action.unwrap_err().contains("broker down"));
    assert!(
        !lines(&calls).contains(&format!("PATCH {PD_PATH}")),
        "the finalizer stays"
    );
    let mut scenario = Scenario::new(deleted(false, 16.0 * 60.0));
    scenario.groups = Arc::new(failing());
    let (action, calls) = at_now(scenario).await;
    assert_eq!(action, Ok(Action::await_change()));
    assert_eq!(
        by_path(&calls, Method::PATCH, PD_PATH)["metadata"]["finalizers"],
        json!([])
    );
    let (kind, reason, note) = &events(&calls)[0];
    assert_eq!(
        (kind.as_str(), reason.as_str()),
        ("Warning", "CleanupIncomplete")
    );
    assert!(
        note.contains("broker down") && note.contains("sluice.ns.p"),
        "{note}"
    );
}

#[tokio::test]
async fn a_job_of_the_cleanups_name_that_another_pipeline_made_is_left_alone() {
    let mut scenario = Scenario::new(deleted(true, 60.0));
    scenario.cluster.objects.insert(
        format!("{JOBS}/p-cleanup"),
        cleanup_job("uid-other", json!({"succeeded": 1})),
    );
    let (action, calls) = at_now(scenario).await;
    assert!(action.unwrap_err().contains("Job p-cleanup"));
    assert!(
        !calls
            .iter()
            .any(|c| c.method == Method::DELETE && c.path.contains("/jobs")),
        "{:?}",
        lines(&calls)
    );
}

#[tokio::test]
async fn a_new_pipeline_whose_consumer_group_has_committed_offsets_says_it_resumes_from_them() {
    let mut scenario = Scenario::new(pipeline(""));
    scenario.groups = Arc::new(Groups {
        committed: true,
        ..Groups::default()
    });
    let (_, calls, _) = scenario.run().await;
    let found: Vec<_> = events(&calls)
        .into_iter()
        .filter(|(_, reason, _)| reason == "OldStateFound")
        .collect();
    assert_eq!(found.len(), 1, "{:?}", events(&calls));
    assert!(found[0].2.contains("sluice.ns.p"), "{}", found[0].2);
    // Without offsets, or once the pipeline has a status, nothing is said.
    let (_, first, _) = Scenario::new(pipeline("")).run().await;
    assert!(events(&first).iter().all(|(_, r, _)| r != "OldStateFound"));
    let mut again = Scenario::new(after(pipeline(""), &first));
    again.groups = Arc::new(Groups {
        committed: true,
        ..Groups::default()
    });
    let (_, calls, _) = again.run().await;
    assert!(events(&calls).iter().all(|(_, r, _)| r != "OldStateFound"));
}
