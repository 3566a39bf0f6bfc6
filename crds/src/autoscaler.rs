//! Autoscaler settings: bounds, metric source, and the pace of scaling.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// Rescales the pipeline from consumer lag, arrival rate, busy time and backpressure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minParallelism) || !has(self.maxParallelism) || self.minParallelism <= self.maxParallelism").message("minParallelism must be at most maxParallelism"))]
pub struct AutoscalerSpec {
    /// Turns the autoscaler on. Defaults to false.
    #[serde(default)]
    pub enabled: bool,

    /// `auto` applies decisions; `recommendOnly` only reports them in status. Defaults to `auto`.
    #[serde(default)]
    pub mode: AutoscalerMode,

    /// Lowest parallelism. Defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_parallelism: Option<i32>,

    /// Highest parallelism. Defaults to the source partition count (more slots than partitions
    /// would sit idle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_parallelism: Option<i32>,

    /// Where metrics are read from. Defaults to scraping the runtime pods directly.
    #[serde(default)]
    pub metrics: MetricsSource,

    /// Time between evaluations, and the shortest window a decision is made from. Defaults to
    /// `30s`.
    #[serde(default = "default_interval")]
    pub interval: Duration,

    /// Window over which rates and utilisations are averaged. After a rescale the window starts
    /// when every partition is consumed again. Defaults to `5m`.
    #[serde(default = "default_metrics_window")]
    pub metrics_window: Duration,

    /// Busy-time share a slot should run at after scaling, in (0, 1]. Defaults to 0.7.
    #[serde(default = "default_target_utilization")]
    #[schemars(range(min = 0.05, max = 1.0))]
    pub target_utilization: f64,

    /// Time within which an accumulated lag should be worked off after scaling up.
    /// Defaults to `5m`.
    #[serde(default = "default_catch_up_duration")]
    pub catch_up_duration: Duration,

    /// Lag, in seconds of input at the arrival rate, above which the pipeline counts as in
    /// backlog: it is never scaled down then. Defaults to `30s`.
    #[serde(default = "default_lag_target")]
    pub lag_target: Duration,

    /// How long a lower recommendation must hold before scaling down. Defaults to `10m`.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,

    /// Largest ratio new/old parallelism in one scale-up, at least 1. Defaults to 4.
    #[serde(default = "default_max_scale_up_factor")]
    #[schemars(range(min = 1.0, max = 100.0))]
    pub max_scale_up_factor: f64,

    /// Largest fraction of parallelism removed in one scale-down, in (0, 1). Defaults to 0.5.
    #[serde(default = "default_max_scale_down_factor")]
    #[schemars(range(min = 0.01, max = 0.99))]
    pub max_scale_down_factor: f64,
}

impl Default for AutoscalerSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: AutoscalerMode::default(),
            min_parallelism: None,
            max_parallelism: None,
            metrics: MetricsSource::default(),
            interval: default_interval(),
            metrics_window: default_metrics_window(),
            target_utilization: default_target_utilization(),
            catch_up_duration: default_catch_up_duration(),
            lag_target: default_lag_target(),
            scale_down_delay: default_scale_down_delay(),
            max_scale_up_factor: default_max_scale_up_factor(),
            max_scale_down_factor: default_max_scale_down_factor(),
        }
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_metrics_window() -> Duration {
    Duration::from_secs(300)
}
fn default_target_utilization() -> f64 {
    0.7
}
fn default_catch_up_duration() -> Duration {
    Duration::from_secs(300)
}
fn default_lag_target() -> Duration {
    Duration::from_secs(30)
}
fn default_scale_down_delay() -> Duration {
    Duration::from_secs(600)
}
fn default_max_scale_up_factor() -> f64 {
    4.0
}
fn default_max_scale_down_factor() -> f64 {
    0.5
}

/// Whether autoscaler decisions are applied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AutoscalerMode {
    /// Apply decisions by changing the parallelism.
    #[default]
    Auto,
    /// Compute and report decisions in status, change nothing.
    RecommendOnly,
}

/// The metric source of the autoscaler. At most one of `prometheus` and `direct` is set; neither
/// means `direct`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.prometheus) && has(self.direct))").message("set at most one of prometheus or direct"))]
pub struct MetricsSource {
    /// Query a Prometheus server that scrapes the runtime pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSource>,
    /// Scrape each runtime pod's `/metrics` endpoint from the operator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct: Option<DirectScrape>,
}

/// A Prometheus server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSource {
    /// Base URL, e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(max = 2048, min = 1))]
    pub url: String,
}

/// Direct scraping of the runtime pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DirectScrape {}
