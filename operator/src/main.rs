//! `pipeline-operator`: the Sluice Kubernetes operator.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use pipeline_operator::backend::kube::pdb::DisruptionBudget;

/// The Sluice operator: runs and autoscales Kafka stream-processing pipelines on Kubernetes.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller: reconcile every PipelineDeployment of the cluster until SIGTERM. Uses
    /// the in-cluster service account, or the current kubeconfig context.
    Run(RunArgs),
    /// Print the PipelineDeployment CustomResourceDefinition as YAML (`kubectl apply -f -`).
    Crd,
    /// Run a PipelineDeployment on this machine without Kubernetes: the same sizing, autoscaler
    /// and in-place rescaling as in the cluster, with `pipeline-runtime` processes as pods. Shows
    /// a live status line; Ctrl-C stops every process with a final checkpoint.
    Local(LocalArgs),
    /// The autoscaling demo: an embedded Kafka, a load generator whose rate steps above one
    /// slot's capacity and falls again, and the IoT pipeline in local mode with the autoscaler on.
    /// Ends with a summary, a chart, and a check of every window against a reference computation
    /// (exit 0 only when all match).
    Demo(DemoArgs),
    /// Check the demo pipeline's output on an existing Kafka (e.g. the cluster end-to-end test,
    /// e2e/cluster/): every window of the input topic, computed here, must be in the output
    /// with the same values. Exits 0 only when all match. Internal: hidden from `--help`.
    #[command(hide = true)]
    DemoCheck {
        /// Kafka brokers.
        #[arg(long)]
        bootstrap_servers: String,
        /// Partitions of the input topic.
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// How long to wait for the last windows.
        #[arg(long, default_value = "2m", value_parser = pipeline_crds::Duration::parse_std)]
        timeout: std::time::Duration,
    },
    /// Run the stream runtime's own command line (`pipeline-operator runtime run -f ...` is
    /// `pipeline-runtime run -f ...`); local mode starts its processes this way. Internal:
    /// hidden from `--help`.
    #[command(disable_help_flag = true, hide = true)]
    Runtime {
        /// Arguments of `pipeline-runtime`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
    /// Run the autoscaler simulator: every load profile under Sluice's policy, a KEDA-style one
    /// and a busy-time-only one, and print the comparison (docs/autoscaler.md explains it).
    Simulate {
        /// One JSON object per (profile, policy) row instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this profile (step-2x, step-5x, spike, ramp, sine, hot-partition, slow-sink,
        /// metrics-outage, counter-reset).
        #[arg(long)]
        profile: Option<String>,
        /// Also print every evaluation of Sluice's policy (time, action, reason).
        #[arg(long)]
        trace: bool,
    },
    /// Check PipelineDeployment manifests: schema types, semantic rules, and features this release
    /// cannot run yet. Prints every problem with its field path; exits 1 if any.
    Validate {
        /// Manifest files (`-` reads standard input); each may hold several documents.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Print the operator's ClusterRole and leader-election Role (every permission it needs;
    /// operator/src/backend/kube/rbac.rs gives each one's reason), or write the Helm chart's rule
    /// files.
    Rbac {
        /// ClusterRole and Role name.
        #[arg(long, default_value = "sluice-operator")]
        name: String,
        /// Namespace of the leader-election Role (the operator's own).
        #[arg(long, default_value = "sluice-system")]
        namespace: String,
        /// Name of the leader-election Lease.
        #[arg(long, default_value = "sluice-operator")]
        lease_name: String,
        /// Write the chart's rule files (namespaced.yaml, cluster.yaml, leader-election.yaml)
        /// into this directory instead (helm/sluice-operator/files/rbac).
        #[arg(long)]
        chart_files: Option<PathBuf>,
    },
    /// Print, as YAML, every object the operator would create for a PipelineDeployment (dry run,
    /// no cluster needed). The partition count comes from Kafka (the manifest's brokers, without
    /// SASL credentials, which live in the cluster) unless --partitions gives one.
    Render {
        /// The manifest.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Partitions of the source topics (all together); overrides the Kafka lookup, for
        /// "what if the topic had N partitions".
        #[arg(long)]
        partitions: Option<i32>,
        /// Runtime image when the manifest sets none.
        #[arg(long, default_value = DEFAULT_RUNTIME_IMAGE)]
        image: String,
        /// Render a PodMonitor (the Prometheus Operator's CRD exists) instead of scrape
        /// annotations.
        #[arg(long)]
        pod_monitor: bool,
        /// The autoscaler's current decision (total slots), as `status.autoscaler.
        /// decidedParallelism` would hold it; bounds, partitions and even spread still apply.
        #[arg(long, value_parser = clap::value_parser!(i32).range(1..))]
        decision: Option<i32>,
    },
}

/// `pipeline-operator run`'s flags.
#[derive(clap::Args)]
struct RunArgs {
    /// Runtime image when a manifest sets none.
    #[arg(long, env = "SLUICE_RUNTIME_IMAGE", default_value = DEFAULT_RUNTIME_IMAGE)]
    image: String,
    /// This replica's name, in Events and as its leader-election identity (the Helm chart
    /// sets it from the pod name). Defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    instance: Option<String>,
    /// Take part in leader election, so that only one of several replicas reconciles.
    #[arg(long, env = "SLUICE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "sluice-operator")]
    lease_name: String,
    /// Namespace of the Lease (the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    /// Seconds the Lease stays valid without renewal (how long a crashed leader blocks a
    /// standby).
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Watch only these namespaces (comma-separated or repeated); the operator then needs
    /// only Roles in them. Default: every namespace.
    #[arg(long, env = "SLUICE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Prometheus URL for autoscalers whose `spec.autoscaler.metrics` names no source.
    #[arg(long, env = "SLUICE_DEFAULT_PROMETHEUS_URL")]
    default_prometheus_url: Option<String>,
    /// S3 bucket for the checkpoints of pipelines without `spec.checkpoint` (prefix
    /// `<namespace>/<name>`; credentials from the pods' identity, e.g. IRSA).
    #[arg(long, env = "SLUICE_DEFAULT_CHECKPOINT_BUCKET")]
    default_checkpoint_bucket: Option<String>,
    /// Region of the default checkpoint bucket.
    #[arg(long, env = "SLUICE_DEFAULT_CHECKPOINT_REGION")]
    default_checkpoint_region: Option<String>,
    /// Endpoint of the default checkpoint bucket (S3-compatible stores).
    #[arg(long, env = "SLUICE_DEFAULT_CHECKPOINT_ENDPOINT")]
    default_checkpoint_endpoint: Option<String>,
    /// The runtime pods' image pull policy. Default: Kubernetes' (`Always` for `:latest`,
    /// else `IfNotPresent`).
    #[arg(long, env = "SLUICE_RUNTIME_IMAGE_PULL_POLICY", value_enum)]
    runtime_image_pull_policy: Option<PullPolicy>,
    /// The runtime pods' disruption budget: at most this many pods (or `25%`) down by a
    /// voluntary disruption. Default: 1.
    #[arg(long, conflicts_with = "runtime_pdb_min_available", value_parser = pipeline_operator::backend::kube::pdb::DisruptionBudget::amount)]
    runtime_pdb_max_unavailable: Option<IntOrString>,
    /// The runtime pods' disruption budget as the pods (or `75%`) that must stay up instead.
    #[arg(long, value_parser = pipeline_operator::backend::kube::pdb::DisruptionBudget::amount)]
    runtime_pdb_min_available: Option<IntOrString>,
    /// Pod settings for pipelines that set none of their own, as a JSON `podTemplate` object:
    /// `nodeSelector`, `tolerations`, `imagePullSecrets` and `priorityClassName` are taken, each
    /// only where the pipeline's is empty (the chart's `runtime.podDefaults`).
    #[arg(long, env = "SLUICE_RUNTIME_POD_DEFAULTS", value_parser = parse_pod_defaults)]
    runtime_pod_defaults: Option<Box<pipeline_crds::pod_template::PodTemplateOverrides>>,
    /// ServiceAccount of runtime pods whose `spec.podTemplate.serviceAccountName` is unset
    /// (the chart's `runtime.serviceAccount`, e.g. annotated for IRSA).
    #[arg(long, env = "SLUICE_DEFAULT_SERVICE_ACCOUNT")]
    default_service_account: Option<String>,
    /// The namespaces `--default-service-account` exists in (comma-separated or repeated);
    /// pipelines elsewhere keep their namespace's `default` account. Default: every namespace.
    #[arg(
        long,
        env = "SLUICE_DEFAULT_SERVICE_ACCOUNT_NAMESPACES",
        value_delimiter = ','
    )]
    default_service_account_namespaces: Vec<String>,
    /// Runtime images pipelines may use: repositories (any tag or digest) or registry
    /// prefixes ending in `/` (comma-separated or repeated). Default: any image.
    #[arg(
        long = "allowed-image",
        env = "SLUICE_ALLOWED_IMAGES",
        value_delimiter = ','
    )]
    allowed_images: Vec<String>,
    /// Create a PodMonitor per pipeline where the Prometheus Operator is installed (`auto`),
    /// or never (`never`: scrape annotations only, e.g. under the chart's PodMonitor for
    /// every pipeline).
    #[arg(long, env = "SLUICE_POD_MONITORS", value_enum, default_value_t = PodMonitors::Auto)]
    pod_monitors: PodMonitors,
}

