//! Where the autoscaler's metrics come from (`spec.autoscaler.metrics`): a Prometheus server
//! queried with PromQL over the window, or a direct scrape of every runtime pod's `/metrics`
//! with the samples kept here between evaluations. Both answer an [`Input`] for the policy;
//! anything missing, stale, partial or reset is [`Unknown`], never zero.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use futures::future::BoxFuture;
use pipeline_crds::contract::metrics::{self as names, label};

use super::{
    observation::{
        self, Expectation, History, Observation, PartitionObservation, PartitionSample, Sample,
        Unknown,
    },
    policy::Input,
};

/// Seconds a scrape or query may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// The pipeline to read.
#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    /// Namespace (the `namespace` label of the runtime's metrics).
    pub namespace: String,
    /// PipelineDeployment name (the `pipeline` label).
    pub name: String,
}

/// Why the runtime processes' `/metrics` URLs are unknown.
#[derive(Debug, thiserror::Error)]
pub enum EndpointsError {
    /// The Kubernetes API did not list the pods.
    #[error("listing the runtime pods: {0}")]
    ListingPods(#[source] kube::Error),
}

/// Where a pipeline's runtime processes serve `/metrics` (direct scrape): the pods of its
/// StatefulSet in a cluster, the processes of local mode.
pub trait Endpoints: Send + Sync {
    /// The `/metrics` URLs of `target`'s runtime processes.
    fn endpoints<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<String>, EndpointsError>>;
}

/// A fixed list of URLs (local mode, tests).
impl Endpoints for Vec<String> {
    fn endpoints<'a>(
        &'a self,
        _: &'a Target,
    ) -> BoxFuture<'a, Result<Vec<String>, EndpointsError>> {
        Box::pin(async move { Ok(self.clone()) })
    }
}

/// What to read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Query {
    /// Seconds since the Unix epoch.
    pub now: f64,
    /// A rescale in progress since then: first find when it settled.
    pub settling_since: Option<f64>,
    /// Where the window starts when nothing is settling.
    pub window_since: f64,
    /// What the window must contain.
    pub expect: Expectation,
}

/// A source of the runtime's metrics.
pub trait MetricsSource: Send + Sync {
    /// Reads the window for `target`.
    fn read<'a>(&'a self, target: &'a Target, query: Query) -> BoxFuture<'a, Input>;
}

/// Settling first, then the window since it settled.
fn input(
    query: Query,
    settled: impl FnOnce(f64) -> Option<f64>,
    observe: impl FnOnce(f64) -> Result<Observation, Unknown>,
) -> Input {
    let mut since = query.window_since;
    let mut stable_at = None;
    if let Some(started) = query.settling_since {
        match settled(started) {
            Some(at) => {
                stable_at = Some(at);
                since = since.max(at);
            }
            None => {
                return Input {
                    observation: Err(Unknown::Missing("a rescale is settling".into())),
                    stable_at: None,
                };
            }
        }
    }
    Input {
        observation: observe(since),
        stable_at,
    }
}

/// Direct scrape: every evaluation scrapes each pod once and keeps the samples of the last
/// `keep` seconds per pipeline.
pub struct DirectScrape {
    histories: Mutex<HashMap<(String, String), History>>,
    keep: f64,
    endpoints: Box<dyn Endpoints>,
}

impl DirectScrape {
    /// Scraping the processes `endpoints` lists, keeping `keep` seconds of samples (the longest
    /// metrics window).
    pub fn new(keep: f64, endpoints: Box<dyn Endpoints>) -> Self {
        Self {
            histories: Mutex::new(HashMap::new()),
            keep,
            endpoints,
        }
    }

    /// Forgets a pipeline's samples (deleted, or its pods replaced).
    pub fn forget(&self, target: &Target) {
        self.histories
            .lock()
            .expect("not poisoned")
            .remove(&(target.namespace.clone(), target.name.clone()));
    }

    /// Adds a sample (tests, and callers that scrape themselves).
    pub fn record(&self, target: &Target, sample: Sample) {
        let mut histories = self.histories.lock().expect("not poisoned");
        histories
            .entry((target.namespace.clone(), target.name.clone()))
            .or_default()
            .push(sample, self.keep);
    }

