//! Named crash points for fault-injection tests: a process started with
//! `SLUICE_FAILPOINT=<name>` aborts (like SIGKILL: no flush, no commit, no goodbye) when it
//! reaches the point of that name; with `SLUICE_FAILPOINT=panic-on-record:<text>` a slot panics
//! (a stand-in for a bug) on every record whose value contains `<text>`. Unset, a check is one
//! comparison with a cached value.

use std::sync::OnceLock;

fn active() -> Option<&'static str> {
    static ACTIVE: OnceLock<Option<String>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| std::env::var("SLUICE_FAILPOINT").ok())
        .as_deref()
}

/// Panics when `SLUICE_FAILPOINT=panic-on-record:<text>` and `payload` contains `<text>`.
pub fn panic_on_record(payload: Option<&[u8]>) {
    let Some(text) = active().and_then(|a| a.strip_prefix("panic-on-record:")) else {
        return;
    };
    let text = text.as_bytes();
    if let Some(payload) = payload
        && !text.is_empty()
        && payload.windows(text.len()).any(|w| w == text)
    {
        panic!("failpoint panic-on-record reached");
    }
}

/// Between writing a checkpoint's snapshots and committing its offsets.
pub const CHECKPOINT_BEFORE_COMMIT: &str = "checkpoint-before-commit";

/// Aborts the process when `SLUICE_FAILPOINT` names `point`.
pub fn crash_if(point: &str) {
    if active() == Some(point) {
        eprintln!("failpoint {point} reached: aborting");
        std::process::abort();
    }
}
