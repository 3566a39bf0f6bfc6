//! `pipeline-operator local`: one PipelineDeployment run on this machine through the same
//! validate → sizing → autoscaler → desired deployment → status steps as in the cluster, with the
//! local backend ([`crate::backend::local`]) running the runtime processes. A live status line
//! shows what the pipeline and the autoscaler do.

use std::{
    ffi::OsString,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use pipeline_crds::{
    FieldError, PipelineDeployment, PipelineDeploymentStatus, autoscaler::PrometheusSource,
    checkpoint::LocalStorage,
};

use crate::{
    autoscale::{
        observation::{Expectation, Sample, observe},
        source::{SharedSources, scrape_all},
    },
    backend::{
        BackendError,
        local::{Happening, LocalBackend, LocalSettings},
    },
    controller::wall_clock,
    group_state::{GroupState, KafkaGroupState},
    kafka::{KafkaPartitions, PartitionSource},
    metrics::OperatorMetrics,
    reconcile::{Inputs, ReconcileError, reconcile_pipeline},
};

/// How to run a pipeline locally.
#[derive(Clone, Debug)]
pub struct LocalOptions {
    /// The manifest.
    pub file: PathBuf,
    /// Overrides `spec.kafka.bootstrapServers`.
    pub bootstrap_servers: Option<String>,
    /// Read the autoscaler's metrics from this Prometheus (else: scrape the processes).
    pub prometheus: Option<String>,
    /// Working directory (config, scale file, logs, checkpoints, targets, status).
    pub dir: PathBuf,
    /// The runtime command (program and leading arguments; `run` is appended).
    pub runtime: Vec<OsString>,
    /// Where to write the Prometheus file-based service discovery targets (default
    /// `<dir>/targets.json`).
    pub targets_file: Option<PathBuf>,
    /// Extra environment of the runtime processes.
    pub env: Vec<(String, String)>,
}

/// Why local mode cannot run.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The manifest cannot be read.
    #[error("{0}")]
    Manifest(String),
    /// The spec cannot run.
    #[error("the pipeline cannot run:\n{}", .0.iter().map(|e| format!("  - {e}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<FieldError>),
    /// Kafka or a topic is not there.
    #[error("{0}")]
    Kafka(String),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// A reconcile failed.
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
}

/// The manifest as local mode runs it: brokers and Prometheus from the flags, a local checkpoint
/// directory instead of a volume, a namespace and uid when it has none.
pub fn prepare(options: &LocalOptions) -> Result<PipelineDeployment, LocalError> {
    let mut pd = pipeline_crds::manifest::from_file(&options.file)
        .map_err(|e| LocalError::Manifest(e.to_string()))?;
    localize(&mut pd, options);
    // Refused before any process starts (the reconcile validates the same way).
    pipeline_crds::valid::validate_pipeline(&pd, &pipeline_crds::valid::AnyInstallation)
        .map_err(|e| LocalError::Invalid(e.0))?;
    Ok(pd)
}

/// Applies `options`' overrides to `pd`.
pub fn localize(pd: &mut PipelineDeployment, options: &LocalOptions) {
    if let Some(servers) = &options.bootstrap_servers {
        pd.spec.kafka.bootstrap_servers.clone_from(servers);
    }
    if let (Some(url), Some(autoscaler)) = (&options.prometheus, pd.spec.autoscaler.as_mut()) {
        autoscaler.metrics.prometheus = Some(PrometheusSource { url: url.clone() });
    }
    if let Some(checkpoint) = pd.spec.checkpoint.as_mut()
        && checkpoint.storage.s3.is_none()
    {
        checkpoint.storage.volume = None;
        checkpoint.storage.local = Some(LocalStorage {
            path: options.dir.join("checkpoints").display().to_string(),
        });
    }
    pd.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    pd.metadata.uid.get_or_insert_with(|| "local".into());
    pd.metadata.generation.get_or_insert(1);
}

/// Checks that Kafka answers and that every topic the pipeline reads or writes exists.
pub fn check_topics(pd: &PipelineDeployment) -> Result<i32, LocalError> {
    let access = crate::kafka::KafkaAccess::new(&pd.spec, None, None);
    let mut outputs = access.clone();
    outputs.topics = output_topics(pd);
    let lookup = KafkaPartitions::default();
    let partitions = lookup.partitions(&access).map_err(|e| {
        LocalError::Kafka(format!(
            "cannot read the source topics from Kafka at {}: {e}",
            pd.spec.kafka.bootstrap_servers
        ))
    })?;
    for topic in &outputs.topics {
        let one = crate::kafka::KafkaAccess {
            properties: outputs.properties.clone(),
            topics: vec![topic.clone()],
            namespace: outputs.namespace.clone(),
        };
        lookup.partitions(&one).map_err(|e| {
            LocalError::Kafka(format!(
                "output topic {topic:?} on {}: {e} (create it first)",
                pd.spec.kafka.bootstrap_servers
            ))
        })?;
    }
    Ok(partitions)
}

