//! Enrichment end to end on tansu: clicks joined with a profile table whose updates and
//! tombstones are interleaved with the clicks in event time, clicks out of order, runtime
//! processes killed with SIGKILL mid-stream. Deduplicated by (key, window), the output must equal
//! an offline reference that applies the as-of rule, exactly; keyed by a joined field through the
//! repartition topic, too.

mod common;

use std::{collections::BTreeMap, path::Path, time::Duration};

use common::{PARTITIONS, between, scratch, start_owning_every_partition};
use pipeline_e2e::{
    broker::{Broker, Consumed, Outgoing, Rng, Tansu, produce_one_per_batch},
    dataset::{Comparison, compare_by},
    process::Launch,
};
use rdkafka::{
    ClientConfig,
    producer::{BaseProducer, BaseRecord, Producer},
};
use serde_json::{Value, json};

const BASE_MS: i64 = 1_700_000_000_000;
const WINDOW_MS: i64 = 10_000;
const USERS: u64 = 40;
const COUNTRIES: [&str; 5] = ["fr", "de", "it", "es", "pt"];

/// A table record as written: key, country (`None`: a tombstone), timestamp.
type Update = (String, Option<&'static str>, i64);

/// The clicks and the table updates, in the order they are written.
struct Clickstream {
    /// Segments: the updates written (and acknowledged) before the clicks after them.
    segments: Vec<(Vec<Update>, Vec<Outgoing>)>,
    /// (user, event time) of every click, in write order.
    clicks: Vec<(String, i64)>,
    /// Every table record, in write order.
    updates: Vec<Update>,
}

fn user(u: u64) -> String {
    format!("u-{u:03}")
}

impl Clickstream {
    /// `n` clicks 5 ms apart with up to 2 s of disorder; an update (one in eight a tombstone)
    /// every 200 ms of event time, each written before any click at or after its timestamp.
    fn generate(n: usize, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut pending: Vec<Update> = (0..USERS)
            .map(|u| (user(u), Some(COUNTRIES[(u % 5) as usize]), BASE_MS - 60_000))
            .collect();
        // The closing clicks (below) have a profile too, so no join drops them.
        pending
            .extend((0..PARTITIONS).map(|p| (format!("closer-{p}"), Some("fr"), BASE_MS - 60_000)));
        let mut ts = BASE_MS;
        while ts < BASE_MS + n as i64 * 5 {
            let country = (rng.below(8) > 0).then(|| COUNTRIES[rng.below(5) as usize]);
            pending.push((user(rng.below(USERS)), country, ts + rng.below(200) as i64));
            ts += 200;
        }
        pending.sort_by_key(|u| u.2);
        let mut pending = pending.into_iter().peekable();
        let (mut segments, mut clicks, mut updates) = (Vec::new(), Vec::new(), Vec::new());
        for chunk in (0..n).collect::<Vec<_>>().chunks(100) {
            let mut batch = Vec::new();
            for i in chunk {
                let u = rng.below(USERS);
                let t = BASE_MS + *i as i64 * 5 - rng.below(2_000) as i64;
                let partition = (u % PARTITIONS as u64) as i32;
                let value = json!({"dev": user(u), "ts": t, "page": i % 7});
                batch.push((
                    partition,
                    Some(user(u).into_bytes()),
                    value.to_string().into_bytes(),
                ));
                clicks.push((user(u), t));
            }
            let newest = BASE_MS + *chunk.last().expect("a chunk") as i64 * 5;
            let mut before = Vec::new();
            while let Some(u) = pending.next_if(|u| u.2 <= newest) {
                before.push(u);
            }
            updates.extend(before.iter().cloned());
            segments.push((before, batch));
        }
        // A click far ahead on every partition closes the last windows.
        let closing: Vec<Outgoing> = (0..PARTITIONS)
            .map(|p| {
                let value =
                    json!({"dev": format!("closer-{p}"), "ts": BASE_MS + n as i64 * 5 + 60_000});
                (
                    p,
                    Some(format!("closer-{p}").into_bytes()),
                    value.to_string().into_bytes(),
                )
            })
            .collect();
        segments.push((Vec::new(), closing));
        Self {
            segments,
            clicks,
            updates,
        }
    }

    /// The country of `user` in force at `at` by the as-of rule (ties: the record written last).
    fn country_at(&self, user: &str, at: i64) -> Option<&'static str> {
        self.updates
            .iter()
            .enumerate()
            .filter(|(_, (u, _, ts))| u == user && *ts <= at)
            .max_by_key(|(i, (_, _, ts))| (*ts, *i))
            .and_then(|(_, (_, country, _))| *country)
    }

    /// Per (user, window): the count and the `last` country (that of the latest click whose
    /// profile existed; ties by arrival order).
    fn per_user(&self) -> BTreeMap<(String, i64), Value> {
        // (clicks, the latest click with a country: its time, arrival order, country)
        type Window<'a> = (i64, Option<(i64, usize, &'a str)>);
        let mut acc: BTreeMap<(String, i64), Window<'_>> = BTreeMap::new();
        for (order, (u, t)) in self.clicks.iter().enumerate() {
            let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
            let e = acc.entry((u.clone(), start)).or_default();
            e.0 += 1;
            if let Some(country) = self.country_at(u, *t)
                && e.1.is_none_or(|(lt, lo, _)| (*t, order) > (lt, lo))
            {
                e.1 = Some((*t, order, country));
            }
        }
        acc.into_iter()
            .map(|((u, start), (n, last))| {
                let value = json!({
                    "dev": u, "window_start": start, "window_end": start + WINDOW_MS,
                    "clicks": n, "country": last.map(|(_, _, c)| c),
                });
                ((u, start), value)
            })
            .collect()
    }

    /// Per (country, window): the clicks of users whose profile existed then.
    fn per_country(&self) -> BTreeMap<(String, i64), Value> {
        let mut acc: BTreeMap<(String, i64), i64> = BTreeMap::new();
        for (u, t) in &self.clicks {
            if let Some(country) = self.country_at(u, *t) {
                let start = t.div_euclid(WINDOW_MS) * WINDOW_MS;
                *acc.entry((country.to_owned(), start)).or_default() += 1;
            }
        }
        acc.into_iter()
            .map(|((c, start), n)| {
                let value = json!({"country": c, "window_start": start, "window_end": start + WINDOW_MS, "clicks": n});
                ((c, start), value)
            })
            .collect()
    }
}

