//! `/metrics`, `/healthz` and `/readyz` on the metrics port.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};

use crate::metrics::Metrics;

/// Liveness and readiness of the slots.
#[derive(Debug)]
pub struct Health {
    slots: AtomicUsize,
    running: AtomicUsize,
    stopping: AtomicBool,
    /// Why no slot can start yet (Kafka unreachable, topics missing), for `/readyz`.
    blocked: std::sync::Mutex<Option<String>>,
}

impl Health {
    /// For a process with `slots` slots.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: AtomicUsize::new(slots),
            running: AtomicUsize::new(0),
            stopping: AtomicBool::new(false),
            blocked: std::sync::Mutex::new(None),
        }
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
            && self.running.load(Ordering::SeqCst) == self.slots.load(Ordering::SeqCst)
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
        .route("/healthz", get(|| async { "ok" }))
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

async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready".to_owned())
    } else if let Some(reason) = state.health.blocked() {
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