fn output_topics(pd: &PipelineDeployment) -> Vec<String> {
    let spec = &pd.spec;
    let mut topics: Vec<String> = spec.sink.kafka.iter().map(|k| k.topic.clone()).collect();
    topics.extend(spec.dead_letter.iter().map(|d| d.topic.clone()));
    topics.extend(spec.late_data.iter().map(|d| d.topic.clone()));
    topics
}

/// One moment of a local run.
#[derive(Clone, Debug, Default)]
pub struct Tick {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// Slots running (status.parallelism).
    pub parallelism: i32,
    /// Processes running and wanted.
    pub processes: (usize, i32),
    /// Records per second arriving (end offsets over the last five seconds).
    pub arrival_rate: Option<f64>,
    /// Records per second consumed.
    pub processing_rate: Option<f64>,
    /// Records not consumed yet.
    pub lag: Option<f64>,
    /// Mean busy share of the slots over the last five seconds.
    pub busy: Option<f64>,
    /// Mean backpressured share.
    pub backpressure: Option<f64>,
    /// The autoscaler's last result and reason.
    pub decision: Option<(String, String)>,
    /// A new evaluation happened in this tick.
    pub evaluated: bool,
    /// Whether the autoscaler is on.
    pub autoscaled: bool,
    /// What happened (processes, Events).
    pub happenings: Vec<Happening>,
}

/// A pipeline running locally.
pub struct LocalRun {
    /// The pipeline, its status included.
    pub pd: PipelineDeployment,
    /// The processes.
    pub backend: Arc<LocalBackend>,
    sources: SharedSources,
    partitions: Arc<dyn PartitionSource>,
    group_state: Arc<dyn GroupState>,
    metrics: OperatorMetrics,
    /// Recent samples (about five seconds), the oldest first: rates are taken over that span.
    recent: Vec<Sample>,
    last_evaluation: Option<String>,
}

/// Seconds of samples the status line's rates span.
const RATE_SPAN: f64 = 5.5;

impl LocalRun {
    /// Starts nothing yet: the first [`Self::step`] starts the processes.
    pub fn new(pd: PipelineDeployment, options: &LocalOptions) -> Result<Self, LocalError> {
        let backend = Arc::new(LocalBackend::new(LocalSettings {
            dir: options.dir.clone(),
            runtime: options.runtime.clone(),
            targets_file: options
                .targets_file
                .clone()
                .unwrap_or_else(|| options.dir.join("targets.json")),
            env: options.env.clone(),
        })?);
        Ok(Self {
            pd,
            sources: SharedSources::new(Box::new(backend.endpoints())),
            backend,
            partitions: Arc::new(KafkaPartitions::default()),
            group_state: Arc::new(KafkaGroupState),
            metrics: OperatorMetrics::default(),
            recent: Vec::new(),
            last_evaluation: None,
        })
    }

    /// One reconcile and one look at the processes' metrics.
    pub async fn step(&mut self) -> Result<Tick, LocalError> {
        let inputs = Inputs {
            partitions: &self.partitions,
            group_state: &self.group_state,
            metrics: &self.metrics,
            metrics_sources: &self.sources,
            now: wall_clock(),
        };
        let reconciled = reconcile_pipeline(inputs, self.backend.as_ref(), &self.pd).await?;
        if let Some(status) = reconciled.status {
            self.pd.status = Some(status);
        }
        let urls = self.backend.endpoints().urls();
        let (namespace, name) = (
            self.pd.metadata.namespace.clone().unwrap_or_default(),
            self.pd.metadata.name.clone().unwrap_or_default(),
        );
        let sample = tokio::task::spawn_blocking(move || {
            let mut sample = scrape_all(&urls, &namespace, &name).ok()?;
            sample.at = wall_clock();
            Some(sample)
        })
        .await
        .ok()
        .flatten();
        Ok(self.tick(sample))
    }

