//! What a simulated server is: its size ([`SimConfig`]) and the time its work takes ([`Costs`]).

use std::time::Duration;

/// The time model of one server: how long a step of continuous batching takes.
///
/// A step decodes one token for every running sequence and prefills the sequences admitted
/// in it:
///
/// ```text
/// step = decode_base + decode_per_seq × batch
///      + Σ over the sequences admitted in the step (prefill_base + prefill_per_token × uncached prompt tokens)
/// ```
///
/// `batch` counts the sequences that decode a token in the step, the new ones included.
///
/// # Calibration of the default
///
/// [`Costs::default`] is an 8B-class model (Llama-3-8B, bf16) served by vLLM on one
/// A100-80GB:
///
/// * **Decode, `decode_base` = 12 ms, `decode_per_seq` = 0.1 ms.** The vLLM team's v0.6.0
///   performance post ("vLLM v0.6.0: 2.7x Throughput Improvement and 5x Latency Reduction",
///   blog.vllm.ai, September 2024) states that Llama 3 8B generates one token every 13 ms under
///   light load; a batch of one here takes 12.1 ms, a light batch of ten 13 ms. Decode is
///   bound by reading the 16 GB of weights (8 ms at the A100's 2 TB/s), so it grows slowly
///   with the batch: 18.4 ms at 64 sequences, 37.6 ms at 256 (about 6,800 output tokens/s).
/// * **Prefill, `prefill_per_token` = 0.1 ms (10,000 tokens/s), `prefill_base` = 2 ms.**
///   Prefill is compute-bound: 2 × 8 × 10⁹ FLOP per token against the A100's 312 TFLOPS bf16
///   peak (NVIDIA's data sheet) gives about 10,000 tokens/s at 50 % utilisation. The base is
///   the per-sequence work of admitting it (scheduling, input preparation, the first
///   sampling). A 1,024-token prompt on an idle server thus sees its first token after
///   116.5 ms.
///
/// Lambda's vLLM benchmark of Llama 3.1 on A100-80GB and H100-80GB SXM GPUs
/// (LambdaLabsML/vllm-benchmark) finds the H100 about twice as fast in throughput and latency,
/// so `Costs::default().scaled(0.5)` stands for an H100.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Costs {
    /// Fixed cost of admitting one sequence into a step (`a`).
    pub prefill_base: Duration,
    /// Cost of each prompt token the KV cache did not hold (`b`; 1/b is the prefill throughput).
    pub prefill_per_token: Duration,
    /// Fixed cost of a step, paid whenever a step runs (`c`).
    pub decode_base: Duration,
    /// Cost of each sequence that decodes a token in the step (`d`).
    pub decode_per_seq: Duration,
}

impl Default for Costs {
    fn default() -> Self {
        Self {
            prefill_base: Duration::from_millis(2),
            prefill_per_token: Duration::from_micros(100),
            decode_base: Duration::from_millis(12),
            decode_per_seq: Duration::from_micros(100),
        }
    }
}

impl Costs {
    /// Every cost multiplied by `factor`: `scaled(2.0)` is a server twice as slow, `scaled(0.5)`
    /// one twice as fast. Rounded to the nanosecond; a negative or NaN factor gives zero costs,
    /// an infinite one the longest [`Duration`] a nanosecond count holds.
    #[must_use]
    pub fn scaled(self, factor: f64) -> Self {
        Self {
            prefill_base: scale(self.prefill_base, factor),
            prefill_per_token: scale(self.prefill_per_token, factor),
            decode_base: scale(self.decode_base, factor),
            decode_per_seq: scale(self.decode_per_seq, factor),
        }
    }

    /// The prefill cost of one admitted sequence with `uncached_tokens` prompt tokens to compute.
    pub fn prefill(&self, uncached_tokens: u64) -> Duration {
        let tokens = u32::try_from(uncached_tokens).unwrap_or(u32::MAX);
        self.prefill_base
            .saturating_add(self.prefill_per_token.saturating_mul(tokens))
    }

    /// The decode cost of a step in which `batch` sequences decode a token.
    pub fn decode(&self, batch: usize) -> Duration {
        let batch = u32::try_from(batch).unwrap_or(u32::MAX);
        self.decode_base
            .saturating_add(self.decode_per_seq.saturating_mul(batch))
    }
}

/// `duration × factor`, rounded to the nanosecond, without panicking: the float-to-integer
/// cast saturates (negative and NaN give 0).
fn scale(duration: Duration, factor: f64) -> Duration {
    let nanos = (duration.as_nanos() as f64 * factor).round();
    Duration::from_nanos(nanos as u64)
}

/// The size and speed of one simulated server.
#[derive(Debug, Clone, PartialEq)]
pub struct SimConfig {
    /// The most sequences running at once (vLLM's `max_num_seqs`). Default 256, vLLM's
    /// long-standing default; 0 is taken as 1.
    pub slots: usize,
    /// The KV cache's capacity in 16-token blocks. Default 26,000 (about 416k tokens): what is
    /// left of an A100-80GB at vLLM's 0.9 memory utilisation once the 16 GB of Llama-3-8B
    /// weights and the activations are placed, at 128 KiB of KV per token (32 layers × 8 KV
    /// heads × 128 dimensions × K and V × 2 bytes).
    pub kv_blocks: usize,
    /// The time model. Default: [`Costs::default`].
    pub costs: Costs,
    /// The `model_name` label of the Prometheus text. Default `"sim"`.
    pub model_name: String,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            slots: 256,
            kv_blocks: 26_000,
            costs: Costs::default(),
            model_name: "sim".to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_matches_the_calibration() {
        let costs = Costs::default();
        assert_eq!(costs.decode(1), Duration::from_micros(12_100));
        assert_eq!(costs.decode(10), Duration::from_millis(13));
        assert_eq!(costs.decode(256), Duration::from_micros(37_600));
        assert_eq!(
            costs.prefill(1024) + costs.decode(1),
            Duration::from_micros(116_500)
        );
    }

    #[test]
    fn scaled_multiplies_every_cost() {
        let costs = Costs::default();
        let slow = costs.scaled(2.0);
        assert_eq!(slow.prefill_base, costs.prefill_base * 2);
        assert_eq!(slow.prefill_per_token, costs.prefill_per_token * 2);
        assert_eq!(slow.decode_base, costs.decode_base * 2);
        assert_eq!(slow.decode_per_seq, costs.decode_per_seq * 2);
        assert_eq!(costs.scaled(0.5).decode_base, Duration::from_millis(6));
        assert_eq!(costs.scaled(f64::NAN).decode_base, Duration::ZERO);
        assert_eq!(costs.scaled(-1.0).prefill_base, Duration::ZERO);
        let huge = costs.scaled(f64::INFINITY);
        assert_eq!(huge.decode_base, Duration::from_nanos(u64::MAX));
        assert_eq!(huge.prefill(u64::MAX), Duration::MAX);
    }
}
