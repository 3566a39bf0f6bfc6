//! The operator's `/metrics`, `/healthz` and `/readyz` (port 8080).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::OperatorMetrics;

/// Shared with the controller: ready once it has joined the leader election (at once without
/// one). A standby is ready too: it serves its endpoints and waits for the lease, so a rolling
/// update of the operator is not held up by replicas that will never lead. Readiness does not
/// wait for the watches' first lists.
#[derive(Default)]
pub struct Readiness(AtomicBool);

impl Readiness {
    /// The operator has joined the election (or runs without one).
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Serves the endpoints on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<OperatorMetrics>,
    readiness: Arc<Readiness>,
) -> std::io::Result<()> {
    let app =
        Router::new()
            .route(
                "/metrics",
                get(
                    |State((m, _)): State<(Arc<OperatorMetrics>, Arc<Readiness>)>| async move {
                        m.encode()
                    },
                ),
            )
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(
                    |State((_, r)): State<(Arc<OperatorMetrics>, Arc<Readiness>)>| async move {
                        if r.0.load(Ordering::SeqCst) {
                            (StatusCode::OK, "ready")
                        } else {
                            (StatusCode::SERVICE_UNAVAILABLE, "starting")
                        }
                    },
                ),
            )
            .with_state((metrics, readiness));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response
    }

    #[tokio::test]
    async fn readyz_answers_503_until_the_operator_joined_the_election_and_metrics_are_served() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let metrics = Arc::new(OperatorMetrics::default());
        let readiness = Arc::new(Readiness::default());
        tokio::spawn(serve(addr, metrics.clone(), readiness.clone()));
        let mut answer = String::new();
        for _ in 0..50 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                answer = get(addr, "/readyz").await;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        readiness.set_ready();
        assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200"));
        assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 200"));
        metrics.reconciled("applied", std::time::Duration::from_millis(5));
        assert!(
            get(addr, "/metrics")
                .await
                .contains("sluice_operator_reconciles_total")
        );
    }
}
