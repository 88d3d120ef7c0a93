//! [`AnswerTap`]: an answer's [`AnswerSummary`], gathered as its body passes,
//! and [`SharedAnswer`], one reading of it for every layer.

use std::sync::{Arc, OnceLock};

use super::answer::{FinishReason, StreamChunk, Usage, read_answer, read_chunk};

/// What an answer said about itself, gathered as its body passed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AnswerSummary {
    /// The reported usage (for streams, every report merged with
    /// [`Usage::merge`]).
    pub usage: Option<Usage>,
    /// The (last seen) finish reason.
    pub finish_reason: Option<FinishReason>,
    /// Whether an in-band error was seen (an error body, or an error event).
    pub error: bool,
    /// For streams: whether the event that ends the stream arrived
    /// (`data: [DONE]`, `message_stop`, a response's final event; see
    /// [`StreamChunk::done`]).
    pub done: bool,
    /// For streams: how many events arrived.
    pub events: u64,
    /// The answer's text, when the tap was asked to gather it
    /// ([`AnswerTap::gather_content`]).
    pub content: Option<String>,
}

impl AnswerSummary {
    /// Takes in one more event of a stream: counts it, merges its usage into
    /// what came before, keeps its finish reason, and notes an error or the
    /// end. This is what [`AnswerTap`] does with each event; a layer that
    /// decodes the stream itself calls it with [`StreamChunk::parse`].
    ///
    /// ```
    /// use tower_ai_core::llm::{AnswerSummary, FinishReason, StreamChunk};
    ///
    /// let mut summary = AnswerSummary::default();
    /// for data in [
    ///     r#"{"type":"message_start","message":{"type":"message","content":[],"stop_reason":null,"usage":{"input_tokens":25,"output_tokens":1}}}"#,
    ///     r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
    ///     r#"{"type":"message_stop"}"#,
    /// ] {
    ///     summary.absorb(StreamChunk::parse(data));
    /// }
    /// assert_eq!(summary.usage.map(|u| u.total()), Some(40));
    /// assert_eq!(summary.finish_reason, Some(FinishReason::Stop));
    /// assert!(summary.done && summary.events == 3);
    /// ```
    pub fn absorb(&mut self, chunk: StreamChunk) {
        self.events += 1;
        if let Some(usage) = chunk.usage {
            match &mut self.usage {
                Some(seen) => seen.merge(usage),
                None => self.usage = Some(usage),
            }
        }
        if chunk.finish_reason.is_some() {
            self.finish_reason = chunk.finish_reason;
        }
        self.error |= chunk.error;
        self.done |= chunk.done;
    }
}

/// Reads an answer as its body passes, without holding it up: the events of
/// a `text/event-stream` body through the SSE decoder, or a JSON body
/// buffered up to a limit and read at its end. Every API in the
/// [module's table](crate::llm) is understood.
///
/// ```
/// use http::HeaderMap;
/// use tower_ai_core::llm::AnswerTap;
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "text/event-stream".parse().unwrap());
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20);
/// tap.observe(b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n");
/// tap.observe(b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n");
/// let summary = tap.finish();
/// assert!(summary.done);
/// assert_eq!(summary.usage.map(|u| u.total()), Some(7));
///
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20).gather_content(1 << 16);
/// tap.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n");
/// tap.observe(b"data: {\"choices\":[{\"delta\":{\"content\":\"lo\"}}]}\n\ndata: [DONE]\n\n");
/// assert_eq!(tap.finish().content.as_deref(), Some("Hello"));
///
/// // A Responses stream: named events, no `[DONE]`.
/// let mut tap = AnswerTap::for_response(&headers, 1 << 20).gather_content(1 << 16);
/// tap.observe(b"event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}\n\n");
/// tap.observe(b"event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"status\":\"completed\",\
///     \"usage\":{\"input_tokens\":5,\"output_tokens\":1,\"total_tokens\":6}}}\n\n");
/// let summary = tap.finish();
/// assert!(summary.done);
/// assert_eq!(summary.usage.map(|u| u.total()), Some(6));
/// assert_eq!(summary.content.as_deref(), Some("Hi"));
/// ```
#[derive(Debug)]
pub struct AnswerTap {
    kind: TapKind,
    summary: AnswerSummary,
    content_limit: Option<usize>,
    share: Option<Share>,
}

/// A tap's part in a [`SharedAnswer`].
#[derive(Debug)]
enum Share {
    Fill(SharedAnswer),
    Read(SharedAnswer),
}

/// A JSON answer read once for every tap on its way out. The first tap
/// made on a response with [`AnswerTap::share`] puts one in the response's
/// extensions and fills it when the body ends; the taps made after it (the
/// layers above) take its summary instead of parsing the body again, when
/// the bytes they saw are the same.
///
/// ```
/// use http::{Extensions, HeaderMap};
/// use tower_ai_core::llm::{AnswerTap, SharedAnswer};
///
/// let mut headers = HeaderMap::new();
/// headers.insert("content-type", "application/json".parse().unwrap());
/// let body = br#"{"choices":[{"message":{"content":"Hi"},"finish_reason":"stop"}],
///     "usage":{"prompt_tokens":3,"completion_tokens":1}}"#;
/// let mut extensions = Extensions::new();
/// let mut inner = AnswerTap::for_response(&headers, 1 << 20).share(&mut extensions);
/// let mut outer = AnswerTap::for_response(&headers, 1 << 20).share(&mut extensions);
/// inner.observe(body);
/// outer.observe(body);
/// assert_eq!(inner.finish().usage.map(|u| u.total()), Some(4));
/// let shared = extensions.get::<SharedAnswer>().unwrap();
/// assert_eq!(shared.summary_of(body).and_then(|s| s.usage).map(|u| u.total()), Some(4));
/// assert_eq!(outer.finish().usage.map(|u| u.total()), Some(4)); // read from the share
/// ```
#[derive(Debug, Clone, Default)]
pub struct SharedAnswer(Arc<OnceLock<(bytes::Bytes, AnswerSummary)>>);

