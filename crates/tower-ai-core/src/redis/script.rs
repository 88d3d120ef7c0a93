use fred::error::Error;
use fred::interfaces::LuaInterface;
use fred::types::{FromValue, MultipleKeys, MultipleValues};

/// A Lua script, called by `EVALSHA` and reloaded when the server answers
/// `NOSCRIPT`.
///
/// The SHA1 is computed once, when the script is made. A call is one round
/// trip while the server has the script cached; after a restart, a failover or
/// on a Cluster node that hasn't seen it yet, the server answers `NOSCRIPT` and
/// the call is made again with `EVAL`, which also caches the script on that
/// node. This works the same on a `Client` and a `Pool`, standalone and
/// Cluster (unlike `fred`'s `evalsha_with_reload`, which takes a `Client`).
///
/// Scripts that read the time must use `redis.call('TIME')` so every replica
/// of the application sees one clock.
#[derive(Debug, Clone)]
pub struct Script {
    source: &'static str,
    sha: String,
}

impl Script {
    /// A script with the given Lua source.
    pub fn new(source: &'static str) -> Self {
        let sha = sha1_smol::Sha1::from(source).digest().to_string();
        Self { source, sha }
    }

    /// The script's SHA1, as `EVALSHA` takes it.
    pub fn sha(&self) -> &str {
        &self.sha
    }

    /// The Lua source.
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Runs the script on `client` with `keys` and `args`.
    ///
    /// One round trip, or two the first time a node sees the script.
    pub async fn call<R, C, K, V>(&self, client: &C, keys: K, args: V) -> Result<R, Error>
    where
        R: FromValue,
        C: LuaInterface + Sync,
        K: Into<MultipleKeys> + Send,
        V: TryInto<MultipleValues> + Send,
        V::Error: Into<Error> + Send,
    {
        let keys: MultipleKeys = keys.into();
        let args: MultipleValues = args.try_into().map_err(Into::into)?;
        match client
            .evalsha::<R, _, _, _>(self.sha.as_str(), keys.clone(), args.clone())
            .await
        {
            Err(e) if is_noscript(&e) => client.eval(self.source, keys, args).await,
            other => other,
        }
    }
}

fn is_noscript(e: &Error) -> bool {
    e.details().starts_with("NOSCRIPT")
}
