//! Named crash points for fault-injection tests: a process started with
//! `SLUICE_FAILPOINT=<name>` aborts (like SIGKILL: no flush, no commit, no goodbye) when it
//! reaches the point of that name. Unset, a check is one comparison with a cached value.

use std::sync::OnceLock;

/// Between writing a checkpoint's snapshots and committing its offsets.
pub const CHECKPOINT_BEFORE_COMMIT: &str = "checkpoint-before-commit";

/// Aborts the process when `SLUICE_FAILPOINT` names `point`.
pub fn crash_if(point: &str) {
    static ACTIVE: OnceLock<Option<String>> = OnceLock::new();
    let active = ACTIVE.get_or_init(|| std::env::var("SLUICE_FAILPOINT").ok());
    if active.as_deref() == Some(point) {
        eprintln!("failpoint {point} reached: aborting");
        std::process::abort();
    }
}
