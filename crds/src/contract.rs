//! What the operator and the runtime must agree on, defined once: environment variables, the
//! config file path, ports, labels, annotations and metric names.

/// Environment variables the operator sets on runtime pods and the runtime reads.
pub mod env {
    /// The node the pod runs on (downward API `spec.nodeName`), for the `rack` init container.
    pub const NODE_NAME: &str = "SLUICE_NODE_NAME";
    /// Path of the PipelineDeployment manifest the runtime executes.
    pub const CONFIG: &str = "SLUICE_CONFIG";
    /// The manifest itself, for `pipeline-runtime cleanup` (the operator's cleanup Job passes it
    /// this way, so the Job needs no ConfigMap that a deletion may already have removed).
    pub const MANIFEST: &str = "SLUICE_MANIFEST";
    /// Task slots (worker threads, consumer-group members) of this pod. Overrides the
    /// derivation from [`PARALLELISM`] and [`REPLICAS`].
    pub const SLOTS: &str = "SLUICE_SLOTS";
    /// Slots of the whole pipeline; with [`REPLICAS`] and the pod's ordinal, each pod derives its
    /// own slot count ([`super::slots_of_pod`]).
    pub const PARALLELISM: &str = "SLUICE_PARALLELISM";
    /// Pods of the pipeline.
    pub const REPLICAS: &str = "SLUICE_REPLICAS";
    /// Path of the scale file ([`super::Scale`]), watched by the runtime: when set, it decides
    /// the slot count.
    pub const SCALE_FILE: &str = "SLUICE_SCALE_FILE";
    /// Extra busy time per record (a duration such as `2ms`): a stand-in for a heavier
    /// per-record workload, for demos and autoscaling tests only.
    pub const SIMULATED_RECORD_COST: &str = "SLUICE_SIMULATED_RECORD_COST";
    /// Name of the PipelineDeployment.
    pub const PIPELINE: &str = "SLUICE_PIPELINE";
    /// Namespace of the PipelineDeployment.
    pub const NAMESPACE: &str = "SLUICE_NAMESPACE";
    /// Pod name (from the downward API); labels metrics and names checkpoint writers.
    pub const POD_NAME: &str = "SLUICE_POD_NAME";
    /// Port of `/metrics`, `/healthz` and `/readyz`.
    pub const METRICS_PORT: &str = "SLUICE_METRICS_PORT";
    /// `json` (default in pods) or `text` log lines.
    pub const LOG_FORMAT: &str = "SLUICE_LOG_FORMAT";
    /// `tracing` filter, e.g. `info,pipeline_runtime=debug`.
    pub const LOG: &str = "SLUICE_LOG";
    /// SASL username, from the Secret named in `spec.kafka.sasl.credentialsSecret`.
    pub const KAFKA_SASL_USERNAME: &str = "SLUICE_KAFKA_SASL_USERNAME";
    /// SASL password, from the Secret named in `spec.kafka.sasl.credentialsSecret`.
    pub const KAFKA_SASL_PASSWORD: &str = "SLUICE_KAFKA_SASL_PASSWORD";
    /// ClickHouse user, from `spec.sink.clickhouse.credentialsSecret`.
    pub const CLICKHOUSE_USER: &str = "SLUICE_CLICKHOUSE_USER";
    /// ClickHouse password, from `spec.sink.clickhouse.credentialsSecret`.
    pub const CLICKHOUSE_PASSWORD: &str = "SLUICE_CLICKHOUSE_PASSWORD";
    /// Schema Registry user, from `spec.kafka.schemaRegistryCredentialsSecret`.
    pub const SCHEMA_REGISTRY_USER: &str = "SLUICE_SCHEMA_REGISTRY_USER";
    /// Schema Registry password, from `spec.kafka.schemaRegistryCredentialsSecret`.
    pub const SCHEMA_REGISTRY_PASSWORD: &str = "SLUICE_SCHEMA_REGISTRY_PASSWORD";
    /// S3 access key id, from `spec.checkpoint.storage.s3.credentialsSecret`.
    pub const S3_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
    /// S3 secret access key, from `spec.checkpoint.storage.s3.credentialsSecret`.
    pub const S3_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
}