/// A container's `imagePullPolicy` (`--runtime-image-pull-policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
enum PullPolicy {
    /// Pull on every pod start.
    Always,
    /// Pull when the node does not have the image.
    IfNotPresent,
    /// Never pull.
    Never,
}

impl PullPolicy {
    fn as_kubernetes(self) -> &'static str {
        match self {
            Self::Always => "Always",
            Self::IfNotPresent => "IfNotPresent",
            Self::Never => "Never",
        }
    }
}

/// Whether the operator creates a PodMonitor per pipeline (`--pod-monitors`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum PodMonitors {
    /// One per pipeline where the Prometheus Operator's PodMonitor CRD exists.
    Auto,
    /// Never: the pods carry scrape annotations.
    Never,
}

#[derive(clap::Args)]
struct LocalArgs {
    /// The PipelineDeployment manifest.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Kafka brokers (overrides spec.kafka.bootstrapServers).
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Read the autoscaler's metrics from this Prometheus (it should scrape the targets file);
    /// without it, the operator scrapes the processes itself.
    #[arg(long)]
    prometheus: Option<String>,
    /// Working directory: config, scale file, logs, checkpoints, targets, status.json.
    /// Default: .sluice/<namespace>/<name>.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// A `pipeline-runtime` binary to run. Default: this executable's `runtime` command.
    #[arg(long)]
    runtime: Option<PathBuf>,
    /// Where to write Prometheus file-based service discovery targets. Default:
    /// <dir>/targets.json.
    #[arg(long)]
    targets_file: Option<PathBuf>,
    /// Extra environment of the runtime processes, NAME=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

#[derive(clap::Args)]
struct DemoArgs {
    /// How long the load runs (the steps scale to fit).
    #[arg(long, default_value = "2m", value_parser = pipeline_crds::Duration::parse_std)]
    duration: std::time::Duration,
    /// Peak input rate, records per second (the low steps are a fifth of it).
    #[arg(long, default_value_t = 2_500.0)]
    rate: f64,
    /// Partitions of the source topic.
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(i32).range(1..=256))]
    partitions: i32,
    /// Capacity of one slot, records per second (the demo gives each record this much
    /// simulated work, so scaling is visible with little CPU).
    #[arg(long, default_value_t = 1_000.0)]
    slot_capacity: f64,
    /// Where to write the chart and the run's files. Default: .sluice/demo.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// `--runtime-pod-defaults`: a `podTemplate` as JSON, judged as strictly as a manifest.
