//! `POST /v1/embeddings`: deterministic unit vectors, as floats or as base64.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;
use serde_json::Value;

use crate::MockLlm;
use crate::admit::admit;
use crate::error::Dialect;
use crate::generate::{self, SplitMix64};
use crate::stats::Endpoint;

/// The dimension of a vector when the request names none.
pub(crate) const DEFAULT_DIMENSIONS: usize = 16;
/// The largest `dimensions` accepted.
pub(crate) const MAX_DIMENSIONS: usize = 4096;
/// The most inputs one request may carry, as OpenAI allows.
const MAX_INPUTS: usize = 2048;

/// How the vectors are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// A JSON array of numbers.
    Float,
    /// The base64 of the little-endian `f32` array.
    Base64,
}

/// A valid embeddings request.
#[derive(Debug)]
pub(crate) struct EmbeddingRequest {
    model: String,
    pub(crate) inputs: Vec<String>,
    encoding: Encoding,
    pub(crate) dimensions: usize,
    /// The words of every input (one per token of a token-id input).
    pub(crate) prompt_tokens: u64,
}

impl EmbeddingRequest {
    /// Reads a request body; `Err` carries the message of the 400.
    pub(crate) fn parse(value: &Value) -> Result<Self, String> {
        let object = generate::object(value)?;
        let model = generate::model(object)?;
        let input = object
            .get("input")
            .ok_or_else(|| "Missing required parameter: 'input'.".to_owned())?;
        let inputs = generate::texts(input, "input")?;
        if inputs.is_empty() {
            return Err("Invalid 'input': expected at least one input.".to_owned());
        }
        if inputs.len() > MAX_INPUTS {
            return Err(format!(
                "Invalid 'input': at most {MAX_INPUTS} inputs are allowed, got {}.",
                inputs.len()
            ));
        }
        if let Some(index) = inputs.iter().position(String::is_empty) {
            return Err(format!("Invalid 'input[{index}]': it must not be empty."));
        }
        for (index, text) in inputs.iter().enumerate() {
            check_directive(text).map_err(|message| format!("'input[{index}]': {message}"))?;
        }
        let encoding = match object.get("encoding_format") {
            None | Some(Value::Null) => Encoding::Float,
            Some(Value::String(format)) if format == "float" => Encoding::Float,
            Some(Value::String(format)) if format == "base64" => Encoding::Base64,
            Some(other) => {
                return Err(format!(
                    "Invalid 'encoding_format': expected 'float' or 'base64', got {other}."
                ));
            }
        };
        let dimensions = match object.get("dimensions") {
            None | Some(Value::Null) => DEFAULT_DIMENSIONS,
            Some(value) => value
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| (1..=MAX_DIMENSIONS).contains(n))
                .ok_or_else(|| {
                    format!(
                        "Invalid 'dimensions': expected an integer from 1 to {MAX_DIMENSIONS}, \
                         got {value}."
                    )
                })?,
        };
        let prompt_tokens = inputs.iter().map(|text| generate::words(text)).sum();
        Ok(Self {
            model,
            inputs,
            encoding,
            dimensions,
            prompt_tokens,
        })
    }
}

/// Where a control directive starts.
const DIRECTIVE_OPEN: &str = "{{embed:";
/// Where it ends.
const DIRECTIVE_CLOSE: &str = "}}";

/// A control directive: the vector of `key`, or one at cosine `similarity` from it in the
/// direction `salt` picks.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Directive<'a> {
    key: &'a str,
    near: Option<(f64, &'a str)>,
}

/// The first control directive of `text`: `Ok(None)` if it has none, `Err` (the message of the
/// 400) if `{{embed:` starts one that is not `{{embed:KEY}}` or `{{embed:KEY~SIM~SALT}}`.
fn directive(text: &str) -> Result<Option<Directive<'_>>, String> {
    let Some(open) = text.find(DIRECTIVE_OPEN) else {
        return Ok(None);
    };
    let rest = &text[open + DIRECTIVE_OPEN.len()..];
    let invalid = |why: &str| {
        format!(
            "Invalid embed directive: {why} (expected '{{{{embed:KEY}}}}' or \
             '{{{{embed:KEY~SIMILARITY~SALT}}}}')."
        )
    };
    let Some(close) = rest.find(DIRECTIVE_CLOSE) else {
        return Err(invalid("no closing '}}'"));
    };
    let body = &rest[..close];
    let mut parts = body.split('~');
    let key = parts.next().unwrap_or_default();
    if key.is_empty() {
        return Err(invalid("the key is empty"));
    }
    let near = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(similarity), Some(salt), None) => {
            let similarity = similarity
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| (-1.0..=1.0).contains(s))
                .ok_or_else(|| invalid("the similarity is not a number from -1 to 1"))?;
            if salt.is_empty() {
                return Err(invalid("the salt is empty"));
            }
            Some((similarity, salt))
        }
        _ => return Err(invalid("expected a key, or a key, a similarity and a salt")),
    };
    Ok(Some(Directive { key, near }))
}

/// Checks the control directive of `text`, if any; `Err` is the message of the 400.
pub(crate) fn check_directive(text: &str) -> Result<(), String> {
    directive(text).map(|_| ())
}

