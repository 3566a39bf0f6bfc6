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

/// Aborts the process when `SLUICE_FAILPOINT` names `point`: at once for `<point>`, or the
/// `n`-th time it is reached for `<point>:<n>` (so a test can crash after earlier checkpoints
/// committed).
pub fn crash_if(point: &str) {
    static HITS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Some(active) = active() else { return };
    let (name, nth) = match active.rsplit_once(':') {
        Some((name, n)) if n.parse::<u64>().is_ok() => (name, n.parse::<u64>().unwrap_or(1)),
        _ => (active, 1),
    };
    if name != point {
        return;
    }
    let hit = HITS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if hit >= nth {
        eprintln!("failpoint {point} reached (time {hit}): aborting");
        std::process::abort();
    }
}
