//! Reconcile against kube's tower-test mock API server (the controller-rs fixtures pattern): each
//! scenario lists the exact requests the operator must send, in order, and checks their bodies.

use std::{sync::Arc, time::Duration};

use http::{Request, Response};
use kube::{Client, client::Body, runtime::controller::Action};
use pipeline_crds::{PipelineDeployment, PipelineDeploymentSpec, manifest::from_yaml};
use pipeline_operator::{
    build::Environment,
    controller::{Context, PartitionSource, reconcile},
    metrics::OperatorMetrics,
};
use serde_json::{Value, json};

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

struct Partitions(Result<i32, String>);

impl PartitionSource for Partitions {
    fn partitions(&self, _: &PipelineDeploymentSpec) -> Result<i32, String> {
        self.0.clone()
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

/// Answers the next request, which must be `PATCH <path>` (server-side apply under the
/// operator's field manager); returns its body.
async fn expect_apply(
    handle: &mut Handle,
    path: &str,
    reply: impl FnOnce(&Value) -> Value,
) -> Value {
    let (request, send) = handle.next_request().await.expect("another request");
    assert_eq!(request.method(), http::Method::PATCH, "{}", request.uri());
    assert_eq!(request.uri().path(), path);
    let query = request.uri().query().unwrap_or_default().to_owned();
    assert!(
        query.contains("fieldManager=sluice-operator") && query.contains("force=true"),
        "{query}"
    );
    let body = request.into_body().collect_bytes().await.unwrap();
    let value: Value = serde_json::from_slice(&body).unwrap();
    let answer = reply(&value);
    send.send_response(
        Response::builder()
            .body(Body::from(serde_json::to_vec(&answer).unwrap()))
            .unwrap(),
    );
    value
}

fn echo(v: &Value) -> Value {
    v.clone()
}

/// The PipelineDeployment with `status` from a status patch, as the API server answers.
fn with_status(pd: &PipelineDeployment) -> impl FnOnce(&Value) -> Value + '_ {
    move |patch| {
        let mut object = serde_json::to_value(pd).unwrap();
        object["status"] = patch["status"].clone();
        object
    }
}

async fn run(
    pd: PipelineDeployment,
    partitions: Result<i32, String>,
    script: impl FnOnce(Handle, PipelineDeployment) -> tokio::task::JoinHandle<Vec<Value>>,
) -> (Action, Vec<Value>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let metrics = Arc::new(OperatorMetrics::default());
    let ctx = Arc::new(Context {
        client: Client::new(service, "ns"),
        metrics: metrics.clone(),
        environment: Environment {
            default_image: "img:1".into(),
            pod_monitor_crd: false,
        },
        partitions: Arc::new(Partitions(partitions)),
    });
    let server = script(handle, pd.clone());
    let action = tokio::time::timeout(Duration::from_secs(10), reconcile(Arc::new(pd), ctx))
        .await
        .expect("reconcile finished")
        .expect("reconcile succeeded");
    let bodies = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(
        metrics
            .encode()
            .contains("sluice_operator_reconcile_duration_seconds_count 1"),
        "every reconcile is counted and timed"
    );
    (action, bodies)
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap()
}

const STATUS_PATH: &str = "/apis/sluice.dev/v1alpha1/namespaces/ns/pipelinedeployments/p/status";

/// Only a status write: what an invalid spec or an unreachable Kafka gets.
fn status_only(mut handle: Handle, pd: PipelineDeployment) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(
        async move { vec![expect_apply(&mut handle, STATUS_PATH, with_status(&pd)).await] },
    )
}