/// The embedding of `text`, as [`crate::embedding`] documents it.
pub(crate) fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    if dimensions == 0 {
        return Vec::new();
    }
    let vector = match directive(text) {
        Ok(Some(directive)) => directed(directive, dimensions),
        Ok(None) | Err(_) => bag_of_words(text, dimensions),
    };
    vector.into_iter().map(|x| x as f32).collect()
}

/// The vector a directive asks for.
fn directed(directive: Directive<'_>, dimensions: usize) -> Vec<f64> {
    let key = unit_vector(&["key", directive.key], dimensions);
    let Some((similarity, salt)) = directive.near else {
        return key;
    };
    // The salt's own vector, less its component along the key's; if that leaves nothing (the
    // salt is the key, or by chance), further vectors of the salt are tried.
    let orthogonal = (0..16u32).find_map(|attempt| {
        let attempt = attempt.to_string();
        let parts: &[&str] = if attempt == "0" {
            &["key", salt]
        } else {
            &["salt", salt, &attempt]
        };
        let mut w = unit_vector(parts, dimensions);
        let along = dot(&w, &key);
        for (w, k) in w.iter_mut().zip(&key) {
            *w -= along * k;
        }
        let norm = dot(&w, &w).sqrt();
        (norm > 1e-6).then(|| w.into_iter().map(|x| x / norm).collect::<Vec<f64>>())
    });
    match orthogonal {
        Some(w) => {
            let across = (1.0 - similarity * similarity).max(0.0).sqrt();
            key.iter()
                .zip(&w)
                .map(|(k, w)| similarity * k + across * w)
                .collect()
        }
        // One dimension has no direction apart from the key's: the nearest vector is the
        // key's, or its opposite.
        None if similarity < 0.0 => key.into_iter().map(|k| -k).collect(),
        None => key,
    }
}

/// The normalized sum of the words' vectors; a text without words gets a vector of its own.
fn bag_of_words(text: &str, dimensions: usize) -> Vec<f64> {
    let mut sum = vec![0.0; dimensions];
    let mut any = false;
    for word in text.split_whitespace() {
        let word: String = word
            .chars()
            .filter(|c| c.is_alphanumeric())
            .flat_map(char::to_lowercase)
            .collect();
        if word.is_empty() {
            continue;
        }
        any = true;
        for (sum, x) in sum
            .iter_mut()
            .zip(unit_vector(&["word", &word], dimensions))
        {
            *sum += x;
        }
    }
    if !any {
        return unit_vector(&["text", text], dimensions);
    }
    normalized(sum, dimensions)
}

/// A deterministic unit vector named by `parts`: values from a PRNG seeded with their hash,
/// scaled to unit length.
fn unit_vector(parts: &[&str], dimensions: usize) -> Vec<f64> {
    let mut rng = SplitMix64(generate::texts_hash(parts));
    // The top 53 bits, exact in an f64, spread over [-1, 1).
    let vector = (0..dimensions)
        .map(|_| (rng.next() >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        .collect();
    normalized(vector, dimensions)
}

/// `vector` scaled to unit length; the first axis if it is zero.
fn normalized(mut vector: Vec<f64>, dimensions: usize) -> Vec<f64> {
    let norm = dot(&vector, &vector).sqrt();
    if norm > 1e-12 {
        for x in &mut vector {
            *x /= norm;
        }
    } else {
        vector = vec![0.0; dimensions];
        if let Some(first) = vector.first_mut() {
            *first = 1.0;
        }
    }
    vector
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(a, b)| a * b).sum()
}

#[derive(Debug, Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: EmbeddingUsage,
}

#[derive(Debug, Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: Encoded,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Encoded {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
struct EmbeddingUsage {
    prompt_tokens: u64,
    total_tokens: u64,
}

/// `POST /v1/embeddings`.
pub(crate) async fn embeddings(State(mock): State<MockLlm>, request: Request) -> Response {
    let admitted = match admit(
        &mock,
        Endpoint::Embeddings,
        Dialect::OpenAi,
        request,
        EmbeddingRequest::parse,
    )
    .await
    {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if let Err(response) = admitted.pause().await {
        return response;
    }
    let request = &admitted.request;
    tracing::debug!(
        model = %request.model,
        inputs = request.inputs.len(),
        dimensions = request.dimensions,
        "mock-llm: embeddings"
    );
    let data = request
        .inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let vector = embedding(text, request.dimensions);
            let embedding = match request.encoding {
                Encoding::Float => Encoded::Float(vector),
                Encoding::Base64 => {
                    let bytes: Vec<u8> = vector.iter().flat_map(|x| x.to_le_bytes()).collect();
                    Encoded::Base64(STANDARD.encode(bytes))
                }
            };
            EmbeddingItem {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let list = EmbeddingList {
        object: "list",
        data,
        model: &request.model,
        usage: EmbeddingUsage {
            prompt_tokens: request.prompt_tokens,
            total_tokens: request.prompt_tokens,
        },
    };
    let response = Json(list).into_response();
    admitted.answered(0, response)
}