    fn input(&self, target: &Target, query: Query) -> Input {
        let histories = self.histories.lock().expect("not poisoned");
        let empty = History::default();
        let history = histories
            .get(&(target.namespace.clone(), target.name.clone()))
            .unwrap_or(&empty);
        let samples = history.samples();
        input(
            query,
            |started| observation::settled_at(samples, started, query.expect),
            |since| observation::observe(samples, since, query.now, query.expect),
        )
    }
}

impl MetricsSource for DirectScrape {
    fn read<'a>(&'a self, target: &'a Target, query: Query) -> BoxFuture<'a, Input> {
        Box::pin(async move {
            let scraped = match self.endpoints.endpoints(target).await {
                Ok(endpoints) => {
                    let (namespace, name) = (target.namespace.clone(), target.name.clone());
                    tokio::task::spawn_blocking(move || {
                        scrape_all(&endpoints, &namespace, &name).map_err(|e| e.to_string())
                    })
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()))
                }
                Err(e) => Err(e.to_string()),
            };
            match scraped {
                Ok(mut sample) => {
                    sample.at = query.now;
                    self.record(target, sample);
                }
                Err(error) => tracing::warn!(pipeline = %target.name, %error, "scrape failed"),
            }
            self.input(target, query)
        })
    }
}

/// Why a scrape of the runtime pods failed.
#[derive(Debug, thiserror::Error)]
pub enum ScrapeError {
    /// No pod is running.
    #[error("no runtime pod to scrape")]
    NoPods,
    /// The pods could not be listed.
    #[error("listing the runtime pods: {0}")]
    Pods(String),
    /// A pod did not answer.
    #[error("{url}: {source}")]
    Fetch {
        /// The endpoint.
        url: String,
        /// The HTTP error.
        source: Box<ureq::Error>,
    },
    /// A pod's answer is not a metrics exposition.
    #[error("{url}: {source}")]
    Exposition {
        /// The endpoint.
        url: String,
        /// The parse error.
        source: std::io::Error,
    },
}

/// An HTTP client for the pods' `/metrics`, with the scrape timeout.
fn scrape_agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(TIMEOUT))
        .build()
        .new_agent()
}

/// One pod's `/metrics` text.
fn fetch_exposition(agent: &ureq::Agent, url: &str) -> Result<String, ScrapeError> {
    let fetch = |source| ScrapeError::Fetch {
        url: url.to_owned(),
        source: Box::new(source),
    };
    agent
        .get(url)
        .call()
        .map_err(fetch)?
        .body_mut()
        .read_to_string()
        .map_err(fetch)
}

/// Scrapes every endpoint into one sample; any endpoint failing fails the sample (a partial
/// sample would read as lower load).
pub fn scrape_all(
    endpoints: &[String],
    namespace: &str,
    name: &str,
) -> Result<Sample, ScrapeError> {
    if endpoints.is_empty() {
        return Err(ScrapeError::NoPods);
    }
    let agent = scrape_agent();
    let mut sample = Sample::default();
    for url in endpoints {
        let body = fetch_exposition(&agent, url)?;
        add_exposition(&mut sample, &body, namespace, name).map_err(|source| {
            ScrapeError::Exposition {
                url: url.clone(),
                source,
            }
        })?;
    }
    Ok(sample)
}

/// The source partitions the runtime pods report (`pipeline_source_partitions`, per topic),
/// summed over the source topics: `None` while no pod reports them. Each pod reads the whole
/// topic metadata, so one answering pod is enough; a pod that does not answer is skipped
/// unless none answers.
pub fn scrape_reported_partitions(
    endpoints: &[String],
    namespace: &str,
    name: &str,
) -> Result<Option<i32>, ScrapeError> {
    let agent = scrape_agent();
    let mut last_error = ScrapeError::NoPods;
    for url in endpoints {
        let body = match fetch_exposition(&agent, url) {
            Ok(body) => body,
            Err(error) => {
                last_error = error;
                continue;
            }
        };
        let reported = reported_partitions_in(&body, namespace, name).map_err(|source| {
            ScrapeError::Exposition {
                url: url.clone(),
                source,
            }
        })?;
        if reported.is_some() {
            return Ok(reported);
        }
        last_error = ScrapeError::NoPods;
    }
    match last_error {
        ScrapeError::NoPods => Ok(None),
        error => Err(error),
    }
}

