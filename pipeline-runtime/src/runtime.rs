//! One runtime process: checks the spec, prepares the topics it needs, runs the slots under a
//! supervisor that restarts a failed slot with backoff (never the whole process), and serves the
//! metrics endpoints.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use pipeline_crds::valid::ValidPipeline;
use tracing::{error, info, warn};

use crate::{
    enrich::{Admission, Tables, checkpoint::TableCheckpointConfig, reader::ReaderConfig},
    http::{self, Health},
    metrics::{Metrics, SlotLabels, TableLabels, TopicLabels},
    plan::Plan,
    slot::{self, Quarantine, SlotConfig, SlotError},
    topics::{self, TopicsError},
};

/// What to run.
#[derive(Clone, Debug)]
pub struct RuntimeOptions {
    /// The pipeline, validated ([`pipeline_crds::valid::validate_pipeline`]).
    pub pipeline: ValidPipeline,
    /// This pod's name (labels metrics and client ids).
    pub pod: String,
    /// Slots (threads, group members) of this process at the start.
    pub slots: usize,
    /// The scale file to watch: when it changes, slots are started or stopped to match it
    /// without restarting the process.
    pub scale_file: Option<std::path::PathBuf>,
    /// Where to serve `/metrics`; `None` = no HTTP server.
    pub metrics_addr: Option<SocketAddr>,
    /// Time between offset commits of a pipeline that does not commit with its checkpoints.
    pub commit_interval: Duration,
    /// Extra busy time per record (a stand-in for heavier work; demos and tests only).
    pub simulated_record_cost: Option<Duration>,
}

/// Why the runtime refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The metrics port could not be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A running runtime.
pub struct Runtime {
    stop: Arc<AtomicBool>,
    supervisor: Option<JoinHandle<()>>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    metrics_addr: Option<SocketAddr>,
    _http: Option<tokio::runtime::Runtime>,
}

impl Runtime {
    /// Starts. Kafka being unreachable is not an error here: the runtime waits for it, logs, and
    /// reports not-ready.
    pub fn start(options: RuntimeOptions) -> Result<Self, RuntimeError> {
        let pipeline = &options.pipeline;
        let group = pipeline_crds::contract::consumer_group(
            pipeline.spec(),
            pipeline.namespace(),
            pipeline.name(),
        );
        let metrics = Arc::new(Metrics::new());
        let health = Arc::new(Health::new(options.slots));
        let stop = Arc::new(AtomicBool::new(false));

        let (http, metrics_addr) = match options.metrics_addr {
            None => (None, None),
            Some(addr) => {
                let rt = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("sluice-http")
                    .enable_all()
                    .build()
                    .map_err(|source| RuntimeError::Http { addr, source })?;
                let listener = rt
                    .block_on(http::bind(addr))
                    .map_err(|source| RuntimeError::Http { addr, source })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| RuntimeError::Http { addr, source })?;
                rt.spawn(http::serve(listener, metrics.clone(), health.clone()));
                info!(%bound, "serving /metrics, /healthz, /readyz");
                (Some(rt), Some(bound))
            }
        };

        let supervisor = {
            let (metrics, health, stop) = (metrics.clone(), health.clone(), stop.clone());
            std::thread::Builder::new()
                .name("sluice-supervisor".into())
                .spawn(move || supervise(options, group, metrics, health, stop))
                .expect("spawning a thread")
        };
        Ok(Self {
            stop,
            supervisor: Some(supervisor),
            metrics,
            health,
            metrics_addr,
            _http: http,
        })
    }

    /// The bound metrics address.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The metrics registry.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether every slot is running.
    pub fn is_ready(&self) -> bool {
        self.health.is_ready()
    }

    /// Asks every slot to finish: flush, commit, leave the group.
    pub fn stop(&self) {
        self.health.stopping();
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits until every slot has stopped.
    pub fn join(mut self) {
        if let Some(handle) = self.supervisor.take() {
            let _ = handle.join();
        }
    }
}

