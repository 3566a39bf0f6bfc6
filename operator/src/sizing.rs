//! Sizing: from a wanted parallelism, the source topic's partition count and the resources spec
//! to the parallelism that runs, the number of pods, each pod's slots, and the pod's CPU and
//! memory. Pure; docs/operator.md explains the rules.
//!
//! 1. The wanted parallelism (the autoscaler's decision, else `spec.parallelism`, else the
//!    partition count) is clamped to `[min, max]` and never above the partition count: a slot
//!    without a partition would sit idle.
//! 2. It is then lowered to the smallest parallelism with the same bottleneck. A pipeline is as
//!    fast as its busiest slot, which holds `ceil(partitions / parallelism)` partitions; more
//!    slots than `ceil(partitions / that)` do not lower it. With 24 partitions, 7 slots carry at
//!    most 4 partitions each, as 6 do; 6 divides 24 and spreads them evenly.
//! 3. Pods = `ceil(parallelism / slotsPerPod)`; the slots are spread over the pods so they differ
//!    by at most one (pod `i` of `n` runs `parallelism / n`, plus one when `i < parallelism % n`).
//! 4. Every pod gets the CPU of its largest slot count times `cpuPerSlot` (pods share one
//!    template; under the autoscaler, of a full pod's `slotsPerPod`, so that a rescale never
//!    changes the template), memory = slots × `memoryPerSlot` + `memoryOverhead` (request = limit), and no CPU
//!    limit unless `cpuLimitRatio` asks for one: a CFS quota throttles a busy slot (seed 003).

pub use pipeline_crds::contract::slots_of_pod;
use pipeline_crds::{
    PipelineDeploymentSpec,
    autoscaler::AutoscalerMode,
    quantity::{QuantityParseError, parse_quantity},
    resources::ResourcesSpec,
};

/// Why a parallelism other than the wanted one runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// Raised to the autoscaler's `minParallelism`.
    Min,
    /// Lowered to the autoscaler's `maxParallelism`.
    Max,
    /// Lowered to the source partition count.
    Partitions,
    /// Lowered to the smallest parallelism with the same most partitions per slot.
    EvenSpread,
    /// No parallelism was set and the partitions are more than [`DEFAULT_PARALLELISM_CAP`].
    DefaultCap,
}

/// The most slots a pipeline gets when neither `spec.parallelism` nor the autoscaler sets a
/// number (a topic with 1,000 partitions must not start 1,000 slots by default).
pub const DEFAULT_PARALLELISM_CAP: i32 = 32;

impl Limit {
    /// For conditions and events.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Min => "raised to autoscaler.minParallelism",
            Self::Max => "lowered to autoscaler.maxParallelism",
            Self::Partitions => "lowered to the source partition count",
            Self::EvenSpread => {
                "lowered to the smallest parallelism with the same most partitions per slot"
            }
            Self::DefaultCap => {
                "no parallelism is set: at most 32 slots by default (set spec.parallelism or enable the autoscaler for more)"
            }
        }
    }
}

/// The sizing of a pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct Sizing {
    /// Slots in all.
    pub parallelism: i32,
    /// Pods.
    pub replicas: i32,
    /// Slots of the fullest pod (pods differ by at most one).
    pub max_slots_per_pod: i32,
    /// Partitions of the busiest slot.
    pub max_partitions_per_slot: i32,
    /// CPU request per pod, millicores.
    pub cpu_request_millis: i64,
    /// CPU limit per pod, millicores; `None` = no limit.
    pub cpu_limit_millis: Option<i64>,
    /// Memory request and limit per pod, bytes.
    pub memory_bytes: i64,
    /// Why the parallelism differs from the one wanted, in the order applied.
    pub limits: Vec<Limit>,
}

/// Why a spec cannot be sized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SizingError {
    /// The source topic has no partitions (or its count is unknown).
    #[error("the source topic has no partitions")]
    NoPartitions,
    /// A resource quantity does not parse.
    #[error("spec.resources: {0}")]
    Quantity(#[from] QuantityParseError),
}

/// `a / b` rounded up, for positive `a` and `b` (`i32::div_ceil` is not stable).
fn ceil_div(a: i32, b: i32) -> i32 {
    (a + b - 1) / b
}

/// The parallelism to run for `wanted` on `partitions` partitions within `[min, max]`, with the
/// reasons it differs.
pub fn parallelism(wanted: i32, min: i32, max: Option<i32>, partitions: i32) -> (i32, Vec<Limit>) {
    let mut limits = Vec::new();
    let mut p = wanted.max(1);
    if let Some(max) = max
        && p > max
    {
        p = max.max(1);
        limits.push(Limit::Max);
    }
    if p < min {
        p = min;
        limits.push(Limit::Min);
    }
    if p > partitions {
        p = partitions;
        limits.push(Limit::Partitions);
    }
    let per_slot = ceil_div(partitions, p);
    // Every parallelism from `even` up to `p` has the same busiest slot; take the smallest one
    // the bounds allow.
    let even = ceil_div(partitions, per_slot).max(min);
    if even < p {
        p = even;
        limits.push(Limit::EvenSpread);
    }
    (p, limits)
}

