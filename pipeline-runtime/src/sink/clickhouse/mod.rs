//! The ClickHouse sink, over ClickHouse's HTTP interface: window results (this module), and the
//! records of stateless pipelines ([`records`]).
//!
//! Rows are buffered and inserted as `JSONEachRow` once a batch holds `batchRows` rows, after
//! `batchInterval`, and at every checkpoint (`flush`), so the slot commits offsets only for rows
//! ClickHouse acknowledged. Each row carries `_version`, the next offset of the window's partition
//! when the window was emitted: it grows with each emission of a window (late data re-fires it)
//! and is the same when a replay emits it again. In a `ReplacingMergeTree(_version)` ordered by
//! the key and `window_start`, `SELECT … FINAL` therefore returns one exact row per window after
//! any crash or rescale: effectively-once.
//!
//! At start the sink creates the table (`createTable: true`) or checks that its columns fit the
//! output, refusing with every difference. An insert that fails is retried with backoff (the wait
//! is backpressure, which keeps the autoscaler from scaling a sink-bound pipeline up) for up to
//! two minutes, within the consumer's `max.poll.interval.ms`; then the slot restarts from its
//! last checkpoint.

pub mod records;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use pipeline_crds::{
    aggregate::AggregateFunction,
    contract::{
        env as env_names,
        output::{VERSION_COLUMN, WINDOW_END, WINDOW_START, avro_field_name},
    },
    sink::ClickHouseSink,
};
use serde::ser::{Serialize, SerializeMap, Serializer};
use tracing::{info, warn};

use crate::{
    metrics::{Metrics, SlotLabels},
    plan::Plan,
    processor::FailedStage,
    row::Row,
    window::WindowResult,
};

use self::records::{Described, RecordTable};
use super::{RowSink, Sent, SinkError, registry::RowsError};

/// The table and batching of a ClickHouse sink, settled from `spec.sink.clickhouse` when the
/// plan is compiled. Credentials come from the environment (`CLICKHOUSE_USER`,
/// `CLICKHOUSE_PASSWORD`, mapped from the credentials Secret).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClickHouseTarget {
    /// The HTTP endpoint.
    pub url: String,
    /// The database.
    pub database: String,
    /// The table.
    pub table: String,
    /// Whether a missing table is created (windowed pipelines).
    pub create_table: bool,
    /// Rows at which a batch is inserted (at least 1).
    pub batch_rows: usize,
    /// Bytes of JSON at which a batch is inserted.
    pub batch_bytes: usize,
    /// Time after which a batch is inserted, however small.
    pub batch_interval: Duration,
}

impl ClickHouseTarget {
    /// The target `sink` names.
    pub fn of(sink: &ClickHouseSink) -> Self {
        Self {
            url: sink.url.trim_end_matches('/').to_owned(),
            database: sink.database.clone(),
            table: sink.table.clone(),
            create_table: sink.create_table,
            batch_rows: usize::try_from(sink.batch_rows).unwrap_or(1).max(1),
            batch_bytes: usize::try_from(sink.batch_bytes).unwrap_or(usize::MAX),
            batch_interval: sink.batch_interval.get(),
        }
    }
}

/// Why the ClickHouse sink failed; each reaches the slot as a [`SinkError::Rows`].
#[derive(Debug, thiserror::Error)]
pub enum ClickHouseError {
    /// The table does not exist or does not fit the output: refused until the spec or the table
    /// changes (not retryable).
    #[error("ClickHouse sink: {0}")]
    Table(String),
    /// ClickHouse cannot be reached or refused an insert (retried; then the slot restarts).
    #[error("ClickHouse: {0}")]
    Unreachable(String),
}

impl From<ClickHouseError> for SinkError {
    fn from(error: ClickHouseError) -> Self {
        let retryable = !matches!(error, ClickHouseError::Table(_));
        Self::Rows(RowsError::new(error, retryable))
    }
}

fn table_error(message: String) -> SinkError {
    ClickHouseError::Table(message).into()
}

fn unreachable_error(message: String) -> SinkError {
    ClickHouseError::Unreachable(message).into()
}

/// How long inserts are retried before the slot gives up and restarts.
const RETRY_FOR: Duration = Duration::from_secs(120);
/// Longest wait between insert attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Sleeps for `duration` in short steps; true as soon as `stop` holds.
fn sleep_unless(duration: Duration, stop: &dyn Fn() -> bool) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50).min(deadline - Instant::now()));
    }
    stop()
}

/// A column the pipeline writes, with the ClickHouse types that can hold it.
#[derive(Clone, Debug, PartialEq)]
struct Column {
    name: String,
    /// The type `createTable` gives it.
    create: &'static str,
    /// Types an existing table may have.
    accepts: &'static [&'static str],
}

