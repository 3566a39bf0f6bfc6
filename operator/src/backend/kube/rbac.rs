//! What the operator may do in the cluster, and why. The Helm chart's Roles and ClusterRoles
//! come from here (`pipeline-operator rbac --chart-files DIR` writes the rule files it includes;
//! a test fails when the checked-in copies drift), and the reconcile scenarios check every API
//! request the operator makes against these rules.
//!
//! Three sets, each as small as the code allows:
//! - [`namespaced`]: the PipelineDeployments and their children, in every watched namespace
//!   (a ClusterRole bound cluster-wide, or a Role per namespace of `watchNamespaces`).
//!   The children's rules derive from [`super::prune::managed_kinds`], the kinds `build()`
//!   returns: server-side apply (`create`, `patch`), prune (`list`, `delete`) and, for the
//!   kinds the controller watches, `watch`.
//! - [`cluster`]: the one cluster-scoped read, the PodMonitor CRD, by name.
//! - [`leader_election`]: the Lease in the operator's own namespace, by name.

use serde_json::{Value, json};

/// One RBAC rule and the reason the operator needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// API group (`""` = core).
    pub api_group: String,
    /// Resources (`kind/subresource` for subresources).
    pub resources: Vec<String>,
    /// Verbs.
    pub verbs: Vec<&'static str>,
    /// Object names the rule is limited to; empty = any.
    pub resource_names: Vec<String>,
    /// Why.
    pub reason: &'static str,
}

impl Rule {
    fn new(
        api_group: &str,
        resources: &[&str],
        verbs: &[&'static str],
        reason: &'static str,
    ) -> Self {
        Self {
            api_group: api_group.to_owned(),
            resources: resources.iter().map(|r| (*r).to_owned()).collect(),
            verbs: verbs.to_vec(),
            resource_names: Vec::new(),
            reason,
        }
    }

    fn named(mut self, name: &str) -> Self {
        self.resource_names = vec![name.to_owned()];
        self
    }

    /// The rule as a Kubernetes `PolicyRule`.
    pub fn policy_rule(&self) -> Value {
        let mut rule = json!({
            "apiGroups": [self.api_group],
            "resources": self.resources,
            "verbs": self.verbs,
        });
        if !self.resource_names.is_empty() {
            rule["resourceNames"] = json!(self.resource_names);
        }
        rule
    }

    /// Whether the rule allows `verb` on `resource` (named `name`, if known) of `api_group`.
    pub fn allows(&self, api_group: &str, resource: &str, verb: &str, name: Option<&str>) -> bool {
        self.api_group == api_group
            && self.resources.iter().any(|r| r == resource)
            && self.verbs.contains(&verb)
            && (self.resource_names.is_empty()
                || name.is_some_and(|n| self.resource_names.iter().any(|r| r == n)))
    }
}

/// Kinds the controller watches besides PipelineDeployments (its `owns` in `controller::run`;
/// keep the two in step), by plural.
pub const WATCHED_CHILDREN: &[&str] = &[
    "configmaps",
    "services",
    "statefulsets",
    "poddisruptionbudgets",
];

/// Rules in every namespace whose pipelines the operator runs.
pub fn namespaced() -> Vec<Rule> {
    let mut rules = vec![
        Rule::new(
            "sluice.dev",
            &["pipelinedeployments"],
            &["list", "watch", "patch"],
            "watch the resources it reconciles; add and remove the finalizer sluice.dev/cleanup of pipelines with deletionPolicy: delete (a merge patch of metadata.finalizers)",
        ),
        Rule::new(
            "sluice.dev",
            &["pipelinedeployments/status"],
            &["patch"],
            "report observedGeneration, conditions, parallelism and the autoscaler's state",
        ),
    ];
    for kind in super::prune::managed_kinds(true) {
        let mut verbs = vec!["get", "create", "patch", "list", "delete"];
        if WATCHED_CHILDREN.contains(&kind.plural.as_str()) {
            verbs.push("watch");
        }
        rules.push(Rule {
            api_group: kind.group.clone(),
            resources: vec![kind.plural.clone()],
            verbs,
            resource_names: Vec::new(),
            reason: "a child of a pipeline: read before its first apply (never applied over an object another owner controls), server-side apply (create, patch), prune by label (list, delete), watched when the controller owns it",
        });
    }
    rules.extend([
        Rule::new(
            "",
            &["pods"],
            &["list"],
            "find the runtime pods to scrape when the autoscaler reads metrics directly, and wait for them to stop before a cleanup",
        ),
        Rule::new(
            "batch",
            &["jobs"],
            &["get", "create", "delete"],
            "the cleanup Job that deletes a deleted pipeline's checkpoints as the pipeline's own identity (deletionPolicy: delete), deleted once it succeeded",
        ),
        Rule::new(
            "",
            &["secrets"],
            &["get"],
            "read SASL credentials and the CA bundle for the partition lookup (one by name, never listed)",
        ),
        Rule::new(
            "events.k8s.io",
            &["events"],
            &["create"],
            "an Event for every scaling action and error (events.k8s.io/v1, never updated)",
        ),
    ]);
    rules
}

/// The CRD the operator checks for, by name.
pub const POD_MONITOR_CRD: &str = "podmonitors.monitoring.coreos.com";

/// Cluster-scoped rules (also with `watchNamespaces`).
pub fn cluster() -> Vec<Rule> {
    vec![
        Rule::new(
            "apiextensions.k8s.io",
            &["customresourcedefinitions"],
            &["get"],
            "find out whether the Prometheus Operator's PodMonitor kind exists",
        )
        .named(POD_MONITOR_CRD),
    ]
}

/// Rules for the leader-election Lease `lease` in the operator's namespace. `create` cannot be
/// limited by name in RBAC.
pub fn leader_election(lease: &str) -> Vec<Rule> {
    vec![
        Rule::new(
            "coordination.k8s.io",
            &["leases"],
            &["get", "patch"],
            "leader election: read and renew its own Lease (server-side apply)",
        )
        .named(lease),
        Rule::new(
            "coordination.k8s.io",
            &["leases"],
            &["create"],
            "leader election: create the Lease the first time",
        ),
    ]
}

/// Whether `rules` allow `verb` on `resource` (named `name`) of `api_group`.
pub fn allows(
    rules: &[Rule],
    api_group: &str,
    resource: &str,
    verb: &str,
    name: Option<&str>,
) -> bool {
    rules
        .iter()
        .any(|r| r.allows(api_group, resource, verb, name))
}

/// `rules` as a YAML list, each rule preceded by its reason as a comment, for the chart's
/// `files/rbac/` (included into Roles and ClusterRoles).
pub fn rules_yaml(rules: &[Rule]) -> String {
    let mut text = String::from(
        "# Generated by `pipeline-operator rbac --chart-files` from operator/src/backend/kube/rbac.rs.\n# Do not edit: a test fails when this copy drifts.\n",
    );
    for rule in rules {
        text.push_str(&format!("# {}\n", rule.reason));
        let yaml = serde_norway::to_string(&vec![rule.policy_rule()]).expect("rules serialize");
        text.push_str(&yaml);
    }
    text
}

/// The chart's rule files: `(file name, contents)`. The Lease name is the chart's template
/// expression, so the chart renders these files with `tpl`.
pub fn chart_files() -> Vec<(&'static str, String)> {
    vec![
        ("namespaced.yaml", rules_yaml(&namespaced())),
        ("cluster.yaml", rules_yaml(&cluster())),
        (
            "leader-election.yaml",
            rules_yaml(&leader_election("{{ .Values.leaderElection.leaseName }}")),
        ),
    ]
}

/// The ClusterRole `name` with every rule but the Lease's (those of a cluster-wide install).
pub fn cluster_role(name: &str) -> Value {
    let rules: Vec<Value> = namespaced()
        .iter()
        .chain(cluster().iter())
        .map(Rule::policy_rule)
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": rules,
    })
}