/// Sizes `spec` for a source of `partitions` partitions (all source topics together), running
/// `decision` when the autoscaler made one.
pub fn size(
    spec: &PipelineDeploymentSpec,
    partitions: i32,
    decision: Option<i32>,
) -> Result<Sizing, SizingError> {
    if partitions < 1 {
        return Err(SizingError::NoPartitions);
    }
    let bounds = spec.autoscaler.as_ref();
    let min = bounds.and_then(|a| a.min_parallelism).unwrap_or(1).max(1);
    let max = bounds.and_then(|a| a.max_parallelism);
    let (wanted, capped) = match decision.or(spec.parallelism) {
        Some(wanted) => (wanted, false),
        None => (
            partitions.min(DEFAULT_PARALLELISM_CAP),
            partitions > DEFAULT_PARALLELISM_CAP,
        ),
    };
    let (parallelism, mut limits) = parallelism(wanted, min, max, partitions);
    if capped {
        limits.insert(0, Limit::DefaultCap);
    }
    let resources = &spec.resources;
    let replicas = ceil_div(parallelism, resources.slots_per_pod.max(1));
    let max_slots_per_pod = slots_of_pod(parallelism, replicas, 0);
    // Under the autoscaler, pods are sized for a full pod (slotsPerPod, or fewer when the bounds
    // or partitions never allow that many): the pod template then never changes with the
    // parallelism, so a rescale starts and stops slots in place and restarts no pod.
    let resource_slots = if bounds.is_some_and(|a| a.enabled && a.mode == AutoscalerMode::Auto) {
        let most = max.unwrap_or(partitions).min(partitions).max(1);
        resources
            .slots_per_pod
            .max(1)
            .min(most)
            .max(max_slots_per_pod)
    } else {
        max_slots_per_pod
    };
    let (cpu_request_millis, cpu_limit_millis, memory_bytes) =
        pod_resources(resources, resource_slots)?;
    Ok(Sizing {
        parallelism,
        replicas,
        max_slots_per_pod,
        max_partitions_per_slot: ceil_div(partitions, parallelism),
        cpu_request_millis,
        cpu_limit_millis,
        memory_bytes,
        limits,
    })
}

