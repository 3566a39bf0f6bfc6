//! The operator's own Prometheus metrics: reconciles by result, their duration, leadership, and
//! the autoscaler's figures per pipeline.

use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// Labels of the reconcile counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    /// `applied`, `invalid`, `kafka_unreachable`, `credentials_unavailable`, `deleting` or `error`.
    pub result: String,
}

/// Labels of per-pipeline autoscaler series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PipelineLabels {
    /// Namespace.
    pub namespace: String,
    /// PipelineDeployment name.
    pub pipeline: String,
}

/// Labels of the autoscaler's decision counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// Namespace.
    pub namespace: String,
    /// PipelineDeployment name.
    pub pipeline: String,
    /// `up`, `down` or `none`.
    pub direction: String,
    /// The result (`ScaleUp`, `NoChange`, `Held`, `NoMetrics`, ...) or the first veto.
    pub reason: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// A reconcile counted in `sluice_operator_reconciles_in_flight` while this lives (also when the
/// reconcile future is dropped half-way).
pub struct InFlight<'a>(&'a Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Every metric of the operator.
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
    in_flight: Gauge,
    retrying: Gauge,
    recommended: Family<PipelineLabels, Gauge>,
    current: Family<PipelineLabels, Gauge>,
    required_rate: Family<PipelineLabels, FloatGauge>,
    capacity_per_slot: Family<PipelineLabels, FloatGauge>,
    decisions: Family<DecisionLabels, Counter>,
    ready: Family<PipelineLabels, Gauge>,
    at_max: Family<PipelineLabels, Gauge>,
}

impl Default for OperatorMetrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconciles = Family::<ResultLabel, Counter>::default();
        // 1 ms .. ~65 s.
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "sluice_operator_reconciles",
            "Reconciles by result",
            reconciles.clone(),
        );
        registry.register(
            "sluice_operator_reconcile_duration_seconds",
            "Duration of a reconcile",
            duration.clone(),
        );
        let leader = Gauge::default();
        registry.register(
            "sluice_operator_leader",
            "1 while this replica holds the leader Lease and reconciles, else 0",
            leader.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "sluice_operator_reconciles_in_flight",
            "Reconciles running now",
            in_flight.clone(),
        );
        let retrying = Gauge::default();
        registry.register(
            "sluice_operator_pipelines_retrying",
            "Pipelines whose last reconcile failed, waiting for their retry (5 s doubling to 5 min)",
            retrying.clone(),
        );
        let recommended = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "sluice_autoscaler_recommended_parallelism",
            "Parallelism the autoscaler recommends",
            recommended.clone(),
        );
        let current = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "sluice_autoscaler_current_parallelism",
            "Parallelism running when the autoscaler last evaluated",
            current.clone(),
        );
        let required_rate = Family::<PipelineLabels, FloatGauge>::default();
        registry.register(
            "sluice_autoscaler_required_rate",
            "Records per second the pipeline must process (arrival, lag catch-up, rescale pause)",
            required_rate.clone(),
        );
        let capacity_per_slot = Family::<PipelineLabels, FloatGauge>::default();
        registry.register(
            "sluice_autoscaler_capacity_per_slot",
            "Records per second one fully busy slot processes",
            capacity_per_slot.clone(),
        );
        let decisions = Family::<DecisionLabels, Counter>::default();
        registry.register(
            "sluice_autoscaler_decisions",
            "Autoscaler evaluations by direction and reason",
            decisions.clone(),
        );
        let ready = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "sluice_pipeline_ready",
            "1 while the pipeline's Ready condition is True, else 0",
            ready.clone(),
        );
        let at_max = Family::<PipelineLabels, Gauge>::default();
        registry.register(
            "sluice_autoscaler_at_max",
            "1 while the autoscaler wants more slots than the pipeline's bounds or partitions allow",
            at_max.clone(),
        );
        Self {
            registry,
            ready,
            at_max,
            reconciles,
            duration,
            leader,
            in_flight,
            retrying,
            recommended,
            current,
            required_rate,
            capacity_per_slot,
            decisions,
        }
    }
}

