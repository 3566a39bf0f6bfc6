//! A real Prometheus server (Debian's `prometheus`) for tests: started on a free loopback port
//! with a scratch storage directory, scraping the targets of a file-based service discovery file
//! every second, stopped when dropped.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::process::free_port;

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    /// Its base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    targets: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir`, scraping `targets` (`host:port`, path `/metrics`) every
    /// second. Panics with a clear message when it is not installed (`scripts/test.sh` installs
    /// it): a test that needs it fails, never passes without it (see [`crate::broker::Tansu::start`]
    /// for leaving such tests out).
    pub fn start(dir: &Path, targets: &[String]) -> Self {
        std::fs::create_dir_all(dir).expect("a scratch directory");
        let targets_file = dir.join("targets.json");
        write_targets(&targets_file, targets);
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nscrape_configs:\n  - job_name: sluice\n    file_sd_configs: [{{files: ['{}'], refresh_interval: 1s}}]\n",
                targets_file.display()
            ),
        )
        .expect("writing the Prometheus config");
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={listen}"))
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(dir.join("prometheus.log"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("prometheus is not installed: run `bash scripts/test.sh`, or `apt-get install prometheus`");
        let url = format!("http://{listen}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = ureq::get(&format!("{url}/-/ready"))
                .call()
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "prometheus did not become ready on {listen} (log in {})",
                dir.display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Self {
            child,
            url,
            targets: targets_file,
        }
    }

    /// The file-based service discovery file it reads (JSON target groups).
    pub fn targets_file(&self) -> &Path {
        &self.targets
    }

    /// Replaces the scraped targets (picked up within a second or two).
    pub fn set_targets(&self, targets: &[String]) {
        write_targets(&self.targets, targets);
    }
}

fn write_targets(path: &Path, targets: &[String]) {
    let text = serde_json::json!([{"targets": targets, "labels": {}}]).to_string();
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).expect("writing the targets");
    std::fs::rename(&aside, path).expect("writing the targets");
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