/// Files and directories inside runtime pods.
pub mod paths {
    /// Directory the runtime ConfigMap is mounted at.
    pub const CONFIG_DIR: &str = "/etc/sluice";
    /// Key of the manifest in the ConfigMap, and its file name in [`CONFIG_DIR`].
    pub const CONFIG_FILE: &str = "pipeline.yaml";
    /// Full path of the manifest in a pod.
    pub const CONFIG_PATH: &str = "/etc/sluice/pipeline.yaml";
    /// Key of the scale file in the ConfigMap, and its file name in [`CONFIG_DIR`].
    pub const SCALE_FILE: &str = "scale.json";
    /// Full path of the scale file in a pod.
    pub const SCALE_PATH: &str = "/etc/sluice/scale.json";
    /// Directory the Kafka CA Secret is mounted at.
    pub const KAFKA_CA_DIR: &str = "/etc/sluice/kafka-ca";
    /// Directory the Kafka client certificate Secret (`tls.crt`, `tls.key`) is mounted at.
    pub const KAFKA_CLIENT_CERT_DIR: &str = "/etc/sluice/kafka-client";
    /// Mount point of a `checkpoint.storage.volume` claim.
    pub const CHECKPOINT_VOLUME_DIR: &str = "/var/lib/sluice/checkpoints";
    /// Writable scratch directory (the root file system is read-only).
    pub const SCRATCH_DIR: &str = "/tmp";
    /// The pod's rack (`spec.kafka.rack`), written by the `rack` init container into the
    /// scratch directory, read by the runtime as `client.rack`.
    pub const RACK_FILE: &str = "/tmp/sluice-rack";
    /// Where the `rack` init container's Kubernetes API token is mounted (the runtime container
    /// gets none).
    pub const RACK_API_ACCESS_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
}

/// Network ports.
pub mod ports {
    /// Runtime `/metrics`, `/healthz` and `/readyz`.
    pub const RUNTIME_METRICS: u16 = 9249;
    /// Name of the runtime metrics port in pod specs and Services.
    pub const RUNTIME_METRICS_NAME: &str = "metrics";
    /// Operator `/metrics`, `/healthz` and `/readyz`.
    pub const OPERATOR_HTTP: u16 = 8080;
}

/// Label keys on every object the operator creates.
pub mod labels {
    /// On a Secret: `"true"` lets the pipelines of its namespace use it (SASL credentials, CA
    /// bundle, S3 credentials). The operator refuses to read or mount any other Secret, so that
    /// permission to create a PipelineDeployment is not permission to ship every Secret of the
    /// namespace to a broker of one's choosing.
    pub const SECRET_FOR_PIPELINES: &str = "sluice.dev/pipeline-credentials";
    /// `sluice-runtime`.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// The PipelineDeployment's name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `pipeline`.
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// `sluice`.
    pub const PART_OF: &str = "app.kubernetes.io/part-of";
    /// `sluice-operator`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The runtime version.
    pub const VERSION: &str = "app.kubernetes.io/version";
    /// The PipelineDeployment's name; the pod selector key.
    pub const PIPELINE: &str = "sluice.dev/pipeline";

    /// Value of [`NAME`] on runtime objects.
    pub const NAME_RUNTIME: &str = "sluice-runtime";
    /// Value of [`COMPONENT`] on runtime objects.
    pub const COMPONENT_PIPELINE: &str = "pipeline";
    /// Value of [`COMPONENT`] on the cleanup Job and its pod.
    pub const COMPONENT_CLEANUP: &str = "cleanup";
    /// Value of [`PART_OF`].
    pub const PART_OF_SLUICE: &str = "sluice";
    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_OPERATOR: &str = "sluice-operator";
}

/// Annotation keys.
pub mod annotations {
    /// Hash of the runtime config on the pod template: a changed pipeline rolls the pods.
    pub const CONFIG_HASH: &str = "sluice.dev/config-hash";
    /// The uid of the pipeline an object without owner reference belongs to (the cleanup Job,
    /// which a foreground deletion of its owner would remove before it ran).
    pub const PIPELINE_UID: &str = "sluice.dev/pipeline-uid";
}

