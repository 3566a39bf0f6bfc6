//! The local backend: a pipeline as `pipeline-runtime run` processes on this machine, one per
//! "pod", each with that pod's slots from the same scale file as in the cluster, so a rescale
//! starts or stops slots in running processes and adds or stops whole processes only when the
//! pod count changes. Dead processes are restarted with backoff; a changed config replaces every
//! process; Prometheus file-based service discovery lists the processes' metrics ports.

use std::{
    collections::BTreeMap,
    ffi::OsString,
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use pipeline_crds::{
    PipelineDeployment, PipelineDeploymentStatus,
    contract::{env, paths},
};
use tracing::{info, warn};

use super::{Applied, Backend, BackendError};
use crate::{
    autoscale::source::{Endpoints, EndpointsError, Target},
    desired::Desired,
    events,
    kafka::KafkaAccess,
};

/// Shortest and longest wait before restarting a process that died.
const BACKOFF: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30));
/// A process up this long has its backoff reset.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

/// How local mode runs processes.
#[derive(Clone, Debug)]
pub struct LocalSettings {
    /// Working directory: config, scale file, logs, service discovery targets.
    pub dir: PathBuf,
    /// The runtime command: a program and its leading arguments (`run` is appended).
    pub runtime: Vec<OsString>,
    /// Where the Prometheus file-based service discovery targets are written.
    pub targets_file: PathBuf,
    /// Extra environment of every process.
    pub env: Vec<(String, String)>,
}

/// A notable thing that happened (printed by local mode, like a Kubernetes Event).
#[derive(Clone, Debug, PartialEq)]
pub struct Happening {
    /// Seconds since the Unix epoch.
    pub at: f64,
    /// `PascalCase` reason.
    pub reason: String,
    /// Detail.
    pub note: String,
}

struct Process {
    pod: String,
    port: u16,
    child: Option<Child>,
    config_hash: String,
    started: Instant,
    starts: u32,
    failures: u32,
    retry_at: Option<Instant>,
}

struct Stopping {
    pod: String,
    child: Child,
    kill_at: Instant,
}

#[derive(Default)]
struct State {
    processes: BTreeMap<i32, Process>,
    stopping: Vec<Stopping>,
    status: Option<PipelineDeploymentStatus>,
    happenings: Vec<Happening>,
    /// What the config, scale and targets files hold: each is rewritten only when it changes.
    config_hash: Option<String>,
    scale: Option<String>,
    targets: Option<String>,
}

/// The processes' `/metrics` URLs, for the autoscaler's direct scrape.
#[derive(Clone, Default)]
pub struct LocalEndpoints(Arc<Mutex<Vec<String>>>);

impl LocalEndpoints {
    /// The current URLs.
    pub fn urls(&self) -> Vec<String> {
        self.0.lock().expect("not poisoned").clone()
    }
}

impl Endpoints for LocalEndpoints {
    fn endpoints<'a>(
        &'a self,
        _: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<String>, EndpointsError>> {
        Box::pin(async move { Ok(self.urls()) })
    }
}

/// Runs pipelines as processes on this machine.
pub struct LocalBackend {
    settings: LocalSettings,
    state: Mutex<State>,
    endpoints: LocalEndpoints,
}

fn free_port() -> Result<u16, BackendError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BackendError::Local(format!("no free port: {e}")))
}

fn write_atomically(path: &Path, text: &str) -> Result<(), BackendError> {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text)
        .and_then(|()| std::fs::rename(&aside, path))
        .map_err(|e| BackendError::Local(format!("writing {}: {e}", path.display())))
}