/// The full apply sequence of a valid pipeline: ConfigMap, both Services, StatefulSet, PDB, status.
fn apply_all(mut handle: Handle, pd: PipelineDeployment) -> tokio::task::JoinHandle<Vec<Value>> {
    tokio::spawn(async move {
        let base = "/api/v1/namespaces/ns";
        let mut bodies = vec![
            expect_apply(&mut handle, &format!("{base}/configmaps/p-pipeline"), echo).await,
            expect_apply(&mut handle, &format!("{base}/services/p-pods"), echo).await,
            expect_apply(&mut handle, &format!("{base}/services/p-metrics"), echo).await,
            expect_apply(
                &mut handle,
                "/apis/apps/v1/namespaces/ns/statefulsets/p",
                echo,
            )
            .await,
            expect_apply(
                &mut handle,
                "/apis/policy/v1/namespaces/ns/poddisruptionbudgets/p",
                echo,
            )
            .await,
        ];
        bodies.push(expect_apply(&mut handle, STATUS_PATH, with_status(&pd)).await);
        bodies
    })
}

#[tokio::test]
async fn a_new_pipeline_gets_its_children_applied_in_order_and_a_status() {
    let (action, bodies) = run(pipeline("  parallelism: 7\n"), Ok(24), apply_all).await;
    assert_eq!(action, Action::requeue(Duration::from_secs(60)));
    let sts = &bodies[3];
    assert_eq!(sts["spec"]["replicas"], 2);
    assert_eq!(sts["metadata"]["ownerReferences"][0]["uid"], "uid-1");
    let container = &sts["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "3000m");
    let env = container["env"].as_array().unwrap();
    assert!(env.contains(&json!({"name": "SLUICE_PARALLELISM", "value": "6"})));
    for body in &bodies[..5] {
        assert_eq!(body["metadata"]["ownerReferences"][0]["controller"], true);
    }
    let status = &bodies[5]["status"];
    assert_eq!(status["observedGeneration"], 2);
    assert_eq!(
        (status["parallelism"].clone(), status["replicas"].clone()),
        (json!(6), json!(2))
    );
    assert_eq!(condition(status, "Ready")["status"], "False");
    assert_eq!(condition(status, "ScalingLimited")["status"], "True");
}

#[tokio::test]
async fn an_invalid_spec_gets_a_condition_with_the_field_path_and_no_retry_loop() {
    let mut invalid = pipeline("  parallelism: 2\n");
    invalid.spec.sink.kafka = None;
    invalid.spec.sink.clickhouse =
        serde_json::from_value(json!({"url": "http://ch:8123", "table": "t"})).unwrap();
    let (action, bodies) = run(invalid, Ok(24), status_only).await;
    assert_eq!(action, Action::await_change());
    let ready = condition(&bodies[0]["status"], "Ready");
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
}

#[tokio::test]
async fn unreachable_kafka_is_a_condition_and_a_retry_not_a_crash() {
    let (action, bodies) = run(
        pipeline(""),
        Err("broker k:9092 unreachable".into()),
        status_only,
    )
    .await;
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));
    let status = &bodies[0]["status"];
    assert_eq!(condition(status, "Degraded")["reason"], "KafkaUnreachable");
    assert_eq!(status["phase"], "Degraded");
}

#[tokio::test]
async fn suspend_scales_the_statefulset_to_zero_and_reports_suspended() {
    let (_, bodies) = run(pipeline("  suspend: true\n"), Ok(8), apply_all).await;
    assert_eq!(bodies[3]["spec"]["replicas"], 0);
    assert_eq!(bodies[5]["status"]["phase"], "Suspended");
}

#[tokio::test]
async fn a_spec_change_rolls_the_pods_through_the_config_hash() {
    let hash = |bodies: &[Value]| {
        bodies[3]["spec"]["template"]["metadata"]["annotations"]["sluice.dev/config-hash"].clone()
    };
    let (_, before) = run(pipeline(""), Ok(8), apply_all).await;
    let (_, after) = run(
        pipeline("  transform: {filter: 'record.x > 1'}\n"),
        Ok(8),
        apply_all,
    )
    .await;
    assert_ne!(hash(&before), hash(&after));
    assert!(
        !before[0]["data"]["pipeline.yaml"]
            .as_str()
            .unwrap()
            .contains("filter")
    );
    assert!(
        after[0]["data"]["pipeline.yaml"]
            .as_str()
            .unwrap()
            .contains("record.x > 1")
    );
}
