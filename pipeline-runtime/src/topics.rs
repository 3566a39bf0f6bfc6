//! The topics a pipeline reads and writes, checked before any slot consumes a record.
//!
//! A slot that consumed with a missing output topic would fail every produce, restart and replay
//! forever; a repartition topic whose partition count no longer fits would move keys away from
//! their state. So the runtime checks them all first: source topics exist; the sink, dead-letter
//! and late-data topics exist (or are created with `spec.kafka.createTopics`); the repartition
//! topic exists with the partition count the pipeline expects (or is created with it). Every
//! problem is reported at once, naming the topic.

use std::time::Duration;

use pipeline_crds::{PipelineDeploymentSpec, kafka::CreateTopics};
use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::RDKafkaErrorCode,
    metadata::Metadata,
};
use tracing::info;

use crate::{
    client,
    kafka_sign_in::{KafkaSignIn, SignInContext},
    plan::Plan,
};

/// Why the pipeline cannot start consuming yet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicsError {
    /// Kafka did not answer: wait for it.
    #[error("cannot reach Kafka at {bootstrap}: {reason}")]
    Unreachable {
        /// The bootstrap servers.
        bootstrap: String,
        /// What failed.
        reason: String,
    },
    /// Kafka answered, and topics are missing or do not fit: someone has to act.
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
    Problems(Vec<TopicProblem>),
}

/// One topic that keeps the pipeline from starting.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{role} topic {topic} {what}")]
pub struct TopicProblem {
    /// `source`, `table`, `sink`, `dead-letter`, `late-data` or `repartition`.
    pub role: &'static str,
    /// The topic.
    pub topic: String,
    /// What is wrong and what to do.
    pub what: String,
}

/// A topic the pipeline writes to.
struct Output<'a> {
    role: &'static str,
    topic: &'a str,
}

fn outputs(spec: &PipelineDeploymentSpec) -> Vec<Output<'_>> {
    let mut outputs = Vec::new();
    if let Some(kafka) = &spec.sink.kafka {
        outputs.push(Output {
            role: "sink",
            topic: &kafka.topic,
        });
    }
    if let Some(d) = &spec.dead_letter {
        outputs.push(Output {
            role: "dead-letter",
            topic: &d.topic,
        });
    }
    if let Some(l) = &spec.late_data {
        outputs.push(Output {
            role: "late-data",
            topic: &l.topic,
        });
    }
    outputs
}

/// What the check decided, before anything is created (pure, so it is tested without a broker).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct TopicPlan {
    /// The source topics' partition counts, in spec order (complete only without problems).
    pub source_partitions: Vec<usize>,
    /// Topics to create: (role, name, partitions, replication factor; -1 = the broker's default).
    pub create: Vec<(&'static str, String, i32, i32)>,
    /// What keeps the pipeline from starting.
    pub problems: Vec<TopicProblem>,
}

/// Decides from the cluster's topics (name → partition count) and broker count what is missing,
/// what to create and what does not fit.
pub fn plan_topics(
    spec: &PipelineDeploymentSpec,
    group: &str,
    partitions_of: &dyn Fn(&str) -> Option<usize>,
    brokers: usize,
) -> TopicPlan {
    let mut plan = TopicPlan::default();
    for topic in spec.source.topic_names() {
        match partitions_of(topic) {
            Some(n) => plan.source_partitions.push(n),
            None => plan.problems.push(TopicProblem {
                role: "source",
                topic: topic.to_owned(),
                what: "does not exist".into(),
            }),
        }
    }
    for entry in &spec.enrich {
        if partitions_of(&entry.topic).is_none() {
            plan.problems.push(TopicProblem {
                role: "table",
                topic: entry.topic.clone(),
                what: format!(
                    "does not exist (spec.enrich {:?} reads it; create it, compacted, with the reference data)",
                    entry.name
                ),
            });
        }
    }
    let sources_known = plan.source_partitions.len() == spec.source.topic_names().len();
    let widest = i32::try_from(plan.source_partitions.iter().copied().max().unwrap_or(1))
        .unwrap_or(i32::MAX);
    let create = spec.kafka.create_topics.as_ref();
    // A single broker cannot hold more than one replica; elsewhere the broker's default.
    let replication = create
        .and_then(|c| c.replication_factor)
        .unwrap_or(if brokers == 1 { 1 } else { -1 });
    for output in outputs(spec) {
        if partitions_of(output.topic).is_some() {
            continue;
        }
        match create {
            Some(CreateTopics { partitions, .. }) if sources_known => plan.create.push((
                output.role,
                output.topic.to_owned(),
                partitions.unwrap_or(widest),
                replication,
            )),
            Some(_) => {} // created once the source topics exist
            None => plan.problems.push(TopicProblem {
                role: output.role,
                topic: output.topic.to_owned(),
                what: "does not exist: create it, or set spec.kafka.createTopics".into(),
            }),
        }
    }
    if let Some(internal) = Plan::repartition_topic_name(spec, group)
        && sources_known
    {
        match partitions_of(&internal) {
            None => plan
                .create
                .push(("repartition", internal, widest, replication)),
            Some(n) if i32::try_from(n) != Ok(widest) => plan.problems.push(TopicProblem {
                role: "repartition",
                topic: internal,
                what: format!(
                    "has {n} partitions but the source topics now have up to {widest}; the \
                     window state is placed by the repartition topic's partitions, so the pipeline \
                     cannot continue on it: delete the topic and the pipeline's checkpoints (state \
                     restarts empty), or run the changed pipeline under a new consumerGroup"
                ),
            }),
            Some(_) => {}
        }
    }
    plan
}