/// Sends SIGTERM (the runtime then stops its slots, takes a final checkpoint and leaves the
/// group).
fn terminate(child: &Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

impl LocalBackend {
    /// A backend working in `settings.dir` (created when missing).
    pub fn new(settings: LocalSettings) -> Result<Self, BackendError> {
        std::fs::create_dir_all(settings.dir.join("logs")).map_err(|e| {
            BackendError::Local(format!("creating {}: {e}", settings.dir.display()))
        })?;
        Ok(Self {
            settings,
            state: Mutex::new(State::default()),
            endpoints: LocalEndpoints::default(),
        })
    }

    /// The processes' metrics URLs (shared, kept current).
    pub fn endpoints(&self) -> LocalEndpoints {
        self.endpoints.clone()
    }

    /// What happened since the last call.
    pub fn take_happenings(&self) -> Vec<Happening> {
        std::mem::take(&mut self.state.lock().expect("not poisoned").happenings)
    }

    /// Running processes: (pod, pid, metrics port, times started).
    pub fn processes(&self) -> Vec<(String, u32, u16, u32)> {
        let state = self.state.lock().expect("not poisoned");
        state
            .processes
            .values()
            .filter_map(|p| {
                p.child
                    .as_ref()
                    .map(|c| (p.pod.clone(), c.id(), p.port, p.starts))
            })
            .collect()
    }

    fn config_path(&self) -> PathBuf {
        self.settings.dir.join(paths::CONFIG_FILE)
    }

    fn scale_path(&self) -> PathBuf {
        self.settings.dir.join(paths::SCALE_FILE)
    }

    fn happen(state: &mut State, reason: &str, note: String) {
        info!(reason, %note, "local mode");
        state.happenings.push(Happening {
            at: crate::controller::wall_clock(),
            reason: reason.into(),
            note,
        });
    }

    fn spawn(&self, desired: &Desired, process: &mut Process) -> Result<Child, BackendError> {
        let (program, args) = self
            .settings
            .runtime
            .split_first()
            .ok_or_else(|| BackendError::Local("no runtime command".into()))?;
        let log_path = self
            .settings
            .dir
            .join("logs")
            .join(format!("{}.log", process.pod));
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| BackendError::Local(format!("opening {}: {e}", log_path.display())))?;
        let err = log
            .try_clone()
            .map_err(|e| BackendError::Local(format!("{}: {e}", log_path.display())))?;
        let mut command = Command::new(program);
        command
            .args(args)
            .arg("run")
            .envs(&desired.env)
            .env(env::CONFIG, self.config_path())
            .env(env::SCALE_FILE, self.scale_path())
            .env(env::POD_NAME, &process.pod)
            .env(env::METRICS_PORT, process.port.to_string())
            .env(env::LOG_FORMAT, "json")
            .envs(self.settings.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        command.spawn().map_err(|e| {
            BackendError::Local(format!(
                "starting the runtime ({}): {e}",
                program.to_string_lossy()
            ))
        })
    }

    /// Starts processes that are due (new ones, and those that died, after their backoff), and
    /// reaps stopped ones. [`Backend::apply`] calls it on every reconcile.
    pub fn supervise(&self, desired: &Desired) {
        let mut state = self.state.lock().expect("not poisoned");
        let now = Instant::now();
        state.stopping.retain_mut(|s| match s.child.try_wait() {
            Ok(Some(_)) | Err(_) => false,
            Ok(None) if now >= s.kill_at => {
                warn!(pod = %s.pod, "did not stop within its grace period: killing it");
                let _ = s.child.kill();
                let _ = s.child.wait();
                false
            }
            Ok(None) => true,
        });
        let mut happened: Vec<(&str, String)> = Vec::new();
        for process in state.processes.values_mut() {
            if let Some(child) = &mut process.child
                && let Ok(Some(exit)) = child.try_wait()
            {
                process.child = None;
                if process.started.elapsed() >= HEALTHY_AFTER {
                    process.failures = 0;
                }
                let wait = BACKOFF
                    .0
                    .saturating_mul(1 << process.failures.min(5))
                    .min(BACKOFF.1);
                process.failures += 1;
                process.retry_at = Some(now + wait);
                let pod = &process.pod;
                happened.push((
                    "ProcessExited",
                    format!(
                        "{pod} exited ({exit}); restarting in {}s (log: logs/{pod}.log)",
                        wait.as_secs()
                    ),
                ));
            }
        }
        let State {
            processes,
            stopping,
            ..
        } = &mut *state;
        for process in processes.values_mut() {
            // A pod whose previous process is still stopping waits for it (same port, and its
            // final checkpoint comes first).
            let stopping = stopping.iter().any(|s| s.pod == process.pod);
            let due =
                process.child.is_none() && !stopping && process.retry_at.is_none_or(|at| now >= at);
            if !due {
                continue;
            }
            match self.spawn(desired, process) {
                Ok(child) => {
                    process.child = Some(child);
                    process.started = now;
                    process.starts += 1;
                    process.retry_at = None;
                    process.config_hash.clone_from(&desired.config_hash);
                    let reason = if process.starts > 1 {
                        "ProcessRestarted"
                    } else {
                        "ProcessStarted"
                    };
                    let note =
                        format!("{} with metrics on 127.0.0.1:{}", process.pod, process.port);
                    happened.push((reason, note));
                }
                Err(error) => {
                    process.retry_at = Some(now + BACKOFF.1);
                    happened.push(("ProcessFailed", format!("{}: {error}", process.pod)));
                }
            }
        }
        for (reason, note) in happened {
            Self::happen(&mut state, reason, note);
        }
        self.publish_targets(&mut state, &desired.name, &desired.namespace);
    }

    fn publish_targets(&self, state: &mut State, name: &str, namespace: &str) {
        let running: Vec<&Process> = state.processes.values().collect();
        let urls = running
            .iter()
            .map(|p| format!("http://127.0.0.1:{}/metrics", p.port))
            .collect();
        *self.endpoints.0.lock().expect("not poisoned") = urls;
        let targets: Vec<serde_json::Value> = running
            .iter()
            .map(|p| {
                serde_json::json!({
                    "targets": [format!("127.0.0.1:{}", p.port)],
                    "labels": {"sluice_local_pipeline": format!("{namespace}/{name}"), "sluice_local_pod": p.pod},
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&targets).expect("targets serialize");
        if state.targets.as_ref() == Some(&text) {
            return;
        }
        match write_atomically(&self.settings.targets_file, &text) {
            Ok(()) => state.targets = Some(text),
            Err(error) => warn!(%error, "cannot write the service discovery targets"),
        }
    }

    fn apply_now(&self, desired: &Desired) -> Result<Applied, BackendError> {
        let scale = serde_json::to_string(&desired.scale).expect("a scale serializes");
        let grace = Duration::from_secs(u64::try_from(desired.grace_seconds).unwrap_or(60));
        {
            let mut state = self.state.lock().expect("not poisoned");
            if state.config_hash.as_ref() != Some(&desired.config_hash) {
                write_atomically(&self.config_path(), &desired.config)?;
                state.config_hash = Some(desired.config_hash.clone());
            }
            if state.scale.as_deref() != Some(scale.as_str()) {
                write_atomically(&self.scale_path(), &scale)?;
                if let Some(before) = &state.scale {
                    let note = format!("scale file {before} → {scale}");
                    Self::happen(&mut state, "ScaleFileChanged", note);
                }
                state.scale = Some(scale);
            }
            // A new config replaces every process (as a changed config hash rolls the pods).
            let stale: Vec<i32> = state
                .processes
                .iter()
                .filter(|(o, p)| **o >= desired.replicas || p.config_hash != desired.config_hash)
                .map(|(o, _)| *o)
                .collect();
            for ordinal in stale {
                let mut process = state.processes.remove(&ordinal).expect("listed");
                let removed = ordinal >= desired.replicas;
                if let Some(child) = process.child.take() {
                    terminate(&child);
                    state.stopping.push(Stopping {
                        pod: process.pod.clone(),
                        child,
                        kill_at: Instant::now() + grace,
                    });
                    let why = if removed {
                        "no longer wanted"
                    } else {
                        "its config changed"
                    };
                    Self::happen(
                        &mut state,
                        "ProcessStopping",
                        format!("{} ({why})", process.pod),
                    );
                }
                if !removed {
                    // Started again with the new config once the old one has stopped.
                    process.config_hash.clone_from(&desired.config_hash);
                    state.processes.insert(ordinal, process);
                }
            }
            for ordinal in 0..desired.replicas {
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    state.processes.entry(ordinal)
                {
                    slot.insert(Process {
                        pod: format!("{}-{ordinal}", desired.name),
                        port: free_port()?,
                        child: None,
                        config_hash: desired.config_hash.clone(),
                        started: Instant::now(),
                        starts: 0,
                        failures: 0,
                        retry_at: None,
                    });
                }
            }
        }
        self.supervise(desired);
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_millis(300)))
            .build()
            .new_agent();
        let ready = self
            .endpoints
            .urls()
            .iter()
            .filter(|url| {
                agent
                    .get(&url.replace("/metrics", "/readyz"))
                    .call()
                    .is_ok_and(|r| r.status() == 200)
            })
            .count();
        Ok(Applied {
            ready_pods: i32::try_from(ready).unwrap_or(i32::MAX),
        })
    }

    /// Stops every process with SIGTERM (each takes its final checkpoint and leaves the group)
    /// and waits up to `grace` for them; kills what is left.
    pub fn shutdown(&self, grace: Duration) {
        let mut state = self.state.lock().expect("not poisoned");
        let processes = std::mem::take(&mut state.processes);
        let mut children: Vec<(String, Child)> = processes
            .into_values()
            .filter_map(|p| p.child.map(|c| (p.pod, c)))
            .chain(state.stopping.drain(..).map(|s| (s.pod, s.child)))
            .collect();
        for (_, child) in &children {
            terminate(child);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            children.retain_mut(|(_, c)| matches!(c.try_wait(), Ok(None)));
            if children.is_empty() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for (pod, child) in &mut children {
            warn!(%pod, "did not stop within the grace period: killing it");
            let _ = child.kill();
            let _ = child.wait();
        }
        *self.endpoints.0.lock().expect("not poisoned") = Vec::new();
    }
}

impl Drop for LocalBackend {
    fn drop(&mut self) {
        self.shutdown(Duration::from_secs(30));
    }
}

impl Backend for LocalBackend {
    fn kafka_access<'a>(
        &'a self,
        pd: &'a PipelineDeployment,
    ) -> BoxFuture<'a, Result<KafkaAccess, crate::kafka::CredentialsError>> {
        Box::pin(async move {
            let credentials = match (
                std::env::var(env::KAFKA_SASL_USERNAME),
                std::env::var(env::KAFKA_SASL_PASSWORD),
            ) {
                (Ok(u), Ok(p)) => Some((u, p)),
                _ if pd
                    .spec
                    .kafka
                    .sasl
                    .as_ref()
                    .is_some_and(|s| s.credentials_secret.is_some()) =>
                {
                    return Err(crate::kafka::CredentialsError::NotInEnvironment {
                        username: env::KAFKA_SASL_USERNAME,
                        password: env::KAFKA_SASL_PASSWORD,
                    });
                }
                _ => None,
            };
            Ok(KafkaAccess::new(&pd.spec, credentials, None))
        })
    }

    fn apply<'a>(&'a self, desired: &'a Desired) -> BoxFuture<'a, Result<Applied, BackendError>> {
        Box::pin(async move { tokio::task::block_in_place(|| self.apply_now(desired)) })
    }

    fn report<'a>(
        &'a self,
        _: &'a PipelineDeployment,
        status: &'a PipelineDeploymentStatus,
    ) -> BoxFuture<'a, Result<(), BackendError>> {
        Box::pin(async move {
            let mut state = self.state.lock().expect("not poisoned");
            for a in events::announcements(state.status.as_ref(), status) {
                Self::happen(&mut state, a.reason, a.note);
            }
            state.status = Some(status.clone());
            let path = self.settings.dir.join("status.json");
            let text = serde_json::to_string_pretty(status).expect("a status serializes");
            write_atomically(&path, &text)
        })
    }

    fn announce<'a>(
        &'a self,
        _: &'a PipelineDeployment,
        announcements: &'a [crate::events::Announcement],
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let mut state = self.state.lock().expect("not poisoned");
            for a in announcements {
                Self::happen(&mut state, a.reason, a.note.clone());
            }
        })
    }

    fn deletion(&self) -> Option<&dyn crate::cleanup::Deletion> {
        None
    }

    fn rules(&self) -> &dyn pipeline_crds::valid::InstallationRules {
        &pipeline_crds::valid::AnyInstallation
    }
}

