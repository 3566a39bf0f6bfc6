//! The operator's own Prometheus metrics: reconciles by result, their duration.

use std::time::Duration;

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

/// Every metric of the operator.
pub struct OperatorMetrics {
    registry: Registry,
    reconciles: Family<ResultLabel, Counter>,
    duration: Histogram,
    leader: Gauge,
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
        Self {
            registry,
            reconciles,
            duration,
            leader,
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

    /// Whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
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
}