/// Checks the topics and creates what [`plan_topics`] says to; returns the source topics'
/// partition counts. Over `AWS_MSK_IAM` nothing is created: Kafka's admin client cannot sign in
/// with an IAM token yet, so a topic to create is reported as missing instead.
pub fn prepare(
    spec: &PipelineDeploymentSpec,
    bootstrap: &str,
    group: &str,
    sign_in: &KafkaSignIn,
) -> Result<Vec<usize>, TopicsError> {
    let unreachable = |reason: String| TopicsError::Unreachable {
        bootstrap: bootstrap.to_owned(),
        reason,
    };
    let metadata = read_metadata(spec, bootstrap, sign_in).map_err(unreachable)?;
    let mut plan = plan_topics(
        spec,
        group,
        &|name| partitions_in(&metadata, name),
        metadata.brokers().len(),
    );
    if sign_in.is_msk_iam() {
        refuse_creation(&mut plan);
    } else if !plan.create.is_empty() {
        create_topics(spec, bootstrap, &mut plan).map_err(unreachable)?;
    }
    if plan.problems.is_empty() {
        Ok(plan.source_partitions)
    } else {
        Err(TopicsError::Problems(plan.problems))
    }
}

/// The cluster's metadata, read with a consumer that signs in as the slots do (its main queue is
/// polled once first, which answers an `OAUTHBEARER` token refresh).
fn read_metadata(
    spec: &PipelineDeploymentSpec,
    bootstrap: &str,
    sign_in: &KafkaSignIn,
) -> Result<Metadata, String> {
    if sign_in.is_msk_iam() {
        // Said plainly here rather than as a broker timeout later.
        sign_in.sign().map_err(|e| e.to_string())?;
    }
    let consumer: BaseConsumer<SignInContext> =
        client::with_client_id(client::base_config(spec, bootstrap), "sluice-admin")
            .create_with_context(SignInContext(sign_in.clone()))
            .map_err(|e| format!("cannot create a metadata client: {e}"))?;
    let _ = consumer.poll(Duration::from_millis(100));
    consumer
        .fetch_metadata(None, Duration::from_secs(10))
        .map_err(|e| e.to_string())
}

/// Over `AWS_MSK_IAM`: each topic the plan would create is a problem naming what to create.
fn refuse_creation(plan: &mut TopicPlan) {
    for (role, topic, partitions, _) in plan.create.drain(..) {
        plan.problems.push(TopicProblem {
            role,
            topic,
            what: format!(
                "does not exist: create it with {partitions} partitions (topics are not created over AWS_MSK_IAM)"
            ),
        });
    }
}

/// Creates the plan's topics; a topic that cannot be created becomes a problem.
fn create_topics(
    spec: &PipelineDeploymentSpec,
    bootstrap: &str,
    plan: &mut TopicPlan,
) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> =
        client::with_client_id(client::base_config(spec, bootstrap), "sluice-admin")
            .create()
            .map_err(|e| format!("cannot create admin client: {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for (role, topic, partitions, replication) in &plan.create {
        let new = NewTopic::new(topic, *partitions, TopicReplication::Fixed(*replication));
        let result = rt
            .block_on(admin.create_topics([&new], &options))
            .map_err(|e| format!("cannot create {topic}: {e}"))?;
        match result.into_iter().next() {
            Some(Ok(_)) => {
                info!(%topic, role, partitions, replication, "created topic");
            }
            // Another pod created it meanwhile; the next check verifies it.
            Some(Err((_, RDKafkaErrorCode::TopicAlreadyExists))) => {}
            Some(Err((_, code))) => plan.problems.push(TopicProblem {
                role,
                topic: topic.clone(),
                what: format!(
                    "could not be created with {partitions} partitions and replication factor \
                     {}: {code}",
                    if *replication == -1 {
                        "the broker's default".to_owned()
                    } else {
                        replication.to_string()
                    }
                ),
            }),
            None => return Err(format!("cannot create {topic}: no answer")),
        }
    }
    Ok(())
}

