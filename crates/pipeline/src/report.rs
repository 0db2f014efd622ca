//! What each stage did: cached or built and why, how long, and the peak memory of the tools
//! it ran.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    /// The stage, with the platform for per-platform stages (`esp:qemu`).
    pub stage: String,
    /// The hash of its inputs; none for the steps that are not cached (tree, disk).
    pub key: Option<String>,
    pub cached: bool,
    /// `cached`, or why it was built: `built: no earlier output of this stage`, `rebuilt:
    /// --rebuild`, `rebuilt: tree changed (was …, now …)`, ...
    pub explain: String,
    pub seconds: f64,
    /// Largest resident set of any tool the stage ran (KiB), 0 if it ran none.
    pub tool_peak_rss_kib: u64,
}

impl StageReport {
    /// A step that is not cached (it runs whenever a build needs it).
    pub fn step(stage: &str, ran: bool, why: &str, seconds: f64) -> Self {
        StageReport {
            stage: stage.to_string(),
            key: None,
            cached: !ran,
            explain: why.to_string(),
            seconds,
            tool_peak_rss_kib: 0,
        }
    }
}
