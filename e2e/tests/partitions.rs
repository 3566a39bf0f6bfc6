//! The operator's partition lookup against a real broker: the partition count of every source
//! topic together, and a clear error for a topic that does not exist.

use pipeline_e2e::broker::Tansu;
use pipeline_operator::kafka::{
    KafkaAccess, KafkaPartitions, PartitionLookupError, PartitionSource,
};

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
    assert!(
        matches!(&error, PartitionLookupError::NoSuchTopic { topic } if topic == "nowhere"),
        "{error}"
    );
    assert!(error.to_string().contains("nowhere"), "{error}");
}

/// Commits `offset` for every partition of `topic` as `group` would.
fn commit(bootstrap: &str, group: &str, topic: &str, partitions: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut offsets = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        offsets
            .add_partition_offset(topic, p, rdkafka::Offset::Offset(offset))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker and Prometheus (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn a_groups_committed_offsets_are_found_and_deleted_with_its_repartition_topic() {
    use pipeline_operator::group_state::{GroupState, KafkaGroupState};
    let broker = Tansu::start();
    broker.create_topics(&[("clicks", 3), ("old.group-repartition", 2)]);
    let clicks = access(&broker.bootstrap, "clicks");
    let state = KafkaGroupState;
    assert_eq!(state.has_committed_offsets(&clicks, "old.group"), Ok(false));
    commit(&broker.bootstrap, "old.group", "clicks", 3, 1);
    assert_eq!(state.has_committed_offsets(&clicks, "old.group"), Ok(true));
    let internal = vec!["old.group-repartition".to_owned()];
    state.delete(&clicks, "old.group", &internal).unwrap();
    assert_eq!(
        state.has_committed_offsets(&clicks, "old.group"),
        Ok(false),
        "the group's offsets are gone"
    );
    let error = KafkaPartitions::default()
        .partitions(&access(&broker.bootstrap, "old.group-repartition"))
        .unwrap_err();
    assert!(error.to_string().contains("does not exist"), "{error}");
    state
        .delete(&clicks, "old.group", &internal)
        .expect("deleting what is already gone is fine");
}
