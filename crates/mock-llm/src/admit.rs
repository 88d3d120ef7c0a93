//! What every model route does before it answers, in this order: count the request, read the
//! body, record what it carried, stall for [`Fault::latency_ms`], refuse a malformed request
//! with `400`, and draw [`Fault::fail_rate`]'s `500`. Then the route answers through
//! [`Admitted`], which keeps the counters; in simulate mode, a route that has a simulated
//! prompt ([`Generating::simulated_prompt`]) is submitted to the simulator only now, after the
//! faults.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::error::Dialect;
use crate::fault::Fault;
use crate::generate::Generated;
use crate::simulate::{Simulated, Stop};
use crate::stats::{Counters, Endpoint, InFlight, LastRequest};
use crate::stream::{self, Plan};
use crate::{Inner, MockLlm, shutdown_requested};

/// The largest request body read.
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A request that passed the checks and the fault draws, ready to be answered.
#[derive(Debug)]
pub(crate) struct Admitted<T> {
    /// The route's parsed request.
    pub(crate) request: T,
    /// The faults in force when the request arrived.
    pub(crate) fault: Fault,
    dialect: Dialect,
    in_flight: InFlight,
    /// Its sequence on the simulator, in simulate mode.
    simulated: Option<Simulated>,
}

/// Runs the checks for a request to `endpoint`; `parse` reads the route's request from the JSON
/// body (`Err` carries the message of the 400). `Err` is the response to send instead.
pub(crate) async fn admit<T>(
    mock: &MockLlm,
    endpoint: Endpoint,
    dialect: Dialect,
    request: Request,
    parse: impl FnOnce(&Value) -> Result<T, String>,
) -> Result<Admitted<T>, Response> {
    let inner = Arc::clone(&mock.inner);
    Counters::bump(&inner.stats.requests);
    let in_flight = InFlight::new(Arc::clone(&inner));
    let (parts, body) = request.into_parts();

    let mut last = last_request(parts.uri.path(), &parts.headers);
    let bytes = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(bytes) => bytes,
        Err(error) => {
            inner.stats.record(endpoint, last);
            Counters::bump(&inner.stats.invalid);
            return Err(
                dialect.invalid_request(&format!("Could not read the request body: {error}"))
            );
        }
    };
    let json = serde_json::from_slice::<Value>(&bytes).map_err(|e| {
        format!(
            "We could not parse the JSON body of your request. ({e}) \
             (HINT: This likely means you aren't using your HTTP library correctly.)"
        )
    });
    last.model = json
        .as_ref()
        .ok()
        .and_then(|value| value.get("model"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    inner.stats.record(endpoint, last);

    let fault = mock.fault();
    if fault.latency_ms > 0 && !sleep(&inner, fault.latency()).await {
        return Err(dialect.shutting_down());
    }
    let request = match json.and_then(|value| parse(&value)) {
        Ok(request) => request,
        Err(message) => {
            Counters::bump(&inner.stats.invalid);
            tracing::debug!(?endpoint, %message, "mock-llm: invalid request");
            return Err(dialect.invalid_request(&message));
        }
    };
    if mock.fault_state().should_fail() {
        Counters::bump(&inner.stats.failed);
        tracing::debug!(?endpoint, "mock-llm: injected failure");
        return Err(dialect.injected_failure());
    }
    Ok(Admitted {
        request,
        fault,
        dialect,
        in_flight,
        simulated: None,
    })
}

/// What the shared flow of a generating route reads of its parsed request.
pub(crate) trait Generating {
    /// The model asked for.
    fn model(&self) -> &str;
    /// Whether the answer is streamed.
    fn streams(&self) -> bool;
    /// The answer.
    fn answer(&self) -> &Generated;
    /// The prompt a simulated server gets in simulate mode; `None` (the default) for a route
    /// the simulator does not serve, which stays paced by the token delay.
    fn simulated_prompt(&self) -> Option<&str> {
        None
    }
}

/// A generating route: the checks of [`admit`], then the `plan`ned stream,
/// or, one token delay later, the JSON `answer`, counted as sent.
///
/// In simulate mode, a route with a [simulated prompt](Generating::simulated_prompt) is paced by
/// the simulator instead: the stream as [`stream`] says, and the JSON answer once the sequence
/// is done. `answer` gets the prompt tokens the simulator's prefix cache served then (`None`
/// otherwise). A sequence the simulator rejects is answered `503`.
pub(crate) async fn generate<T: Generating>(
    mock: &MockLlm,
    endpoint: Endpoint,
    dialect: Dialect,
    request: Request,
    parse: impl FnOnce(&Value) -> Result<T, String>,
    plan: impl FnOnce(&Admitted<T>) -> Plan,
    answer: impl FnOnce(&T, Option<u32>) -> Response,
) -> Response {
    let mut admitted = match admit(mock, endpoint, dialect, request, parse).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let request = &admitted.request;
    let output_tokens = request.answer().output_tokens();
    tracing::debug!(
        ?endpoint,
        model = %request.model(),
        stream = request.streams(),
        tokens = output_tokens,
        "mock-llm: answering"
    );
    if let Some(prompt) = request.simulated_prompt()
        && let Some(server) = mock.simulator()
    {
        match Simulated::start(server, prompt, output_tokens) {
            Ok(simulated) => admitted.simulated = Some(simulated),
            Err(needed_blocks) => {
                tracing::debug!(?endpoint, needed_blocks, "mock-llm: simulator rejected");
                let message = format!(
                    "The request needs {needed_blocks} KV-cache blocks of 16 tokens (prompt and \
                     answer), more than the simulated server's {} (mock-llm simulate).",
                    server.config().kv_blocks
                );
                return dialect.error(StatusCode::SERVICE_UNAVAILABLE, "server_error", &message);
            }
        }
    }
    if request.streams() {
        let plan = plan(&admitted);
        return admitted.stream(plan);
    }
    let cached_tokens = match admitted.simulated.take() {
        Some(mut simulated) => {
            let mut shutdown = admitted.in_flight.inner().shutdown.subscribe();
            match simulated.done(&mut shutdown).await {
                Ok(cached_tokens) => Some(cached_tokens),
                Err(Stop::Shutdown) => return dialect.shutting_down(),
                Err(Stop::Lost) => {
                    return dialect.error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "server_error",
                        "The simulated server ended the sequence (mock-llm simulate).",
                    );
                }
            }
        }
        None => {
            if let Err(response) = admitted.pause().await {
                return response;
            }
            None
        }
    };
    let response = answer(&admitted.request, cached_tokens);
    admitted.answered(output_tokens, response)
}

