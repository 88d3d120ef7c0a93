//! [`Sessions`]: work on the session store outside a request.

use std::fmt;
use std::sync::Arc;

use crate::config::Config;
use crate::error::Error;
use crate::profile::Profile;
use crate::store::Changes;

/// A handle on a layer's store for work outside a request (admin routes,
/// jobs): log a user out everywhere, read or change a profile. From
/// [`SessionLayer::sessions`](crate::SessionLayer::sessions); cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    config: Arc<Config>,
}

impl Sessions {
    pub(crate) fn new(config: Arc<Config>) -> Self {
        Self { config }
    }

    /// Deletes every session of `user` — on every replica at once — and
    /// returns how many the user's index held.
    pub async fn logout_user(&self, user: &str) -> Result<usize, Error> {
        Ok(self.config.store.delete_user_sessions(user).await?)
    }

    /// The profile of `user`, or `None` when it has none. One store round
    /// trip.
    pub async fn profile(&self, user: &str) -> Result<Option<Profile>, Error> {
        Ok(self
            .config
            .store
            .load_profile(user)
            .await?
            .map(|fields| Profile::new(user, fields)))
    }

    /// Sets the `set` fields and removes the `remove` fields of `user`'s
    /// profile. One store round trip.
    pub async fn update_profile<K: Into<String>, V: Into<String>>(
        &self,
        user: &str,
        set: impl IntoIterator<Item = (K, V)>,
        remove: impl IntoIterator<Item = K>,
    ) -> Result<(), Error> {
        let changes = Changes::collect(set, remove);
        Ok(self.config.store.update_profile(user, &changes).await?)
    }
}

impl fmt::Debug for Sessions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sessions")
            .field("config", &self.config)
            .finish()
    }
}