impl SharedAnswer {
    /// The summary, without its text, read from exactly `body`; `None`
    /// before the filling tap has finished, or when it saw other bytes.
    pub fn summary_of(&self, body: &[u8]) -> Option<&AnswerSummary> {
        self.0
            .get()
            .filter(|(read, _)| read[..] == *body)
            .map(|(_, summary)| summary)
    }
}

#[derive(Debug)]
enum TapKind {
    Sse(Box<crate::sse::Decoder>),
    Json {
        buf: Vec<u8>,
        limit: usize,
        overflow: bool,
    },
    Other,
}

impl AnswerTap {
    /// A tap for a response with these headers; JSON bodies are buffered up
    /// to `json_limit` bytes (a larger one is not read).
    pub fn for_response(headers: &http::HeaderMap, json_limit: usize) -> Self {
        let ct = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let kind = if ct.starts_with("text/event-stream") {
            TapKind::Sse(Box::default())
        } else if ct.starts_with("application/json") || ct.contains("+json") {
            TapKind::Json {
                buf: Vec::new(),
                limit: json_limit,
                overflow: false,
            }
        } else {
            TapKind::Other
        };
        Self {
            kind,
            summary: AnswerSummary::default(),
            content_limit: None,
            share: None,
        }
    }

    /// Shares this tap's reading of a JSON answer with the other taps on
    /// the same response, through its `extensions`: the first tap made
    /// fills a [`SharedAnswer`], the ones made after it read it. A tap that
    /// gathers the text reads its own.
    #[must_use]
    pub fn share(mut self, extensions: &mut http::Extensions) -> Self {
        if !matches!(self.kind, TapKind::Json { .. }) {
            return self;
        }
        self.share = Some(match extensions.get::<SharedAnswer>() {
            Some(shared) => Share::Read(shared.clone()),
            None => {
                let shared = SharedAnswer::default();
                extensions.insert(shared.clone());
                Share::Fill(shared)
            }
        });
        self
    }

    /// Also gathers the answer's text, up to `limit` bytes: a JSON answer's
    /// [`Completion::content`](super::Completion::content); a stream's pieces: the first choice's
    /// `delta.content` (chat) or `text` (completions), a response's
    /// `response.output_text.delta` deltas, Anthropic's `text_delta`s.
    #[must_use]
    pub fn gather_content(mut self, limit: usize) -> Self {
        self.content_limit = Some(limit);
        self
    }

    /// Whether the body is a stream of events.
    pub fn is_stream(&self) -> bool {
        matches!(self.kind, TapKind::Sse(_))
    }

    /// Sees one chunk of the body.
    pub fn observe(&mut self, chunk: &[u8]) {
        match &mut self.kind {
            TapKind::Sse(decoder) => {
                decoder.push_slice(chunk);
                while let Some(event) = decoder.next_event() {
                    if let Ok(event) = event {
                        Self::absorb_event(&mut self.summary, self.content_limit, &event);
                    }
                }
            }
            TapKind::Json {
                buf,
                limit,
                overflow,
            } => {
                if buf.len() + chunk.len() > *limit {
                    *overflow = true;
                    buf.clear();
                } else if !*overflow {
                    buf.extend_from_slice(chunk);
                }
            }
            TapKind::Other => {}
        }
    }

    fn absorb_event(
        summary: &mut AnswerSummary,
        content_limit: Option<usize>,
        event: &crate::sse::Event,
    ) {
        let chunk = match content_limit {
            Some(limit) => read_chunk(
                event.data(),
                Some(|piece: &str| {
                    let content = summary.content.get_or_insert_with(String::new);
                    if content.len() + piece.len() <= limit {
                        content.push_str(piece);
                    }
                }),
            ),
            None => StreamChunk::parse(event.data()),
        };
        summary.absorb(chunk);
        // An event named `error` is one whatever its data (Anthropic and
        // Responses name theirs so).
        summary.error |= event.event_type() == "error";
    }

    /// The summary so far, without ending the body.
    pub fn summary(&self) -> &AnswerSummary {
        &self.summary
    }

    /// Ends the body and returns what it said.
    pub fn finish(&mut self) -> &AnswerSummary {
        match &mut self.kind {
            TapKind::Sse(decoder) => {
                decoder.finish();
                while let Some(event) = decoder.next_event() {
                    if let Ok(event) = event {
                        Self::absorb_event(&mut self.summary, self.content_limit, &event);
                    }
                }
            }
            TapKind::Json { buf, overflow, .. } => {
                if !*overflow {
                    let shared = match &self.share {
                        Some(Share::Read(shared)) if self.content_limit.is_none() => {
                            shared.summary_of(buf)
                        }
                        _ => None,
                    };
                    if let Some(shared) = shared {
                        self.summary.clone_from(shared);
                    } else if let Ok(c) = read_answer(buf, self.content_limit) {
                        self.summary.usage = c.usage;
                        self.summary.finish_reason = c.finish_reason;
                        self.summary.error = c.error;
                        if self.content_limit.is_some() {
                            self.summary.content = c.content;
                        }
                    }
                    if let Some(Share::Fill(shared)) = &self.share {
                        let summary = AnswerSummary {
                            content: None,
                            ..self.summary.clone()
                        };
                        let _ = shared.0.set((std::mem::take(buf).into(), summary));
                    }
                }
                buf.clear();
                buf.shrink_to_fit();
            }
            TapKind::Other => {}
        }
        &self.summary
    }
}
