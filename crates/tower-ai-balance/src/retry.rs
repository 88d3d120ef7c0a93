//! Which answers are retried, how long to wait, and for how long an
//! endpoint's `Retry-After` keeps it out.

use std::time::Duration;

use http::{HeaderMap, Response, StatusCode, header};

use crate::config::Settings;

/// What an attempt's outcome says about its endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Healthy: a success, or a `4xx` that is the request's own fault.
    Healthy,
    /// A connection error, `408`, `429` or `5xx`: worth another endpoint,
    /// and a mark against this one; `Retry-After` when it said one.
    Failed(Option<Duration>),
}

pub(crate) fn judge<B, E>(outcome: &Result<Response<B>, E>) -> Verdict {
    match outcome {
        Err(_) => Verdict::Failed(None),
        Ok(response) => {
            let status = response.status();
            if status == StatusCode::REQUEST_TIMEOUT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
            {
                Verdict::Failed(retry_after(response.headers()))
            } else {
                Verdict::Healthy
            }
        }
    }
}

/// `Retry-After` in seconds. An HTTP date is not read: providers send
/// seconds, and a date would need the clocks to agree.
pub(crate) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(header::RETRY_AFTER)?.to_str().ok()?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(86_400.0)))
}

/// The wait before retry number `attempt` (1 for the first): the first
/// backoff doubled each time, capped, with half of it drawn at random so
/// requests that failed together don't come back together.
pub(crate) fn backoff(attempt: u32, settings: &Settings, draw: u64) -> Duration {
    let full = settings
        .backoff
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(settings.backoff_max);
    let half = full / 2;
    let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(if nanos == 0 { 0 } else { draw % nanos })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: u16, retry_after: Option<&str>) -> Result<Response<()>, ()> {
        let mut builder = Response::builder().status(status);
        if let Some(value) = retry_after {
            builder = builder.header("retry-after", value);
        }
        Ok(builder.body(()).unwrap())
    }

    #[test]
    fn what_is_retried() {
        assert_eq!(judge(&response(200, None)), Verdict::Healthy);
        assert_eq!(judge(&response(400, None)), Verdict::Healthy);
        assert_eq!(judge(&response(404, None)), Verdict::Healthy);
        assert_eq!(judge(&response(408, None)), Verdict::Failed(None));
        assert_eq!(
            judge(&response(429, Some("2"))),
            Verdict::Failed(Some(Duration::from_secs(2)))
        );
        assert_eq!(
            judge(&response(503, Some("0.5"))),
            Verdict::Failed(Some(Duration::from_millis(500)))
        );
        assert_eq!(
            judge(&response(500, Some("Wed, 21 Oct 2015 07:28:00 GMT"))),
            Verdict::Failed(None)
        );
        assert_eq!(judge(&response(502, Some("-1"))), Verdict::Failed(None));
        assert_eq!(judge::<(), ()>(&Err(())), Verdict::Failed(None));
    }

    #[test]
    fn backoff_doubles_within_its_bounds() {
        let settings = Settings::default();
        for draw in [0, 1, u64::MAX, 12_345_678] {
            let first = backoff(1, &settings, draw);
            assert!(first >= Duration::from_micros(12_500) && first < Duration::from_millis(25));
            let third = backoff(3, &settings, draw);
            assert!(third >= Duration::from_millis(50) && third < Duration::from_millis(100));
            let late = backoff(40, &settings, draw);
            assert!(late >= Duration::from_millis(500) && late < Duration::from_secs(1));
        }
    }
}
