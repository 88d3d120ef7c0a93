//! What the balancer reads from a request body: the prompt's prefix blocks
//! and the tokens the call will hold while it runs.
//!
//! The prompt's canonical text is its instructions and messages in order
//! (`system`, `instructions`, `tools`, then each message's role and content,
//! then `prompt` and `input`), every string and number as it appears, each
//! piece followed by a separator. It is cut into blocks of a fixed size and
//! each full block hashed with the previous block's hash (a chain, as vLLM
//! and SGLang hash their KV-cache blocks): two prompts share their first `k`
//! block hashes exactly when their first `k` blocks of text are the same.
//! The hash is foldhash with a fixed seed, so every replica of one build
//! computes the same chain; a different build may not (then shared affinity
//! starts over, nothing breaks).

use std::hash::BuildHasher;

use serde_json::Value;
use tower_ai_core::llm::ChatRequest;

/// The fields of a request body, in the order their text is hashed.
const PROMPT_FIELDS: [&str; 6] = [
    "system",
    "instructions",
    "tools",
    "messages",
    "prompt",
    "input",
];

/// The separator after each piece of text, so `["ab","c"]` and `["a","bc"]`
/// don't hash alike.
const SEPARATOR: u8 = 0x1e;

const SEED: u64 = 0x7a6f_7765_722d_6169;

/// One request as the balancer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Prompt {
    /// The chained hashes of the prompt's full blocks, first block first.
    pub(crate) blocks: Vec<u64>,
    /// Tokens the call holds while it runs: the prompt's estimate plus its
    /// output limit (or the default) for each choice.
    pub(crate) tokens: u64,
    /// The digest of the request's sticky key, when the pool has a sticky
    /// extractor and the request a key.
    pub(crate) sticky: Option<u64>,
}

impl Prompt {
    /// Reads a request body, with its [`ChatRequest`] when it is one. A
    /// body that isn't has no blocks and counts a token per 4 bytes plus the
    /// default output: the balancer routes it, judging it is someone else's
    /// job.
    ///
    /// Without `prefix` (a pool of one endpoint: no choice to aim), the
    /// blocks are left out, and so is the parse they need.
    pub(crate) fn read(
        body: &[u8],
        request: Option<&ChatRequest>,
        block_bytes: usize,
        default_output: u64,
        prefix: bool,
    ) -> Self {
        let tokens = request.map_or_else(
            || (body.len() as u64).div_ceil(4) + default_output,
            |req| req.estimated_total_tokens(default_output),
        );
        let value = match prefix.then(|| serde_json::from_slice::<Value>(body)) {
            Some(Ok(value)) => value,
            _ => {
                return Self {
                    blocks: Vec::new(),
                    tokens,
                    sticky: None,
                };
            }
        };
        let mut chain = Chain::new(block_bytes);
        for field in PROMPT_FIELDS {
            if let Some(value) = value.get(field) {
                chain.value(value);
            }
        }
        Self {
            blocks: chain.blocks,
            tokens,
            sticky: None,
        }
    }
}

/// The digest of a sticky key (foldhash with the chain's fixed seed: every
/// replica of one build agrees).
pub(crate) fn sticky_digest(key: &[u8]) -> u64 {
    foldhash::fast::FixedState::with_seed(SEED ^ 0x5354_4943_4b59).hash_one(key)
}

/// Hashes text into chained blocks as it is fed, without keeping it.
struct Chain {
    block_bytes: usize,
    pending: Vec<u8>,
    last: u64,
    blocks: Vec<u64>,
}

impl Chain {
    fn new(block_bytes: usize) -> Self {
        Self {
            block_bytes,
            pending: Vec::with_capacity(block_bytes),
            last: 0,
            blocks: Vec::new(),
        }
    }