fn parse_pod_defaults(
    text: &str,
) -> Result<Box<pipeline_crds::pod_template::PodTemplateOverrides>, String> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let unknown = pipeline_crds::strict::unknown_fields(
        &serde_json::json!({"spec": {"podTemplate": value.clone()}}),
    );
    if !unknown.is_empty() {
        return Err(format!("unknown field(s): {}", unknown.join(", ")));
    }
    serde_json::from_value(value)
        .map(Box::new)
        .map_err(|e| e.to_string())
}

fn parse_env(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

/// The command that starts a runtime process: `--runtime`, else this executable's `runtime`.
fn runtime_command(runtime: Option<PathBuf>) -> anyhow::Result<Vec<std::ffi::OsString>> {
    Ok(match runtime {
        Some(path) => vec![path.into_os_string()],
        None => vec![
            std::env::current_exe()
                .context("finding this executable")?
                .into_os_string(),
            "runtime".into(),
        ],
    })
}

/// Local mode and the demo keep the terminal for their status line: the operator's own log goes
/// to `<dir>/operator.log`.
fn file_logs(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join("operator.log");
    let file =
        std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    Ok(())
}

/// The runtime image matching this operator's version.
const DEFAULT_RUNTIME_IMAGE: &str = concat!(
    "ghcr.io/sluice-dev/pipeline-runtime:",
    env!("CARGO_PKG_VERSION")
);

fn main() -> anyhow::Result<ExitCode> {
    match Cli::parse().command {
        Command::Runtime { args } => {
            pipeline_runtime::cli::main_from(std::iter::once("pipeline-runtime".into()).chain(args))
        }
        Command::Local(args) => local(args),
        Command::Demo(args) => demo(args),
        Command::DemoCheck {
            bootstrap_servers,
            partitions,
            timeout,
        } => demo_check(&bootstrap_servers, partitions, timeout),
        Command::Run(args) => run_controller(args),
        Command::Render {
            file,
            partitions,
            image,
            pod_monitor,
            decision,
        } => {
            let environment = pipeline_operator::backend::kube::children::Environment {
                default_image: image,
                image_pull_policy: None,
                disruption_budget: Default::default(),
                pod_monitor_crd: pod_monitor,
            };
            render(&file, partitions, decision, &environment)
        }
        Command::Rbac {
            name,
            namespace,
            lease_name,
            chart_files,
        } => rbac(&name, &namespace, &lease_name, chart_files.as_deref()),
        Command::Simulate {
            json,
            profile,
            trace,
        } => simulate(json, profile.as_deref(), trace),
        Command::Crd => {
            print!("{}", pipeline_crds::crd_yaml());
            Ok(ExitCode::SUCCESS)
        }
        Command::Validate { files } => Ok(validate(&files)),
    }
}

/// `pipeline-operator local`.
fn local(args: LocalArgs) -> anyhow::Result<ExitCode> {
    let pd = match pipeline_crds::manifest::from_file(&args.file) {
        Ok(pd) => pd,
        Err(error) => {
            eprintln!("local mode: {error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let dir = args.dir.unwrap_or_else(|| {
        PathBuf::from(".sluice")
            .join(pd.metadata.namespace.as_deref().unwrap_or("default"))
            .join(pd.metadata.name.as_deref().unwrap_or("pipeline"))
    });
    file_logs(&dir)?;
    let options = pipeline_operator::local::LocalOptions {
        file: args.file,
        bootstrap_servers: args.bootstrap_servers,
        prometheus: args.prometheus,
        dir,
        runtime: runtime_command(args.runtime)?,
        targets_file: args.targets_file,
        env: args.env,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(pipeline_operator::local::run(
        &options,
        pipeline_operator::controller::signal(),
    )) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(error) => {
            eprintln!("local mode: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `pipeline-operator demo`.
fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(".sluice/demo"));
    file_logs(&dir)?;
    let options = pipeline_operator::demo::DemoOptions {
        duration: args.duration,
        peak_rate: args.rate,
        partitions: args.partitions,
        slot_capacity: args.slot_capacity,
        dir,
        runtime: runtime_command(None)?,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    match runtime.block_on(pipeline_operator::demo::run(
        &options,
        pipeline_operator::controller::signal(),
    )) {
        Ok(report) if report.exact() => Ok(ExitCode::SUCCESS),
        Ok(_) => Ok(ExitCode::FAILURE),
        Err(error) => {
            eprintln!("demo: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `pipeline-operator demo-check`.
fn demo_check(
    bootstrap_servers: &str,
    partitions: i32,
    timeout: std::time::Duration,
) -> anyhow::Result<ExitCode> {
    match pipeline_operator::demo::check(bootstrap_servers, partitions, timeout) {
        Ok(check) => {
            println!(
                "{} input records, {} windows expected, {} mismatches",
                check.input_records,
                check.expected_windows,
                check.mismatches.len()
            );
            for m in check.mismatches.iter().take(20) {
                println!("  {m}");
            }
            Ok(
                if check.mismatches.is_empty() && check.expected_windows > 0 {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                },
            )
        }
        Err(error) => {
            eprintln!("demo-check: {error}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The comma-separated or repeated values of a list flag, trimmed, without empty ones.
fn listed(values: Vec<String>) -> Vec<String> {
    values
        .into_iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The controller's settings from `pipeline-operator run`'s flags.
fn controller_settings(args: RunArgs) -> pipeline_operator::controller::Settings {
    let instance = args
        .instance
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("sluice-operator-{}", std::process::id()));
    let default_checkpoint = args
        .default_checkpoint_bucket
        .filter(|b| !b.is_empty())
        .map(|bucket| pipeline_crds::checkpoint::S3Storage {
            bucket,
            prefix: None,
            region: args.default_checkpoint_region.filter(|r| !r.is_empty()),
            endpoint: args.default_checkpoint_endpoint.filter(|e| !e.is_empty()),
            credentials_secret: None,
        });
    pipeline_operator::controller::Settings {
        default_image: args.image,
        lease: args
            .leader_election
            .then(|| pipeline_operator::leader::LeaseSettings {
                name: args.lease_name,
                namespace: args.lease_namespace,
                identity: instance.clone(),
                duration_seconds: args.lease_duration_seconds,
                grace_seconds: (args.lease_duration_seconds / 3).max(1),
            }),
        instance,
        pod_monitors: args.pod_monitors == PodMonitors::Auto,
        namespaces: listed(args.watch_namespaces),
        install: pipeline_operator::install::Install {
            default_prometheus_url: args.default_prometheus_url.filter(|u| !u.is_empty()),
            default_checkpoint,
            default_service_account: args.default_service_account.filter(|a| !a.is_empty()).map(
                |name| pipeline_operator::install::DefaultServiceAccount {
                    name,
                    namespaces: listed(args.default_service_account_namespaces),
                },
            ),
            runtime_image_pull_policy: args
                .runtime_image_pull_policy
                .map(|p| p.as_kubernetes().to_owned()),
            runtime_pod_defaults: args.runtime_pod_defaults.map(|d| *d),
            runtime_disruption_budget: match (
                args.runtime_pdb_max_unavailable,
                args.runtime_pdb_min_available,
            ) {
                (_, Some(n)) => DisruptionBudget::MinAvailable(n),
                (Some(n), None) => DisruptionBudget::MaxUnavailable(n),
                (None, None) => DisruptionBudget::default(),
            },
            allowed_images: listed(args.allowed_images),
        },
    }
}

/// `pipeline-operator run`: the controller, with its HTTP endpoints, until SIGTERM.
fn run_controller(args: RunArgs) -> anyhow::Result<ExitCode> {
    let settings = controller_settings(args);
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .context("connecting to the Kubernetes API")?;
        let metrics = std::sync::Arc::new(pipeline_operator::metrics::OperatorMetrics::default());
        let readiness = std::sync::Arc::new(pipeline_operator::http::Readiness::default());
        let addr = std::net::SocketAddr::from((
            [0, 0, 0, 0],
            pipeline_crds::contract::ports::OPERATOR_HTTP,
        ));
        let endpoints = tokio::spawn(pipeline_operator::http::serve(
            addr,
            metrics.clone(),
            readiness.clone(),
        ));
        let result = pipeline_operator::controller::run(
            client,
            settings,
            std::sync::Arc::new(pipeline_operator::kafka::KafkaPartitions::default()),
            metrics,
            readiness,
        )
        .await;
        endpoints.abort();
        result.context("the controller stopped")
    })?;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `pipeline-operator render`.
fn render(
    file: &std::path::Path,
    partitions: Option<i32>,
    decision: Option<i32>,
    environment: &pipeline_operator::backend::kube::children::Environment,
) -> anyhow::Result<ExitCode> {
    let pd = pipeline_crds::manifest::from_file(file)?;
    let partitions = match partitions {
        Some(p) => p,
        None if pd.spec.kafka.uses_msk_iam() => {
            eprintln!(
                "{}: spec.kafka.sasl.mechanism is AWS_MSK_IAM and the operator does not sign in to Kafka itself; pass --partitions N",
                file.display()
            );
            return Ok(ExitCode::FAILURE);
        }
        None => {
            use pipeline_operator::kafka::{KafkaAccess, KafkaPartitions, PartitionSource};
            let access = KafkaAccess::new(&pd.spec, None, None);
            match KafkaPartitions::default().partitions(&access) {
                Ok(p) => {
                    eprintln!("{}: {p} source partitions (from Kafka)", file.display());
                    p
                }
                Err(e) => {
                    eprintln!(
                        "{}: cannot read the partition count from Kafka ({e}); pass --partitions N",
                        file.display()
                    );
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
    };
    match pipeline_operator::render::render(&pd, partitions, decision, environment) {
        Ok(yaml) => {
            print!("{yaml}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `pipeline-operator rbac`.
fn rbac(
    name: &str,
    namespace: &str,
    lease_name: &str,
    chart_files: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    use pipeline_operator::backend::kube::rbac;
    if let Some(dir) = chart_files {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        for (file, text) in rbac::chart_files() {
            let path = dir.join(file);
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    print!(
        "{}---\n{}",
        serde_norway::to_string(&rbac::cluster_role(name))?,
        serde_norway::to_string(&rbac::lease_role(name, namespace, lease_name))?
    );
    Ok(ExitCode::SUCCESS)
}

/// `pipeline-operator simulate`.
fn simulate(json: bool, profile: Option<&str>, trace: bool) -> anyhow::Result<ExitCode> {
    use pipeline_operator::autoscale::simulate;
    let profiles: Vec<simulate::Profile> = simulate::profiles()
        .into_iter()
        .filter(|p| profile.is_none_or(|name| p.name == name))
        .collect();
    if profiles.is_empty() {
        let names: Vec<&str> = simulate::profiles().iter().map(|p| p.name).collect();
        eprintln!(
            "no profile named {}; profiles: {}",
            profile.unwrap_or_default(),
            names.join(", ")
        );
        return Ok(ExitCode::FAILURE);
    }
    let spec = pipeline_crds::autoscaler::AutoscalerSpec::default();
    let mut rows = Vec::new();
    for p in &profiles {
        let mut ours = simulate::Sluice::new(&spec);
        rows.push(simulate::run(p, &mut ours));
        if trace {
            for (t, action, reason) in &ours.log {
                eprintln!("{} t={t:>5.0}s {:<9} {reason}", p.name, action.word());
            }
        }
        rows.push(simulate::run(p, &mut simulate::Keda::default()));
        rows.push(simulate::run(p, &mut simulate::BusyTime::default()));
    }
    let mut text = String::new();
    if json {
        for row in &rows {
            text += &serde_json::to_string(row)?;
            text.push('\n');
        }
    } else {
        text = simulate::table(&rows);
    }
    // A closed pipe (`| head`) is not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// `pipeline-operator validate`: every pipeline of each file checked as the operator would
/// (without the installation's rules); failure when any is not valid.
fn validate(files: &[PathBuf]) -> ExitCode {
    let verdicts = pipeline_crds::valid::FileVerdicts::of(files);
    for line in &verdicts.valid {
        println!("{line}");
    }
    for line in &verdicts.invalid {
        eprintln!("{line}");
    }
    if verdicts.all_valid() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