impl OperatorMetrics {
    /// Counts a reconcile that took `elapsed` and ended in `result`.
    pub fn reconciled(&self, result: &str, elapsed: Duration) {
        self.reconciles
            .get_or_create(&ResultLabel {
                result: result.to_owned(),
            })
            .inc();
        self.duration.observe(elapsed.as_secs_f64());
    }

    /// A reconcile started; it counts as running until the guard is dropped.
    pub fn reconcile_started(&self) -> InFlight<'_> {
        self.in_flight.inc();
        InFlight(&self.in_flight)
    }

    /// How many pipelines wait for a retry after a failed reconcile.
    pub fn set_retrying(&self, pipelines: usize) {
        self.retrying
            .set(i64::try_from(pipelines).unwrap_or(i64::MAX));
    }

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Records an autoscaler evaluation of `namespace/pipeline`.
    pub fn autoscaled(
        &self,
        namespace: &str,
        pipeline: &str,
        status: &pipeline_crds::status::AutoscalerStatus,
        current: i32,
    ) {
        let labels = PipelineLabels {
            namespace: namespace.into(),
            pipeline: pipeline.into(),
        };
        self.current.get_or_create(&labels).set(i64::from(current));
        if let Some(r) = status.recommended_parallelism {
            self.recommended.get_or_create(&labels).set(i64::from(r));
        }
        if let Some(r) = status.required_rate {
            self.required_rate.get_or_create(&labels).set(r);
        }
        if let Some(c) = status.capacity_per_slot {
            self.capacity_per_slot.get_or_create(&labels).set(c);
        }
        let result = status.result.clone().unwrap_or_default();
        let direction = match result.as_str() {
            "ScaleUp" => "up",
            "ScaleDown" => "down",
            _ => "none",
        };
        let reason = status.vetoes.first().cloned().unwrap_or(result);
        self.decisions
            .get_or_create(&DecisionLabels {
                namespace: namespace.into(),
                pipeline: pipeline.into(),
                direction: direction.into(),
                reason,
            })
            .inc();
    }

    /// Records `namespace/pipeline`'s reported status (Ready, autoscaler at its maximum).
    pub fn pipeline_status(
        &self,
        namespace: &str,
        pipeline: &str,
        status: &pipeline_crds::PipelineDeploymentStatus,
    ) {
        let labels = PipelineLabels {
            namespace: namespace.into(),
            pipeline: pipeline.into(),
        };
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        self.ready.get_or_create(&labels).set(i64::from(ready));
        let at_max = status
            .autoscaler
            .as_ref()
            .is_some_and(|a| a.vetoes.iter().any(|v| v == "AtMax" || v == "PartitionCap"));
        self.at_max.get_or_create(&labels).set(i64::from(at_max));
    }

    /// Forgets a deleted pipeline's status gauges.
    pub fn forget_pipeline(&self, namespace: &str, pipeline: &str) {
        let labels = PipelineLabels {
            namespace: namespace.into(),
            pipeline: pipeline.into(),
        };
        self.ready.remove(&labels);
        self.at_max.remove(&labels);
        self.forget_autoscaler(namespace, pipeline);
    }

    /// Forgets a pipeline's autoscaler gauges (it was deleted or its autoscaler turned off).
    pub fn forget_autoscaler(&self, namespace: &str, pipeline: &str) {
        let labels = PipelineLabels {
            namespace: namespace.into(),
            pipeline: pipeline.into(),
        };
        self.recommended.remove(&labels);
        self.current.remove(&labels);
        self.required_rate.remove(&labels);
        self.capacity_per_slot.remove(&labels);
    }

    /// Every family with one series of placeholder labels: what the metrics reference
    /// (docs/metrics.md, checked by a test) is generated from, labels included.
    pub fn example() -> Self {
        let m = Self::default();
        let _ = m.reconciles.get_or_create(&ResultLabel {
            result: "<result>".into(),
        });
        let pipeline = PipelineLabels {
            namespace: "<namespace>".into(),
            pipeline: "<pipeline>".into(),
        };
        for family in [&m.recommended, &m.current, &m.ready, &m.at_max] {
            let _ = family.get_or_create(&pipeline);
        }
        for family in [&m.required_rate, &m.capacity_per_slot] {
            let _ = family.get_or_create(&pipeline);
        }
        let _ = m.decisions.get_or_create(&DecisionLabels {
            namespace: "<namespace>".into(),
            pipeline: "<pipeline>".into(),
            direction: "<direction>".into(),
            reason: "<reason>".into(),
        });
        m
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_are_counted_by_result_and_timed() {
        let m = OperatorMetrics::default();
        m.reconciled("applied", Duration::from_millis(12));
        m.reconciled("error", Duration::from_millis(3));
        m.set_leader(true);
        let text = m.encode();
        assert!(
            text.contains("sluice_operator_reconciles_total{result=\"applied\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("sluice_operator_reconcile_duration_seconds_count 2"),
            "{text}"
        );
        assert!(text.contains("sluice_operator_leader 1"), "{text}");
    }

    #[test]
    fn reconciles_in_flight_count_until_their_guard_is_dropped_and_retrying_is_set() {
        let m = OperatorMetrics::default();
        let first = m.reconcile_started();
        let second = m.reconcile_started();
        assert!(
            m.encode()
                .contains("sluice_operator_reconciles_in_flight 2")
        );
        drop(first);
        drop(second);
        m.set_retrying(3);
        let text = m.encode();
        assert!(
            text.contains("sluice_operator_reconciles_in_flight 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_operator_pipelines_retrying 3"),
            "{text}"
        );
    }

    #[test]
    fn readiness_and_autoscaler_at_max_are_gauges_per_pipeline_until_it_is_deleted() {
        let m = OperatorMetrics::default();
        let status: pipeline_crds::PipelineDeploymentStatus =
            serde_json::from_value(serde_json::json!({
                "conditions": [{"type": "Ready", "status": "False", "reason": "Starting",
                    "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "autoscaler": {"vetoes": ["AtMax"]},
            }))
            .unwrap();
        m.pipeline_status("ns", "iot", &status);
        let text = m.encode();
        assert!(
            text.contains("sluice_pipeline_ready{namespace=\"ns\",pipeline=\"iot\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("sluice_autoscaler_at_max{namespace=\"ns\",pipeline=\"iot\"} 1"),
            "{text}"
        );
        m.forget_pipeline("ns", "iot");
        assert!(!m.encode().contains("sluice_pipeline_ready{"));
    }

    #[test]
    fn autoscaler_figures_are_exposed_per_pipeline() {
        let m = OperatorMetrics::default();
        let status = pipeline_crds::status::AutoscalerStatus {
            recommended_parallelism: Some(8),
            required_rate: Some(12_000.0),
            capacity_per_slot: Some(2_000.0),
            result: Some("ScaleUp".into()),
            ..Default::default()
        };
        m.autoscaled("ns", "iot", &status, 4);
        let text = m.encode();
        for line in [
            "sluice_autoscaler_recommended_parallelism{namespace=\"ns\",pipeline=\"iot\"} 8",
            "sluice_autoscaler_current_parallelism{namespace=\"ns\",pipeline=\"iot\"} 4",
            "sluice_autoscaler_required_rate{namespace=\"ns\",pipeline=\"iot\"} 12000",
            "sluice_autoscaler_capacity_per_slot{namespace=\"ns\",pipeline=\"iot\"} 2000",
            "sluice_autoscaler_decisions_total{namespace=\"ns\",pipeline=\"iot\",direction=\"up\",reason=\"ScaleUp\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        m.forget_autoscaler("ns", "iot");
        assert!(
            !m.encode()
                .contains("sluice_autoscaler_current_parallelism{")
        );
    }
}