/// The runtime's Prometheus metrics, by the name Prometheus stores (counters end in `_total`).
/// The autoscaler queries exactly these names.
pub mod metrics {
    /// Records read from the source (counter; labels pipeline, namespace, pod, slot, topic).
    pub const RECORDS_IN_TOTAL: &str = "pipeline_records_in_total";
    /// Records written to the sink (counter).
    pub const RECORDS_OUT_TOTAL: &str = "pipeline_records_out_total";
    /// Records dropped by the filter (counter).
    pub const RECORDS_FILTERED_TOTAL: &str = "pipeline_records_filtered_total";
    /// Records later than the allowed lateness (counter).
    pub const RECORDS_LATE_TOTAL: &str = "pipeline_records_late_total";
    /// Records sent to the dead-letter topic, or counted when it is absent (counter; label reason).
    pub const RECORDS_DEAD_LETTER_TOTAL: &str = "pipeline_records_dead_letter_total";
    /// Dead letters that could not be produced even truncated (too large for the producer or the
    /// dead-letter topic), counted and skipped (counter).
    pub const DEAD_LETTERS_DROPPED_TOTAL: &str = "pipeline_dead_letters_dropped_total";
    /// High watermark of a source partition (gauge; labels topic, partition).
    pub const PARTITION_END_OFFSET: &str = "pipeline_partition_end_offset";
    /// Next offset the slot will read from a source partition (gauge; labels topic, partition).
    pub const PARTITION_POSITION: &str = "pipeline_partition_position";
    /// 1 while a source partition is paused because its state could not be restored (gauge;
    /// labels topic, partition). The autoscaler leaves it out of the lag and reports it.
    pub const PARTITION_PAUSED: &str = "pipeline_partition_paused";
    /// End offset − position, per partition (gauge).
    pub const CONSUMER_LAG_RECORDS: &str = "pipeline_consumer_lag_records";
    /// Seconds a slot spent processing records (counter; label slot).
    pub const BUSY_SECONDS_TOTAL: &str = "pipeline_busy_seconds_total";
    /// Seconds a slot spent blocked on the sink (counter; label slot).
    pub const BACKPRESSURED_SECONDS_TOTAL: &str = "pipeline_backpressured_seconds_total";
    /// Seconds a slot spent waiting for input (counter; label slot).
    pub const IDLE_SECONDS_TOTAL: &str = "pipeline_idle_seconds_total";
    /// Processing time − watermark, per partition (gauge).
    pub const WATERMARK_LAG_SECONDS: &str = "pipeline_watermark_lag_seconds";
    /// Window close (or record time, stateless) to output sent (histogram).
    pub const OUTPUT_LATENCY_SECONDS: &str = "pipeline_output_latency_seconds";
    /// Keys with open windows, per slot (gauge).
    pub const STATE_KEYS: &str = "pipeline_state_keys";
    /// Source partitions assigned to a slot (gauge).
    pub const ASSIGNED_PARTITIONS: &str = "pipeline_assigned_partitions";
    /// 1 for each topic that keeps the pipeline from starting: missing, or a repartition topic
    /// whose partition count does not fit (gauge; labels topic, role). Nothing is consumed
    /// meanwhile.
    pub const TOPICS_MISSING: &str = "pipeline_topics_missing";
    /// Partitions of a source topic as the runtime read them from Kafka's metadata at start
    /// (gauge; label topic; no slot). The operator sizes `AWS_MSK_IAM` pipelines from it, since it
    /// does not sign in to their Kafka itself.
    pub const SOURCE_PARTITIONS: &str = "pipeline_source_partitions";
    /// Keys of a reference table (`spec.enrich`) whose latest version is a row, in this process
    /// (gauge; label table; no slot).
    pub const TABLE_ROWS: &str = "pipeline_table_rows";
    /// Versions a reference table keeps, tombstones included (gauge; label table).
    pub const TABLE_VERSIONS: &str = "pipeline_table_versions";
    /// Bytes counted for a reference table's versions, bounded by its `maxBytes` (gauge; label
    /// table).
    pub const TABLE_BYTES: &str = "pipeline_table_bytes";
    /// Records of a table's topic not loaded yet, behind the end offsets last read (gauge; label
    /// table).
    pub const TABLE_LAG: &str = "pipeline_table_lag";
    /// The highest timestamp a table has loaded, epoch milliseconds (gauge; label table).
    pub const TABLE_WATERMARK_MS: &str = "pipeline_table_watermark_ms";
    /// Lookups of a table, by result `hit` or `miss` (counter; labels table, result).
    pub const TABLE_LOOKUPS_TOTAL: &str = "pipeline_table_lookups_total";
    /// Table records that could not be loaded (undecodable, no key, bad time) and were
    /// dead-lettered or, without a dead-letter topic, logged (counter; label table).
    pub const TABLE_RECORDS_REJECTED_TOTAL: &str = "pipeline_table_records_rejected_total";
    /// Consumer-group rebalances seen by a slot (counter).
    pub const REBALANCES_TOTAL: &str = "pipeline_rebalances_total";
    /// Records accepted into windows (counter). For windowed pipelines the identity is
    /// `in = windowed + filtered + late + dead_letter`; for stateless ones `in = out + filtered +
    /// dead_letter`.
    pub const RECORDS_WINDOWED_TOTAL: &str = "pipeline_records_windowed_total";
    /// Records re-keyed into the internal repartition topic (counter).
    pub const RECORDS_REPARTITIONED_TOTAL: &str = "pipeline_records_repartitioned_total";
    /// Produce requests that failed for good, per slot (counter). The slot restarts from its last
    /// committed offsets after one.
    pub const SINK_ERRORS_TOTAL: &str = "pipeline_sink_errors_total";
    /// Errors reported by the Kafka client (broker down, authentication), per slot (counter).
    pub const KAFKA_ERRORS_TOTAL: &str = "pipeline_kafka_errors_total";
    /// Slot restarts after an error (counter).
    pub const SLOT_RESTARTS_TOTAL: &str = "pipeline_slot_restarts_total";
    /// Panics contained in a slot (counter): a bug. The slot restarts, and the record it had in
    /// hand goes to the dead-letter topic at stage `panic`.
    pub const SLOT_PANICS_TOTAL: &str = "pipeline_slot_panics_total";
    /// Duration of a checkpoint (histogram).
    pub const CHECKPOINT_DURATION_SECONDS: &str = "pipeline_checkpoint_duration_seconds";
    /// Bytes written by the last checkpoint (gauge).
    pub const CHECKPOINT_BYTES: &str = "pipeline_checkpoint_bytes";
    /// Checkpoints by result (counter; label result = success | failure).
    pub const CHECKPOINTS_TOTAL: &str = "pipeline_checkpoints_total";
    /// Checkpoints failed in a row, per slot (gauge; 0 after a success). Past
    /// `checkpoint.tolerableFailures` the slot restarts from its last good checkpoint.
    pub const CHECKPOINT_FAILURES_IN_A_ROW: &str = "pipeline_checkpoint_failures_in_a_row";
    /// Rows a non-Kafka sink (ClickHouse) acknowledged (counter).
    pub const SINK_ROWS_TOTAL: &str = "pipeline_sink_rows_total";
    /// Bytes of those rows (counter).
    pub const SINK_BYTES_TOTAL: &str = "pipeline_sink_bytes_total";
    /// Duration of one successful insert (histogram).
    pub const SINK_INSERT_DURATION_SECONDS: &str = "pipeline_sink_insert_duration_seconds";
    /// Failed insert attempts, each retried with backoff (counter).
    pub const SINK_INSERT_FAILURES_TOTAL: &str = "pipeline_sink_insert_failures_total";
    /// Rows per insert (histogram).
    pub const SINK_BATCH_ROWS: &str = "pipeline_sink_batch_rows";
    /// Gauge per slot: 1 while a checkpoint's snapshots are being stored (the slot processes on).
    pub const CHECKPOINT_IN_PROGRESS: &str = "pipeline_checkpoint_in_progress";
    /// Duration of restoring a partition's state (histogram).
    pub const RESTORE_DURATION_SECONDS: &str = "pipeline_restore_duration_seconds";
    /// Restores that failed: no readable snapshot for the committed offset (counter; the
    /// partition is paused). Label result = missing | incompatible | unreadable | mismatch.
    pub const RESTORE_FAILURES_TOTAL: &str = "pipeline_restore_failures_total";
    /// Partitions started with empty state under `checkpoint.onIncompatibleState: reset`
    /// (counter; label result = missing | incompatible | mismatch).
    pub const STATE_RESETS_TOTAL: &str = "pipeline_state_resets_total";
    /// Per moved partition: from the snapshot its previous owner wrote (at revocation, or the
    /// last periodic one after a crash) to its state restored by the new owner (histogram).
    pub const PARTITION_PAUSE_SECONDS: &str = "pipeline_partition_pause_seconds";