    fn tick(&mut self, sample: Option<Sample>) -> Tick {
        let status: PipelineDeploymentStatus = self.pd.status.clone().unwrap_or_default();
        let autoscaler = status.autoscaler.as_ref();
        let evaluation = autoscaler
            .and_then(|a| a.last_evaluation_time.as_ref())
            .map(|t| t.0.to_string());
        let evaluated = evaluation.is_some() && evaluation != self.last_evaluation;
        self.last_evaluation = evaluation;
        let mut tick = Tick {
            at: wall_clock(),
            parallelism: status.parallelism.unwrap_or(0),
            processes: (self.backend.processes().len(), status.replicas.unwrap_or(0)),
            decision: autoscaler
                .and_then(|a| Some((a.result.clone()?, a.reason.clone().unwrap_or_default()))),
            evaluated,
            autoscaled: crate::autoscale::enabled(&self.pd.spec).is_some(),
            happenings: self.backend.take_happenings(),
            ..Tick::default()
        };
        if let Some(now) = &sample {
            tick.lag = Some(
                now.partitions
                    .values()
                    .map(|p| (p.end_offset - p.position).max(0.0))
                    .sum(),
            );
        }
        match sample {
            Some(s) => self.recent.push(s),
            None => self.recent.clear(),
        }
        // Rates and shares over the last five seconds, as the autoscaler computes them over its
        // window (a partial, reset or too short span shows as "-").
        if let Some(last) = self.recent.last() {
            let (at, reported) = (last.at, last.reported());
            self.recent.retain(|s| at - s.at <= RATE_SPAN);
            let expect = Expectation {
                partitions: reported,
                slots: 0,
                min_window: 0.5,
                max_age: f64::INFINITY,
            };
            if let Ok(o) = observe(&self.recent, at - RATE_SPAN, at, expect) {
                tick.arrival_rate = Some(o.arrival_rate);
                tick.processing_rate = Some(o.processing_rate);
                tick.busy = (o.slots > 0).then_some(o.busy_mean);
                tick.backpressure = (o.slots > 0).then_some(o.backpressure_mean);
            }
        }
        tick
    }
}

fn figure(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(v) if v >= 1e6 => format!("{:.2}M", v / 1e6),
        Some(v) if v >= 1e4 => format!("{:.0}k", v / 1e3),
        // `+ 0.0` turns -0 into 0.
        Some(v) => format!("{:.0}", v + 0.0),
    }
}

fn share(value: Option<f64>) -> String {
    value.map_or_else(|| "-".into(), |v| format!("{:.0}%", v * 100.0))
}

/// The status line of `tick`.
pub fn status_line(tick: &Tick) -> String {
    let decision = tick.decision.as_ref().map_or_else(
        || "no decision yet".to_owned(),
        |(r, why)| format!("{r}: {why}"),
    );
    format!(
        "parallelism {} | processes {}/{} | in {}/s out {}/s | lag {} | busy {} | backpressure {} | {decision}",
        tick.parallelism,
        tick.processes.0,
        tick.processes.1,
        figure(tick.arrival_rate),
        figure(tick.processing_rate),
        figure(tick.lag),
        share(tick.busy),
        share(tick.backpressure),
    )
}

/// A clock time for a line.
pub fn clock_time(at: f64) -> String {
    let seconds = at as i64;
    format!(
        "{:02}:{:02}:{:02}",
        (seconds / 3600) % 24,
        (seconds / 60) % 60,
        seconds % 60
    )
}

/// Runs `options`' pipeline until `stop` resolves, printing a status line every second; then
/// stops every process with a final checkpoint.
pub async fn run(
    options: &LocalOptions,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), LocalError> {
    let pd = prepare(options)?;
    let name = pd.metadata.name.clone().unwrap_or_default();
    if pd.spec.kafka.uses_msk_iam() {
        // The runtime processes sign in with the AWS credentials of this shell; this process
        // has no signer, so they check the topics and report the partitions themselves.
        eprintln!(
            "local mode: {name} signs in to {} with AWS_MSK_IAM; the runtime processes check the topics (see their logs); processes, logs and status in {}",
            pd.spec.kafka.bootstrap_servers,
            options.dir.display()
        );
    } else {
        let probe = pd.clone();
        let partitions = tokio::task::spawn_blocking(move || check_topics(&probe))
            .await
            .map_err(|e| LocalError::Kafka(e.to_string()))??;
        eprintln!(
            "local mode: {name} reads {partitions} partitions from {}; processes, logs and status in {}",
            pd.spec.kafka.bootstrap_servers,
            options.dir.display()
        );
    }
    let mut run = LocalRun::new(pd, options)?;
    let width = crate::terminal::stderr_width();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let started = Instant::now();
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let tick = match run.step().await {
            Ok(tick) => tick,
            Err(error) => {
                eprintln!("\nlocal mode: {error}; retrying");
                continue;
            }
        };
        if width.is_some() {
            eprint!("\r\x1b[K");
        }
        for h in &tick.happenings {
            eprintln!("{} {:<18} {}", clock_time(h.at), h.reason, h.note);
        }
        let line = format!(
            "{} {:>4.0}s  {}",
            clock_time(tick.at),
            started.elapsed().as_secs_f64(),
            status_line(&tick)
        );
        if let Some(width) = width {
            eprint!("{}", crate::terminal::fit(&line, width));
        } else if tick.evaluated
            || !tick.happenings.is_empty()
            || started.elapsed().as_secs().is_multiple_of(10)
        {
            eprintln!("{line}");
        }
    }
    eprintln!("\nlocal mode: stopping the processes (each takes a final checkpoint)");
    let backend = run.backend.clone();
    let grace = Duration::from_secs(
        u64::try_from(crate::desired::termination_grace_seconds(&run.pd)).unwrap_or(60),
    );
    tokio::task::spawn_blocking(move || backend.shutdown(grace))
        .await
        .map_err(|e| BackendError::Local(e.to_string()))?;
    Ok(())
}
