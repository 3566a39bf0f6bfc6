//! `/metrics`, `/healthz` and `/readyz` on the metrics port.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::{metrics::Metrics, slot::SlotWatch};

/// Liveness and readiness of the slots.
#[derive(Debug)]
pub struct Health {
    slots: AtomicUsize,
    running: AtomicUsize,
    stopping: AtomicBool,
    /// Why no slot can start yet (Kafka unreachable, topics missing), for `/readyz`.
    blocked: std::sync::Mutex<Option<String>>,
    /// Each slot's progress, by slot index, for `/healthz`.
    watches: std::sync::Mutex<Vec<Arc<SlotWatch>>>,
}

/// A slot whose loop has not gone round for this long is stuck: `/healthz` fails, so Kubernetes
/// restarts the pod. Longer than librdkafka's `max.poll.interval.ms` (5 minutes), after which the
/// group has already moved the slot's partitions away.
pub const STUCK_AFTER: Duration = Duration::from_secs(600);

impl Health {
    /// For a process with `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: AtomicUsize::new(slots),
            running: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            blocked: std::sync::Mutex::new(None),
            watches: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The progress record of slot `index` (kept across the slot's restarts).
    pub fn watch(&self, index: usize) -> Arc<SlotWatch> {
        let mut watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        while watches.len() <= index {
            watches.push(Arc::default());
        }
        watches[index].clone()
    }

    /// Slots that run but whose loop has not gone round within [`STUCK_AFTER`] of `now_ms`, with
    /// how long, in seconds.
    pub fn stuck_slots(&self, now_ms: i64) -> Vec<(usize, i64)> {
        let limit = i64::try_from(STUCK_AFTER.as_millis()).unwrap_or(i64::MAX);
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        watches
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let beat = w.heartbeat_ms();
                (beat > 0 && now_ms - beat > limit).then_some((i, (now_ms - beat) / 1000))
            })
            .collect()
    }

    /// Why no slot can start yet; `None` once they can.
    pub fn set_blocked(&self, reason: Option<String>) {
        *self.blocked.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// The reason set by [`Health::set_blocked`].
    pub fn blocked(&self) -> Option<String> {
        self.blocked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The slot count changed in place.
    pub fn set_slots(&self, slots: usize) {
        self.slots.store(slots, Ordering::SeqCst);
    }

    /// A slot's consumer is up.
    pub fn slot_up(&self) {
        self.running.fetch_add(1, Ordering::SeqCst);
    }

    /// A slot stopped or is restarting.
    pub fn slot_down(&self) {
        self.running.fetch_sub(1, Ordering::SeqCst);
    }

    /// The process is shutting down.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Ready: every slot runs and no shutdown is under way.
    pub fn is_ready(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
            && self.blocked().is_none()
            && self.running.load(Ordering::SeqCst) == self.slots.load(Ordering::SeqCst)
            && self.paused_reason().is_none()
            && self.kafka_reason().is_none()
    }

    /// Why slots cannot work: cut off from every Kafka broker.
    pub fn kafka_reason(&self) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let cut_off: Vec<String> = watches
            .iter()
            .enumerate()
            .filter(|(_, w)| w.cut_off_from_kafka())
            .map(|(i, _)| i.to_string())
            .collect();
        (!cut_off.is_empty()).then(|| {
            format!(
                "no Kafka broker reachable for 5 s (slots {})",
                cut_off.join(", ")
            )
        })
    }

    /// Why slots wait to restart after a failure (a sink that cannot be reached, say).
    pub fn failures_reason(&self) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let failed: Vec<String> = watches
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.failure().map(|why| format!("slot {i} {why}")))
            .collect();
        (!failed.is_empty()).then(|| failed.join("; "))
    }

    /// Why `/readyz` fails, the most fundamental reason first; `None` when the cause is only that
    /// slots are (re)starting or the process is stopping.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.blocked()
            .or_else(|| self.kafka_reason())
            .or_else(|| self.failures_reason())
            .or_else(|| self.paused_reason())
    }

    /// Why partitions wait (their state cannot be restored, or a record cannot be processed yet
    /// and there is no dead-letter topic to set it aside), if any do.
    pub fn paused_reason(&self) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(|p| p.into_inner());
        let paused: Vec<String> = watches.iter().flat_map(|w| w.paused()).collect();
        (!paused.is_empty()).then(|| {
            format!(
                "partitions paused because their state cannot be restored \
                 (checkpoint.onIncompatibleState: fail) or a record cannot be processed yet and \
                 there is no deadLetter topic to set it aside (see the logs): {}",
                paused.join(", ")
            )
        })
    }
}

struct AppState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// Serves the endpoints on `listener` until the process ends.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> std::io::Result<()> {
    let state = Arc::new(AppState { metrics, health });
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(alive))
        .route("/readyz", get(ready))
        .with_state(state);
    axum::serve(listener, app).await
}

async fn metrics_text(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
}

async fn alive(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let stuck = state.health.stuck_slots(crate::slot::wall_clock_ms());
    if stuck.is_empty() {
        (StatusCode::OK, "ok".to_owned())
    } else {
        let slots: Vec<String> = stuck
            .iter()
            .map(|(slot, secs)| format!("slot {slot} made no progress for {secs} s"))
            .collect();
        (StatusCode::SERVICE_UNAVAILABLE, slots.join("; "))
    }
}

async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready".to_owned())
    } else if let Some(reason) = state.health.not_ready_reason() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        )
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready".to_owned())
    }
}

/// Binds the metrics listener (port 0 = any free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_names_a_slot_that_failed_and_waits_to_restart() {
        let health = Health::new(2);
        health.slot_up();
        assert_eq!(health.not_ready_reason(), None, "one slot still starting");
        health.watch(1).set_failure(Some(
            "failed and restarts in 4 s: ClickHouse: refused".into(),
        ));
        assert_eq!(
            health.not_ready_reason().as_deref(),
            Some("slot 1 failed and restarts in 4 s: ClickHouse: refused")
        );
        health.set_blocked(Some("source topic clicks does not exist".into()));
        assert_eq!(
            health.not_ready_reason().as_deref(),
            Some("source topic clicks does not exist"),
            "what keeps every slot from starting comes first"
        );
        health.set_blocked(None);
        health.watch(1).set_failure(None);
        assert_eq!(health.not_ready_reason(), None);
    }
}