    /// The name to register a metric under with `prometheus-client`, which appends `_total` to
    /// counters itself.
    pub fn registration_name(exposed: &str) -> &str {
        exposed.strip_suffix("_total").unwrap_or(exposed)
    }

    /// Label keys used on runtime metrics.
    pub mod label {
        /// PipelineDeployment name.
        pub const PIPELINE: &str = "pipeline";
        /// PipelineDeployment namespace.
        pub const NAMESPACE: &str = "namespace";
        /// Pod name.
        pub const POD: &str = "pod";
        /// Slot index within the pod.
        pub const SLOT: &str = "slot";
        /// Kafka topic.
        pub const TOPIC: &str = "topic";
        /// Kafka partition.
        pub const PARTITION: &str = "partition";
        /// Why a record was dead-lettered, or a checkpoint's result.
        pub const REASON: &str = "reason";
        /// `success` or `failure`.
        pub const RESULT: &str = "result";
    }
}

/// Headers the runtime puts on side-output records.
pub mod headers {
    /// Why a record was dead-lettered.
    pub const ERROR: &str = "sluice.error";
    /// The stage that failed (`decode`, `filter`, `key`, `timestamp`).
    pub const STAGE: &str = "sluice.stage";
    /// Source topic of a side-output record.
    pub const SOURCE_TOPIC: &str = "sluice.source.topic";
    /// Source partition of a side-output record.
    pub const SOURCE_PARTITION: &str = "sluice.source.partition";
    /// Source offset of a side-output record.
    pub const SOURCE_OFFSET: &str = "sluice.source.offset";
    /// `start-end` of the window a late record missed (epoch milliseconds).
    pub const WINDOW: &str = "sluice.window";
    /// How far behind the watermark a late record was, in milliseconds.
    pub const LATENESS_MS: &str = "sluice.lateness.ms";
    /// On repartitioned records and watermark markers: the upstream source partition's id
    /// (source partitions numbered across the source topics, in spec order).
    pub const UPSTREAM_PARTITION: &str = "sluice.upstream.partition";
    /// On repartitioned records: the offset in the upstream source partition (for de-duplication).
    pub const UPSTREAM_OFFSET: &str = "sluice.upstream.offset";
    /// On watermark markers (records without key and value in the repartition topic): the
    /// upstream partition's watermark, epoch milliseconds.
    pub const WATERMARK: &str = "sluice.watermark";
}

