//! The PodDisruptionBudget: at most one pod down at a time by voluntary disruption, unless the
//! installation sets another budget (the chart's `runtime.podDisruptionBudget`).

use k8s_openapi::{
    api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::names::selector_labels;

/// How many of a pipeline's pods a voluntary disruption (a node drain) may take at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DisruptionBudget {
    /// At most this many (or this percentage, `25%`) down.
    MaxUnavailable(IntOrString),
    /// At least this many (or this percentage) up.
    MinAvailable(IntOrString),
}

impl Default for DisruptionBudget {
    fn default() -> Self {
        Self::MaxUnavailable(IntOrString::Int(1))
    }
}

impl DisruptionBudget {
    /// `3` as a count, `25%` as a percentage, as a PodDisruptionBudget writes them.
    pub fn amount(text: &str) -> Result<IntOrString, String> {
        match text.strip_suffix('%') {
            Some(percent) if percent.parse::<u8>().is_ok_and(|p| p <= 100) => {
                Ok(IntOrString::String(text.to_owned()))
            }
            Some(_) => Err(format!("{text:?} is not a percentage from 0% to 100%")),
            None => text
                .parse::<i32>()
                .ok()
                .filter(|n| *n >= 0)
                .map(IntOrString::Int)
                .ok_or_else(|| format!("{text:?} is neither a count nor a percentage")),
        }
    }
}

/// The budget of pipeline `name`'s pods.
pub fn pod_disruption_budget(
    name: &str,
    metadata: ObjectMeta,
    budget: &DisruptionBudget,
) -> PodDisruptionBudget {
    let (max_unavailable, min_available) = match budget {
        DisruptionBudget::MaxUnavailable(n) => (Some(n.clone()), None),
        DisruptionBudget::MinAvailable(n) => (None, Some(n.clone())),
    };
    PodDisruptionBudget {
        metadata,
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable,
            min_available,
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(name)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_counts_or_percentages_and_the_default_is_one_pod_down() {
        assert_eq!(DisruptionBudget::amount("2"), Ok(IntOrString::Int(2)));
        assert_eq!(
            DisruptionBudget::amount("25%"),
            Ok(IntOrString::String("25%".into()))
        );
        assert!(DisruptionBudget::amount("150%").is_err());
        assert!(DisruptionBudget::amount("-1").is_err());
        assert!(DisruptionBudget::amount("many").is_err());
        let pdb = pod_disruption_budget("p", ObjectMeta::default(), &DisruptionBudget::default());
        assert_eq!(pdb.spec.unwrap().max_unavailable, Some(IntOrString::Int(1)));
        let pdb = pod_disruption_budget(
            "p",
            ObjectMeta::default(),
            &DisruptionBudget::MinAvailable(IntOrString::String("50%".into())),
        );
        let spec = pdb.spec.unwrap();
        assert_eq!(
            (spec.max_unavailable, spec.min_available),
            (None, Some(IntOrString::String("50%".into())))
        );
    }
}
