use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::DEFAULT_UPSTREAM_TIMEOUT;

/// How a gateway is set up.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// Where to listen (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// The upstream's base URL (any OpenAI-compatible server); `None` starts
    /// the mock LLM in process.
    pub upstream: Option<String>,
    /// Redis URLs for shared state: none (in memory), one (standalone), or
    /// several (the seed nodes of a Cluster).
    pub redis: Vec<String>,
    /// The in-process mock's delay between tokens (default 20 ms).
    pub mock_token_delay: Duration,
    /// How long to wait for the upstream's response head (default 60 s).
    pub upstream_timeout: Duration,
    /// How long a model's circuit stays open before trial calls (default
    /// 30 s).
    pub circuit_open_wait: Duration,
    /// Whether the session cookie is `Secure` (sent over HTTPS only). Off by
    /// default because the gateway itself serves plain HTTP; turn it on
    /// behind a TLS-terminating proxy.
    pub secure_cookies: bool,
    /// How long a relayed stream may stay silent before a heartbeat comment
    /// (default 15 s).
    pub sse_heartbeat: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            upstream: None,
            redis: Vec::new(),
            mock_token_delay: Duration::from_millis(20),
            upstream_timeout: DEFAULT_UPSTREAM_TIMEOUT,
            circuit_open_wait: Duration::from_secs(30),
            secure_cookies: false,
            sse_heartbeat: Duration::from_secs(15),
        }
    }
}

/// A command line the gateway can't run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl ConfigError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<tower_ai_ratelimit::ConfigError> for ConfigError {
    fn from(e: tower_ai_ratelimit::ConfigError) -> Self {
        Self(e.to_string())
    }
}

/// The command line's help text.
pub const USAGE: &str = "\
usage: gateway [--listen ADDR] [--upstream URL] [--redis URL]... [--token-delay-ms N]

  --listen ADDR         where to listen (default 127.0.0.1:8080)
  --upstream URL        an OpenAI-compatible server (default: a mock LLM started in process)
  --redis URL           Redis for shared state; repeat the flag, or give several
                        comma-separated URLs, for a Redis Cluster (default: in memory)
  --token-delay-ms N    the in-process mock's delay between tokens (default 20)
  --upstream-timeout-ms N  how long to wait for the upstream's response head (default 60000)
  --circuit-open-wait-ms N how long a model's circuit stays open before trial calls (default 30000)
  --secure-cookies      mark the session cookie Secure (behind a TLS-terminating proxy)
  --sse-heartbeat-ms N  a heartbeat comment after this long without an event (default 15000)";

impl Config {
    /// Reads the command line (without the program name).
    pub fn from_args<I, S>(args: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut config = Self::default();
        let mut args = args.into_iter().map(Into::into);
        while let Some(flag) = args.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag, None),
            };
            if name == "--help" || name == "-h" {
                return Err(ConfigError(USAGE.to_owned()));
            }
            if name == "--secure-cookies" {
                config.secure_cookies = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError(format!("{name} needs a value\n\n{USAGE}")))
            };
            match name.as_str() {
                "--listen" => {
                    let v = value()?;
                    config.listen = v
                        .parse()
                        .map_err(|e| ConfigError(format!("--listen {v}: {e}")))?;
                }
                "--upstream" => {
                    let v = value()?;
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(ConfigError(format!(
                            "--upstream {v}: expected an http:// URL"
                        )));
                    }
                    config.upstream = Some(v);
                }
                "--redis" => {
                    let v = value()?;
                    config.redis.extend(
                        v.split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(str::to_owned),
                    );
                }
                "--token-delay-ms" => {
                    config.mock_token_delay = Duration::from_millis(millis(&name, &value()?)?);
                }
                "--upstream-timeout-ms" => {
                    config.upstream_timeout = Duration::from_millis(millis(&name, &value()?)?);
                }
                "--sse-heartbeat-ms" => {
                    config.sse_heartbeat = Duration::from_millis(millis(&name, &value()?)?);
                }
                "--circuit-open-wait-ms" => {
                    config.circuit_open_wait = Duration::from_millis(millis(&name, &value()?)?);
                }
                other => {
                    return Err(ConfigError(format!("unknown flag {other}\n\n{USAGE}")));
                }
            }
        }
        Ok(config)
    }
}

fn millis(name: &str, v: &str) -> Result<u64, ConfigError> {
    v.parse()
        .map_err(|e| ConfigError(format!("{name} {v}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_flags() {
        let c = Config::from_args([
            "--listen",
            "0.0.0.0:9000",
            "--upstream=http://up:1",
            "--redis",
            "redis://a:1,redis://b:2",
            "--redis",
            "redis://c:3",
            "--token-delay-ms",
            "5",
        ])
        .unwrap_or_default();
        assert_eq!(c.listen, SocketAddr::from(([0, 0, 0, 0], 9000)));
        assert_eq!(c.upstream.as_deref(), Some("http://up:1"));
        assert_eq!(c.redis.len(), 3);
        assert_eq!(c.mock_token_delay, Duration::from_millis(5));
    }

    #[test]
    fn refuses_bad_flags() {
        assert!(Config::from_args(["--listen", "nowhere"]).is_err());
        assert!(Config::from_args(["--upstream", "ftp://x"]).is_err());
        assert!(Config::from_args(["--redis"]).is_err());
        assert!(Config::from_args(["--frobnicate"]).is_err());
    }
}
