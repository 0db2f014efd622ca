//! What each stage did: cached or run, how long, and the peak memory of the tools it ran.

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct StageReport {
    pub stage: String,
    pub cached: bool,
    pub seconds: f64,
    /// Largest resident set of any tool the stage ran (KiB), 0 if it ran none.
    pub tool_peak_rss_kib: u64,
}
