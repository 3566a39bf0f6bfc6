//! The operator's partition lookup against a real broker: the partition count of every source
//! topic together, and a clear error for a topic that does not exist.

use pipeline_e2e::broker::Tansu;
use pipeline_operator::kafka::{KafkaAccess, KafkaPartitions, PartitionSource};

fn access(bootstrap: &str, topics: &str) -> KafkaAccess {
    let pd = pipeline_crds::manifest::from_yaml(
        &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p}}\nspec:\n  kafka: {{bootstrapServers: '{bootstrap}'}}\n  source: {{topics: [{topics}]}}\n  sink: {{kafka: {{topic: out}}}}\n"),
        "partitions test",
    )
    .unwrap();
    KafkaAccess::new(&pd.spec, None, None)
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn the_lookup_sums_the_partitions_of_every_source_topic_and_names_a_missing_one() {
    let broker = Tansu::start();
    broker.create_topics(&[("clicks", 6), ("views", 3)]);
    let lookup = KafkaPartitions::default();
    assert_eq!(
        lookup.partitions(&access(&broker.bootstrap, "clicks, views")),
        Ok(9)
    );
    let error = lookup
        .partitions(&access(&broker.bootstrap, "clicks, nowhere"))
        .unwrap_err();
    assert!(error.contains("nowhere"), "{error}");
}
