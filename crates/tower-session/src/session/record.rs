//! The stored form of a session beyond the user's fields: the reserved `$`
//! metadata fields, and the user id read from the user field's JSON.

use std::time::Duration;

use crate::store::Fields;

/// When the session was created (unix ms).
const CREATED: &str = "$c";
/// When the session was last renewed (unix ms): decides whether a read must
/// renew the TTL.
pub(super) const TOUCHED: &str = "$t";
/// When the session must end whatever its activity (unix ms), with an
/// absolute lifetime.
const DEADLINE: &str = "$d";
/// When the session was last (re)added to its user's index (unix ms).
pub(super) const INDEXED: &str = "$i";

/// Replaces the metadata fields of `fields` with a creation time, a renewal
/// time and, with an absolute lifetime, a deadline.
pub(super) fn meta(fields: &mut Fields, created: u64, now: u64, deadline: Option<u64>) {
    fields.retain(|(k, _)| !k.starts_with('$'));
    fields.push((CREATED.to_owned(), created.to_string()));
    fields.push((TOUCHED.to_owned(), now.to_string()));
    if let Some(d) = deadline {
        fields.push((DEADLINE.to_owned(), d.to_string()));
    }
}

/// The text of a user field's JSON value: a string as itself, anything else
/// as JSON.
pub(super) fn user_of(json: &str) -> Option<String> {
    user_of_value(serde_json::from_str(json).ok()?)
}

pub(super) fn user_of_value(value: serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