/// The sum over source topics of `pipeline_source_partitions` in one pod's exposition.
pub fn reported_partitions_in(
    text: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<i32>, std::io::Error> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let per_topic: BTreeMap<&str, f64> = scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == names::SOURCE_PARTITIONS
                && s.labels.get(label::NAMESPACE) == Some(namespace)
                && s.labels.get(label::PIPELINE) == Some(name)
        })
        .filter_map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => {
                Some((s.labels.get(label::TOPIC).unwrap_or_default(), v))
            }
            _ => None,
        })
        .collect();
    let total: f64 = per_topic.values().sum();
    Ok((!per_topic.is_empty() && total >= 1.0).then_some(total as i32))
}

/// Adds one pod's `/metrics` text (Prometheus or OpenMetrics format) to `sample`, keeping this
/// pipeline's series only.
pub fn add_exposition(
    sample: &mut Sample,
    text: &str,
    namespace: &str,
    name: &str,
) -> Result<(), std::io::Error> {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut offsets: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for s in &scrape.samples {
        let labels = &s.labels;
        if labels.get(label::NAMESPACE) != Some(namespace)
            || labels.get(label::PIPELINE) != Some(name)
        {
            continue;
        }
        let value = match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let partition = || {
            format!(
                "{}/{}",
                labels.get(label::TOPIC).unwrap_or_default(),
                labels.get(label::PARTITION).unwrap_or_default()
            )
        };
        let slot = || {
            format!(
                "{}/{}",
                labels.get(label::POD).unwrap_or_default(),
                labels.get(label::SLOT).unwrap_or_default()
            )
        };
        match s.metric.as_str() {
            names::PARTITION_END_OFFSET => {
                offsets.entry((partition(), slot())).or_default().0 = Some(value);
            }
            names::PARTITION_POSITION => {
                offsets.entry((partition(), slot())).or_default().1 = Some(value);
            }
            names::PARTITION_PAUSED if value > 0.0 => {
                sample.paused.insert(partition());
            }
            names::CHECKPOINT_FAILURES_IN_A_ROW if value >= 1.0 => {
                sample.failing_checkpoints.insert(slot(), value as u64);
            }
            names::BUSY_SECONDS_TOTAL => {
                sample.slots.entry(slot()).or_default().busy_seconds = value
            }
            names::BACKPRESSURED_SECONDS_TOTAL => {
                sample
                    .slots
                    .entry(slot())
                    .or_default()
                    .backpressured_seconds = value;
            }
            _ => {}
        }
    }
    for ((id, slot), (end, position)) in offsets {
        if let (Some(end_offset), Some(position)) = (end, position) {
            sample.add_partition(
                id,
                PartitionSample {
                    end_offset,
                    position,
                    slot,
                },
            );
        }
    }
    Ok(())
}

