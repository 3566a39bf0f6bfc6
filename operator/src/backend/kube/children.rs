//! Build (pure): every Kubernetes object the operator wants for one PipelineDeployment, from the
//! resource and its desired deployment. No cluster access; `pipeline-operator render` prints the
//! result.

use k8s_openapi::{
    api::{
        apps::v1::StatefulSet,
        core::v1::{ConfigMap, Service},
        policy::v1::PodDisruptionBudget,
    },
    apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference},
};
use serde_json::Value;

use super::{
    configmap::config_map,
    names::{config_map_name, headless_service_name, metrics_service_name, object_labels},
    pdb::pod_disruption_budget,
    podmonitor::pod_monitor,
    services::{headless_service, metrics_service},
    statefulset::stateful_set,
};
use crate::desired::{BuildError, Desired};

/// What the operator knows beyond the resource.
#[derive(Clone, Debug)]
pub struct Environment {
    /// Runtime image when `spec.image` is absent.
    pub default_image: String,
    /// The runtime container's `imagePullPolicy` (`None`: Kubernetes' default for the tag).
    pub image_pull_policy: Option<String>,
    /// The runtime pods' disruption budget.
    pub disruption_budget: super::pdb::DisruptionBudget,
    /// Whether the `monitoring.coreos.com/v1` PodMonitor kind exists in the cluster.
    pub pod_monitor_crd: bool,
}

/// Every child object, in apply order.
#[derive(Clone, Debug)]
pub struct Children {
    /// The runtime config (the manifest the runtime executes).
    pub config_map: ConfigMap,
    /// Headless Service giving the pods stable names.
    pub headless_service: Service,
    /// Service in front of the pods' metrics port.
    pub metrics_service: Service,
    /// The runtime pods.
    pub stateful_set: StatefulSet,
    /// At most one pod down at a time by voluntary disruption; none while suspended (no pods).
    pub pod_disruption_budget: Option<PodDisruptionBudget>,
    /// A Prometheus Operator PodMonitor, when that CRD exists (else scrape annotations).
    pub pod_monitor: Option<Value>,
}

impl Children {
    /// `(kind, name)` of every child, in apply order.
    pub fn wanted(&self) -> Vec<(&'static str, String)> {
        let name = |m: &ObjectMeta| m.name.clone().unwrap_or_default();
        let mut wanted = vec![
            ("ConfigMap", name(&self.config_map.metadata)),
            ("Service", name(&self.headless_service.metadata)),
            ("Service", name(&self.metrics_service.metadata)),
            ("StatefulSet", name(&self.stateful_set.metadata)),
        ];
        if let Some(pdb) = &self.pod_disruption_budget {
            wanted.push(("PodDisruptionBudget", name(&pdb.metadata)));
        }
        if let Some(monitor) = &self.pod_monitor {
            let name = monitor["metadata"]["name"].as_str().unwrap_or_default();
            wanted.push(("PodMonitor", name.to_owned()));
        }
        wanted
    }
}

