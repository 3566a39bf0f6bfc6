//! What a pipeline leaves in Kafka: its consumer group's committed offsets and its repartition
//! topic (`<group>-repartition`). Found when a pipeline is created over an old group (it resumes
//! from those offsets: the operator says so in an Event), and deleted with the pipeline under
//! `deletionPolicy: delete`. Both use the pipeline's own connection ([`KafkaAccess`]).

use std::time::Duration;

use rdkafka::{
    ClientConfig, Offset, TopicPartitionList,
    admin::{AdminClient, AdminOptions},
    client::DefaultClientContext,
    consumer::{BaseConsumer, Consumer},
    error::KafkaError,
    types::RDKafkaErrorCode,
};

use crate::kafka::KafkaAccess;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a consumer group's state could not be read or deleted.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum GroupStateError {
    /// A client could not be created from the pipeline's connection.
    #[error("kafka client: {0}")]
    Client(#[source] KafkaError),
    /// A request failed.
    #[error("{what}: {source}")]
    Request {
        /// What was asked.
        what: String,
        /// The error.
        source: KafkaError,
    },
    /// The group still has members.
    #[error("consumer group {0} still has members: stop every consumer of it first")]
    NotEmpty(String),
    /// The broker refused to delete a group or topic.
    #[error("deleting {what}: {code}")]
    Refused {
        /// The group or topic.
        what: String,
        /// The broker's answer.
        code: RDKafkaErrorCode,
    },
}

/// Reads and deletes a consumer group's state (blocking: call from a blocking thread).
pub trait GroupState: Send + Sync {
    /// Whether `group` has a committed offset on any partition of `access.topics`.
    fn has_committed_offsets(
        &self,
        access: &KafkaAccess,
        group: &str,
    ) -> Result<bool, GroupStateError>;

    /// Deletes `group` (with its committed offsets) and those of `internal_topics` that exist.
    /// A group or topic already gone is fine; a group that still has members is an error.
    fn delete(
        &self,
        access: &KafkaAccess,
        group: &str,
        internal_topics: &[String],
    ) -> Result<(), GroupStateError>;
}

/// [`GroupState`] through the Kafka protocol (OffsetFetch, DeleteGroups, DeleteTopics).
#[derive(Default)]
pub struct KafkaGroupState;

fn client_config(access: &KafkaAccess) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &access.properties {
        config.set(key, value);
    }
    config
}

impl GroupState for KafkaGroupState {
    fn has_committed_offsets(
        &self,
        access: &KafkaAccess,
        group: &str,
    ) -> Result<bool, GroupStateError> {
        // A consumer that never subscribes does not join the group: it only fetches offsets.
        let consumer: BaseConsumer = client_config(access)
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(GroupStateError::Client)?;
        let mut partitions = TopicPartitionList::new();
        for topic in &access.topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), TIMEOUT)
                .map_err(|source| GroupStateError::Request {
                    what: format!("metadata of {topic}"),
                    source,
                })?;
            for t in metadata.topics().iter().filter(|t| t.error().is_none()) {
                for p in t.partitions() {
                    partitions.add_partition(topic, p.id());
                }
            }
        }
        if partitions.count() == 0 {
            return Ok(false);
        }
        let committed = consumer
            .committed_offsets(partitions, TIMEOUT)
            .map_err(|source| GroupStateError::Request {
                what: format!("committed offsets of group {group}"),
                source,
            })?;
        Ok(committed
            .elements()
            .iter()
            .any(|e| matches!(e.offset(), Offset::Offset(_))))
    }

    fn delete(
        &self,
        access: &KafkaAccess,
        group: &str,
        internal_topics: &[String],
    ) -> Result<(), GroupStateError> {
        let admin: AdminClient<DefaultClientContext> = client_config(access)
            .create()
            .map_err(GroupStateError::Client)?;
        let options = AdminOptions::new().request_timeout(Some(TIMEOUT));
        let groups = futures::executor::block_on(admin.delete_groups(&[group], &options)).map_err(
            |source| GroupStateError::Request {
                what: format!("deleting consumer group {group}"),
                source,
            },
        )?;
        for result in groups {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::GroupIdNotFound)) => {}
                Err((_, RDKafkaErrorCode::NonEmptyGroup)) => {
                    return Err(GroupStateError::NotEmpty(group.to_owned()));
                }
                Err((_, code)) => {
                    return Err(GroupStateError::Refused {
                        what: format!("consumer group {group}"),
                        code,
                    });
                }
            }
        }
        if internal_topics.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = internal_topics.iter().map(String::as_str).collect();
        let topics = futures::executor::block_on(admin.delete_topics(&names, &options)).map_err(
            |source| GroupStateError::Request {
                what: format!("deleting topics {names:?}"),
                source,
            },
        )?;
        for result in topics {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((topic, code)) => {
                    return Err(GroupStateError::Refused {
                        what: format!("topic {topic}"),
                        code,
                    });
                }
            }
        }
        Ok(())
    }
}
