//! The `pipeline-runtime` command line: `run`, `validate`, `cleanup`, `demo`. `pipeline-runtime` is this
//! module's `main`; `pipeline-operator runtime ...` runs the same commands from the operator's
//! binary, so that local mode needs one executable. Like a `main`, it reports with `anyhow`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    time::Duration,
};

use crate::{
    demo::{self, DemoOptions},
    runtime::{Runtime, RuntimeOptions},
};
use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use pipeline_crds::{
    contract::{env, paths, ports},
    valid::{AnyInstallation, validate_pipeline},
};
use tracing::info;

/// The Sluice stream runtime: source → filter → keyBy → window → aggregate → sink, on Kafka.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    /// Log line format.
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline until SIGTERM/SIGINT (then flush, commit, leave the group).
    Run(RunArgs),
    /// Check a manifest as the runtime would at start, without connecting to Kafka.
    Validate {
        /// PipelineDeployment manifests (`-` reads standard input); each may hold several
        /// documents.
        #[arg(short = 'f', long = "file", required = true)]
        files: Vec<PathBuf>,
    },
    /// Delete the pipeline's checkpoints (every snapshot under `<prefix>/<group>/` of
    /// `spec.checkpoint.storage`); the operator runs it as a Job when a pipeline with
    /// `deletionPolicy: delete` is deleted. Stop the pipeline first.
    Cleanup {
        /// The PipelineDeployment manifest.
        #[arg(short = 'f', long = "file", env = env::CONFIG, default_value = paths::CONFIG_PATH)]
        file: PathBuf,
        /// The manifest's text instead of a file (how the operator's cleanup Job passes it).
        #[arg(long, env = env::MANIFEST, hide_env_values = true)]
        manifest: Option<String>,
    },
    /// Write the pod's rack (its node's `spec.kafka.rack.topologyKey` label) where the runtime
    /// reads its `client.rack`; the operator runs it as the runtime pods' init container. A rack
    /// that cannot be read is reported and is not fatal (exit 0, no rack).
    Rack {
        /// The node label that names the rack.
        #[arg(long, default_value = "topology.kubernetes.io/zone")]
        topology_key: String,
        /// The pod's node (downward API `spec.nodeName`).
        #[arg(long, env = env::NODE_NAME)]
        node: Option<String>,
        /// Where to write the rack.
        #[arg(long, default_value = paths::RACK_FILE)]
        out: PathBuf,
        /// The directory of the Kubernetes API token and CA bundle.
        #[arg(long, default_value = paths::RACK_API_ACCESS_DIR)]
        api_access: PathBuf,
    },
    /// Run the IoT example on an embedded Kafka cluster and check its output against an offline
    /// computation.
    Demo {
        /// Sensor readings to generate.
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        /// Slots.
        #[arg(long, default_value_t = 4)]
        slots: usize,
        /// Source partitions.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Serve /metrics on this port while running.
        #[arg(long)]
        metrics_port: Option<u16>,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The PipelineDeployment manifest (in a pod: the mounted ConfigMap).
    #[arg(short = 'f', long = "file", env = env::CONFIG, default_value = paths::CONFIG_PATH)]
    file: PathBuf,
    /// Task slots in this process. Default: derived from --parallelism, --replicas and the
    /// pod's ordinal (as the operator sets them), else the manifest's resources.slotsPerPod.
    #[arg(long, env = env::SLOTS)]
    slots: Option<usize>,
    /// Slots of the whole pipeline (set by the operator).
    #[arg(long, env = env::PARALLELISM)]
    parallelism: Option<i32>,
    /// Pods of the pipeline (set by the operator).
    #[arg(long, env = env::REPLICAS)]
    replicas: Option<i32>,
    /// Scale file to follow (JSON: {"parallelism": N, "replicas": M} or {"slots": N}; in a pod,
    /// the ConfigMap's scale.json). It decides the slot count, above --slots, and is watched:
    /// a change starts or stops slots without restarting the process.
    #[arg(long, env = env::SCALE_FILE)]
    scale_file: Option<PathBuf>,
    /// Port of /metrics, /healthz, /readyz (0 = any free port).
    #[arg(long, env = env::METRICS_PORT, default_value_t = ports::RUNTIME_METRICS)]
    metrics_port: u16,
    /// Override the manifest's spec.kafka.bootstrapServers.
    #[arg(long)]
    bootstrap_servers: Option<String>,
    /// Pod name for metrics and client ids. Default: the host name.
    #[arg(long, env = env::POD_NAME)]
    pod: Option<String>,
    /// Time between offset commits.
    #[arg(long, default_value = "5s", value_parser = pipeline_crds::Duration::parse_std)]
    commit_interval: Duration,
    /// Extra time each record takes in its slot, spent sleeping and counted as busy time: it
    /// stands for a heavier per-record workload (an enrichment call, a model) so that a slot's
    /// capacity is small and autoscaling can be shown and tested with little CPU. Used by
    /// `pipeline-operator demo` and the autoscaling tests; leave it unset in production.
    /// Written as a number with `us`, `ms` or `s`, e.g. `1500us` or `2.5ms`.
    #[arg(long, env = env::SIMULATED_RECORD_COST, value_parser = parse_cost)]
    simulated_record_cost: Option<Duration>,
}