/// Builds every child of the pipeline `desired` runs.
pub fn build(desired: &Desired, environment: &Environment) -> Result<Children, BuildError> {
    let name = desired.name.clone();
    let uid = desired
        .pipeline
        .resource()
        .metadata
        .uid
        .clone()
        .ok_or(BuildError::Metadata("uid"))?;
    let owner = OwnerReference {
        api_version: "sluice.dev/v1alpha1".into(),
        kind: "PipelineDeployment".into(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let meta = |object_name: String| ObjectMeta {
        name: Some(object_name),
        namespace: Some(desired.namespace.clone()),
        labels: Some(object_labels(&name)),
        owner_references: Some(vec![owner.clone()]),
        ..ObjectMeta::default()
    };
    let running = desired.replicas > 0;
    Ok(Children {
        config_map: config_map(desired, meta(config_map_name(&name))),
        headless_service: headless_service(&name, meta(headless_service_name(&name))),
        metrics_service: metrics_service(&name, meta(metrics_service_name(&name))),
        stateful_set: stateful_set(desired, environment, meta(name.clone())),
        pod_disruption_budget: running.then(|| {
            pod_disruption_budget(&name, meta(name.clone()), &environment.disruption_budget)
        }),
        pod_monitor: environment
            .pod_monitor_crd
            .then(|| pod_monitor(&name, &meta(name.clone()))),
    })
}

#[cfg(test)]
mod tests {
    use pipeline_crds::manifest::from_yaml;

    use super::super::names::{child_selector, selector_labels};
    use super::*;
    use crate::{desired::desired, sizing::size};
    use k8s_openapi::api::core::v1::PodSpec;
    use pipeline_crds::PipelineDeployment;
    use pipeline_crds::contract::{annotations, env};

    fn pd(extra: &str) -> PipelineDeployment {
        let mut pd = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: p, namespace: ns}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"),
            "t",
        )
        .unwrap();
        pd.metadata.uid = Some("u-1".into());
        pd
    }

    fn children(pd: &PipelineDeployment, pod_monitor: bool) -> Children {
        let sizing = size(&pd.spec, 8, None).unwrap();
        let environment = Environment {
            default_image: "img:1".into(),
            image_pull_policy: None,
            disruption_budget: Default::default(),
            pod_monitor_crd: pod_monitor,
        };
        let valid =
            pipeline_crds::valid::validate_pipeline(pd, &pipeline_crds::valid::AnyInstallation)
                .unwrap();
        build(&desired(&valid, &sizing), &environment).unwrap()
    }

    fn pod(c: &Children) -> PodSpec {
        c.stateful_set.spec.clone().unwrap().template.spec.unwrap()
    }

    #[test]
    fn the_installations_pull_policy_reaches_the_runtime_container_and_is_unset_by_default() {
        let pd = pd("");
        let valid =
            pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
                .unwrap();
        let sizing = size(&pd.spec, 8, None).unwrap();
        let environment = Environment {
            default_image: "img@sha256:0123".into(),
            image_pull_policy: Some("Always".into()),
            disruption_budget: Default::default(),
            pod_monitor_crd: false,
        };
        let c = build(&desired(&valid, &sizing), &environment).unwrap();
        let container = &pod(&c).containers[0];
        assert_eq!(container.image.as_deref(), Some("img@sha256:0123"));
        assert_eq!(container.image_pull_policy.as_deref(), Some("Always"));
        assert_eq!(
            pod(&children(&pd, false)).containers[0].image_pull_policy,
            None
        );
    }

    #[test]
    fn env_from_config_maps_extra_volumes_and_a_chosen_user_reach_the_pod_within_the_restricted_profile()
     {
        let c = children(
            &pd(
                "  podTemplate:\n    envFrom: [{configMapRef: {name: proxy}, prefix: APP_}]\n    volumes:\n      - {name: ref-data, mountPath: /srv/ref, configMap: {name: countries}}\n      - {name: spill, mountPath: /srv/spill, emptyDir: {medium: Memory, sizeLimit: 64Mi}}\n    securityContext: {runAsUser: 10001, fsGroup: 20001, fsGroupChangePolicy: OnRootMismatch, seccompLocalhostProfile: profiles/sluice.json}\n",
            ),
            false,
        );
        let pod = pod(&c);
        let container = &pod.containers[0];
        let env_from = container.env_from.as_ref().unwrap();
        assert_eq!(env_from.len(), 1);
        assert_eq!(env_from[0].config_map_ref.as_ref().unwrap().name, "proxy");
        assert_eq!(env_from[0].prefix.as_deref(), Some("APP_"));
        assert!(env_from[0].secret_ref.is_none());
        let mounts = container.volume_mounts.as_ref().unwrap();
        let mount = |name: &str| mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(
            (
                mount("ref-data").mount_path.as_str(),
                mount("ref-data").read_only
            ),
            ("/srv/ref", Some(true)),
            "a ConfigMap is mounted read-only"
        );
        assert_eq!(mount("spill").read_only, Some(false));
        let volumes = pod.volumes.as_ref().unwrap();
        let spill = volumes.iter().find(|v| v.name == "spill").unwrap();
        assert_eq!(
            spill.empty_dir.as_ref().unwrap().medium.as_deref(),
            Some("Memory")
        );
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(
            (
                security.run_as_non_root,
                security.run_as_user,
                security.run_as_group,
                security.fs_group
            ),
            (Some(true), Some(10001), Some(65_532), Some(20001))
        );
        assert_eq!(
            security.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
        let seccomp = security.seccomp_profile.as_ref().unwrap();
        assert_eq!(
            (seccomp.type_.as_str(), seccomp.localhost_profile.as_deref()),
            ("Localhost", Some("profiles/sluice.json"))
        );
        let locked = container.security_context.as_ref().unwrap();
        assert_eq!(
            (
                locked.allow_privilege_escalation,
                locked.read_only_root_filesystem
            ),
            (Some(false), Some(true)),
            "the container keeps its own settings"
        );
        let default = children(&pd(""), false);
        let default_pod = self::pod(&default);
        assert_eq!(default_pod.containers[0].env_from, None);
        assert_eq!(
            default_pod
                .security_context
                .unwrap()
                .seccomp_profile
                .unwrap()
                .type_,
            "RuntimeDefault"
        );
    }

    #[test]
    fn a_rack_adds_an_init_container_that_alone_gets_a_short_lived_api_token() {
        let mut racked = pd("");
        racked.spec.kafka.rack = Some(pipeline_crds::kafka::RackSpec {
            topology_key: "topology.k8s.aws/zone-id".into(),
        });
        let with_rack = pod(&children(&racked, false));
        let init = &with_rack.init_containers.as_ref().unwrap()[0];
        assert_eq!(
            init.args.as_deref().unwrap(),
            ["rack", "--topology-key", "topology.k8s.aws/zone-id"]
        );
        let mounts = |c: &k8s_openapi::api::core::v1::Container| -> Vec<String> {
            c.volume_mounts
                .iter()
                .flatten()
                .map(|m| m.name.clone())
                .collect()
        };
        assert_eq!(mounts(init), ["scratch", "rack-api-access"]);
        assert!(!mounts(&with_rack.containers[0]).contains(&"rack-api-access".to_owned()));
        assert_eq!(with_rack.automount_service_account_token, Some(false));
        let token = with_rack
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "rack-api-access")
            .and_then(|v| v.projected.as_ref())
            .unwrap();
        let expiry = token.sources.as_ref().unwrap()[0]
            .service_account_token
            .as_ref()
            .unwrap()
            .expiration_seconds;
        assert_eq!(expiry, Some(600));
        assert_eq!(pod(&children(&pd(""), false)).init_containers, None);
    }

    #[test]
    fn pods_spread_over_zones_then_nodes_by_default_and_the_pipeline_may_replace_or_drop_that() {
        let spread = pod(&children(&pd(""), false))
            .topology_spread_constraints
            .unwrap();
        let keys: Vec<(&str, i32, &str)> = spread
            .iter()
            .map(|c| {
                (
                    c.topology_key.as_str(),
                    c.max_skew,
                    c.when_unsatisfiable.as_str(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("topology.kubernetes.io/zone", 1, "ScheduleAnyway"),
                ("kubernetes.io/hostname", 1, "ScheduleAnyway")
            ]
        );
        let selector = spread[0].label_selector.as_ref().unwrap();
        assert_eq!(selector.match_labels, Some(selector_labels("p")));

        let own = children(
            &pd(
                "  podTemplate:\n    topologySpreadConstraints:\n      - {maxSkew: 2, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule}\n",
            ),
            false,
        );
        let own = pod(&own).topology_spread_constraints.unwrap();
        assert_eq!((own.len(), own[0].max_skew), (1, 2));
        let none = children(
            &pd("  podTemplate: {topologySpreadConstraints: []}\n"),
            false,
        );
        assert_eq!(pod(&none).topology_spread_constraints, None);
    }

    #[test]
    fn every_child_is_owned_by_the_pipeline_as_its_controller() {
        let c = children(&pd(""), true);
        let metas = [
            &c.config_map.metadata,
            &c.headless_service.metadata,
            &c.metrics_service.metadata,
            &c.stateful_set.metadata,
            &c.pod_disruption_budget.as_ref().unwrap().metadata,
        ];
        for meta in metas {
            let owner = &meta.owner_references.as_ref().unwrap()[0];
            assert_eq!((owner.uid.as_str(), owner.controller), ("u-1", Some(true)));
            assert_eq!(meta.namespace.as_deref(), Some("ns"));
            // Pruning finds children by these labels.
            for pair in child_selector("p").split(',') {
                let (k, v) = pair.split_once('=').unwrap();
                assert_eq!(meta.labels.as_ref().unwrap()[k], v);
            }
        }
        let monitor = c.pod_monitor.unwrap();
        assert_eq!(monitor["metadata"]["ownerReferences"][0]["uid"], "u-1");
    }

    #[test]
    fn the_runtime_container_is_locked_down_and_gets_credentials_only_by_secret_reference() {
        let c = children(
            &pd(
                "  checkpoint: {storage: {s3: {bucket: bucket-b, credentialsSecret: {name: s3}}}}\n",
            ),
            false,
        );
        let spec = pod(&c);
        let container = &spec.containers[0];
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
        assert_eq!(spec.security_context.unwrap().run_as_non_root, Some(true));
        let env = container.env.as_ref().unwrap();
        let key = env
            .iter()
            .find(|e| e.name == env::S3_ACCESS_KEY_ID)
            .unwrap();
        assert!(key.value.is_none());
        assert_eq!(
            key.value_from
                .as_ref()
                .unwrap()
                .secret_key_ref
                .as_ref()
                .unwrap()
                .name,
            "s3"
        );
        // No CPU limit: a CFS quota would throttle busy slots.
        let resources = container.resources.as_ref().unwrap();
        assert!(!resources.limits.as_ref().unwrap().contains_key("cpu"));
    }

    #[test]
    fn a_changed_spec_changes_the_config_hash_and_suspend_scales_to_zero() {
        let hash = |c: &Children| {
            c.stateful_set
                .spec
                .clone()
                .unwrap()
                .template
                .metadata
                .unwrap()
                .annotations
                .unwrap()[annotations::CONFIG_HASH]
                .clone()
        };
        let a = children(&pd(""), false);
        let b = children(&pd("  transform: {filter: 'record.x > 1'}\n"), false);
        assert_ne!(hash(&a), hash(&b));
        assert_eq!(hash(&a), hash(&children(&pd(""), false)));
        let suspended = children(&pd("  suspend: true\n"), false);
        assert_eq!(suspended.stateful_set.spec.unwrap().replicas, Some(0));
        assert!(
            suspended.pod_disruption_budget.is_none(),
            "no budget for no pods"
        );
        let annotations = a
            .stateful_set
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations
            .unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
    }
}
