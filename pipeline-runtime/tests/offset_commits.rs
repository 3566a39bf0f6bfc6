//! Offset commits on librdkafka's mock cluster, which can refuse chosen requests: a commit Kafka
//! refused is sent again by the next one (the offset once counted as committed before the
//! answer, so a refused commit was never repeated and a restart re-read those records).

mod support;

use std::time::{Duration, Instant};

use pipeline_runtime::runtime::Runtime;
use rdkafka::{
    mocking::MockCluster,
    types::{RDKafkaApiKey, RDKafkaRespErr},
};
use support::{committed_offsets, produce, spec};

#[test]
fn a_refused_offset_commit_is_sent_again_until_kafka_acknowledges_it() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 1, 1).unwrap();
    cluster.create_topic("events-out", 1, 1).unwrap();
    let bootstrap = cluster.bootstrap_servers();
    let records: Vec<_> = (0..50)
        .map(|i| (0, None, format!("{{\"i\":{i}}}").into_bytes()))
        .collect();
    produce(&bootstrap, "events", &records);
    // The first three commits are refused, with an error librdkafka does not retry itself.
    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; 3],
    );
    let manifest = format!(
        "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: events}}\nspec:\n  kafka: {{bootstrapServers: '{bootstrap}'}}\n  source: {{topic: events}}\n  sink: {{kafka: {{topic: events-out}}}}\n"
    );
    let runtime = Runtime::start(support::options("events", "pod-a", spec(&manifest), 1)).unwrap();
    let group = pipeline_crds::contract::default_consumer_group("test", "events");
    let deadline = Instant::now() + Duration::from_secs(30);
    let committed = loop {
        let committed = committed_offsets(&bootstrap, &group, "events", 1);
        if committed == [50] || Instant::now() > deadline {
            break committed;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(
        committed,
        [50],
        "every record processed is committed while the slot runs, after three refused commits"
    );
    runtime.stop();
    runtime.join();
}