const INTEGERS: &[&str] = &["Int64", "UInt64", "Nullable(Int64)", "Nullable(UInt64)"];
const FLOATS: &[&str] = &["Float64", "Nullable(Float64)"];
/// The type of `first` and `last` columns: their values may be of any JSON type, so they are
/// written as text (a string as it is, anything else as its JSON).
const TEXT: &str = "Nullable(String)";
const TEXTS: &[&str] = &[
    "String",
    "Nullable(String)",
    "LowCardinality(String)",
    "LowCardinality(Nullable(String))",
];

/// The columns of a pipeline's window results: key, bounds, one per aggregate, the version.
fn columns(plan: &Plan) -> Vec<Column> {
    let mut columns = vec![
        Column {
            name: avro_field_name(plan.key_field()),
            create: "String",
            accepts: &["String", "LowCardinality(String)"],
        },
        Column {
            name: WINDOW_START.into(),
            create: "Int64",
            accepts: &["Int64", "UInt64"],
        },
        Column {
            name: WINDOW_END.into(),
            create: "Int64",
            accepts: &["Int64", "UInt64"],
        },
    ];
    if let Some(window) = &plan.window {
        for (name, function) in window.aggregates.columns() {
            let (create, accepts) = match function {
                AggregateFunction::Count | AggregateFunction::CountDistinct => ("UInt64", INTEGERS),
                AggregateFunction::First | AggregateFunction::Last => (TEXT, TEXTS),
                _ => ("Nullable(Float64)", FLOATS),
            };
            columns.push(Column {
                name: avro_field_name(name),
                create,
                accepts,
            });
        }
    }
    columns.push(Column {
        name: VERSION_COLUMN.into(),
        create: "UInt64",
        accepts: &["UInt64"],
    });
    columns
}

/// The `CREATE TABLE` of `createTable: true`.
fn create_statement(database: &str, table: &str, columns: &[Column]) -> String {
    let defs: Vec<String> = columns
        .iter()
        .map(|c| format!("`{}` {}", c.name, c.create))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS `{database}`.`{table}` ({}) ENGINE = ReplacingMergeTree(`{VERSION_COLUMN}`) ORDER BY (`{}`, `{WINDOW_START}`)",
        defs.join(", "),
        columns[0].name
    )
}

/// Every way an existing table's columns (name, type) do not fit the pipeline's.
fn differences(columns: &[Column], existing: &[(String, String)], engine: &str) -> Vec<String> {
    let mut found = Vec::new();
    for c in columns {
        match existing.iter().find(|(name, _)| *name == c.name) {
            None => found.push(format!(
                "column `{}` is missing (want {})",
                c.name, c.create
            )),
            Some((_, kind)) if !c.accepts.contains(&kind.as_str()) => found.push(format!(
                "column `{}` is {kind}, want one of {}",
                c.name,
                c.accepts.join(", ")
            )),
            Some(_) => {}
        }
    }
    if !engine.contains("ReplacingMergeTree") {
        found.push(format!(
            "engine is {engine}, want ReplacingMergeTree(`{VERSION_COLUMN}`) ordered by the key and `{WINDOW_START}` (replays would double-count)"
        ));
    }
    found
}

/// One row as a `JSONEachRow` line.
struct JsonRow<'a> {
    columns: &'a [Column],
    result: &'a WindowResult,
    version: u64,
}

impl Serialize for JsonRow<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let r = self.result;
        let mut map = serializer.serialize_map(Some(self.columns.len()))?;
        map.serialize_entry(&self.columns[0].name, &*r.key)?;
        map.serialize_entry(WINDOW_START, &r.start)?;
        map.serialize_entry(WINDOW_END, &r.end)?;
        for (column, (_, value)) in self.columns[3..].iter().zip(&r.values) {
            match value {
                serde_json::Value::Null | serde_json::Value::String(_) => {
                    map.serialize_entry(&column.name, value)?
                }
                other if column.create == TEXT => {
                    map.serialize_entry(&column.name, &other.to_string())?;
                }
                other => map.serialize_entry(&column.name, other)?,
            }
        }
        map.serialize_entry(VERSION_COLUMN, &self.version)?;
        map.end()
    }
}

/// Window results to a ClickHouse table.
pub struct ClickHouseRows {
    agent: ureq::Agent,
    /// The HTTP endpoint, without a trailing `/`.
    url: String,
    authorization: Option<String>,
    /// `` `db`.`table` ``.
    table: String,
    /// The window results' columns (windowed pipelines).
    columns: Vec<Column>,
    /// The table records are fitted to (stateless pipelines; read at start).
    records: Option<RecordTable>,
    /// Source topic names by index, for `_topic`.
    topics: Vec<String>,
    batch: Vec<u8>,
    rows: usize,
    oldest: Option<Instant>,
    batch_rows: usize,
    /// Bytes of JSON at which a batch is inserted.
    batch_bytes: usize,
    batch_interval: Duration,
    /// Whether the server takes `insert_deduplication_token` (22.2 and later): each batch then
    /// carries its SHA-256, so a retried or replayed batch is stored once in tables that
    /// deduplicate inserts.
    deduplication_tokens: bool,
    /// Time blocked in retries already added to `pipeline_backpressured_seconds_total` while
    /// retrying (so an outage shows as backpressure while it lasts), not yet taken by the slot's
    /// report.
    reported_blocked: Duration,
    metrics: Arc<Metrics>,
    labels: SlotLabels,
}

