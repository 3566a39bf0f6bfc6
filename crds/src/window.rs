//! Event-time windows: tumbling, sliding and session.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::Duration;

/// The window every key's records are grouped into. Exactly one of `tumbling`, `sliding` and
/// `session` is set. A pipeline without `window` is stateless.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.tumbling), has(self.sliding), has(self.session)].filter(x, x).size() == 1").message("set exactly one of tumbling, sliding or session"))]
pub struct WindowSpec {
    /// Fixed-size, non-overlapping windows aligned to the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tumbling: Option<TumblingWindow>,

    /// Fixed-size windows that start every `slide`; a record belongs to `size / slide` windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sliding: Option<SlidingWindow>,

    /// Per-key windows that close after `gap` without records; close sessions merge.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionWindow>,

    /// How long after a window's end (by watermark) late records still update it; an updated
    /// window is emitted again. Records later than this go to `lateData`. Defaults to `0s`.
    #[serde(default)]
    pub allowed_lateness: Duration,
}

/// Which kind of window, with its parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WindowKind {
    /// Tumbling windows of `size`.
    Tumbling { size: Duration },
    /// Sliding windows of `size` starting every `slide`.
    Sliding { size: Duration, slide: Duration },
    /// Session windows closed by `gap`.
    Session { gap: Duration },
}

impl WindowSpec {
    /// The window kind, or `None` when the spec sets none or several (rejected by validation).
    pub fn kind(&self) -> Option<WindowKind> {
        match (&self.tumbling, &self.sliding, &self.session) {
            (Some(t), None, None) => Some(WindowKind::Tumbling { size: t.size }),
            (None, Some(s), None) => Some(WindowKind::Sliding {
                size: s.size,
                slide: s.slide,
            }),
            (None, None, Some(s)) => Some(WindowKind::Session { gap: s.gap }),
            _ => None,
        }
    }
}

/// Tumbling window parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.size) > duration('0s')").message("size must be greater than 0s"))]
pub struct TumblingWindow {
    /// Window length, e.g. `1m`.
    pub size: Duration,
}

/// Sliding window parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.slide) > duration('0s') && duration(self.slide) <= duration(self.size)").message("slide must be greater than 0s and at most size"))]
pub struct SlidingWindow {
    /// Window length, e.g. `10m`. Must be a whole multiple of `slide`.
    pub size: Duration,
    /// How often a new window starts, e.g. `1m`.
    pub slide: Duration,
}

/// Session window parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("duration(self.gap) > duration('0s')").message("gap must be greater than 0s"))]
pub struct SessionWindow {
    /// Inactivity that closes a session, e.g. `30m`.
    pub gap: Duration,
}
