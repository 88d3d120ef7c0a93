//! The lenient JSON pieces that the request and answer readers share, and
//! the error of a body that is neither.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::value::{BorrowedStrDeserializer, MapAccessDeserializer, StrDeserializer};
use serde::de::{self, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// The `Visitor` methods of the scalars that carry nothing here (booleans,
/// floats, `null`): each gives `$value`.
macro_rules! skip_other_scalars {
    ($value:expr) => {
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok($value)
        }
    };
}

pub(super) use skip_other_scalars;

/// A JSON value read without failing on its shape: a string read as `S`, an
/// object read as `T`, or anything else, skipped. The APIs give one name
/// different shapes (`delta` is a string in a Responses event and an object
/// in an Anthropic one), and a field of an unexpected shape must not hide
/// the rest of the answer.
#[derive(Default)]
pub(super) enum Lenient<S, T> {
    Text(S),
    Object(T),
    #[default]
    Other,
}

/// A string field (an event type, a status, a finish reason), read
/// leniently.
pub(super) type Str<'a> = Lenient<Text<'a>, IgnoredAny>;

/// An object field, read leniently.
pub(super) type Obj<T> = Lenient<IgnoredAny, T>;

impl<S, T> Lenient<S, T> {
    pub(super) const fn object(&self) -> Option<&T> {
        match self {
            Self::Object(object) => Some(object),
            _ => None,
        }
    }
}

impl<S: Piece, T> Lenient<S, T> {
    pub(super) fn text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => text.get(),
            _ => None,
        }
    }

    pub(super) fn is(&self, text: &str) -> bool {
        self.text() == Some(text)
    }
}

impl<'de, S: Deserialize<'de>, T: Deserialize<'de>> Deserialize<'de> for Lenient<S, T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LenientVisitor<S, T>(PhantomData<fn() -> Lenient<S, T>>);
        impl<'de, S: Deserialize<'de>, T: Deserialize<'de>> Visitor<'de> for LenientVisitor<S, T> {
            type Value = Lenient<S, T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                S::deserialize(BorrowedStrDeserializer::new(v)).map(Lenient::Text)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                S::deserialize(StrDeserializer::new(v)).map(Lenient::Text)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient::Other)
            }
            skip_other_scalars!(Lenient::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Lenient::Other)
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(Lenient::Object)
            }
        }
        deserializer.deserialize_any(LenientVisitor(PhantomData))
    }
}

/// A string as [`Lenient`] holds it.
pub(super) trait Piece {
    fn get(&self) -> Option<&str>;
}

/// A string borrowed from the body, or copied out of it when it holds
/// escapes.
#[derive(Default)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

/// A string borrowed from the body; one that holds escapes is skipped
/// (`None`) rather than copied. What the answer's text is read as when no
/// one will read it, so a stream event costs no allocation for it.
#[derive(Default)]
pub(super) struct Skim<'a>(pub(super) Option<&'a str>);

impl Piece for Text<'_> {
    fn get(&self) -> Option<&str> {
        Some(&self.0)
    }
}

impl Piece for Skim<'_> {
    fn get(&self) -> Option<&str> {
        self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for TextVisitor<'a> {
            type Value = Text<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'a>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(TextVisitor(PhantomData))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Skim<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SkimVisitor<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for SkimVisitor<'a> {
            type Value = Skim<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Skim<'a>, E> {
                Ok(Skim(Some(v)))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Skim<'a>, E> {
                Ok(Skim(None))
            }
        }
        deserializer.deserialize_str(SkimVisitor(PhantomData))
    }
}

/// An array's elements, or nothing when the value is not an array.
pub(super) struct List<T>(pub(super) Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

/// An array's first element (the rest skipped unread), or nothing when the
/// value is not an array: OpenAI's `choices`, without a `Vec` per chunk.
pub(super) struct First<T>(pub(super) Option<T>);

impl<T> Default for First<T> {
    fn default() -> Self {
        Self(None)
    }
}

/// Deserializes an array wrapper through `$visit_seq`, skipping any other
/// value.
macro_rules! array_wrapper {
    ($name:ident, $expecting:literal, |$seq:ident| $visit_seq:block) => {
        impl<'de, T: Deserialize<'de>> Deserialize<'de> for $name<T> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                struct ArrayVisitor<T>(PhantomData<fn() -> T>);
                impl<'de, T: Deserialize<'de>> Visitor<'de> for ArrayVisitor<T> {
                    type Value = $name<T>;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                        Ok($name::default())
                    }
                    skip_other_scalars!($name::default());
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> Result<Self::Value, A::Error> {
                        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                        Ok($name::default())
                    }
                    fn visit_seq<A: SeqAccess<'de>>(
                        self,
                        mut $seq: A,
                    ) -> Result<Self::Value, A::Error> {
                        $visit_seq
                    }
                }
                deserializer.deserialize_any(ArrayVisitor(PhantomData))
            }
        }
    };
}

array_wrapper!(List, "an array", |seq| {
    let mut items = Vec::new();
    while let Some(item) = seq.next_element()? {
        items.push(item);
    }
    Ok(List(items))
});

array_wrapper!(First, "an array", |seq| {
    let first = seq.next_element()?;
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(First(first))
});

pub(super) fn floor_char_boundary(s: &str, at: usize) -> usize {
    if at >= s.len() {
        return s.len();
    }
    (0..=at).rev().find(|&i| s.is_char_boundary(i)).unwrap_or(0)
}

/// A body that could not be read as an LLM API request or answer.
#[derive(Debug)]
#[non_exhaustive]
pub enum LlmError {
    /// Not JSON, or JSON of the wrong shape.
    Json(serde_json::Error),
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Json(e) => write!(f, "the body is not a valid chat completion request: {e}"),
        }
    }
}

impl std::error::Error for LlmError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json(e) => Some(e),
        }
    }
}
