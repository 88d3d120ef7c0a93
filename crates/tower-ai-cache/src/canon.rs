//! A JSON body as the key hashes it, parsed without copying: strings are
//! borrowed from the body unless they hold escapes, object members are kept
//! in a `Vec` and sorted only when written. It writes the same canonical
//! form as the key module's `write_canonical` does for a
//! `serde_json::Value` (the equivalence is tested there), at a fraction of the
//! allocations: a key is made for every request.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;
use std::io::{self, Write};

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

/// One JSON value, borrowing from the text it was parsed from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Canon<'a> {
    Null,
    Bool(bool),
    Number(Number),
    Str(Cow<'a, str>),
    Array(Vec<Canon<'a>>),
    /// Members in document order; a repeated name keeps its last value
    /// (as `serde_json::Value` does), applied when written.
    Object(Vec<(Cow<'a, str>, Canon<'a>)>),
}

impl<'a> Canon<'a> {
    /// The member `name` of an object (its last occurrence).
    pub(crate) fn get(&self, name: &str) -> Option<&Canon<'a>> {
        match self {
            Self::Object(members) => members
                .iter()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut Canon<'a>> {
        match self {
            Self::Object(members) => members
                .iter_mut()
                .rev()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_number(&self) -> Option<&Number> {
        match self {
            Self::Number(n) => Some(n),
            _ => None,
        }
    }

    /// Removes the member at `path` (a name, or dotted names into nested
    /// objects), every occurrence of it.
    pub(crate) fn remove_path(&mut self, path: &[Box<str>]) {
        match path {
            [] => {}
            [last] => {
                if let Self::Object(members) = self {
                    members.retain(|(n, _)| n != last.as_ref());
                }
            }
            [first, rest @ ..] => {
                if let Some(inner) = self.get_mut(first) {
                    inner.remove_path(rest);
                }
            }
        }
    }

    /// Writes the canonical form: no insignificant whitespace, object
    /// members sorted by their names' UTF-16 code units (the last of a
    /// repeated name), numbers normalised.
    pub(crate) fn write(&self, w: &mut impl Write) -> io::Result<()> {
        match self {
            Self::Null => w.write_all(b"null"),
            Self::Bool(true) => w.write_all(b"true"),
            Self::Bool(false) => w.write_all(b"false"),
            Self::Number(n) => write_number(w, n),
            Self::Str(s) => write_string(w, s),
            Self::Array(items) => {
                w.write_all(b"[")?;
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    item.write(w)?;
                }
                w.write_all(b"]")
            }
            Self::Object(members) => {
                w.write_all(b"{")?;
                let mut order: Vec<usize> = (0..members.len()).collect();
                // Stable: among equal names, the last one ends the run.
                order.sort_by(|&a, &b| utf16_cmp(&members[a].0, &members[b].0));
                let mut first = true;
                for (at, &i) in order.iter().enumerate() {
                    let name = &members[i].0;
                    if order
                        .get(at + 1)
                        .is_some_and(|&next| members[next].0 == *name)
                    {
                        continue;
                    }
                    if !first {
                        w.write_all(b",")?;
                    }
                    first = false;
                    write_string(w, name)?;
                    w.write_all(b":")?;
                    members[i].1.write(w)?;
                }
                w.write_all(b"}")
            }
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Canon<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CanonVisitor(std::marker::PhantomData))
    }
}

struct CanonVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for CanonVisitor<'a> {
    type Value = Canon<'a>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Canon<'a>, E> {
        Ok(Canon::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Canon<'a>, E> {
        Ok(Canon::Number(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Canon<'a>, E> {
        Ok(Canon::Number(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Canon<'a>, E> {
        Ok(Number::from_f64(v).map_or(Canon::Null, Canon::Number))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Canon<'a>, E> {
        Ok(Canon::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Canon<'a>, E> {
        Ok(Canon::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Canon<'a>, E> {
        Ok(Canon::Str(Cow::Owned(v)))
    }

    fn visit_unit<E>(self) -> Result<Canon<'a>, E> {
        Ok(Canon::Null)
    }

    fn visit_none<E>(self) -> Result<Canon<'a>, E> {
        Ok(Canon::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Canon<'a>, D::Error> {
        Canon::deserialize(d)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Canon<'a>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
        while let Some(item) = seq.next_element::<Canon<'a>>()? {
            items.push(item);
        }
        Ok(Canon::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Canon<'a>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
        while let Some(Name(name)) = map.next_key::<Name<'a>>()? {
            members.push((name, map.next_value::<Canon<'a>>()?));
        }
        Ok(Canon::Object(members))
    }
}

/// An object member's name, borrowed when it has no escapes (serde's own
/// `Cow<str>` always copies).
struct Name<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Name<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor<'a>(std::marker::PhantomData<&'a ()>);

        impl<'de: 'a, 'a> Visitor<'de> for NameVisitor<'a> {
            type Value = Name<'a>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a member name")
            }

            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }

            fn visit_str<E>(self, v: &str) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v.to_owned())))
            }

            fn visit_string<E>(self, v: String) -> Result<Name<'a>, E> {
                Ok(Name(Cow::Owned(v)))
            }
        }

        deserializer.deserialize_str(NameVisitor(std::marker::PhantomData))
    }
}

/// Orders member names by their UTF-16 code units (RFC 8785).
pub(crate) fn utf16_cmp(a: &str, b: &str) -> Ordering {
    if a.is_ascii() && b.is_ascii() {
        return a.cmp(b);
    }
    a.encode_utf16().cmp(b.encode_utf16())
}

/// A JSON string, escaped as `JSON.stringify` does.
pub(crate) fn write_string(w: &mut impl Write, s: &str) -> io::Result<()> {
    // serde_json escapes exactly what JSON.stringify escapes: `"`, `\`, and
    // control characters (as \b \f \n \r \t or \u00xx, lowercase).
    serde_json::to_writer(&mut *w, s).map_err(io::Error::other)
}

/// Integers are written as integers (`1.0` and `1e0` are `1`); other numbers
/// in Rust's shortest round-trip form, which is one text per `f64`.
pub(crate) fn write_number(w: &mut impl Write, n: &serde_json::Number) -> io::Result<()> {
    if let Some(u) = n.as_u64() {
        return write!(w, "{u}");
    }
    if let Some(i) = n.as_i64() {
        return write!(w, "{i}");
    }
    let f = n.as_f64().unwrap_or(0.0);
    // Below 2^53 an integral f64 is an exact integer.
    if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 {
        #[allow(clippy::cast_possible_truncation)]
        let i = f as i64;
        return write!(w, "{i}");
    }
    write!(w, "{f}")
}