fn parse_cost(text: &str) -> Result<Duration, String> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1.0)
    } else {
        return Err(format!("{text:?}: give a unit, us, ms or s (e.g. 1500us)"));
    };
    match number.parse::<f64>() {
        Ok(v) if v.is_finite() && (0.0..=60.0 / scale).contains(&v) => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!("{text:?} is not a duration of at most a minute")),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(env::LOG)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    // Panics are logged like everything else (one JSON line in pods), with where they happened;
    // slots contain them and restart (see `runtime`).
    std::panic::set_hook(Box::new(|info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let thread = std::thread::current();
        let backtrace = std::backtrace::Backtrace::capture();
        tracing::error!(
            thread = thread.name().unwrap_or("unnamed"),
            %location,
            backtrace = %backtrace,
            "panic: {}",
            crate::slot::panic_message(info.payload())
        );
    }));
}

/// Runs the command line `args` (the first is the program name).
pub fn main_from<I, T>(args: I) -> anyhow::Result<ExitCode>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    init_logs(cli.log_format);
    match cli.command {
        Command::Validate { files } => {
            let verdicts = pipeline_crds::valid::FileVerdicts::of(&files);
            for line in &verdicts.valid {
                println!("{line}");
            }
            for line in &verdicts.invalid {
                eprintln!("{line}");
            }
            Ok(if verdicts.all_valid() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Run(args) => run(args),
        Command::Cleanup { file, manifest } => cleanup(&file, manifest.as_deref()),
        Command::Rack {
            topology_key,
            node,
            out,
            api_access,
        } => rack(&topology_key, node.as_deref(), &out, &api_access),
        Command::Demo {
            records,
            slots,
            partitions,
            metrics_port,
        } => {
            let options = DemoOptions {
                records,
                slots,
                partitions,
                metrics_addr: metrics_port.map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p))),
                ..DemoOptions::default()
            };
            println!(
                "Sluice demo: {} sensor readings from {} devices on {} partitions, {} slots, embedded Kafka.",
                options.records, options.devices, options.partitions, options.slots
            );
            let report = demo::run(&options)?;
            println!("sample output records:");
            for line in &report.sample {
                println!("  {line}");
            }
            println!(
                "{} windows emitted; {} malformed readings dead-lettered ({} expected); {} filtered by the CEL filter",
                report.windows, report.dead_letters, report.malformed, report.filtered_expected
            );
            println!(
                "processed {} readings in {:.2} s using {:.2} CPU-s: {:.0} records per CPU-second",
                report.produced,
                report.seconds,
                report.cpu_seconds,
                report.produced as f64 / report.cpu_seconds.max(0.001)
            );
            if report.mismatches.is_empty() {
                println!("every window matches the offline reference computation");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!(
                    "{} windows differ from the reference:",
                    report.mismatches.len()
                );
                for m in report.mismatches.iter().take(10) {
                    eprintln!("  {m}");
                }
                Ok(ExitCode::FAILURE)
            }
        }
    }
}

