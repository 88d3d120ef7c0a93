use std::time::Duration;

use fred::prelude::{Builder, ClientLike, Config, ReconnectPolicy, Server, ServerConfig};
use fred::types::config::ClusterDiscoveryPolicy;

/// How [`client`] and [`connect`] set up a connection.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// How long one TCP connection attempt may take (default 1 s).
    pub connection_timeout: Duration,
    /// The first and the longest wait between reconnection attempts
    /// (default 50 ms and 2 s); attempts never stop.
    pub reconnect_delay: (Duration, Duration),
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            connection_timeout: Duration::from_secs(1),
            reconnect_delay: (Duration::from_millis(50), Duration::from_secs(2)),
        }
    }
}

/// A `fred` client for `urls`, not yet connected.
///
/// One URL gives a standalone client (or a Cluster client for a
/// `redis-cluster://` URL); several URLs are the seed nodes of a Cluster.
/// The client reconnects forever with an exponential backoff, and tries a
/// command once: the layers put their own timeout on every call and fall back
/// to local state rather than queue behind a dead server.
pub fn client<S: AsRef<str>>(
    urls: &[S],
    options: &ConnectOptions,
) -> Result<fred::clients::Client, fred::error::Error> {
    let config = config_from_urls(urls)?;
    let mut builder = Builder::from_config(config);
    let (min, max) = options.reconnect_delay;
    builder
        .set_policy(ReconnectPolicy::new_exponential(
            0,
            millis(min),
            millis(max),
            2,
        ))
        .with_connection_config(|c| {
            c.connection_timeout = options.connection_timeout;
            c.internal_command_timeout = options.connection_timeout;
            c.max_command_attempts = 1;
        });
    builder.build()
}

/// Builds a client for `urls` (see [`client`]) and connects it, waiting at
/// most `options.connection_timeout` for the first connection.
///
/// On failure the error is returned; the client is dropped.
pub async fn connect<S: AsRef<str>>(
    urls: &[S],
    options: &ConnectOptions,
) -> Result<fred::clients::Client, fred::error::Error> {
    let client = client(urls, options)?;
    client.connect();
    match tokio::time::timeout(options.connection_timeout, client.wait_for_connect()).await {
        Ok(Ok(())) => Ok(client),
        Ok(Err(e)) => {
            let _ = client.quit().await;
            Err(e)
        }
        Err(_) => {
            let _ = client.quit().await;
            Err(fred::error::Error::new(
                fred::error::ErrorKind::Timeout,
                "timed out connecting to Redis",
            ))
        }
    }
}

fn config_from_urls<S: AsRef<str>>(urls: &[S]) -> Result<Config, fred::error::Error> {
    match urls {
        [] => Err(fred::error::Error::new(
            fred::error::ErrorKind::Config,
            "no Redis URL given",
        )),
        [one] => Config::from_url(one.as_ref()),
        [first, ..] => {
            let mut config = Config::from_url(first.as_ref())?;
            let mut hosts = Vec::with_capacity(urls.len());
            for url in urls {
                let c = Config::from_url(url.as_ref())?;
                hosts.extend(c.server.hosts().into_iter().map(|s: Server| s));
            }
            config.server = ServerConfig::Clustered {
                hosts,
                policy: ClusterDiscoveryPolicy::default(),
            };
            Ok(config)
        }
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_urls_make_a_cluster() {
        let config = config_from_urls(&["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]);
        let hosts = config.map(|c| (c.server.is_clustered(), c.server.hosts().len()));
        assert!(matches!(hosts, Ok((true, 2))));
        assert!(config_from_urls::<&str>(&[]).is_err());
        assert!(config_from_urls(&["not a url"]).is_err());
    }
}