fn supervise(
    options: RuntimeOptions,
    group: String,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
) {
    let bootstrap = options.pipeline.spec().kafka.bootstrap_servers.clone();
    report_rack(options.pipeline.spec());
    let Some(partitions) = prepare_topics(&options, &group, &metrics, &health, &stop) else {
        return;
    };
    let plan = Arc::new(
        Plan::new(&options.pipeline, &group, partitions)
            .with_bootstrap_servers(&bootstrap)
            .with_commit_interval(options.commit_interval),
    );
    let quarantine = Arc::new(Quarantine::default());
    let Some((tables, readers)) = load_tables(&options, &plan, &metrics, &health, &stop) else {
        return;
    };
    let start = |index: usize| -> (Arc<AtomicBool>, JoinHandle<()>) {
        let config = SlotConfig {
            plan: plan.clone(),
            labels: slot_labels(&options, index),
            metrics: metrics.clone(),
            simulated_record_cost: options.simulated_record_cost,
            watch: health.watch(index),
            quarantine: quarantine.clone(),
            tables: tables.clone(),
        };
        let own_stop = Arc::new(AtomicBool::new(false));
        let (health, slot_stop) = (health.clone(), own_stop.clone());
        let handle = std::thread::Builder::new()
            .name(format!("sluice-slot-{index}"))
            // The CEL filter is compiled and evaluated here; its parser recurses deeply.
            .stack_size(pipeline_crds::validate::CEL_PARSER_STACK)
            .spawn(move || {
                let labels = &config.labels;
                // Every line the slot logs carries these (the librdkafka log callback, which
                // runs on librdkafka's own threads, names its slot itself).
                let _span = tracing::info_span!(
                    "slot",
                    pipeline = %labels.pipeline,
                    namespace = %labels.namespace,
                    pod = %labels.pod,
                    slot = %labels.slot
                )
                .entered();
                run_slot_with_restarts(&config, &health, &slot_stop);
            })
            .expect("spawning a thread");
        (own_stop, handle)
    };
    let ordinal = pipeline_crds::contract::pod_ordinal(&options.pod);
    let mut watched = options
        .scale_file
        .as_ref()
        .map(|path| ScaleWatch::new(path.clone()));
    let mut slots: Vec<(Arc<AtomicBool>, JoinHandle<()>)> = Vec::new();
    let mut target = options.slots;
    loop {
        if slots.is_empty() && target > 0 {
            info!(slots = target, "starting slots");
        } else if slots.len() != target {
            info!(from = slots.len(), to = target, "slots rescaled in place");
        }
        health.set_slots(target);
        while slots.len() < target {
            slots.push(start(slots.len()));
        }
        // Leaving slots stop together (one rebalance): each checkpoints and hands its partitions
        // over as it leaves the group.
        let leaving: Vec<_> = slots.drain(target..).collect();
        for (flag, _) in &leaving {
            flag.store(true, Ordering::SeqCst);
        }
        let first_leaving = target;
        for (index, (_, handle)) in leaving.into_iter().enumerate() {
            let _ = handle.join();
            metrics.forget_slot(&slot_labels(&options, first_leaving + index));
        }
        if crate::sleep_unless_stopped(SCALE_POLL, &stop) {
            break;
        }
        if let Admission::Stopped(reason) = tables.admits(std::time::Instant::now()) {
            health.set_blocked(Some(reason));
        }
        tables.prune_to_open();
        if let Some(watch) = watched.as_mut()
            && let Some(scale) = watch.changed()
        {
            match scale.slots_of(ordinal) {
                Ok(slots) => target = usize::try_from(slots).unwrap_or(0),
                Err(reason) => warn!(%reason, "scale file ignored"),
            }
        }
    }
    for (flag, _) in &slots {
        flag.store(true, Ordering::SeqCst);
    }
    for (_, handle) in slots {
        let _ = handle.join();
    }
    for reader in readers {
        let _ = reader.join();
    }
}