impl<T> Admitted<T> {
    /// An empty stream plan for an answer of `tokens` tokens, under the faults in force.
    pub(crate) fn plan(&self, tokens: usize) -> Plan {
        Plan::new(self.token_delay(), &self.fault, tokens)
    }

    /// Sends the planned stream, paced by the simulator in simulate mode; it counts as started
    /// now.
    pub(crate) fn stream(self, plan: Plan) -> Response {
        stream::respond(plan, self.in_flight, self.simulated)
    }

    /// Waits before a non-streaming answer: one token delay. `Err` is the `503` to send if the
    /// mock was shut down meanwhile.
    pub(crate) async fn pause(&self) -> Result<(), Response> {
        if sleep(self.in_flight.inner(), self.token_delay()).await {
            Ok(())
        } else {
            Err(self.dialect.shutting_down())
        }
    }

    /// Counts the non-streaming `response` carrying `output_tokens` as sent, and returns it.
    pub(crate) fn answered(self, output_tokens: u64, response: Response) -> Response {
        let stats = &self.in_flight.inner().stats;
        Counters::bump(&stats.completions);
        stats.tokens_sent.fetch_add(output_tokens, Relaxed);
        response
    }

    fn token_delay(&self) -> Duration {
        self.in_flight.inner().config.token_delay
    }
}

/// The path and credential headers of a request, its model unknown yet.
pub(crate) fn last_request(path: &str, headers: &HeaderMap) -> LastRequest {
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    };
    LastRequest {
        path: path.to_owned(),
        model: None,
        authorization: header("authorization"),
        x_api_key: header("x-api-key"),
        anthropic_version: header("anthropic-version"),
    }
}

/// Sleeps for `duration`; `false` if the mock was shut down meanwhile.
async fn sleep(inner: &Inner, duration: Duration) -> bool {
    if duration.is_zero() {
        return true;
    }
    let mut shutdown = inner.shutdown.subscribe();
    tokio::select! {
        biased;
        () = shutdown_requested(&mut shutdown) => false,
        () = tokio::time::sleep(duration) => true,
    }
}
