//! A ClickHouse server for tests (Debian's `clickhouse-server`, which `scripts/test.sh`
//! installs), started on free loopback ports with its configuration and data in a temporary
//! directory, stopped and removed on drop.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::process::free_port;

/// A running `clickhouse-server`.
pub struct ClickHouse {
    child: Option<Child>,
    dir: PathBuf,
    /// Its HTTP endpoint, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    agent: ureq::Agent,
}

impl ClickHouse {
    /// Starts a server. Panics with a clear message when it is not installed or does not start
    /// (its error log in the message; a server that exits at once, e.g. because another process
    /// took one of its ports in the meantime, is tried again on other ports).
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "sluice-clickhouse-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(dir.join("data")).expect("a temporary directory");
        std::fs::write(
            dir.join("users.xml"),
            "<yandex>
  <profiles><default></default></profiles>
  <users><default><password></password><networks><ip>::/0</ip></networks><profile>default</profile><quota>default</quota></default></users>
  <quotas><default></default></quotas>
</yandex>
",
        )
        .expect("writable");
        let mut server = Self {
            child: None,
            dir,
            url: String::new(),
            agent: ureq::Agent::config_builder()
                .timeout_global(Some(Duration::from_secs(30)))
                .http_status_as_error(false)
                .build()
                .new_agent(),
        };
        for attempt in 1..=3 {
            server.configure(free_port(), free_port());
            match server.run() {
                Ok(()) => return server,
                Err(Exit::Early(why)) if attempt < 3 => {
                    eprintln!("clickhouse-server exited at start ({why}); trying other ports");
                }
                Err(e) => server.fail(&e),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Writes the configuration with these ports.
    fn configure(&mut self, http: u16, tcp: u16) {
        std::fs::write(
            self.dir.join("config.xml"),
            format!(
                "<yandex>
  <logger><level>warning</level><log>{d}/server.log</log><errorlog>{d}/error.log</errorlog></logger>
  <http_port>{http}</http_port>
  <tcp_port>{tcp}</tcp_port>
  <listen_host>127.0.0.1</listen_host>
  <path>{d}/data/</path>
  <tmp_path>{d}/tmp/</tmp_path>
  <users_config>{d}/users.xml</users_config>
  <mark_cache_size>67108864</mark_cache_size>
  <default_profile>default</default_profile>
  <default_database>default</default_database>
</yandex>
",
                d = self.dir.display()
            ),
        )
        .expect("writable");
        self.url = format!("http://127.0.0.1:{http}");
    }

    /// Starts the server (again, on the same ports and data) and waits until it answers.
    pub fn resume(&mut self) {
        if let Err(e) = self.run() {
            self.fail(&e);
        }
    }

    /// Starts the process and waits until it answers, it exits, or two minutes pass.
    fn run(&mut self) -> Result<(), Exit> {
        let config = self.dir.join("config.xml");
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", config.display()))
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(self.dir.join("stderr.log"))
                    .map_or_else(|_| Stdio::null(), Stdio::from),
            )
            .spawn()
            .expect("clickhouse-server is not installed: run `bash scripts/test.sh`, or `apt-get install clickhouse-server`");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.try_query("SELECT 1").is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(Exit::Early(format!("{status}: {}", self.error_log())));
            }
            if Instant::now() >= deadline {
                return Err(Exit::Silent);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(())
    }

    /// The end of the server's error log and standard error.
    fn error_log(&self) -> String {
        ["error.log", "stderr.log"]
            .iter()
            .map(|name| {
                let log = std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "{name}: {}",
                    lines[lines.len().saturating_sub(5)..].join(" | ")
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn fail(&mut self, exit: &Exit) -> ! {
        let why = match exit {
            Exit::Early(why) => format!("exited: {why}"),
            Exit::Silent => format!("did not answer within 2 minutes: {}", self.error_log()),
        };
        self.stop();
        panic!(
            "clickhouse-server on {} {why} (logs kept in {})",
            self.url,
            self.dir.display()
        );
    }

    /// Stops the server (SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Runs a statement and returns the answer; panics on failure.
    pub fn query(&self, statement: &str) -> String {
        self.try_query(statement)
            .unwrap_or_else(|e| panic!("ClickHouse {statement}: {e}"))
    }

    /// Runs a statement; the answer, or why it failed.
    pub fn try_query(&self, statement: &str) -> Result<String, String> {
        let mut response = self
            .agent
            .post(&self.url)
            .query("output_format_json_quote_64bit_integers", "0")
            .send(statement)
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match status {
            200 => Ok(text),
            _ => Err(format!("HTTP {status}: {text}")),
        }
    }
}

/// Why the server did not come up.
enum Exit {
    /// It exited.
    Early(String),
    /// It runs but did not answer.
    Silent,
}

impl Drop for ClickHouse {
    fn drop(&mut self) {
        self.stop();
        // Logs stay for a failed test.
        if std::env::var_os("SLUICE_E2E_KEEP").is_none() && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
