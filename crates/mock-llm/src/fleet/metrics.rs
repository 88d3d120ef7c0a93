//! The load a server reports: a snapshot struct and vLLM's Prometheus text.

use std::fmt::Write as _;

/// A snapshot of one server's load and counters, as returned by
/// [`SimServer::metrics`](super::SimServer::metrics). Every field is read under one lock, so
/// the snapshot is consistent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SimMetrics {
    /// Sequences in the running batch (`vllm:num_requests_running`).
    pub running: usize,
    /// Requests in the waiting queue (`vllm:num_requests_waiting`).
    pub waiting: usize,
    /// `kv_blocks_used / kv_blocks_total`, 0 to 1 (`vllm:gpu_cache_usage_perc`). As in vLLM,
    /// cached blocks that no running sequence holds count as free.
    pub kv_usage: f64,
    /// Blocks held by running sequences.
    pub kv_blocks_used: usize,
    /// Prompt blocks resident in the cache, held or not.
    pub kv_blocks_cached: usize,
    /// The cache's capacity in blocks.
    pub kv_blocks_total: usize,
    /// Blocks evicted since the start.
    pub kv_blocks_evicted: u64,
    /// Prompt tokens served by the prefix cache (`vllm:prefix_cache_hits_total`).
    pub prefix_hit_tokens: u64,
    /// Prompt tokens of the admitted sequences; each was a prefix cache query
    /// (`vllm:prompt_tokens_total`, `vllm:prefix_cache_queries_total`).
    pub prompt_tokens_total: u64,
    /// Output tokens delivered (`vllm:generation_tokens_total`).
    pub generated_tokens_total: u64,
    /// Sequences that reached `Done`.
    pub requests_finished: u64,
    /// Sequences dropped by their caller before the end, waiting or running.
    pub requests_cancelled: u64,
    /// Sequences rejected as larger than the cache.
    pub requests_rejected: u64,
    /// Steps run.
    pub steps: u64,
    /// The most sequences that ran in one step: never more than the slots.
    pub peak_running: usize,
}

impl SimMetrics {
    /// The Prometheus text exposition of these metrics under vLLM's names, each sample
    /// labelled `model_name="<model_name>"`, values written as floats as vLLM's
    /// `prometheus_client` writes them:
    ///
    /// | metric | type |
    /// |---|---|
    /// | `vllm:num_requests_running` | gauge |
    /// | `vllm:num_requests_waiting` | gauge |
    /// | `vllm:gpu_cache_usage_perc` (and its newer name `vllm:kv_cache_usage_perc`), 0 to 1 | gauge |
    /// | `vllm:prefix_cache_queries_total` (tokens) | counter |
    /// | `vllm:prefix_cache_hits_total` (tokens) | counter |
    /// | `vllm:prompt_tokens_total` | counter |
    /// | `vllm:generation_tokens_total` | counter |
    pub fn prometheus_text(&self, model_name: &str) -> String {
        let label = format!("{{model_name=\"{}\"}}", escape(model_name));
        let rows: [(&str, &str, &str, f64); 8] = [
            (
                "vllm:num_requests_running",
                "gauge",
                "Number of requests in the running batch.",
                self.running as f64,
            ),
            (
                "vllm:num_requests_waiting",
                "gauge",
                "Number of requests waiting to be admitted.",
                self.waiting as f64,
            ),
            (
                "vllm:gpu_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                self.kv_usage,
            ),
            (
                "vllm:kv_cache_usage_perc",
                "gauge",
                "KV-cache usage. 1 means 100 percent usage.",
                self.kv_usage,
            ),
            (
                "vllm:prefix_cache_queries_total",
                "counter",
                "Prefix cache queries, in queried tokens.",
                self.prompt_tokens_total as f64,
            ),
            (
                "vllm:prefix_cache_hits_total",
                "counter",
                "Prefix cache hits, in cached tokens.",
                self.prefix_hit_tokens as f64,
            ),
            (
                "vllm:prompt_tokens_total",
                "counter",
                "Number of prompt tokens admitted.",
                self.prompt_tokens_total as f64,
            ),
            (
                "vllm:generation_tokens_total",
                "counter",
                "Number of generation tokens delivered.",
                self.generated_tokens_total as f64,
            ),
        ];
        let mut text = String::new();
        for (name, kind, help, value) in rows {
            // Writing to a String cannot fail.
            let _ = write!(
                text,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{label} {value:?}\n"
            );
        }
        text
    }
}

/// A label value as the text format wants it: backslash, double quote and newline escaped.
fn escape(value: &str) -> String {
    let mut escaped = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_has_types_and_float_values() {
        let metrics = SimMetrics {
            running: 3,
            waiting: 1,
            kv_usage: 0.25,
            prompt_tokens_total: 400,
            prefix_hit_tokens: 240,
            generated_tokens_total: 7,
            ..SimMetrics::default()
        };
        let text = metrics.prometheus_text("m\"x");
        assert!(text.contains("# TYPE vllm:num_requests_running gauge\n"));
        assert!(text.contains("vllm:num_requests_running{model_name=\"m\\\"x\"} 3.0\n"));
        assert!(text.contains("vllm:num_requests_waiting{model_name=\"m\\\"x\"} 1.0\n"));
        assert!(text.contains("vllm:gpu_cache_usage_perc{model_name=\"m\\\"x\"} 0.25\n"));
        assert!(text.contains("# TYPE vllm:prefix_cache_hits_total counter\n"));
        assert!(text.contains("vllm:prefix_cache_queries_total{model_name=\"m\\\"x\"} 400.0\n"));
        assert!(text.contains("vllm:prefix_cache_hits_total{model_name=\"m\\\"x\"} 240.0\n"));
        assert!(text.contains("vllm:generation_tokens_total{model_name=\"m\\\"x\"} 7.0\n"));
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("# TYPE"))
                .count(),
            8
        );
    }
}
