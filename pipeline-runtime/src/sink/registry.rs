//! The one place a pipeline's rows sink is chosen. Each sink settles its target from the spec
//! when the plan is compiled (`<sink>::Target::of`) and opens from that target in a slot; its
//! errors live with it and reach the slot as a [`RowsError`], which says whether retrying can
//! help. Adding a sink is a module, a variant here and its two arms.

use std::{error::Error, sync::Arc};

use pipeline_crds::PipelineDeploymentSpec;
use rdkafka::producer::BaseProducer;

use crate::{
    metrics::{Metrics, SlotLabels},
    plan::Plan,
};

use super::{
    DeliveryTracker, RowSink, SinkError,
    clickhouse::{ClickHouseRows, ClickHouseTarget},
    kafka::{KafkaRows, KafkaTarget},
    size::OutputLimit,
};

/// Where a pipeline's output rows go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RowsTarget {
    /// A Kafka topic, through the slot's producer.
    Kafka(KafkaTarget),
    /// A ClickHouse table.
    ClickHouse(ClickHouseTarget),
}

impl RowsTarget {
    /// The target `spec.sink` names (validation lets it name exactly one).
    pub fn of(spec: &PipelineDeploymentSpec) -> Self {
        match &spec.sink.clickhouse {
            Some(clickhouse) => Self::ClickHouse(ClickHouseTarget::of(clickhouse)),
            None => Self::Kafka(KafkaTarget::of(spec)),
        }
    }
}

/// What a slot lends the sink it opens.
pub struct SlotResources {
    /// The slot's producer (transactional under exactly-once).
    pub producer: Arc<BaseProducer<DeliveryTracker>>,
    /// The largest record the producer sends.
    pub limit: OutputLimit,
    /// The slot's metrics.
    pub metrics: Arc<Metrics>,
    /// The slot's labels.
    pub labels: SlotLabels,
}

/// Opens the sink of `plan`'s rows.
pub fn open(plan: &Plan, slot: SlotResources) -> Result<Box<dyn RowSink>, SinkError> {
    Ok(match &plan.rows {
        RowsTarget::Kafka(target) => {
            Box::new(KafkaRows::new(plan, target, slot.producer, slot.limit)?)
        }
        RowsTarget::ClickHouse(target) => Box::new(ClickHouseRows::new(
            plan,
            target,
            slot.metrics,
            slot.labels,
        )?),
    })
}

/// A rows sink's own error, and whether restarting the slot can help. Its text is the sink
/// error's own.
#[derive(Debug)]
pub struct RowsError {
    retryable: bool,
    source: Box<dyn Error + Send + Sync>,
}

impl RowsError {
    /// Wraps a sink's error.
    pub fn new(error: impl Error + Send + Sync + 'static, retryable: bool) -> Self {
        Self {
            retryable,
            source: Box::new(error),
        }
    }

    /// Whether restarting the slot can help.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The sink's error, when it is a `T`.
    pub fn downcast_ref<T: Error + 'static>(&self) -> Option<&T> {
        self.source.downcast_ref()
    }
}

impl std::fmt::Display for RowsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl Error for RowsError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.source()
    }
}