impl ClickHouseRows {
    /// Connects, then creates or checks the table. A table that does not fit is refused for good
    /// ([`ClickHouseError::Table`]); an unreachable server is retryable.
    pub fn new(
        plan: &Plan,
        sink: &ClickHouseTarget,
        metrics: Arc<Metrics>,
        labels: SlotLabels,
    ) -> Result<Self, SinkError> {
        // https:// with the system's trust store (the image's CA certificates, plus any mounted).
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_connect(Some(Duration::from_secs(5)))
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let authorization =
            crate::basic_auth::from_env(env_names::CLICKHOUSE_USER, env_names::CLICKHOUSE_PASSWORD);
        let mut rows = Self {
            agent,
            url: sink.url.clone(),
            authorization,
            table: format!("`{}`.`{}`", sink.database, sink.table),
            columns: columns(plan),
            records: None,
            topics: plan.source_topics.clone(),
            batch: Vec::with_capacity(1 << 20),
            rows: 0,
            oldest: None,
            batch_rows: sink.batch_rows,
            batch_bytes: sink.batch_bytes,
            batch_interval: sink.batch_interval,
            deduplication_tokens: false,
            reported_blocked: Duration::ZERO,
            metrics,
            labels,
        };
        if plan.window.is_some() {
            rows.prepare(sink)?;
        } else {
            rows.records = Some(rows.prepare_records(sink)?);
        }
        rows.deduplication_tokens = rows.takes_deduplication_tokens();
        Ok(rows)
    }

    /// Whether the server's version (`SELECT version()`) is 22.2 or later, where inserts take
    /// `insert_deduplication_token`; false when it cannot be told.
    fn takes_deduplication_tokens(&self) -> bool {
        let Ok(version) = self.query("SELECT version()", "") else {
            return false;
        };
        let mut parts = version.trim().split('.').map(str::parse::<u32>);
        match (parts.next(), parts.next()) {
            (Some(Ok(major)), Some(Ok(minor))) => (major, minor) >= (22, 2),
            _ => false,
        }
    }

    /// Reads the table a stateless pipeline writes (it must exist: its columns are the user's).
    fn prepare_records(&self, sink: &ClickHouseTarget) -> Result<RecordTable, SinkError> {
        let Some(described) = self.describe()? else {
            return Err(table_error(format!(
                "table {} does not exist at {}: a stateless pipeline writes its records into a table you create (docs/clickhouse.md)",
                self.table, self.url
            )));
        };
        let table = RecordTable::new(&described).map_err(|problems| {
            table_error(format!(
                "table {} cannot take this pipeline's records: {}",
                self.table,
                problems.join("; ")
            ))
        })?;
        if !table.identifies_records() {
            info!(slot = %self.labels.slot, table = %self.table, database = %sink.database,
                "records are inserted at-least-once: a replay after a crash inserts some again (add `_topic`, `_partition`, `_offset` columns and a ReplacingMergeTree ordered by them to count each once under FINAL)");
        }
        Ok(table)
    }

    /// Creates the table, or checks the existing one.
    fn prepare(&self, sink: &ClickHouseTarget) -> Result<(), SinkError> {
        let Some(described) = self.describe()? else {
            if !sink.create_table {
                return Err(table_error(format!(
                    "table {} does not exist at {}: create it (docs/clickhouse.md gives the statement) or set spec.sink.clickhouse.createTable",
                    self.table, self.url
                )));
            }
            let statement = create_statement(&sink.database, &sink.table, &self.columns);
            self.query(&statement, "")?;
            info!(slot = %self.labels.slot, table = %self.table, "created the ClickHouse table");
            return Ok(());
        };
        let existing: Vec<(String, String)> =
            described.into_iter().map(|d| (d.name, d.kind)).collect();
        let engine = self
            .query(
                &format!(
                    "SELECT engine FROM system.tables WHERE database = '{}' AND name = '{}'",
                    sink.database, sink.table
                ),
                "",
            )?
            .trim()
            .to_owned();
        let found = differences(&self.columns, &existing, &engine);
        if found.is_empty() {
            Ok(())
        } else {
            Err(table_error(format!(
                "table {} does not fit this pipeline's output: {}",
                self.table,
                found.join("; ")
            )))
        }
    }

