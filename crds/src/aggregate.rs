//! The aggregates computed per key and window.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One aggregate column of the windowed output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.__function__ == 'count' || has(self.field)").message("field is required for every function but count"))]
#[x_kube(validation = Rule::new("has(self.quantile) == (self.__function__ == 'percentile')").message("quantile is required exactly for percentile"))]
pub struct AggregateSpec {
    /// Name of the output field, e.g. `avg_temperature`.
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 128))]
    pub name: String,

    /// The aggregate function.
    pub function: AggregateFunction,

    /// Dotted path of the input field. Not used by `count`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    pub field: Option<String>,

    /// The quantile for `percentile`, strictly between 0 and 1 (e.g. `0.99`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub quantile: Option<f64>,
}

/// An aggregate function.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    /// Number of records.
    Count,
    /// Sum of a numeric field.
    Sum,
    /// Smallest value of a numeric field.
    Min,
    /// Largest value of a numeric field.
    Max,
    /// Arithmetic mean of a numeric field.
    Avg,
    /// Approximate number of distinct values (HyperLogLog, about 1% standard error).
    CountDistinct,
    /// Approximate quantile of a numeric field (DDSketch, 1% relative error).
    Percentile,
    /// The field's value at the earliest event time in the window (ties: the record read
    /// first); any JSON type, `null` and missing values skipped.
    First,
    /// The field's value at the latest event time in the window (ties: the record read last);
    /// any JSON type, `null` and missing values skipped.
    Last,
}

impl AggregateFunction {
    /// Whether the function reads `field`.
    pub fn needs_field(self) -> bool {
        self != Self::Count
    }

    /// Whether the function takes a value of any type (and outputs that type), rather than a
    /// number.
    pub fn takes_any_value(self) -> bool {
        matches!(self, Self::CountDistinct | Self::First | Self::Last)
    }
}
