//! The command line: flags, and `--config` to read a file first.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError};

/// The command line's help text.
pub const USAGE: &str = "\
usage: gateway [--config FILE] [--listen ADDR] [--upstream URL] [--redis URL]... [--token-delay-ms N]

  --config FILE         a TOML config file (examples/gateway.toml shows every key);
                        the other flags override it
  --listen ADDR         where to listen (default 127.0.0.1:8080)
  --upstream URL        an OpenAI-compatible server (default: a mock LLM started in process)
  --redis URL           Redis for shared state; repeat the flag, or give several
                        comma-separated URLs, for a Redis Cluster (default: in memory)
  --token-delay-ms N    the in-process mock's delay between tokens (default 20)
  --upstream-timeout-ms N  how long to wait for the upstream's response head (default 60000)
  --connect-timeout-ms N how long to wait for an upstream connection, TLS included (default 10000)
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
        let args: Vec<String> = args.into_iter().map(Into::into).collect();
        let mut config = Self::default();
        // The file first, wherever `--config` stands: the flags override it.
        for (i, arg) in args.iter().enumerate() {
            let path = match arg.strip_prefix("--config") {
                Some("") => args.get(i + 1).ok_or_else(|| {
                    ConfigError::Flags(format!("--config needs a value\n\n{USAGE}"))
                })?,
                Some(inline) => match inline.strip_prefix('=') {
                    Some(path) => path,
                    None => continue,
                },
                None => continue,
            };
            config.read_file(Path::new(path))?;
        }
        let mut redis_from_flags = false;
        let mut args = args.into_iter();
        while let Some(flag) = args.next() {
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag, None),
            };
            if name == "--help" || name == "-h" {
                return Err(ConfigError::Flags(USAGE.to_owned()));
            }
            if name == "--secure-cookies" {
                config.secure_cookies = true;
                continue;
            }
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError::Flags(format!("{name} needs a value\n\n{USAGE}")))
            };
            match name.as_str() {
                "--config" => {
                    value()?;
                }
                "--listen" => {
                    let v = value()?;
                    config.listen = v
                        .parse()
                        .map_err(|e| ConfigError::Flags(format!("--listen {v}: {e}")))?;
                }
                "--upstream" => {
                    let v = value()?;
                    if !(v.starts_with("http://") || v.starts_with("https://")) {
                        return Err(ConfigError::Flags(format!(
                            "--upstream {v}: expected an http:// or https:// URL"
                        )));
                    }
                    config.upstream = Some(v);
                }
                "--redis" => {
                    let v = value()?;
                    if !redis_from_flags {
                        // The flags' list replaces the file's.
                        config.redis.clear();
                        redis_from_flags = true;
                    }
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
                "--connect-timeout-ms" => {
                    config.connect_timeout = Duration::from_millis(millis(&name, &value()?)?);
                }
                "--circuit-open-wait-ms" => {
                    config.circuit_open_wait = Duration::from_millis(millis(&name, &value()?)?);
                }
                other => {
                    return Err(ConfigError::Flags(format!(
                        "unknown flag {other}\n\n{USAGE}"
                    )));
                }
            }
        }
        Ok(config)
    }
}

impl Config {
    /// Reads a config file over this config (what the file leaves out
    /// stays as it is). Environment variables named in the file are read
    /// now: a provider key or admin token that isn't set refuses the file.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            path: path.display().to_string(),
            line: None,
            reason: format!("can't read it: {e}"),
        })?;
        crate::file::apply(self, path, &text, &|name| std::env::var(name).ok())
    }

    /// Reads config-file text over this config, as [`Config::read_file`]
    /// does, but looks up the environment variables it names with `env`
    /// (a secret store, a test's table) instead of the process environment.
    /// `origin` names the file in errors; relative paths in it (such as
    /// `tls_ca_file`) are read from the origin's folder.
    pub fn read_toml(
        &mut self,
        text: &str,
        origin: &Path,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        crate::file::apply(self, origin, text, &env)
    }
}

fn millis(name: &str, v: &str) -> Result<u64, ConfigError> {
    v.parse()
        .map_err(|e| ConfigError::Flags(format!("{name} {v}: {e}")))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

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