/// Starts a reader per reference table (`spec.enrich`) and waits until each has loaded its
/// topic up to the end offsets it had at start: nothing is processed before. Meanwhile
/// `/readyz` says which table loads (or why it cannot). `None` when stopped first.
fn load_tables(
    options: &RuntimeOptions,
    plan: &Plan,
    metrics: &Arc<Metrics>,
    health: &Health,
    stop: &Arc<AtomicBool>,
) -> Option<(Arc<Tables>, Vec<JoinHandle<()>>)> {
    let tables = Arc::new(Tables::new(&plan.enrich));
    let started = std::time::Instant::now();
    let readers: Vec<JoinHandle<()>> = tables
        .iter()
        .map(|table| {
            let config = ReaderConfig {
                consumer: plan.consumer.for_client("sluice-table"),
                sign_in: plan.consumer.sign_in().clone(),
                producer: plan.producer.for_client("sluice-table"),
                dead_letter_topic: plan.dead_letter_topic.clone(),
                metrics: metrics.clone(),
                labels: TableLabels {
                    pipeline: options.pipeline.name().to_owned(),
                    namespace: options.pipeline.namespace().to_owned(),
                    pod: options.pod.clone(),
                    table: table.plan.name.clone(),
                },
                checkpoints: plan.checkpoint.as_ref().and_then(|c| {
                    let tables = c.tables.as_ref()?;
                    Some(TableCheckpointConfig {
                        location: tables.location.clone(),
                        group: plan.group.clone(),
                        writer: options.pod.clone(),
                        interval: c.interval,
                        retain: tables.retain,
                    })
                }),
            };
            crate::enrich::reader::spawn(table.clone(), config, stop.clone())
        })
        .collect();
    let mut said = None;
    loop {
        match tables.admits(started) {
            Admission::Join => break,
            Admission::Wait(why) | Admission::Stopped(why) => {
                if said.as_ref() != Some(&why) {
                    info!(%why, "waiting for the reference tables");
                    said = Some(why.clone());
                }
                health.set_blocked(Some(why));
            }
        }
        if crate::sleep_unless_stopped(Duration::from_millis(100), stop) {
            for reader in readers {
                let _ = reader.join();
            }
            return None;
        }
    }
    if !tables.is_empty() {
        info!("the reference tables are loaded");
        health.set_blocked(None);
    }
    Some((tables, readers))
}

/// How often the scale file is read.
const SCALE_POLL: Duration = Duration::from_secs(1);

fn slot_labels(options: &RuntimeOptions, index: usize) -> SlotLabels {
    SlotLabels {
        pipeline: options.pipeline.name().to_owned(),
        namespace: options.pipeline.namespace().to_owned(),
        pod: options.pod.clone(),
        slot: index.to_string(),
    }
}

/// The scale file as last read.
struct ScaleWatch {
    path: std::path::PathBuf,
    last: Option<String>,
}

impl ScaleWatch {
    fn new(path: std::path::PathBuf) -> Self {
        Self { path, last: None }
    }

    /// The scale when the file's content changed since the last call (the first call reads it).
    /// A file that cannot be read or parsed is reported once per change and ignored: the slots
    /// keep running as they are.
    fn changed(&mut self) -> Option<pipeline_crds::contract::Scale> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) => {
                let marker = format!("error: {e}");
                if self.last.as_deref() != Some(marker.as_str()) {
                    warn!(path = %self.path.display(), error = %e, "cannot read the scale file; keeping the slots");
                    self.last = Some(marker);
                }
                return None;
            }
        };
        if self.last.as_deref() == Some(text.as_str()) {
            return None;
        }
        self.last = Some(text.clone());
        match serde_json::from_str(&text) {
            Ok(scale) => Some(scale),
            Err(e) => {
                warn!(path = %self.path.display(), error = %e, "the scale file is not valid; keeping the slots");
                None
            }
        }
    }
}

/// A slot that ran this long before failing starts its next backoff from the beginning.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Runs a slot, restarting it with backoff (1 s doubling to 60 s, reset after a healthy run)
/// when it fails or panics. A panic is contained here: counted, logged, and the record the slot
/// had in hand is quarantined so that the restarted slot dead-letters it instead of panicking on
/// it again.
fn run_slot_with_restarts(config: &SlotConfig, health: &Health, stop: &Arc<AtomicBool>) {
    let mut backoff = Duration::from_secs(1);
    loop {
        config.watch.set_failure(None);
        health.slot_up();
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            slot::run(config, stop)
        }))
        .unwrap_or_else(|payload| {
            let message = slot::panic_message(payload.as_ref());
            config
                .metrics
                .slot_panics
                .get_or_create(&config.labels)
                .inc();
            let record = config.watch.in_hand();
            if let Some(record) = record {
                config.quarantine.add(record, message.clone());
            }
            let record = record.map(|(topic, partition, offset)| {
                format!("{}/{partition}@{offset}", config.plan.topic_name(topic))
            });
            error!(panic = %message, record = ?record, "slot panicked; it restarts, and the record it had in hand goes to the dead-letter topic");
            Err(SlotError::Panic(message))
        });
        config.watch.stopped();
        config.watch.idle();
        health.slot_down();
        if started.elapsed() >= HEALTHY_RUN {
            backoff = Duration::from_secs(1);
        }
        match result {
            Ok(()) => return,
            Err(e) if !e.is_retryable() => {
                error!(error = %e, "slot cannot run");
                health.set_blocked(Some(format!("slot {} cannot run: {e}", config.labels.slot)));
                return;
            }
            Err(e) => {
                error!(error = %e, ?backoff, "slot failed; restarting from the last committed offsets");
                config.watch.set_failure(Some(format!(
                    "failed and restarts in {} s: {e}",
                    backoff.as_secs()
                )));
                config
                    .metrics
                    .slot_restarts
                    .get_or_create(&config.labels)
                    .inc();
                if crate::sleep_unless_stopped(backoff, stop) {
                    return;
                }
                backoff = (backoff * 2).min(Duration::from_secs(60));
            }
        }
    }
}