    /// Feeds every string and number of `value` in document order (object
    /// members in key order: `serde_json`'s map is sorted), keys included,
    /// so the text's structure counts too.
    fn value(&mut self, value: &Value) {
        match value {
            Value::String(s) => self.piece(s.as_bytes()),
            Value::Number(n) => self.piece(n.to_string().as_bytes()),
            Value::Bool(b) => self.piece(if *b { b"true" } else { b"false" }),
            Value::Null => {}
            Value::Array(items) => items.iter().for_each(|item| self.value(item)),
            Value::Object(members) => {
                for (key, item) in members {
                    self.piece(key.as_bytes());
                    self.value(item);
                }
            }
        }
    }

    fn piece(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = self.block_bytes - self.pending.len();
            let (head, tail) = bytes.split_at(room.min(bytes.len()));
            self.pending.extend_from_slice(head);
            bytes = tail;
            self.flush_full();
        }
        self.pending.push(SEPARATOR);
        self.flush_full();
    }

    fn flush_full(&mut self) {
        if self.pending.len() == self.block_bytes {
            let state = foldhash::fast::FixedState::with_seed(SEED);
            self.last = state.hash_one((self.last, self.pending.as_slice()));
            self.blocks.push(self.last);
            self.pending.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body's prompt, with its request read as the service reads it.
    fn read(body: &[u8], block_bytes: usize, default_output: u64, prefix: bool) -> Prompt {
        let request = ChatRequest::from_json(body).ok();
        Prompt::read(body, request.as_ref(), block_bytes, default_output, prefix)
    }

    fn chat(messages: &[(&str, &str)]) -> Vec<u8> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"model": "m", "messages": messages})).unwrap()
    }

    #[test]
    fn a_shared_prefix_shares_its_blocks() {
        let system = "You are a careful assistant. ".repeat(20);
        let first = "first question ".repeat(10);
        let other = "another one ".repeat(10);
        let a = read(
            &chat(&[("system", &system), ("user", &first)]),
            64,
            256,
            true,
        );
        let b = read(
            &chat(&[("system", &system), ("user", &other)]),
            64,
            256,
            true,
        );
        let shared = a
            .blocks
            .iter()
            .zip(&b.blocks)
            .take_while(|(x, y)| x == y)
            .count();
        // The system prompt is 580 bytes: 9 full blocks of it, then the
        // blocks diverge at the user's text.
        assert!((9..=10).contains(&shared), "{shared} shared blocks");
        assert!(a.blocks.len() > shared + 1 && b.blocks.len() > shared + 1);
    }

    #[test]
    fn the_same_prompt_gives_the_same_chain_and_a_different_start_shares_nothing() {
        let long = "word ".repeat(100);
        let a = read(&chat(&[("user", &long)]), 64, 256, true);
        let b = read(&chat(&[("user", &long)]), 64, 256, true);
        assert_eq!(a, b);
        let c = read(&chat(&[("user", &format!("x{long}"))]), 64, 256, true);
        assert!(a.blocks.iter().zip(&c.blocks).all(|(x, y)| x != y));
    }

    #[test]
    fn pieces_are_separated() {
        let a = read(br#"{"prompt":["ab","c"]}"#, 2, 0, true);
        let b = read(br#"{"prompt":["a","bc"]}"#, 2, 0, true);
        assert_ne!(a.blocks, b.blocks);
    }

    #[test]
    fn tokens_count_the_prompt_and_the_output_limit() {
        let with_limit = read(
            br#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#,
            64,
            256,
            true,
        );
        let without = read(
            br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            64,
            256,
            true,
        );
        assert_eq!(without.tokens - with_limit.tokens, 156);
        let alone = read(
            br#"{"messages":[{"role":"user","content":"hi"}]}"#,
            64,
            256,
            false,
        );
        assert!(alone.blocks.is_empty(), "no blocks without prefix routing");
        assert_eq!(alone.tokens, without.tokens);
        let raw = read(b"not json at all", 64, 256, true);
        assert_eq!((raw.blocks.len(), raw.tokens), (0, 4 + 256));
        assert_eq!(raw.sticky, None);
    }
}