/// (CPU request millicores, CPU limit millicores, memory bytes) of a pod with `slots` slots.
fn pod_resources(
    resources: &ResourcesSpec,
    slots: i32,
) -> Result<(i64, Option<i64>, i64), SizingError> {
    let cpu_per_slot = parse_quantity(&resources.cpu_per_slot)?;
    let memory_per_slot = parse_quantity(&resources.memory_per_slot)?;
    let overhead = parse_quantity(&resources.memory_overhead)?;
    let cpu = (f64::from(slots) * cpu_per_slot * 1000.0).ceil() as i64;
    let limit = resources
        .cpu_limit_ratio
        .map(|ratio| (cpu as f64 * ratio.max(1.0)).ceil() as i64);
    let memory = (f64::from(slots) * memory_per_slot + overhead).ceil() as i64;
    Ok((cpu.max(1), limit, memory))
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;
    use proptest::prelude::*;

    use super::*;

    fn spec(extra: &str) -> PipelineDeploymentSpec {
        from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
            "t",
        )
        .unwrap()
        .spec
    }

    #[test]
    fn without_a_parallelism_a_large_topic_gets_at_most_the_default_cap_of_slots() {
        let spec = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n",
            "t",
        )
        .unwrap()
        .spec;
        let s = size(&spec, 1000, None).unwrap();
        assert!(
            s.parallelism <= DEFAULT_PARALLELISM_CAP,
            "{}",
            s.parallelism
        );
        assert_eq!(s.limits[0], Limit::DefaultCap);
        assert_eq!(size(&spec, 12, None).unwrap().parallelism, 12);
        let mut explicit = spec.clone();
        explicit.parallelism = Some(100);
        assert_eq!(size(&explicit, 1000, None).unwrap().parallelism, 100);
    }

    #[test]
    fn twenty_four_partitions_at_seven_slots_run_six_slots_of_four_partitions() {
        let s = size(&spec("  parallelism: 7\n"), 24, None).unwrap();
        assert_eq!((s.parallelism, s.max_partitions_per_slot), (6, 4));
        assert_eq!(s.limits, [Limit::EvenSpread]);
        // 6 slots at 4 per pod: 2 pods of 3 slots, 3 CPUs and 3 × 1Gi + 256Mi each, no CPU limit.
        assert_eq!((s.replicas, s.max_slots_per_pod), (2, 3));
        assert_eq!(s.cpu_request_millis, 3_000);
        assert_eq!(s.cpu_limit_millis, None);
        assert_eq!(s.memory_bytes, 3 * (1 << 30) + 256 * (1 << 20));
    }

    #[test]
    fn under_the_autoscaler_pods_are_sized_for_full_pods_so_a_rescale_keeps_the_template() {
        let autoscaled = spec("  autoscaler: {enabled: true}\n");
        let small = size(&autoscaled, 24, Some(2)).unwrap();
        let large = size(&autoscaled, 24, Some(8)).unwrap();
        assert_eq!((small.replicas, large.replicas), (1, 2));
        assert_eq!(small.cpu_request_millis, 4_000);
        assert_eq!(
            (small.cpu_request_millis, small.memory_bytes),
            (large.cpu_request_millis, large.memory_bytes)
        );
        // No pod can hold more slots than the partitions allow.
        assert_eq!(
            size(&autoscaled, 3, Some(2)).unwrap().cpu_request_millis,
            3_000
        );
        // A fixed pipeline is sized tightly.
        assert_eq!(
            size(&spec("  parallelism: 2\n"), 24, None)
                .unwrap()
                .cpu_request_millis,
            2_000
        );
    }

    #[test]
    fn parallelism_defaults_to_the_partition_count_and_respects_the_autoscaler_bounds() {
        assert_eq!(size(&spec(""), 13, None).unwrap().parallelism, 13);
        let bounded =
            spec("  autoscaler: {enabled: true, minParallelism: 4, maxParallelism: 10}\n");
        let s = size(&bounded, 64, Some(40)).unwrap();
        // 10 slots carry 7 partitions at most, as 10 do: 64 / 7 rounds up to 10.
        assert_eq!((s.parallelism, s.limits.clone()), (10, vec![Limit::Max]));
        let s = size(&bounded, 64, Some(1)).unwrap();
        assert_eq!((s.parallelism, s.limits.clone()), (4, vec![Limit::Min]));
        let s = size(&spec("  parallelism: 200\n"), 60, None).unwrap();
        assert_eq!(s.parallelism, 60);
        assert_eq!(s.limits, [Limit::Partitions]);
    }

    #[test]
    fn cpu_limit_ratio_and_the_slot_to_cpu_ratio_size_the_pod() {
        let s = size(
            &spec("  parallelism: 8\n  resources: {slotsPerPod: 8, cpuPerSlot: 500m, memoryPerSlot: 512Mi, memoryOverhead: 128Mi, cpuLimitRatio: 1.5}\n"),
            16,
            None,
        )
        .unwrap();
        assert_eq!((s.replicas, s.max_slots_per_pod), (1, 8));
        assert_eq!(s.cpu_request_millis, 4_000);
        assert_eq!(s.cpu_limit_millis, Some(6_000));
        assert_eq!(s.memory_bytes, (8 * 512 + 128) * (1 << 20));
        assert_eq!(
            size(&spec("  resources: {cpuPerSlot: lots}\n"), 4, None).unwrap_err(),
            SizingError::Quantity(
                parse_quantity(&k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "lots".into()
                ))
                .unwrap_err()
            )
        );
        assert_eq!(size(&spec(""), 0, None), Err(SizingError::NoPartitions));
    }

    proptest! {
        #[test]
        fn sizing_stays_in_bounds_keeps_the_bottleneck_and_adds_up(
            partitions in prop::sample::select(vec![1, 3, 7, 13, 15, 24, 60, 64, 128]),
            wanted in 1i32..200,
            min in 1i32..20,
            extra in 0i32..150,
            slots_per_pod in 1i32..17,
        ) {
            let max = min + extra;
            let (p, _) = parallelism(wanted, min, Some(max), partitions);
            let clamped = wanted.clamp(min, max).min(partitions);
            // Never above the partition count or the wanted (clamped) value; never below min
            // unless the partitions are fewer.
            prop_assert!(p >= 1 && p <= partitions && p <= clamped);
            prop_assert!(p >= min.min(partitions));
            // The busiest slot carries as many partitions as at the clamped value, and no smaller
            // parallelism within bounds does as well.
            prop_assert_eq!(ceil_div(partitions, p), ceil_div(partitions, clamped));
            if p > min {
                prop_assert!(ceil_div(partitions, p - 1) > ceil_div(partitions, p));
            }
            // Pods hold every slot, none more than slotsPerPod, differing by at most one.
            let replicas = ceil_div(p, slots_per_pod);
            let per_pod: Vec<i32> = (0..replicas).map(|i| slots_of_pod(p, replicas, i)).collect();
            prop_assert_eq!(per_pod.iter().sum::<i32>(), p);
            prop_assert!(per_pod.iter().all(|&s| s >= 1 && s <= slots_per_pod));
            prop_assert!(per_pod.iter().max().unwrap() - per_pod.iter().min().unwrap() <= 1);
        }
    }
}
