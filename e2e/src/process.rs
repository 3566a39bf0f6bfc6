//! `pipeline-runtime run` as a child process that a test can kill (SIGKILL) or stop (SIGTERM)
//! and start again, with its /metrics endpoint.

use std::{
    fs::OpenOptions,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The `pipeline-runtime` binary: `SLUICE_RUNTIME_BIN` when set (to measure a release build),
/// else the one of this build ([`workspace_binary`]).
pub fn runtime_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("SLUICE_RUNTIME_BIN") {
        return PathBuf::from(path);
    }
    workspace_binary("pipeline-runtime")
}

/// A binary of this workspace (`pipeline-runtime`, `pipeline-operator`, `loadgen`): from
/// `SLUICE_BIN_DIR` when set (`scripts/test.sh` points it at the release binaries that
/// `scripts/build-binaries.sh` builds, as the images do), else built with the same profile as the
/// test, next to the test binary's `deps/` folder.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("SLUICE_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("test binary path");
            exe.parent()
                .and_then(Path::parent)
                .expect("test binary lives in target/<profile>/deps")
                .to_owned()
        }
    };
    let binary = dir.join(name);
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p pipeline-runtime -p pipeline-operator --bins` (or scripts/build-binaries.sh with SLUICE_BIN_DIR=target/release) first",
        binary.display()
    );
    binary
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// One runtime process ("pod").
pub struct RuntimeProcess {
    child: Child,
    /// Its pod name (stable across restarts, like a StatefulSet pod).
    pub pod: String,
    /// Its /metrics port.
    pub metrics_port: u16,
}

/// How to start runtime processes.
#[derive(Clone, Debug)]
pub struct Launch {
    /// The manifest.
    pub manifest: PathBuf,
    /// Broker list.
    pub bootstrap: String,
    /// Slots per process.
    pub slots: usize,
    /// Where each process appends its log (`<pod>.log`).
    pub log_dir: PathBuf,
}

impl Launch {
    /// Starts the process of `pod`.
    pub fn start(&self, pod: &str) -> RuntimeProcess {
        self.start_with_env(pod, &[])
    }

    /// Starts the process of `pod` with extra environment variables (failpoints).
    pub fn start_with_env(&self, pod: &str, env: &[(&str, &str)]) -> RuntimeProcess {
        let metrics_port = free_port();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_dir.join(format!("{pod}.log")))
            .expect("log file");
        let child = Command::new(runtime_binary())
            .args(["run", "-f"])
            .arg(&self.manifest)
            .args(["--bootstrap-servers", &self.bootstrap, "--pod", pod])
            .args(["--slots", &self.slots.to_string()])
            .args(["--metrics-port", &metrics_port.to_string()])
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_E2E_LOG").unwrap_or_else(|_| "info,librdkafka=warn".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start pipeline-runtime");
        RuntimeProcess {
            child,
            pod: pod.to_owned(),
            metrics_port,
        }
    }
}

impl RuntimeProcess {
    /// SIGKILL: no flush, no commit, no goodbye to the group.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits up to `grace` for a clean exit (SIGKILL after).
    pub fn terminate(&mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
    }

    /// Waits up to `timeout` for the process to exit by itself; whether it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Whether the process still runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its Prometheus exposition, if it answers.
    pub fn metrics(&self) -> Option<String> {
        ureq::get(&format!("http://127.0.0.1:{}/metrics", self.metrics_port))
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()
    }
}

/// `GET url`: the status and body, whatever the status (`None` when nothing answers).
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let mut response = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .ok()?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().ok()?;
    Some((status, body))
}

impl Drop for RuntimeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