/// The Role for the Lease `lease` in `namespace`.
pub fn lease_role(name: &str, namespace: &str, lease: &str) -> Value {
    let rules: Vec<Value> = leader_election(lease)
        .iter()
        .map(Rule::policy_rule)
        .collect();
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": namespace},
        "rules": rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_build_returns_can_be_applied_pruned_and_watched_when_owned() {
        let rules = namespaced();
        for kind in super::super::prune::managed_kinds(true) {
            for verb in ["create", "patch", "list", "delete"] {
                assert!(
                    allows(&rules, &kind.group, &kind.plural, verb, Some("x")),
                    "{verb} {}/{}",
                    kind.group,
                    kind.plural
                );
            }
            let watched = WATCHED_CHILDREN.contains(&kind.plural.as_str());
            assert_eq!(
                allows(&rules, &kind.group, &kind.plural, "watch", None),
                watched,
                "{}",
                kind.plural
            );
        }
    }

    #[test]
    fn no_rule_grants_wildcards_updates_pod_reads_or_lists_of_secrets() {
        let all: Vec<Rule> = namespaced()
            .into_iter()
            .chain(cluster())
            .chain(leader_election("sluice-operator"))
            .collect();
        for rule in &all {
            assert!(!rule.verbs.contains(&"*"), "{rule:?}");
            assert!(!rule.resources.iter().any(|r| r == "*"), "{rule:?}");
            assert!(
                !rule.verbs.contains(&"update"),
                "server-side apply only: {rule:?}"
            );
            assert!(rule.reason.len() > 10, "{rule:?}");
        }
        assert!(!allows(&all, "", "secrets", "list", None));
        assert!(!allows(&all, "", "pods", "get", Some("p")));
        // Children are read by name before their first apply (never applied over an object
        // another owner controls).
        assert!(allows(&all, "apps", "statefulsets", "get", Some("p")));
    }

    #[test]
    fn the_lease_and_the_crd_are_reachable_only_by_name() {
        let lease = leader_election("sluice-operator");
        assert!(allows(
            &lease,
            "coordination.k8s.io",
            "leases",
            "patch",
            Some("sluice-operator")
        ));
        assert!(!allows(
            &lease,
            "coordination.k8s.io",
            "leases",
            "patch",
            Some("other")
        ));
        assert!(allows(
            &lease,
            "coordination.k8s.io",
            "leases",
            "create",
            None
        ));
        let cluster = cluster();
        assert!(allows(
            &cluster,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "get",
            Some(POD_MONITOR_CRD)
        ));
        assert!(!allows(
            &cluster,
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "get",
            Some("other.example.com")
        ));
    }
}