/// `pipeline-runtime rack`: the node's label into `out`; a failure is said and leaves no rack.
fn rack(
    topology_key: &str,
    node: Option<&str>,
    out: &std::path::Path,
    api_access: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    use crate::rack::{ApiServer, RackError, node_label};
    let found = node
        .ok_or(RackError::NoNode)
        .and_then(|node| Ok((node, ApiServer::in_cluster(api_access)?)))
        .and_then(|(node, api)| node_label(&api, node, topology_key));
    match found {
        Ok(rack) => {
            std::fs::write(out, &rack)?;
            info!(%rack, topology_key, "client.rack of this pod");
        }
        Err(error) => {
            // A stale rack from an earlier start must not survive a failed lookup.
            let _ = std::fs::remove_file(out);
            tracing::warn!(%error, "no rack: the runtime fetches from partition leaders");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn cleanup(file: &std::path::Path, manifest: Option<&str>) -> anyhow::Result<ExitCode> {
    let pd = match manifest {
        Some(text) => pipeline_crds::manifest::from_yaml(text, env::MANIFEST)?,
        None => pipeline_crds::manifest::from_file(file)?,
    };
    let namespace = std::env::var(env::NAMESPACE).unwrap_or_else(|_| "default".to_owned());
    match crate::cleanup::delete_checkpoints(&pd, &namespace)? {
        crate::cleanup::Cleaned::NoCheckpoints => {
            println!("no spec.checkpoint: nothing to delete");
        }
        crate::cleanup::Cleaned::Deleted { files, location } => {
            println!("deleted {files} snapshot files under {location}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let mut pd = pipeline_crds::manifest::from_file(&args.file)?;
    if let Some(servers) = args.bootstrap_servers {
        pd.spec.kafka.bootstrap_servers = servers;
    }
    let name = pd
        .metadata
        .name
        .clone()
        .context("the manifest has no metadata.name")?;
    if pd.metadata.namespace.is_none() {
        pd.metadata.namespace = std::env::var(env::NAMESPACE).ok();
    }
    let pipeline = validate_pipeline(&pd, &AnyInstallation)?;
    let pod = args.pod.unwrap_or_else(|| {
        std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "local".to_owned())
    });
    let derived = match (args.parallelism, args.replicas) {
        (Some(parallelism), Some(replicas)) => {
            let ordinal = pipeline_crds::contract::pod_ordinal(&pod)
                .with_context(|| format!("pod name {pod:?} ends in no ordinal"))?;
            Some(pipeline_crds::contract::slots_of_pod(
                parallelism,
                replicas,
                ordinal,
            ))
        }
        _ => None,
    };
    let from_file = match &args.scale_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the scale file {}", path.display()))?;
            let scale: pipeline_crds::contract::Scale = serde_json::from_str(&text)
                .with_context(|| format!("the scale file {} is not valid", path.display()))?;
            let slots = scale
                .slots_of(pipeline_crds::contract::pod_ordinal(&pod))
                .map_err(|reason| anyhow::anyhow!("the scale file {}: {reason}", path.display()))?;
            Some(usize::try_from(slots).unwrap_or(0))
        }
        None => None,
    };
    let slots = from_file
        .or(args.slots)
        .or_else(|| derived.and_then(|s| usize::try_from(s).ok()))
        .unwrap_or_else(|| usize::try_from(pd.spec.resources.slots_per_pod).unwrap_or(1));
    if slots == 0 && args.scale_file.is_none() {
        bail!("no slots for this pod (--slots, or --parallelism/--replicas and the pod ordinal)");
    }
    let runtime = Runtime::start(RuntimeOptions {
        pipeline,
        pod,
        slots,
        scale_file: args.scale_file,
        metrics_addr: Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, args.metrics_port))),
        commit_interval: args.commit_interval,
        simulated_record_cost: args.simulated_record_cost,
    })?;
    info!(pipeline = %name, slots, "runtime started");
    let signals = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT: stopping"),
        }
        Ok::<(), std::io::Error>(())
    })?;
    runtime.stop();
    runtime.join();
    Ok(ExitCode::SUCCESS)
}