    /// The table's columns (`DESCRIBE TABLE`), or `None` when it does not exist.
    fn describe(&self) -> Result<Option<Vec<Described>>, SinkError> {
        let exists = self.query(&format!("EXISTS TABLE {}", self.table), "")?;
        if exists.trim() != "1" {
            return Ok(None);
        }
        let described = self
            .query(
                &format!("DESCRIBE TABLE {} FORMAT JSONEachRow", self.table),
                "",
            )?
            .lines()
            .filter_map(|line| {
                let v: serde_json::Value = serde_json::from_str(line).ok()?;
                Some(Described {
                    name: v["name"].as_str()?.to_owned(),
                    kind: v["type"].as_str()?.to_owned(),
                    default_kind: v["default_type"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect();
        Ok(Some(described))
    }

    /// Runs one statement with `body`; the answer's text, or why it failed.
    fn query(&self, statement: &str, body: &str) -> Result<String, SinkError> {
        self.query_with(statement, body, None)
    }

    /// [`Self::query`] with an `insert_deduplication_token`.
    fn query_with(
        &self,
        statement: &str,
        body: &str,
        token: Option<&str>,
    ) -> Result<String, SinkError> {
        let mut request = self.agent.post(&self.url).query("query", statement);
        if let Some(token) = token {
            request = request.query("insert_deduplication_token", token);
        }
        if let Some(auth) = &self.authorization {
            request = request.header("Authorization", auth);
        }
        let shown = statement.chars().take(80).collect::<String>();
        let mut response = request
            .send(body)
            .map_err(|e| unreachable_error(format!("{} ({shown}): {e}", self.url)))?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        match status {
            200 => Ok(text),
            _ => Err(unreachable_error(format!(
                "{} ({shown}): HTTP {status}: {}",
                self.url,
                text.trim().chars().take(500).collect::<String>()
            ))),
        }
    }

    /// Adds the time blocked since `*since` to the slot's backpressure metric now, while the
    /// insert still retries, and to `reported` for the slot's report (which leaves it out).
    fn report_blocked_since(
        metrics: &Metrics,
        labels: &SlotLabels,
        reported: &mut Duration,
        since: &mut Instant,
    ) {
        let now = Instant::now();
        let step = now.duration_since(*since);
        *since = now;
        *reported += step;
        metrics
            .backpressured
            .get_or_create(labels)
            .inc_by(step.as_secs_f64());
    }

    /// Inserts the batch, retrying with backoff; the time spent is backpressure, reported as
    /// each retry waits (not only once the insert ends).
    fn insert(&mut self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        if self.rows == 0 {
            return Ok(());
        }
        let started = Instant::now();
        let body = std::str::from_utf8(&self.batch).expect("JSON is UTF-8");
        let statement = format!("INSERT INTO {} FORMAT JSONEachRow", self.table);
        // The same bytes on every retry, so the same token.
        let token = self.deduplication_tokens.then(|| {
            use sha2::Digest;
            let digest = sha2::Sha256::digest(self.batch.as_slice());
            digest
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        });
        let mut wait = Duration::from_millis(200);
        let mut reported_until = started;
        let result = loop {
            let attempt = Instant::now();
            match self.query_with(&statement, body, token.as_deref()) {
                Ok(_) => {
                    self.metrics
                        .sink_insert_duration
                        .get_or_create(&self.labels)
                        .observe(attempt.elapsed().as_secs_f64());
                    break Ok(());
                }
                Err(e) => {
                    self.metrics
                        .sink_insert_failures
                        .get_or_create(&self.labels)
                        .inc();
                    if started.elapsed() >= RETRY_FOR {
                        break Err(unreachable_error(format!(
                            "inserts failed for {} s, restarting from the last checkpoint: {e}",
                            RETRY_FOR.as_secs()
                        )));
                    }
                    warn!(slot = %self.labels.slot, rows = self.rows, error = %e, ?wait, "ClickHouse insert failed; retrying");
                    let stopped = sleep_unless(wait, stop);
                    Self::report_blocked_since(
                        &self.metrics,
                        &self.labels,
                        &mut self.reported_blocked,
                        &mut reported_until,
                    );
                    if stopped {
                        break Err(SinkError::Interrupted);
                    }
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
            }
        };
        *blocked += started.elapsed();
        result?;
        self.metrics
            .sink_rows
            .get_or_create(&self.labels)
            .inc_by(self.rows as u64);
        self.metrics
            .sink_bytes
            .get_or_create(&self.labels)
            .inc_by(self.batch.len() as u64);
        self.metrics
            .sink_batch_rows
            .get_or_create(&self.labels)
            .observe(self.rows as f64);
        self.batch.clear();
        self.rows = 0;
        self.oldest = None;
        Ok(())
    }
}

impl RowSink for ClickHouseRows {
    fn take_reported_blocked(&mut self) -> Duration {
        std::mem::take(&mut self.reported_blocked)
    }

    fn send(
        &mut self,
        row: Row,
        blocked: &mut Duration,
        stop: &dyn Fn() -> bool,
    ) -> Result<Sent, SinkError> {
        match (row, &self.records) {
            (Row::Window { result, version }, _) => {
                let line = JsonRow {
                    columns: &self.columns,
                    result: &result,
                    version,
                };
                serde_json::to_writer(&mut self.batch, &line).expect("JSON values serialize");
            }
            (
                Row::Record {
                    key, json, source, ..
                },
                Some(table),
            ) => {
                let topic = self.topics.get(source.topic).map_or("", String::as_str);
                match table.line(&json, topic, &source) {
                    Ok(line) => self.batch.extend_from_slice(&line),
                    Err(mismatch) => {
                        return Ok(Sent::Rejected {
                            key,
                            json,
                            error: mismatch.to_string(),
                            stage: FailedStage::Encode,
                        });
                    }
                }
            }
            (Row::Record { key, json, .. }, None) => {
                return Ok(Sent::Rejected {
                    key,
                    json,
                    error: "a windowed pipeline's ClickHouse sink takes window results only".into(),
                    stage: FailedStage::Encode,
                });
            }
        }
        self.batch.push(b'\n');
        self.rows += 1;
        let oldest = *self.oldest.get_or_insert_with(Instant::now);
        if self.rows >= self.batch_rows
            || self.batch.len() >= self.batch_bytes
            || oldest.elapsed() >= self.batch_interval
        {
            self.insert(blocked, stop)?;
        }
        Ok(Sent::Accepted)
    }

    fn flush(&mut self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        self.insert(blocked, stop)
    }

    fn tick(&mut self, blocked: &mut Duration, stop: &dyn Fn() -> bool) -> Result<(), SinkError> {
        match self.oldest {
            Some(oldest) if oldest.elapsed() >= self.batch_interval => self.insert(blocked, stop),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pipeline_crds::manifest::from_yaml;
    use serde_json::json;

    use super::*;
    use crate::sink::registry::RowsTarget;

    /// The ClickHouse error inside a sink error.
    fn table_refusal(err: &SinkError) -> Option<&ClickHouseError> {
        match err {
            SinkError::Rows(rows) => rows.downcast_ref(),
            _ => None,
        }
    }

    fn plan() -> Plan {
        let spec = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {clickhouse: {url: 'http://ch:8123', table: clicks}}\n  transform: {keyBy: user-id, timestamp: {field: ts}}\n  window: {tumbling: {size: 1m}}\n  aggregates: [{name: clicks, function: count}, {name: avg_ms, function: avg, field: ms}]\n",
            "test",
        )
        .unwrap()
        .spec;
        Plan::of_spec(&spec, vec![1])
    }

    #[test]
    fn the_created_table_replaces_by_version_per_key_and_window_start() {
        let columns = columns(&plan());
        assert_eq!(
            create_statement("db", "clicks", &columns),
            "CREATE TABLE IF NOT EXISTS `db`.`clicks` (`user_id` String, `window_start` Int64, `window_end` Int64, `clicks` UInt64, `avg_ms` Nullable(Float64), `_version` UInt64) ENGINE = ReplacingMergeTree(`_version`) ORDER BY (`user_id`, `window_start`)"
        );
    }

    #[test]
    fn rows_are_json_lines_with_the_sanitised_key_and_the_version() {
        let columns = columns(&plan());
        let result = WindowResult {
            key: Arc::from("u-1"),
            key_value: json!("u-1"),
            start: 60_000,
            end: 120_000,
            values: vec![("clicks".into(), json!(3)), ("avg_ms".into(), json!(null))],
        };
        let line = serde_json::to_string(&JsonRow {
            columns: &columns,
            result: &result,
            version: 42,
        })
        .unwrap();
        assert_eq!(
            line,
            r#"{"user_id":"u-1","window_start":60000,"window_end":120000,"clicks":3,"avg_ms":null,"_version":42}"#
        );
    }

    #[test]
    fn first_and_last_are_text_columns_written_as_text() {
        let spec = from_yaml(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {name: t}\nspec:\n  kafka: {bootstrapServers: 'k:9092'}\n  source: {topic: in}\n  sink: {clickhouse: {url: 'http://ch:8123', table: s}}\n  transform: {keyBy: u, timestamp: {field: ts}}\n  window: {session: {gap: 30m}}\n  aggregates: [{name: country, function: last, field: c}, {name: tier, function: first, field: t}, {name: none, function: first, field: x}]\n",
            "test",
        )
        .unwrap()
        .spec;
        let columns = columns(&Plan::of_spec(&spec, vec![1]));
        assert!(create_statement("db", "s", &columns).contains(
            "`country` Nullable(String), `tier` Nullable(String), `none` Nullable(String)"
        ));
        let result = WindowResult {
            key: Arc::from("u-1"),
            key_value: json!("u-1"),
            start: 0,
            end: 10,
            values: vec![
                ("country".into(), json!("fr")),
                ("tier".into(), json!(3)),
                ("none".into(), json!(null)),
            ],
        };
        let line = serde_json::to_string(&JsonRow {
            columns: &columns,
            result: &result,
            version: 1,
        })
        .unwrap();
        assert!(
            line.contains(r#""country":"fr","tier":"3","none":null"#),
            "{line}"
        );
    }

    /// A stand-in for ClickHouse's HTTP interface: answers each statement from `answer`
    /// (status, body) and records every statement with its body.
    struct Endpoint {
        url: String,
        seen: Arc<std::sync::Mutex<Vec<(String, String)>>>,
        /// The request target (path and query) of each request.
        targets: Arc<std::sync::Mutex<Vec<String>>>,
    }

    impl Endpoint {
        fn start(answer: impl Fn(&str) -> (u16, &'static str) + Send + 'static) -> Self {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
            let log = Arc::clone(&seen);
            let targets = Arc::new(std::sync::Mutex::new(Vec::new()));
            let target_log = Arc::clone(&targets);
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let Ok(mut stream) = stream else { return };
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut request_line = String::new();
                    reader.read_line(&mut request_line).unwrap();
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).unwrap();
                        if header.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':')
                            && name.eq_ignore_ascii_case("content-length")
                        {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let target = request_line.split(' ').nth(1).unwrap_or_default();
                    target_log.lock().unwrap().push(target.to_owned());
                    let query = target.split_once('?').map_or("", |(_, q)| q);
                    let statement = form_urlencoded::parse(query.as_bytes())
                        .find(|(k, _)| k == "query")
                        .map(|(_, v)| v.into_owned())
                        .unwrap_or_default();
                    let (status, text) = answer(&statement);
                    log.lock()
                        .unwrap()
                        .push((statement, String::from_utf8(body).unwrap()));
                    let _ = write!(
                        stream,
                        "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                        text.len()
                    );
                }
            });
            Self { url, seen, targets }
        }

        /// The `insert_deduplication_token` of each INSERT (empty without one).
        fn tokens(&self) -> Vec<String> {
            self.targets
                .lock()
                .unwrap()
                .iter()
                .filter(|t| t.contains("INSERT"))
                .map(|t| {
                    t.split('&')
                        .find_map(|p| p.strip_prefix("insert_deduplication_token="))
                        .unwrap_or_default()
                        .to_owned()
                })
                .collect()
        }

        fn inserts(&self) -> Vec<String> {
            self.seen
                .lock()
                .unwrap()
                .iter()
                .filter(|(statement, _)| statement.starts_with("INSERT"))
                .map(|(_, body)| body.clone())
                .collect()
        }
    }

    /// A sink into `endpoint` (which creates the table) with the batch settings `batch`.
    fn rows_to(endpoint: &Endpoint, batch: &str, metrics: Arc<Metrics>) -> ClickHouseRows {
        let url = &endpoint.url;
        let spec = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: in}}\n  sink: {{clickhouse: {{url: '{url}', table: clicks, createTable: true, {batch}}}}}\n  transform: {{keyBy: user-id, timestamp: {{field: ts}}}}\n  window: {{tumbling: {{size: 1m}}}}\n  aggregates: [{{name: clicks, function: count}}]\n"),
            "test",
        )
        .unwrap()
        .spec;
        let plan = Plan::of_spec(&spec, vec![1]);
        let RowsTarget::ClickHouse(sink) = plan.rows.clone() else {
            panic!("a ClickHouse sink")
        };
        ClickHouseRows::new(&plan, &sink, metrics, SlotLabels::default()).unwrap()
    }

    /// A stateless pipeline's sink into `endpoint`.
    fn records_to(endpoint: &Endpoint) -> Result<ClickHouseRows, SinkError> {
        let url = &endpoint.url;
        let spec = from_yaml(
            &format!("apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'k:9092'}}\n  source: {{topic: clicks}}\n  sink: {{clickhouse: {{url: '{url}', table: raw, batchRows: 2}}}}\n"),
            "test",
        )
        .unwrap()
        .spec;
        let plan = Plan::of_spec(&spec, vec![1]);
        let RowsTarget::ClickHouse(sink) = plan.rows.clone() else {
            panic!("a ClickHouse sink")
        };
        ClickHouseRows::new(
            &plan,
            &sink,
            Arc::new(Metrics::new()),
            SlotLabels::default(),
        )
    }

    fn record(json: &str, offset: i64) -> Row {
        Row::Record {
            key: None,
            json: json.as_bytes().to_vec(),
            event_ms: 0,
            source: crate::processor::SourceRef {
                topic: 0,
                partition: 1,
                offset,
            },
        }
    }

    #[test]
    fn a_stateless_pipeline_needs_an_existing_table_it_can_check() {
        let missing = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            _ => (200, ""),
        });
        let err = records_to(&missing).err().unwrap();
        assert!(
            matches!(table_refusal(&err), Some(ClickHouseError::Table(m)) if m.contains("does not exist")),
            "{err}"
        );
        let uncheckable = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "1\n"),
            s if s.starts_with("DESCRIBE") => (
                200,
                "{\"name\":\"user\",\"type\":\"String\",\"default_type\":\"\"}\n{\"name\":\"tags\",\"type\":\"Array(String)\",\"default_type\":\"\"}\n",
            ),
            _ => (200, ""),
        });
        let err = records_to(&uncheckable).err().unwrap();
        assert!(
            matches!(table_refusal(&err), Some(ClickHouseError::Table(m)) if m.contains("column `tags` is Array(String)")),
            "{err}"
        );
        assert!(
            !err.is_retryable(),
            "refused until the table or spec changes"
        );
    }

    #[test]
    fn stateless_records_are_inserted_as_table_rows_and_misfits_rejected() {
        let endpoint = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "1\n"),
            s if s.starts_with("DESCRIBE") => (
                200,
                "{\"name\":\"user\",\"type\":\"String\",\"default_type\":\"\"}\n{\"name\":\"_offset\",\"type\":\"UInt64\",\"default_type\":\"\"}\n",
            ),
            _ => (200, ""),
        });
        let mut rows = records_to(&endpoint).unwrap();
        let (mut blocked, stop) = (Duration::ZERO, || false);
        let sent = rows
            .send(record(r#"{"user":7}"#, 40), &mut blocked, &stop)
            .unwrap();
        assert!(
            matches!(&sent, Sent::Rejected { error, .. } if error.starts_with("field `user` is 7")),
        );
        for (json, offset) in [(r#"{"user":"a","x":1}"#, 41), (r#"{"user":"b"}"#, 42)] {
            let sent = rows
                .send(record(json, offset), &mut blocked, &stop)
                .unwrap();
            assert!(matches!(sent, Sent::Accepted));
        }
        assert_eq!(
            endpoint.inserts(),
            ["{\"_offset\":41,\"user\":\"a\"}\n{\"_offset\":42,\"user\":\"b\"}\n"]
        );
    }

    fn window(key: &str, version: u64) -> Row {
        Row::Window {
            result: WindowResult {
                key: Arc::from(key),
                key_value: json!(key),
                start: 0,
                end: 60_000,
                values: vec![("clicks".into(), json!(1))],
            },
            version,
        }
    }

    #[test]
    fn rows_are_inserted_when_the_batch_is_full_and_when_its_time_is_up() {
        let endpoint = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            _ => (200, ""),
        });
        let mut rows = rows_to(
            &endpoint,
            "batchRows: 2, batchInterval: 300ms",
            Arc::new(Metrics::new()),
        );
        assert!(
            endpoint.seen.lock().unwrap()[1]
                .0
                .starts_with("CREATE TABLE IF NOT EXISTS"),
            "{:?}",
            endpoint.seen.lock().unwrap()
        );
        let (mut blocked, stop) = (Duration::ZERO, || false);
        rows.send(window("a", 1), &mut blocked, &stop).unwrap();
        rows.tick(&mut blocked, &stop).unwrap();
        assert!(endpoint.inserts().is_empty(), "one row, batch not due yet");
        rows.send(window("b", 2), &mut blocked, &stop).unwrap();
        assert_eq!(endpoint.inserts().len(), 1, "batchRows reached");
        assert_eq!(endpoint.inserts()[0].lines().count(), 2);
        rows.send(window("c", 3), &mut blocked, &stop).unwrap();
        std::thread::sleep(Duration::from_millis(350));
        rows.tick(&mut blocked, &stop).unwrap();
        let inserts = endpoint.inserts();
        assert_eq!(inserts.len(), 2, "batchInterval passed: inserted on a tick");
        assert!(inserts[1].contains(r#""user_id":"c""#), "{}", inserts[1]);
        rows.flush(&mut blocked, &stop).unwrap();
        assert_eq!(endpoint.inserts().len(), 2, "nothing left to flush");
    }

    #[test]
    fn a_failed_insert_is_retried_and_the_wait_counts_as_backpressure() {
        let failures = std::sync::atomic::AtomicU32::new(0);
        let endpoint = Endpoint::start(move |statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            s if s.starts_with("INSERT")
                && failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 2 =>
            {
                (503, "Code: 252, Too many parts")
            }
            _ => (200, ""),
        });
        let metrics = Arc::new(Metrics::new());
        let mut rows = rows_to(&endpoint, "batchRows: 100", Arc::clone(&metrics));
        let (mut blocked, stop) = (Duration::ZERO, || false);
        rows.send(window("a", 1), &mut blocked, &stop).unwrap();
        rows.flush(&mut blocked, &stop).unwrap();
        let inserts = endpoint.inserts();
        assert_eq!(inserts.len(), 3, "two refusals, then accepted");
        assert!(
            inserts.iter().all(|body| body == &inserts[0]),
            "the same batch each time"
        );
        // Backoff 200 ms, then 400 ms.
        assert!(blocked >= Duration::from_millis(600), "{blocked:?}");
        let labels = SlotLabels::default();
        assert_eq!(metrics.sink_insert_failures.get_or_create(&labels).get(), 2);
        assert_eq!(metrics.sink_rows.get_or_create(&labels).get(), 1);
    }

    #[test]
    fn a_batch_is_also_inserted_by_size_and_a_newer_server_gets_one_token_per_batch_on_every_retry()
    {
        let failures = std::sync::atomic::AtomicU32::new(0);
        let endpoint = Endpoint::start(move |statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            "SELECT version()" => (200, "23.8.2.7\n"),
            s if s.starts_with("INSERT")
                && failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < 1 =>
            {
                (503, "Code: 252, Too many parts")
            }
            _ => (200, ""),
        });
        let mut rows = rows_to(
            &endpoint,
            "batchRows: 1000, batchBytes: 1024, batchInterval: 1h",
            Arc::new(Metrics::new()),
        );
        let (mut blocked, stop) = (Duration::ZERO, || false);
        let mut sent = 0;
        while endpoint.inserts().is_empty() {
            rows.send(window(&format!("user-{sent}"), 1), &mut blocked, &stop)
                .unwrap();
            sent += 1;
            assert!(sent < 100, "batchBytes never reached");
        }
        let inserts = endpoint.inserts();
        assert_eq!(inserts.len(), 2, "refused once, then accepted");
        assert!(
            inserts[0].len() >= 1024 && inserts[0].len() < 1024 + 200,
            "{}",
            inserts[0].len()
        );
        assert_eq!(inserts[0], inserts[1], "a retried batch is byte-identical");
        let tokens = endpoint.tokens();
        assert_eq!(tokens.len(), 2);
        assert_eq!(tokens[0].len(), 64, "SHA-256 in hex: {tokens:?}");
        assert_eq!(tokens[0], tokens[1], "and carries the same token");

        // 18.16 (what Debian ships) does not take the setting: no token is sent.
        let old = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            "SELECT version()" => (200, "18.16.1\n"),
            _ => (200, ""),
        });
        let mut rows = rows_to(&old, "batchRows: 1", Arc::new(Metrics::new()));
        rows.send(window("a", 1), &mut blocked, &stop).unwrap();
        assert_eq!(old.tokens(), [String::new()]);
    }

    #[test]
    fn a_stop_while_retrying_ends_the_insert_without_losing_the_batch_silently() {
        let endpoint = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            s if s.starts_with("INSERT") => (500, "down"),
            _ => (200, ""),
        });
        let mut rows = rows_to(&endpoint, "batchRows: 100", Arc::new(Metrics::new()));
        let mut blocked = Duration::ZERO;
        rows.send(window("a", 1), &mut blocked, &|| false).unwrap();
        let stop_at = Instant::now() + Duration::from_millis(500);
        let result = rows.flush(&mut blocked, &|| Instant::now() >= stop_at);
        assert!(matches!(result, Err(SinkError::Interrupted)), "{result:?}");
        assert_eq!(
            rows.rows, 1,
            "the batch stays: offsets past it are not committed"
        );
    }

    #[test]
    fn an_outage_shows_as_backpressure_while_the_insert_still_retries() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let endpoint = Endpoint::start(|statement| match statement {
            s if s.starts_with("EXISTS") => (200, "0\n"),
            s if s.starts_with("INSERT") => (500, "down"),
            _ => (200, ""),
        });
        let metrics = Arc::new(Metrics::new());
        let mut rows = rows_to(&endpoint, "batchRows: 100", metrics.clone());
        let labels = rows.labels.clone();
        let mut blocked = Duration::ZERO;
        rows.send(window("a", 1), &mut blocked, &|| false).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let retrying = std::thread::spawn(move || {
            let mut blocked = Duration::ZERO;
            let result = rows.flush(&mut blocked, &|| stop_flag.load(Ordering::Relaxed));
            (result.is_err(), blocked, rows.take_reported_blocked())
        });
        let backpressured = || metrics.backpressured.get_or_create(&labels).get();
        let deadline = Instant::now() + Duration::from_secs(20);
        while backpressured() < 0.5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let seen = backpressured();
        let still_retrying = !retrying.is_finished();
        stop.store(true, Ordering::Relaxed);
        let (failed, blocked, reported) = retrying.join().unwrap();
        assert!(
            seen >= 0.5,
            "{seen} s of backpressure reported during the outage"
        );
        assert!(still_retrying, "seen while the insert was still retrying");
        assert!(failed, "stopped, not inserted");
        assert!(reported <= blocked, "{reported:?} of {blocked:?}");
        assert!(
            (backpressured() - reported.as_secs_f64()).abs() < 1e-9,
            "the metric holds exactly what the sink says it reported, so the slot's report adds only the rest"
        );
    }

    #[test]
    fn a_table_that_does_not_fit_is_described_difference_by_difference() {
        let columns = columns(&plan());
        let existing = [
            ("user_id".to_owned(), "String".to_owned()),
            ("window_start".to_owned(), "DateTime".to_owned()),
            ("window_end".to_owned(), "Int64".to_owned()),
            ("clicks".to_owned(), "UInt64".to_owned()),
        ];
        let found = differences(&columns, &existing, "MergeTree");
        assert_eq!(
            found,
            [
                "column `window_start` is DateTime, want one of Int64, UInt64",
                "column `avg_ms` is missing (want Nullable(Float64))",
                "column `_version` is missing (want UInt64)",
                "engine is MergeTree, want ReplacingMergeTree(`_version`) ordered by the key and `window_start` (replays would double-count)",
            ]
        );
        let fits: Vec<(String, String)> = columns
            .iter()
            .map(|c| (c.name.clone(), c.create.to_owned()))
            .collect();
        assert!(differences(&columns, &fits, "ReplacingMergeTree").is_empty());
    }
}