/// Says which rack the clients fetch from (`spec.kafka.rack`), or that there is none.
fn report_rack(spec: &pipeline_crds::PipelineDeploymentSpec) {
    let Some(rack) = &spec.kafka.rack else {
        return;
    };
    let file = std::path::Path::new(pipeline_crds::contract::paths::RACK_FILE);
    match crate::rack::written_rack(file) {
        Some(value) => info!(rack = %value, topology_key = %rack.topology_key, "client.rack"),
        None => warn!(
            topology_key = %rack.topology_key,
            "spec.kafka.rack is set and no rack was written (see the rack init container's log): fetching from partition leaders"
        ),
    }
}

/// `pipeline_source_partitions`, per source topic: what the operator sizes an `AWS_MSK_IAM`
/// pipeline from, since it does not sign in to that Kafka itself.
fn report_source_partitions(options: &RuntimeOptions, metrics: &Metrics, partitions: &[usize]) {
    let topics = options.pipeline.spec().source.topic_names();
    for (topic, count) in topics.into_iter().zip(partitions) {
        metrics
            .source_partitions
            .get_or_create(&TopicLabels {
                pipeline: options.pipeline.name().to_owned(),
                namespace: options.pipeline.namespace().to_owned(),
                pod: options.pod.clone(),
                topic: topic.to_owned(),
                role: "source".to_owned(),
            })
            .set(i64::try_from(*count).unwrap_or(i64::MAX));
    }
}

/// Waits until the topics are ready (see [`topics`]) and returns the source topics' partition
/// counts; `None` when stopped first. While Kafka is unreachable it retries quietly; while topics
/// are missing or do not fit it says which, in the log, on `/readyz` and in
/// `pipeline_topics_missing`, and checks again, consuming nothing.
fn prepare_topics(
    options: &RuntimeOptions,
    group: &str,
    metrics: &Metrics,
    health: &Health,
    stop: &AtomicBool,
) -> Option<Vec<usize>> {
    let spec = options.pipeline.spec();
    let bootstrap = spec.kafka.bootstrap_servers.as_str();
    let sign_in = crate::kafka_sign_in::KafkaSignIn::of(&spec.kafka);
    let mut backoff = Duration::from_secs(1);
    let mut reported = None;
    loop {
        let result = topics::prepare(spec, bootstrap, group, &sign_in);
        metrics.topics_missing.clear();
        match result {
            Ok(partitions) => {
                health.set_blocked(None);
                report_source_partitions(options, metrics, &partitions);
                return Some(partitions);
            }
            Err(e @ TopicsError::Unreachable { .. }) => {
                let reason = e.to_string();
                warn!(%reason, ?backoff, "waiting for Kafka");
                health.set_blocked(Some(reason));
            }
            Err(TopicsError::Problems(problems)) => {
                for problem in &problems {
                    metrics
                        .topics_missing
                        .get_or_create(&TopicLabels {
                            pipeline: options.pipeline.name().to_owned(),
                            namespace: options.pipeline.namespace().to_owned(),
                            pod: options.pod.clone(),
                            topic: problem.topic.clone(),
                            role: problem.role.to_owned(),
                        })
                        .set(1);
                }
                let reason = TopicsError::Problems(problems).to_string();
                // Said at error level when it changes, then quietly on each check.
                if reported.as_ref() != Some(&reason) {
                    error!(%reason, "the pipeline cannot start: it consumes nothing until this is fixed");
                } else {
                    info!(%reason, ?backoff, "still waiting for the topics");
                }
                health.set_blocked(Some(reason.clone()));
                reported = Some(reason);
            }
        }
        if crate::sleep_unless_stopped(backoff, stop) {
            return None;
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
