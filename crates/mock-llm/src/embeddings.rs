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

/// The embedding of `text`: `dimensions` values from a PRNG seeded with the text's hash,
/// scaled to unit length. A shorter vector of the same text is a prefix of a longer one before
/// scaling.
pub(crate) fn embedding(text: &str, dimensions: usize) -> Vec<f32> {
    let mut rng = SplitMix64(generate::text_hash(text));
    // The top 24 bits, exact in an f32, spread over [-1, 1).
    let mut vector: Vec<f32> = (0..dimensions)
        .map(|_| (rng.next() >> 40) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect();
    let norm = vector
        .iter()
        .map(|x| f64::from(*x) * f64::from(*x))
        .sum::<f64>()
        .sqrt();
    if norm > 0.0 {
        for x in &mut vector {
            *x = (f64::from(*x) / norm) as f32;
        }
    } else if let Some(first) = vector.first_mut() {
        *first = 1.0;
    }
    vector
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
