//! Leader election over a `coordination.k8s.io/v1` Lease (kube-lease-manager), so two operator
//! replicas never reconcile at once. A replica waits as a standby until it holds the Lease,
//! reconciles while it renews it, and stops reconciling (then exits, to be restarted as a
//! standby) the moment it loses it; on SIGTERM it releases the Lease so a standby takes over at
//! once instead of after the Lease expires.

use std::future::Future;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder, LeaseManagerError};
use tokio::{sync::watch, task::JoinHandle};

/// Where the Lease lives and how long it lasts.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// Lease name.
    pub name: String,
    /// Lease namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// Seconds a Lease stays valid without renewal: how long a crashed leader blocks a standby.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// A running election: whether this replica leads, and the task that renews the Lease.
pub struct Election {
    leading: watch::Receiver<bool>,
    task: JoinHandle<Result<LeaseManager, LeaseManagerError>>,
}

/// Joins the election (creates the Lease if it does not exist).
pub async fn join(client: Client, settings: &LeaseSettings) -> Result<Election, LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &settings.name)
        .with_namespace(&settings.namespace)
        .with_identity(&settings.identity)
        .with_duration(settings.duration_seconds)
        .with_grace(settings.grace_seconds)
        .build()
        .await?;
    let (leading, task) = manager.watch().await;
    Ok(Election { leading, task })
}

impl Election {
    /// Resolves once this replica leads.
    pub async fn acquired(&mut self) {
        became(&mut self.leading, true).await;
    }

    /// A future that resolves when this replica stops leading.
    pub fn lost(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut leading = self.leading.clone();
        async move { became(&mut leading, false).await }
    }

    /// Leaves the election, releasing the Lease if held.
    pub async fn leave(self) {
        drop(self.leading);
        match self.task.await {
            Ok(Ok(_)) => tracing::info!("lease released"),
            Ok(Err(error)) => tracing::warn!(%error, "releasing the lease failed"),
            Err(error) => tracing::warn!(%error, "the lease task failed"),
        }
    }
}

/// Resolves when the value is `wanted`. A closed channel counts as not leading: no renewals
/// means the Lease runs out.
async fn became(channel: &mut watch::Receiver<bool>, wanted: bool) {
    loop {
        if *channel.borrow_and_update() == wanted {
            return;
        }
        if channel.changed().await.is_err() {
            if wanted {
                std::future::pending::<()>().await;
            }
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn resolves(f: impl Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(100), f)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn leadership_is_lost_when_the_lease_is_taken_or_its_renewal_task_ends() {
        let (tx, mut rx) = watch::channel(false);
        assert!(
            !resolves(became(&mut rx.clone(), true)).await,
            "a standby waits"
        );
        tx.send(true).unwrap();
        assert!(resolves(became(&mut rx, true)).await);
        assert!(
            !resolves(became(&mut rx.clone(), false)).await,
            "a leader keeps going"
        );
        tx.send(false).unwrap();
        assert!(resolves(became(&mut rx.clone(), false)).await);
        tx.send(true).unwrap();
        let mut waiting = rx.clone();
        drop(tx);
        assert!(
            resolves(became(&mut waiting, false)).await,
            "no renewals, no leadership"
        );
    }
}
