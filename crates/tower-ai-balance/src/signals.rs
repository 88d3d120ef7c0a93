//! What an inference server says of its own load, read from its Prometheus
//! `/metrics`: requests waiting and running, and KV-cache usage, in vLLM's
//! and SGLang's names.
//!
//! The balancer counts only the requests it sent; a server shared with other
//! clients (or behind several balancers without shared state) may be busier
//! than that. [`Pool::report`](crate::Pool::report) adds what the server
//! reports: each request waiting in its queue counts as
//! [`WAITING_TOKENS`] tokens in flight, and a KV cache at or above
//! [`KV_FULL`] makes the endpoint count as full (vLLM preempts running
//! requests past that point).
//!
//! ```
//! use tower_ai_balance::signals::Signals;
//!
//! let text = "# TYPE vllm:num_requests_waiting gauge\n\
//!             vllm:num_requests_waiting{model_name=\"llama\"} 3.0\n\
//!             vllm:num_requests_running{model_name=\"llama\"} 12.0\n\
//!             vllm:gpu_cache_usage_perc{model_name=\"llama\"} 0.42\n";
//! let signals = Signals::parse(text).unwrap();
//! assert_eq!((signals.waiting, signals.running), (3, 12));
//! assert!((signals.kv_usage - 0.42).abs() < 1e-9);
//! ```

/// Tokens in flight a request waiting in a server's own queue counts for.
pub const WAITING_TOKENS: u64 = 1_024;

/// The KV-cache usage (0 to 1) at which an endpoint counts as full.
pub const KV_FULL: f64 = 0.98;

/// An inference server's load, as its metrics report it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Signals {
    /// Requests waiting to be scheduled.
    pub waiting: u32,
    /// Requests running.
    pub running: u32,
    /// KV-cache usage, 0 to 1.
    pub kv_usage: f64,
}

/// The metric names read, per field, vLLM's then SGLang's.
const WAITING: [&str; 2] = ["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const RUNNING: [&str; 2] = ["vllm:num_requests_running", "sglang:num_running_reqs"];
const KV_USAGE: [&str; 3] = [
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];

impl Signals {
    /// Reads Prometheus text exposition; `None` when it holds none of the
    /// known metrics. Samples of one metric with several label sets (one per
    /// model or engine) are summed, KV usage is their largest.
    pub fn parse(text: &str) -> Option<Self> {
        let mut signals = Self::default();
        let mut found = false;
        let mut kv_name: Option<usize> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, value)) = sample(line) else {
                continue;
            };
            if !value.is_finite() || value < 0.0 {
                continue;
            }
            if WAITING.contains(&name) {
                signals.waiting = signals.waiting.saturating_add(value as u32);
                found = true;
            } else if RUNNING.contains(&name) {
                signals.running = signals.running.saturating_add(value as u32);
                found = true;
            } else if let Some(rank) = KV_USAGE.iter().position(|n| *n == name) {
                // One name only (vLLM exports the same value under two).
                if kv_name.is_none_or(|k| k == rank) {
                    kv_name = Some(rank);
                    signals.kv_usage = signals.kv_usage.max(value.min(1.0));
                    found = true;
                }
            }
        }
        found.then_some(signals)
    }
}

/// A sample line's metric name and value (labels and timestamp dropped).
fn sample(line: &str) -> Option<(&str, f64)> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    let rest = &line[name_end..];
    let rest = match rest.strip_prefix('{') {
        Some(labels) => &labels[labels.find('}')? + 1..],
        None => rest,
    };
    let value = rest.split_whitespace().next()?;
    Some((name, value.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sglang_names_and_ignores_the_rest() {
        let text = "sglang:num_queue_reqs{name=\"a\"} 2\n\
                    sglang:num_queue_reqs{name=\"b\"} 5 1700000000\n\
                    sglang:num_running_reqs 7\n\
                    sglang:token_usage 0.9\n\
                    other_metric 99\n\
                    broken{ 3\n";
        let s = Signals::parse(text).unwrap();
        assert_eq!((s.waiting, s.running), (7, 7));
        assert!((s.kv_usage - 0.9).abs() < 1e-9);
    }

    #[test]
    fn nothing_known_is_none_and_bad_values_are_skipped() {
        assert_eq!(Signals::parse("# HELP x\nup 1\n"), None);
        let s = Signals::parse("vllm:num_requests_waiting NaN\nvllm:num_requests_running -3\nvllm:num_requests_running 4\n")
            .unwrap();
        assert_eq!((s.waiting, s.running), (0, 4));
    }

    #[test]
    fn vllm_exports_kv_usage_twice_and_it_is_read_once() {
        let text = "vllm:gpu_cache_usage_perc 0.5\nvllm:kv_cache_usage_perc 0.5\n";
        assert!((Signals::parse(text).unwrap().kv_usage - 0.5).abs() < 1e-9);
    }
}
