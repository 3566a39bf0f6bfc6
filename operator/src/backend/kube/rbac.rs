//! What the operator may do in the cluster, and why: one list, from which the Helm chart's
//! ClusterRole is generated (`pipeline-operator rbac`).

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One rule of the operator's ClusterRole.
#[derive(Clone, Copy, Debug)]
pub struct Permission {
    /// API group (`""` = core).
    pub api_group: &'static str,
    /// Resources.
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
    /// Why the operator needs them.
    pub reason: &'static str,
}

/// Verbs of server-side apply plus garbage collection of children no longer wanted.
const MANAGE: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];

/// Every permission the operator needs.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        api_group: "sluice.dev",
        resources: &["pipelinedeployments"],
        verbs: &["get", "list", "watch"],
        reason: "watch the resources it reconciles (no finalizer: deletion is left to owner references)",
    },
    Permission {
        api_group: "sluice.dev",
        resources: &["pipelinedeployments/status"],
        verbs: &["get", "patch"],
        reason: "report observedGeneration, conditions, parallelism and the autoscaler's state",
    },
    Permission {
        api_group: "sluice.dev",
        resources: &["pipelinedeployments/scale"],
        verbs: &["get"],
        reason: "read the scale subresource that kubectl scale and HPA-style tools write",
    },
    Permission {
        api_group: "",
        resources: &["configmaps", "services"],
        verbs: MANAGE,
        reason: "the runtime config and the pods' Services (server-side apply, delete when unwanted)",
    },
    Permission {
        api_group: "apps",
        resources: &["statefulsets"],
        verbs: MANAGE,
        reason: "the runtime pods",
    },
    Permission {
        api_group: "policy",
        resources: &["poddisruptionbudgets"],
        verbs: MANAGE,
        reason: "at most one runtime pod down by voluntary disruption",
    },
    Permission {
        api_group: "monitoring.coreos.com",
        resources: &["podmonitors"],
        verbs: MANAGE,
        reason: "scrape configuration when the Prometheus Operator is installed",
    },
    Permission {
        api_group: "apiextensions.k8s.io",
        resources: &["customresourcedefinitions"],
        verbs: &["get", "list"],
        reason: "find out whether the PodMonitor CRD exists",
    },
    Permission {
        api_group: "",
        resources: &["pods"],
        verbs: &["get", "list", "watch"],
        reason: "count ready runtime pods for status; scrape their metrics when no Prometheus is configured",
    },
    Permission {
        api_group: "",
        resources: &["secrets"],
        verbs: &["get"],
        reason: "read SASL credentials and the CA bundle to look up the source topic's partition count",
    },
    Permission {
        api_group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create"],
        reason: "an Event for every scaling action and error (events.k8s.io/v1, never updated)",
    },
    Permission {
        api_group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "patch"],
        reason: "leader election, so two operator replicas never reconcile at once (the Lease is renewed by server-side apply)",
    },
];

/// The ClusterRole of `name`; each rule's reason is an annotation `sluice.dev/rbac.<group>.<resource>`.
pub fn cluster_role(name: &str) -> Value {
    let rules: Vec<Value> = PERMISSIONS
        .iter()
        .map(|p| {
            json!({
                "apiGroups": [p.api_group],
                "resources": p.resources,
                "verbs": p.verbs,
            })
        })
        .collect();
    let reasons: BTreeMap<String, &str> = PERMISSIONS
        .iter()
        .map(|p| {
            let group = if p.api_group.is_empty() {
                "core"
            } else {
                p.api_group
            };
            (
                format!(
                    "sluice.dev/rbac.{group}.{}",
                    p.resources[0].replace('/', ".")
                ),
                p.reason,
            )
        })
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "annotations": reasons},
        "rules": rules,
    })
}

/// Whether the rules allow `verb` on `resource` of `api_group`.
pub fn allows(api_group: &str, resource: &str, verb: &str) -> bool {
    PERMISSIONS.iter().any(|p| {
        p.api_group == api_group && p.resources.contains(&resource) && p.verbs.contains(&verb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_build_creates_can_be_applied_and_deleted() {
        for (group, resource) in [
            ("", "configmaps"),
            ("", "services"),
            ("apps", "statefulsets"),
            ("policy", "poddisruptionbudgets"),
            ("monitoring.coreos.com", "podmonitors"),
        ] {
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(allows(group, resource, verb), "{verb} {group}/{resource}");
            }
        }
        assert!(allows("sluice.dev", "pipelinedeployments/status", "patch"));
        assert!(allows("coordination.k8s.io", "leases", "patch"));
        assert!(allows("events.k8s.io", "events", "create"));
        assert!(
            !allows("", "secrets", "list"),
            "secrets are read one by one, never listed"
        );
    }

    #[test]
    fn every_rule_says_why() {
        for p in PERMISSIONS {
            assert!(p.reason.len() > 10, "{p:?}");
        }
        let role = cluster_role("sluice-operator");
        assert_eq!(role["rules"].as_array().unwrap().len(), PERMISSIONS.len());
    }
}