#[cfg(test)]
mod tests {
    use pipeline_crds::contract::Scale;
    use serde_json::Value;

    use super::*;
    use crate::desired::PodResources;

    fn desired(parallelism: i32, replicas: i32, hash: &str) -> Desired {
        let pd = pipeline_crds::manifest::from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: p, namespace: ns}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {kafka: {topic: out}}\n",
            "test",
        )
        .unwrap();
        Desired {
            pipeline: pipeline_crds::valid::validate_pipeline(
                &pd,
                &pipeline_crds::valid::AnyInstallation,
            )
            .unwrap(),
            name: "p".into(),
            namespace: "ns".into(),
            config: format!("config {hash}"),
            config_hash: hash.into(),
            scale: Scale::pipeline(parallelism, replicas),
            replicas,
            resources: PodResources {
                cpu_request_millis: 500,
                cpu_limit_millis: None,
                memory_bytes: 1 << 28,
            },
            grace_seconds: 5,
            env: BTreeMap::new(),
        }
    }

    /// A backend whose "runtime" is a shell script (`run` becomes `$0`).
    fn backend(dir: &Path, script: &str) -> LocalBackend {
        LocalBackend::new(LocalSettings {
            dir: dir.to_owned(),
            runtime: vec!["sh".into(), "-c".into(), script.into()],
            targets_file: dir.join("targets.json"),
            env: vec![],
        })
        .unwrap()
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sluice-local-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn processes_follow_the_pod_count_and_the_scale_file_carries_the_slots() {
        let dir = scratch("pods");
        let b = backend(&dir, "exec sleep 30");
        b.apply_now(&desired(3, 2, "a")).unwrap();
        let pods: Vec<String> = b.processes().into_iter().map(|p| p.0).collect();
        assert_eq!(pods, ["p-0", "p-1"]);
        let scale: Scale =
            serde_json::from_str(&std::fs::read_to_string(dir.join("scale.json")).unwrap())
                .unwrap();
        assert_eq!(
            (scale.slots_of(Some(0)), scale.slots_of(Some(1))),
            (Ok(2), Ok(1))
        );
        let targets: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("targets.json")).unwrap())
                .unwrap();
        assert_eq!(targets.as_array().unwrap().len(), 2);
        let first = b.processes()[0].1;
        // 3 → 2 slots on 1 pod: pod 1 stops, pod 0 keeps running (its slots change in place).
        b.apply_now(&desired(2, 1, "a")).unwrap();
        assert_eq!(b.processes().len(), 1);
        assert_eq!(b.processes()[0].1, first, "pod 0 was not restarted");
        let happened: Vec<String> = b.take_happenings().into_iter().map(|h| h.reason).collect();
        assert!(
            happened.contains(&"ProcessStopping".to_owned()),
            "{happened:?}"
        );
        // A new config replaces the process.
        b.apply_now(&desired(2, 1, "b")).unwrap();
        std::thread::sleep(Duration::from_millis(1_200));
        b.supervise(&desired(2, 1, "b"));
        assert_ne!(b.processes()[0].1, first, "a new config restarts pod 0");
        b.shutdown(Duration::from_secs(5));
        assert!(b.processes().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_process_that_dies_is_restarted_after_a_growing_backoff() {
        let dir = scratch("dies");
        let b = backend(&dir, "exit 3");
        let d = desired(1, 1, "a");
        b.apply_now(&d).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        b.supervise(&d);
        let happened = b.take_happenings();
        let exited = happened
            .iter()
            .find(|h| h.reason == "ProcessExited")
            .expect("the exit is reported");
        assert!(
            exited.note.contains("exit status: 3") && exited.note.contains("restarting in 1s"),
            "{}",
            exited.note
        );
        // Not before the backoff, then again, with a longer wait after the second exit.
        b.supervise(&d);
        assert!(
            b.take_happenings()
                .iter()
                .all(|h| h.reason != "ProcessRestarted")
        );
        std::thread::sleep(Duration::from_millis(1_100));
        b.supervise(&d);
        assert!(
            b.take_happenings()
                .iter()
                .any(|h| h.reason == "ProcessRestarted")
        );
        std::thread::sleep(Duration::from_millis(300));
        b.supervise(&d);
        let again = b.take_happenings();
        assert!(
            again.iter().any(|h| h.note.contains("restarting in 2s")),
            "{again:?}"
        );
        b.shutdown(Duration::from_secs(1));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