fn partitions_in(metadata: &Metadata, name: &str) -> Option<usize> {
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == name && t.error().is_none())
        .map(|t| t.partitions().len())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use pipeline_crds::manifest::from_yaml;

    use super::*;

    fn spec(extra: &str) -> PipelineDeploymentSpec {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n  deadLetter: {{topic: dlq}}\n  lateData: {{topic: late}}\n{extra}"
        );
        from_yaml(&text, "test").unwrap().spec
    }

    const WINDOWED: &str = "  transform: {keyBy: dev, timestamp: {field: ts}}\n  window: {tumbling: {size: 1m}}\n  aggregates: [{name: n, function: count}]\n";

    fn plan(spec: &PipelineDeploymentSpec, topics: &[(&str, usize)], brokers: usize) -> TopicPlan {
        let topics: BTreeMap<String, usize> =
            topics.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect();
        plan_topics(spec, "g", &|name| topics.get(name).copied(), brokers)
    }

    #[test]
    fn every_missing_output_topic_is_named_and_nothing_is_created_without_create_topics() {
        let s = spec("  kafka: {bootstrapServers: 'k:9092'}\n");
        let p = plan(&s, &[("in", 4), ("late", 4)], 3);
        assert!(p.create.is_empty());
        let named: Vec<_> = p
            .problems
            .iter()
            .map(|p| (p.role, p.topic.as_str()))
            .collect();
        assert_eq!(named, [("sink", "out"), ("dead-letter", "dlq")]);
        let text = TopicsError::Problems(p.problems).to_string();
        assert!(
            text.starts_with(
                "sink topic out does not exist: create it, or set spec.kafka.createTopics"
            ),
            "{text}"
        );
        let p = plan(&s, &[("out", 1), ("dlq", 1), ("late", 1)], 1);
        assert_eq!(p.problems[0].to_string(), "source topic in does not exist");
    }

    #[test]
    fn create_topics_creates_missing_outputs_sized_like_the_source_and_replicated_by_the_broker() {
        let s = spec("  kafka: {bootstrapServers: 'k:9092', createTopics: {}}\n");
        let p = plan(&s, &[("in", 6), ("dlq", 2)], 3);
        assert!(p.problems.is_empty());
        assert_eq!(p.source_partitions, [6]);
        assert_eq!(
            p.create,
            [
                ("sink", "out".into(), 6, -1),
                ("late-data", "late".into(), 6, -1)
            ]
        );
        let s = spec(
            "  kafka: {bootstrapServers: 'k:9092', createTopics: {partitions: 2, replicationFactor: 3}}\n",
        );
        let p = plan(&s, &[("in", 6), ("dlq", 2), ("late", 1)], 1);
        assert_eq!(p.create, [("sink", "out".into(), 2, 3)]);
        // Nothing is created while a source topic is missing.
        let p = plan(&s, &[], 1);
        assert!(p.create.is_empty());
        assert_eq!(p.problems.len(), 1);
    }

    #[test]
    fn the_repartition_topic_is_created_with_the_source_width_and_refused_when_it_no_longer_fits() {
        let s = spec(&format!(
            "  kafka: {{bootstrapServers: 'k:9092'}}\n{WINDOWED}"
        ));
        let outs = [("in", 8), ("out", 1), ("dlq", 1), ("late", 1)];
        let p = plan(&s, &outs, 1);
        assert_eq!(p.create, [("repartition", "g-repartition".into(), 8, 1)]);
        let mut grown = outs.to_vec();
        grown.push(("g-repartition", 8));
        assert!(plan(&s, &grown, 3).problems.is_empty());
        grown[0].1 = 12;
        let p = plan(&s, &grown, 3);
        assert_eq!(p.problems.len(), 1);
        let text = p.problems[0].to_string();
        assert!(
            text.starts_with("repartition topic g-repartition has 8 partitions but the source topics now have up to 12"),
            "{text}"
        );
    }
}