/// How long connecting to Prometheus may take.
pub const PROMETHEUS_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one Prometheus query may take in all (Prometheus's own evaluation timeout, sent
/// with each query, is [`TIMEOUT`]).
pub const PROMETHEUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

/// A Prometheus server that scrapes the runtime pods.
pub struct Prometheus {
    client: prometheus_http_query::Client,
    url: String,
    step: f64,
}

/// Why a Prometheus source cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("invalid Prometheus URL {url}: {reason}")]
pub struct PrometheusUrlError {
    url: String,
    reason: String,
}

impl Prometheus {
    /// A client for `url`; `step` is the resolution (seconds) of the settling query, about the
    /// scrape interval.
    pub fn new(url: &str, step: f64) -> Result<Self, PrometheusUrlError> {
        Self::with_timeouts(
            url,
            step,
            PROMETHEUS_CONNECT_TIMEOUT,
            PROMETHEUS_REQUEST_TIMEOUT,
        )
    }

    /// [`Self::new`] whose HTTP requests give up after `connect` to connect and `request` in
    /// all: a Prometheus that accepts and never answers must not hold the reconcile.
    pub fn with_timeouts(
        url: &str,
        step: f64,
        connect: Duration,
        request: Duration,
    ) -> Result<Self, PrometheusUrlError> {
        let invalid = |reason: String| PrometheusUrlError {
            url: url.into(),
            reason,
        };
        let http = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        let client =
            prometheus_http_query::Client::from(http, url).map_err(|e| invalid(e.to_string()))?;
        Ok(Self {
            client,
            url: url.into(),
            step,
        })
    }

    async fn vector(
        &self,
        q: &str,
        at: f64,
    ) -> Result<Vec<(HashMap<String, String>, f64)>, Unknown> {
        let result = self
            .client
            .query(q)
            .at(at as i64)
            .timeout(TIMEOUT.as_millis() as i64)
            .get()
            .await
            .map_err(|e| Unknown::Missing(format!("Prometheus at {}: {e}", self.url)))?;
        let vector = result
            .data()
            .as_vector()
            .ok_or_else(|| Unknown::Missing(format!("{q}: not a vector")))?;
        vector
            .iter()
            .map(|v| {
                let value = v.sample().value();
                if value.is_finite() {
                    Ok((v.metric().clone(), value))
                } else {
                    Err(Unknown::NotANumber(q.to_string()))
                }
            })
            .collect()
    }

    async fn settled_at(
        &self,
        selector: &str,
        started: f64,
        query: Query,
    ) -> Result<Option<f64>, Unknown> {
        let slots = format!("count({}{selector})", names::BUSY_SECONDS_TOTAL);
        let partitions = format!(
            "count(count by (topic, partition) ({}{selector}))",
            names::PARTITION_POSITION
        );
        let mut points: Vec<(f64, f64, f64)> = Vec::new();
        let mut t = started;
        // Instant queries at each step: few (a settling rescale takes seconds to minutes).
        while t <= query.now && points.len() < 40 {
            let s = self.vector(&slots, t).await?;
            let p = self.vector(&partitions, t).await?;
            points.push((
                t,
                s.first().map_or(0.0, |x| x.1),
                p.first().map_or(0.0, |x| x.1),
            ));
            t += self.step;
        }
        Ok(points
            .into_iter()
            .find(|(_, s, p)| {
                *s == f64::from(query.expect.slots) && *p >= query.expect.partitions as f64
            })
            .map(|(t, _, _)| t))
    }

    /// Each slot's busy and backpressured shares and processing rate over `range`.
    async fn slot_observations(
        &self,
        selector: &str,
        range: &str,
        window: f64,
        now: f64,
    ) -> Result<BTreeMap<String, observation::SlotObservation>, Unknown> {
        let per_slot =
            |metric: &str, f: &str| format!("sum by (pod, slot) ({f}({metric}{selector}{range}))");
        let slot_consumed: HashMap<String, f64> = self
            .vector(&per_slot(names::PARTITION_POSITION, "increase"), now)
            .await?
            .iter()
            .map(|(m, v)| (slot_key(m), v / window))
            .collect();
        let backpressured: HashMap<String, f64> = self
            .vector(&per_slot(names::BACKPRESSURED_SECONDS_TOTAL, "rate"), now)
            .await?
            .iter()
            .map(|(m, v)| (slot_key(m), v.clamp(0.0, 1.0)))
            .collect();
        let mut slot_rates = BTreeMap::new();
        for (m, b) in self
            .vector(&per_slot(names::BUSY_SECONDS_TOTAL, "rate"), now)
            .await?
        {
            let key = slot_key(&m);
            slot_rates.insert(
                key.clone(),
                observation::SlotObservation {
                    busy: b.clamp(0.0, 1.0),
                    backpressure: backpressured.get(&key).copied().unwrap_or(0.0),
                    processing_rate: slot_consumed.get(&key).copied().unwrap_or(0.0),
                },
            );
        }
        Ok(slot_rates)
    }

    async fn observe(
        &self,
        selector: &str,
        since: f64,
        query: Query,
    ) -> Result<Observation, Unknown> {
        let now = query.now;
        let window = (now - since).floor();
        if window < query.expect.min_window {
            return Err(Unknown::Short {
                have: window.max(0.0),
                need: query.expect.min_window,
            });
        }
        let range = format!("[{window:.0}s]");
        let newest = self
            .vector(
                &format!(
                    "time() - max(timestamp({}{selector}))",
                    names::BUSY_SECONDS_TOTAL
                ),
                now,
            )
            .await?;
        let age = newest
            .first()
            .map(|x| x.1)
            .ok_or_else(|| Unknown::Missing(format!("no {} series", names::BUSY_SECONDS_TOTAL)))?;
        if age > query.expect.max_age {
            return Err(Unknown::Stale {
                age,
                limit: query.expect.max_age,
            });
        }
        let resets = self
            .vector(
                &format!(
                    "sum(resets({b}{selector}{range})) + sum(resets({p}{selector}{range}))",
                    b = names::BUSY_SECONDS_TOTAL,
                    p = names::BACKPRESSURED_SECONDS_TOTAL
                ),
                now,
            )
            .await?;
        if resets.first().is_some_and(|x| x.1 > 0.0) {
            return Err(Unknown::Reset("a runtime pod restarted".into()));
        }
        let by_partition = |metric: &str, f: &str| {
            format!("max by (topic, partition) ({f}({metric}{selector}{range}))")
        };
        let key = |m: &HashMap<String, String>| {
            format!(
                "{}/{}",
                m.get(label::TOPIC).map_or("", String::as_str),
                m.get(label::PARTITION).map_or("", String::as_str)
            )
        };
        let arrived = self
            .vector(&by_partition(names::PARTITION_END_OFFSET, "increase"), now)
            .await?;
        let consumed = self
            .vector(&by_partition(names::PARTITION_POSITION, "increase"), now)
            .await?;
        let lag = self
            .vector(
                &format!(
                    "max by (topic, partition) (last_over_time({}{selector}[{:.0}s]))",
                    names::CONSUMER_LAG_RECORDS,
                    query.expect.max_age
                ),
                now,
            )
            .await?;
        let paused: std::collections::BTreeSet<String> = self
            .vector(
                &format!(
                    "max by (topic, partition) ({}{selector}) > 0",
                    names::PARTITION_PAUSED
                ),
                now,
            )
            .await?
            .iter()
            .map(|(m, _)| key(m))
            .collect();
        let reported = arrived.len() + paused.len();
        if reported < query.expect.partitions {
            return Err(Unknown::Partial(format!(
                "{reported} of {} partitions reported",
                query.expect.partitions
            )));
        }
        let lag: HashMap<String, f64> = lag.iter().map(|(m, v)| (key(m), *v)).collect();
        let mut partitions = BTreeMap::new();
        let mut arrival = 0.0;
        for (m, increase) in &arrived {
            let id = key(m);
            if paused.contains(&id) {
                continue;
            }
            let rate = increase / window;
            arrival += rate;
            partitions.insert(
                id.clone(),
                PartitionObservation {
                    lag: lag
                        .get(&id)
                        .copied()
                        .ok_or_else(|| Unknown::Partial(format!("no lag for {id}")))?,
                    arrival_rate: rate,
                },
            );
        }
        let processing: f64 = consumed.iter().map(|(_, v)| v / window).sum();
        let recent = self
            .vector(
                &format!(
                    "sum(max by (topic, partition) (increase({}{selector}[{:.0}s])))",
                    names::PARTITION_END_OFFSET,
                    query.expect.min_window
                ),
                now,
            )
            .await?
            .first()
            .map_or(0.0, |x| x.1 / query.expect.min_window);
        let slot_rates = self
            .slot_observations(selector, &range, window, now)
            .await?;
        let mut observation = Observation::new(
            arrival, recent, processing, partitions, slot_rates, paused, window, age,
        );
        observation.failing_checkpoints = self
            .vector(
                &format!(
                    "max by (pod, slot) ({}{selector}) >= 1",
                    names::CHECKPOINT_FAILURES_IN_A_ROW
                ),
                now,
            )
            .await?
            .iter()
            .map(|(m, v)| (slot_key(m), *v as u64))
            .collect();
        if observation.slots < query.expect.slots {
            return Err(Unknown::Partial(format!(
                "{} of {} slots reported",
                observation.slots, query.expect.slots
            )));
        }
        Ok(observation)
    }
}

/// `pod/slot` of a series' labels.
fn slot_key(m: &HashMap<String, String>) -> String {
    format!(
        "{}/{}",
        m.get(label::POD).map_or("", String::as_str),
        m.get(label::SLOT).map_or("", String::as_str)
    )
}

impl MetricsSource for Prometheus {
    fn read<'a>(&'a self, target: &'a Target, query: Query) -> BoxFuture<'a, Input> {
        Box::pin(async move {
            let selector = format!(
                "{{{}=\"{}\",{}=\"{}\"}}",
                label::NAMESPACE,
                target.namespace,
                label::PIPELINE,
                target.name
            );
            let mut since = query.window_since;
            let mut stable_at = None;
            if let Some(started) = query.settling_since {
                match self.settled_at(&selector, started, query).await {
                    Ok(Some(at)) => {
                        stable_at = Some(at);
                        since = since.max(at);
                    }
                    Ok(None) => {
                        return input(query, |_| None, |_| unreachable!("settling"));
                    }
                    Err(unknown) => {
                        return Input {
                            observation: Err(unknown),
                            stable_at: None,
                        };
                    }
                }
            }
            Input {
                observation: self.observe(&selector, since, query).await,
                stable_at,
            }
        })
    }
}

/// The metrics source a pipeline's spec asks for.
pub trait Sources: Send + Sync {
    /// The source for `spec.autoscaler.metrics`.
    fn source(
        &self,
        spec: &pipeline_crds::autoscaler::MetricsSource,
    ) -> Result<std::sync::Arc<dyn MetricsSource>, PrometheusUrlError>;

    /// The source partitions `target`'s runtime pods report (`pipeline_source_partitions`),
    /// read from the pods themselves whatever the metrics source: `None` while none reports.
    fn reported_partitions<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<i32>, ScrapeError>>;
}

/// One direct scraper for every pipeline, one Prometheus client per URL.
pub struct SharedSources {
    direct: std::sync::Arc<DirectScrape>,
    prometheus: Mutex<HashMap<String, std::sync::Arc<Prometheus>>>,
}

impl SharedSources {
    /// Scraping what `endpoints` lists when a pipeline names no Prometheus.
    pub fn new(endpoints: Box<dyn Endpoints>) -> Self {
        Self {
            // The longest window a spec is likely to ask for, plus a margin.
            direct: std::sync::Arc::new(DirectScrape::new(3_600.0, endpoints)),
            prometheus: Mutex::new(HashMap::new()),
        }
    }
}

impl Sources for SharedSources {
    fn source(
        &self,
        spec: &pipeline_crds::autoscaler::MetricsSource,
    ) -> Result<std::sync::Arc<dyn MetricsSource>, PrometheusUrlError> {
        let Some(prometheus) = &spec.prometheus else {
            return Ok(self.direct.clone());
        };
        let mut clients = self.prometheus.lock().expect("not poisoned");
        if let Some(client) = clients.get(&prometheus.url) {
            return Ok(client.clone());
        }
        let client = std::sync::Arc::new(Prometheus::new(&prometheus.url, 15.0)?);
        clients.insert(prometheus.url.clone(), client.clone());
        Ok(client)
    }

    fn reported_partitions<'a>(
        &'a self,
        target: &'a Target,
    ) -> BoxFuture<'a, Result<Option<i32>, ScrapeError>> {
        Box::pin(async move {
            let endpoints = match self.direct.endpoints.endpoints(target).await {
                Ok(endpoints) => endpoints,
                Err(EndpointsError::ListingPods(error)) => {
                    return Err(ScrapeError::Pods(error.to_string()));
                }
            };
            let (namespace, name) = (target.namespace.clone(), target.name.clone());
            tokio::task::spawn_blocking(move || {
                scrape_reported_partitions(&endpoints, &namespace, &name)
            })
            .await
            .unwrap_or_else(|e| Err(ScrapeError::Pods(e.to_string())))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reported_partitions_are_summed_over_the_source_topics_of_this_pipeline_only() {
        let text = "\
# TYPE pipeline_source_partitions gauge
pipeline_source_partitions{pipeline=\"p\",namespace=\"ns\",pod=\"p-0\",topic=\"clicks\",role=\"source\"} 12
pipeline_source_partitions{pipeline=\"p\",namespace=\"ns\",pod=\"p-0\",topic=\"views\",role=\"source\"} 4
pipeline_source_partitions{pipeline=\"q\",namespace=\"ns\",pod=\"q-0\",topic=\"other\",role=\"source\"} 99
";
        assert_eq!(reported_partitions_in(text, "ns", "p").unwrap(), Some(16));
        assert_eq!(reported_partitions_in(text, "other", "p").unwrap(), None);
        assert_eq!(reported_partitions_in("", "ns", "p").unwrap(), None);
    }

    #[tokio::test]
    async fn a_prometheus_that_accepts_and_never_answers_fails_the_query_within_its_timeout() {
        // Accepts connections and never answers (nor closes them).
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // Detached: it holds the connection past the test's own deadline.
        std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_secs(7));
            drop(conn);
        });
        let prometheus =
            Prometheus::with_timeouts(&url, 10.0, Duration::from_secs(1), Duration::from_secs(2))
                .unwrap();
        let started = std::time::Instant::now();
        let answer =
            tokio::time::timeout(Duration::from_secs(6), prometheus.vector("up", 1.0e9)).await;
        let took = started.elapsed();
        let error = answer.expect("the query gave up by itself").unwrap_err();
        assert!(
            took < Duration::from_secs(4),
            "took {took:?} with a 2 s request timeout"
        );
        assert!(format!("{error:?}").contains(&url), "{error:?}");
    }

    const EXPOSITION: &str = "\
# HELP pipeline_busy_seconds Seconds a slot spent processing.
# TYPE pipeline_busy_seconds counter
pipeline_busy_seconds_total{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\"} 12.5
pipeline_busy_seconds_total{pipeline=\"other\",namespace=\"ns\",pod=\"other-0\",slot=\"0\"} 99.0
# TYPE pipeline_backpressured_seconds counter
pipeline_backpressured_seconds_total{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\"} 1.5
# TYPE pipeline_partition_end_offset gauge
pipeline_partition_end_offset{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\",topic=\"t\",partition=\"0\"} 1000
pipeline_partition_end_offset{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\",topic=\"t\",partition=\"1\"} 500
# TYPE pipeline_partition_position gauge
pipeline_partition_position{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\",topic=\"t\",partition=\"0\"} 900
pipeline_partition_position{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\",topic=\"t\",partition=\"1\"} 500
# TYPE pipeline_partition_paused gauge
pipeline_partition_paused{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\",topic=\"t\",partition=\"1\"} 1
# TYPE pipeline_checkpoint_failures_in_a_row gauge
pipeline_checkpoint_failures_in_a_row{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-0\",slot=\"0\"} 2
pipeline_checkpoint_failures_in_a_row{pipeline=\"iot\",namespace=\"ns\",pod=\"iot-1\",slot=\"0\"} 0
pipeline_checkpoint_failures_in_a_row{pipeline=\"other\",namespace=\"ns\",pod=\"other-0\",slot=\"0\"} 5
# EOF
";

    #[test]
    fn a_pods_exposition_becomes_a_sample_of_this_pipeline_only() {
        let mut s = Sample::default();
        add_exposition(&mut s, EXPOSITION, "ns", "iot").unwrap();
        assert_eq!(s.slots.len(), 1);
        let slot = s.slots["iot-0/0"];
        assert_eq!(slot.busy_seconds, 12.5);
        assert_eq!(slot.backpressured_seconds, 1.5);
        assert_eq!(s.partitions["t/0"].end_offset, 1000.0);
        assert_eq!(s.partitions["t/0"].position, 900.0);
        assert_eq!(s.partitions["t/0"].slot, "iot-0/0");
        assert!(s.paused.contains("t/1"));
        assert_eq!(
            s.failing_checkpoints,
            BTreeMap::from([("iot-0/0".to_owned(), 2)])
        );
    }

    #[test]
    fn a_settling_rescale_is_read_before_the_window() {
        let query = Query {
            now: 100.0,
            settling_since: Some(50.0),
            window_since: 0.0,
            expect: Expectation {
                partitions: 1,
                slots: 1,
                min_window: 10.0,
                max_age: 60.0,
            },
        };
        let held = input(query, |_| None, |_| panic!("no window while settling"));
        assert!(held.observation.is_err() && held.stable_at.is_none());
        let mut seen = None;
        let read = input(
            query,
            |_| Some(70.0),
            |since| {
                seen = Some(since);
                Err(Unknown::Missing("test".into()))
            },
        );
        assert_eq!(read.stable_at, Some(70.0));
        assert_eq!(seen, Some(70.0));
    }
}
