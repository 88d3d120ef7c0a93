//! A user's profile: preferences, plan tier, anything other layers want to
//! know about the user behind a session.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::store::Fields;

/// The field [`Profile::tier`] reads.
pub const TIER_FIELD: &str = "tier";

/// A user's profile: text fields stored per user (not per session), so every
/// session of the user sees the same one. Cheap to clone.
///
/// Read it from a handler or another layer with
/// [`Session::profile`](crate::Session::profile) (loaded once per request,
/// then cached), write it with
/// [`Session::update_profile`](crate::Session::update_profile) or
/// [`Sessions::update_profile`](crate::Sessions::update_profile).
#[derive(Clone, PartialEq, Eq)]
pub struct Profile {
    user: Arc<str>,
    fields: Arc<HashMap<String, String>>,
}

impl Profile {
    pub(crate) fn new(user: &str, fields: Fields) -> Self {
        Self {
            user: Arc::from(user),
            fields: Arc::new(fields.into_iter().collect()),
        }
    }

    /// The user this profile belongs to.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// One field.
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }

    /// The plan tier: the `tier` field.
    pub fn tier(&self) -> Option<&str> {
        self.get(TIER_FIELD)
    }

    /// Every field, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.fields.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Whether the profile has no field.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }
}

impl fmt::Debug for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Profile")
            .field("user", &self.user)
            .field("fields", &self.fields)
            .finish()
    }
}