/// Writes table records with their timestamps (a tombstone's is its time), one per batch, and
/// waits for every acknowledgement.
fn produce_updates(bootstrap: &str, updates: &[Update]) {
    if updates.is_empty() {
        return;
    }
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("batch.num.messages", "1")
        .create()
        .unwrap();
    for (key, country, ts) in updates {
        let value = country.map(|c| json!({"country": c, "updated_at": ts}).to_string());
        let mut record = BaseRecord::<str, str>::to("profiles")
            .key(key.as_str())
            .timestamp(*ts);
        if let Some(v) = &value {
            record = record.payload(v.as_str());
        }
        producer.send(record).map_err(|(e, _)| e).unwrap();
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(60)).unwrap();
}

/// Streams the segments in, on a thread: each segment's updates, acknowledged, then its clicks.
fn stream(bootstrap: &str, data: &Clickstream) -> std::thread::JoinHandle<()> {
    let bootstrap = bootstrap.to_owned();
    let segments = data.segments.clone();
    std::thread::spawn(move || {
        for (updates, clicks) in segments {
            produce_updates(&bootstrap, &updates);
            produce_one_per_batch(&bootstrap, "clicks", &clicks);
            std::thread::sleep(Duration::from_millis(60));
        }
    })
}

/// The pipeline: clicks joined with `profiles` (plus `enrich_extra`), 10 s tumbling windows,
/// checkpoints every second.
fn manifest(
    dir: &Path,
    name: &str,
    enrich_extra: &str,
    transform: &str,
    aggregates: &str,
) -> std::path::PathBuf {
    let path = dir.join("pipeline.yaml");
    let text = format!(
        "apiVersion: sluice.dev/v1alpha1
kind: PipelineDeployment
metadata: {{name: {name}, namespace: e2e}}
spec:
  kafka:
    bootstrapServers: 'replaced:9092'
    properties: {{session.timeout.ms: '6000', heartbeat.interval.ms: '500', batch.num.messages: '1'}}
  source: {{topic: clicks, startingOffsets: earliest}}
  enrich: [{{name: profile, topic: profiles, lookup: dev, fields: [country], timestamp: {{field: updated_at}}{enrich_extra}}}]
  transform: {{{transform}, timestamp: {{field: ts}}, watermark: {{maxOutOfOrderness: 5s}}}}
  window: {{tumbling: {{size: 10s}}}}
  aggregates: {aggregates}
  sink: {{kafka: {{topic: out}}}}
  checkpoint: {{interval: 1s, retain: 3, storage: {{local: {{path: '{}'}}}}}}
",
        dir.join("checkpoints").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// The output a run must give: windows keyed by `key_field`, equal to `reference`.
struct Expected<'a> {
    key_field: &'a str,
    reference: &'a BTreeMap<(String, i64), Value>,
}

/// Runs `manifest` in one runtime process, SIGKILLed and restarted `kills` times while the data
/// streams in; returns the output compared with the expected one.
fn run_and_compare(
    broker: &Broker,
    dir: &Path,
    manifest: std::path::PathBuf,
    data: &Clickstream,
    kills: usize,
    expected: &Expected<'_>,
) -> Comparison {
    let Expected {
        key_field,
        reference,
    } = *expected;
    let launch = Launch {
        manifest,
        bootstrap: broker.bootstrap.clone(),
        slots: 1,
        log_dir: dir.to_owned(),
    };
    // (A repartitioned pipeline also owns the repartition topic's partitions: it is not
    // killed, and needs no wait for its source partitions.)
    let mut p = if kills == 0 {
        launch.start("enrich-0")
    } else {
        start_owning_every_partition(&launch, "enrich-0")
    };
    let producer = stream(&broker.bootstrap, data);
    let mut rng = Rng::new(common::seed());
    for kill in 0..kills {
        std::thread::sleep(between(&mut rng, 1_500, 3_500));
        p.kill();
        eprintln!("kill {}: SIGKILL", kill + 1);
        p = start_owning_every_partition(&launch, "enrich-0");
    }
    producer.join().unwrap();
    let wanted = |out: &[Consumed]| {
        let seen: std::collections::BTreeSet<(String, i64)> = out
            .iter()
            .filter_map(|r| serde_json::from_slice::<Value>(r.value.as_deref()?).ok())
            .map(|v| {
                (
                    v[key_field].as_str().unwrap_or("").to_owned(),
                    v["window_start"].as_i64().unwrap_or(0),
                )
            })
            .filter(|id| reference.contains_key(id))
            .collect();
        seen.len() >= reference.len()
    };
    let outputs = broker.consume("out", Duration::from_secs(120), wanted);
    p.terminate(Duration::from_secs(10));
    let comparison = compare_by(key_field, &outputs, reference);
    eprintln!(
        "{} clicks, {} updates, {} windows expected; output {} records, {} windows, {} identical repeats",
        data.clicks.len(),
        data.updates.len(),
        reference.len(),
        comparison.records,
        comparison.windows,
        comparison.identical_repeats
    );
    comparison
}

fn assert_exact(comparison: &Comparison, dir: &Path) {
    common::assert_exact(comparison, dir);
    common::cleanup(dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn enriched_windows_survive_sigkill_and_equal_the_offline_as_of_reference() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("clicks", PARTITIONS), ("profiles", 2), ("out", 2)]);
    let seed = common::seed();
    let data = Clickstream::generate(6_000, seed);
    let dir = scratch("enrich-kill");
    let manifest = manifest(
        &dir,
        "enriched",
        "",
        "keyBy: dev, sourceKeyed: true",
        "[{name: clicks, function: count}, {name: country, function: last, field: profile.country}]",
    );
    let reference = data.per_user();
    let expected = Expected {
        key_field: "dev",
        reference: &reference,
    };
    let comparison = run_and_compare(&tansu, &dir, manifest, &data, 2, &expected);
    assert_exact(&comparison, &dir);
}

#[cfg_attr(
    sluice_skip_broker_tests,
    ignore = "needs the tansu broker (SLUICE_SKIP_BROKER_TESTS)"
)]
#[test]
fn keyed_by_a_joined_field_through_the_repartition_topic_the_counts_per_country_are_exact() {
    let tansu = Tansu::start();
    tansu.create_topics(&[("clicks", PARTITIONS), ("profiles", 2), ("out", 2)]);
    let seed = common::seed();
    let data = Clickstream::generate(4_000, seed);
    let dir = scratch("enrich-country");
    // Clicks without a profile are dropped: they have no country to be keyed by.
    let manifest = manifest(
        &dir,
        "per-country",
        ", onMissing: drop",
        "keyBy: profile.country",
        "[{name: clicks, function: count}]",
    );
    let reference = data.per_country();
    let expected = Expected {
        key_field: "country",
        reference: &reference,
    };
    let comparison = run_and_compare(&tansu, &dir, manifest, &data, 0, &expected);
    assert_exact(&comparison, &dir);
}