/// Fields every windowed output record carries beside the key and the aggregates.
pub mod output {
    /// Window start, epoch milliseconds, inclusive.
    pub const WINDOW_START: &str = "window_start";
    /// Window end, epoch milliseconds, exclusive.
    pub const WINDOW_END: &str = "window_end";
    /// The ClickHouse sink's version column (UInt64): the `ReplacingMergeTree` keeps the row
    /// with the highest one per key and window start.
    pub const VERSION_COLUMN: &str = "_version";

    /// The name a field gets in Avro output: letters, digits and `_`, not starting with a digit
    /// (every other character becomes `_`). Two output fields must not share it.
    pub fn avro_field_name(text: &str) -> String {
        let mut name: String = text
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            name.insert(0, '_');
        }
        name
    }

    /// Whether `name` is a legal Avro field name as it is.
    pub fn is_avro_field_name(name: &str) -> bool {
        avro_field_name(name) == name
    }
}

/// The content of the scale file (the `scale` key of the runtime ConfigMap, JSON): the
/// pipeline's parallelism and pod count, from which each pod derives its slot count; or, for a
/// process run on its own (local mode), its slot count. The runtime watches the file and starts
/// or stops slots to match, without restarting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Slots of the whole pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<i32>,
    /// Pods of the pipeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Slots of this process (instead of the two above).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slots: Option<i32>,
}

