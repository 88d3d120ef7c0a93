//! Session ids: 192 bits from the operating system's CSPRNG, URL-safe.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::error::Error;

/// Random bytes in an id: 192 bits, above the 128 bits OWASP asks for.
const RANDOM_BYTES: usize = 24;

/// Length of an id's text: 24 bytes in unpadded base64url.
pub(crate) const ID_LEN: usize = 32;

/// A session id: 192 random bits from the operating system (`getrandom`),
/// as 32 characters of unpadded base64url (`A–Z a–z 0–9 - _`).
///
/// An id is a bearer credential: whoever holds it holds the session. The
/// layer never writes it to logs or metrics, the Redis store keys sessions by
/// a digest of it, and its `Debug` output shows only the first characters.
/// Ids are made only by the server ([`Id::random`]); an id read from a
/// request is accepted only when it has exactly this shape, and a session is
/// never created under an id a client chose.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Id([u8; ID_LEN]);

impl Id {
    /// A new random id from the operating system's CSPRNG.
    ///
    /// Fails ([`Error::Entropy`]) only when the OS has no entropy to give.
    pub fn random() -> Result<Self, Error> {
        let mut raw = [0u8; RANDOM_BYTES];
        getrandom::fill(&mut raw).map_err(|e| Error::Entropy(e.to_string()))?;
        let mut text = [0u8; ID_LEN];
        // 24 bytes encode to exactly 32 characters, so this can't fail.
        let written = URL_SAFE_NO_PAD
            .encode_slice(raw, &mut text)
            .unwrap_or_default();
        debug_assert_eq!(written, ID_LEN);
        Ok(Self(text))
    }

    /// The id in `text`, when `text` has exactly the shape of an id made by
    /// [`Id::random`]; `None` for anything else (wrong length, any byte
    /// outside base64url). Allocation-free.
    pub fn parse(text: &[u8]) -> Option<Self> {
        let text: [u8; ID_LEN] = text.try_into().ok()?;
        text.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            .then_some(Self(text))
    }

    /// The id's text.
    pub fn as_str(&self) -> &str {
        // Only base64url bytes are ever stored: always valid UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Enough to tell two ids apart in a test, not enough to use one.
        write!(f, "Id({}…)", &self.as_str()[..4])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_ids_have_the_documented_shape_and_differ() {
        let a = Id::random().unwrap();
        let b = Id::random().unwrap();
        assert_ne!(a, b);
        assert_eq!(a.as_str().len(), ID_LEN);
        assert_eq!(Id::parse(a.as_str().as_bytes()), Some(a));
        assert!(!format!("{a:?}").contains(&a.as_str()[..8]));
    }

    #[test]
    fn parse_rejects_anything_else() {
        let ok = "abcdefghijklmnopqrstuvwxyzAB-_09";
        assert!(Id::parse(ok.as_bytes()).is_some());
        assert!(Id::parse(&ok.as_bytes()[..31]).is_none());
        assert!(Id::parse(format!("{ok}x").as_bytes()).is_none());
        assert!(Id::parse(b"abcdefghijklmnopqrstuvwxyzAB-_0=").is_none());
        assert!(Id::parse(b"abcdefghijklmnopqrstuvwxyzAB-_0}").is_none());
        assert!(Id::parse("abcdefghijklmnopqrstuvwxyzAB-_\u{e9}".as_bytes()).is_none());
        assert!(Id::parse(b"").is_none());
    }
}