impl Scale {
    /// `parallelism` slots on `replicas` pods.
    pub fn pipeline(parallelism: i32, replicas: i32) -> Self {
        Self {
            parallelism: Some(parallelism),
            replicas: Some(replicas),
            slots: None,
        }
    }

    /// This process's slots: `slots`, else its share of `parallelism` over `replicas` by its
    /// pod ordinal (none for a pod past the replicas: it is about to be removed).
    pub fn slots_of(&self, ordinal: Option<i32>) -> Result<i32, ScaleError> {
        match (self.slots, self.parallelism, self.replicas) {
            (Some(slots), _, _) if slots >= 0 => Ok(slots),
            (Some(slots), _, _) => Err(ScaleError::Negative(slots)),
            (None, Some(parallelism), Some(replicas)) => {
                let ordinal = ordinal.ok_or(ScaleError::NoOrdinal)?;
                Ok(if ordinal >= replicas {
                    0
                } else {
                    slots_of_pod(parallelism, replicas, ordinal)
                })
            }
            _ => Err(ScaleError::Incomplete),
        }
    }
}

/// Why a scale file gives no slot count.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScaleError {
    /// `slots` is negative.
    #[error("negative slot count {0}")]
    Negative(i32),
    /// `parallelism` and `replicas` need the pod's ordinal.
    #[error("the pod name ends in no ordinal")]
    NoOrdinal,
    /// Neither `slots` nor both `parallelism` and `replicas`.
    #[error("set either slots, or parallelism and replicas")]
    Incomplete,
}

/// The slots of pod `ordinal` when `parallelism` slots run on `replicas` pods: spread so pods
/// differ by at most one, the first ones taking the remainder.
pub fn slots_of_pod(parallelism: i32, replicas: i32, ordinal: i32) -> i32 {
    if replicas <= 0 || parallelism <= 0 {
        return 0;
    }
    parallelism / replicas + i32::from(ordinal < parallelism % replicas)
}

/// The ordinal of a StatefulSet pod from its name (`<name>-<ordinal>`).
pub fn pod_ordinal(pod: &str) -> Option<i32> {
    pod.rsplit_once('-')?.1.parse().ok()
}

/// The default consumer group of a pipeline: `sluice.<namespace>.<name>`.
pub fn default_consumer_group(namespace: &str, name: &str) -> String {
    format!("sluice.{namespace}.{name}")
}

/// The consumer group pipeline `name` in `namespace` uses: `source.consumerGroup`, else the
/// default.
pub fn consumer_group(spec: &crate::PipelineDeploymentSpec, namespace: &str, name: &str) -> String {
    spec.source
        .consumer_group
        .clone()
        .unwrap_or_else(|| default_consumer_group(namespace, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_derive_their_slots_from_the_parallelism_the_replicas_and_their_ordinal() {
        assert_eq!(pod_ordinal("orders-filter-12"), Some(12));
        assert_eq!(pod_ordinal("local"), None);
        let slots: Vec<i32> = (0..3).map(|i| slots_of_pod(10, 3, i)).collect();
        assert_eq!(slots, [4, 3, 3]);
        assert_eq!(slots_of_pod(0, 3, 0), 0);
    }

    #[test]
    fn the_scale_file_gives_each_pod_its_share_and_a_pod_past_the_replicas_none() {
        let json = serde_json::to_string(&Scale::pipeline(7, 3)).unwrap();
        assert_eq!(json, r#"{"parallelism":7,"replicas":3}"#);
        let scale: Scale = serde_json::from_str(&json).unwrap();
        let slots: Vec<i32> = (0..4).map(|i| scale.slots_of(Some(i)).unwrap()).collect();
        assert_eq!(slots, [3, 2, 2, 0]);
        let own: Scale = serde_json::from_str(r#"{"slots": 5}"#).unwrap();
        assert_eq!(own.slots_of(None).unwrap(), 5);
        assert!(Scale::default().slots_of(Some(0)).is_err());
        assert!(scale.slots_of(None).is_err());
        assert!(serde_json::from_str::<Scale>(r#"{"slot": 5}"#).is_err());
    }
}
