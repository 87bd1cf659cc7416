//! What `input` (Responses) and `messages` (chat) hold that classification can use, read while the
//! body is parsed.
//!
//! The body parser (`super::body`) deserializes these types in its single pass over the body, and
//! the text extractor (`super::text`) reads them; neither of those two modules knows the other.
//! The history before the latest user turn is skipped as it is read, so a long conversation costs
//! one scan and no copies.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// The text-bearing top-level fields of a request body.
#[derive(Debug, Default)]
#[cfg_attr(test, derive(serde::Deserialize))]
pub struct TextFields<'a> {
    /// `input` (Responses).
    #[cfg_attr(test, serde(borrow, default))]
    pub input: Option<Turns<'a>>,
    /// `messages` (chat completions).
    #[cfg_attr(test, serde(borrow, default))]
    pub messages: Option<Turns<'a>>,
    /// Raw `instructions` (Responses); `None` when absent or null.
    #[cfg_attr(test, serde(borrow, default))]
    pub instructions: Option<&'a RawValue>,
}

/// What `input` (Responses) or `messages` (chat) holds that classification can use, gathered
/// while the body is parsed: the body is read once, and the history before the latest user turn
/// is skipped as it is read, so a long conversation costs one scan and no copies.
#[derive(Debug)]
pub enum Turns<'a> {
    /// A plain string.
    Text(Cow<'a, str>),
    /// An array of items or messages.
    Items {
        /// `system`/`developer` messages, for `include_instructions`.
        instructions: Vec<Item<'a>>,
        /// The last `user` item and every non-assistant item after it; every non-assistant,
        /// non-instruction item when there is no `user` item.
        latest: Vec<Item<'a>>,
    },
    /// Anything else. Only an error if the text is needed (the backend judges the schema).
    Other,
}

/// One input item or chat message, with only the fields that can carry classifiable text.
#[derive(Debug)]
pub struct Item<'a> {
    pub(crate) kind: Option<Cow<'a, str>>,
    pub(crate) role: Role,
    pub(crate) content: Option<&'a RawValue>,
    pub(crate) output: Option<&'a RawValue>,
}

/// A content part; only text-bearing part types are read.
#[derive(serde::Deserialize)]
pub(crate) struct Part<'a> {
    #[serde(rename = "type", borrow, default)]
    pub(crate) kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub(crate) text: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    User,
    Assistant,
    Instruction,
    /// Items without a role: tool outputs and other client-supplied items.
    None,
}

impl Role {
    fn of(role: Option<&str>) -> Role {
        match role {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            Some("system") | Some("developer") => Role::Instruction,
            _ => Role::None,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Turns<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TurnsVisitor)
    }
}

struct TurnsVisitor;

impl<'de> Visitor<'de> for TurnsVisitor {
    type Value = Turns<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or an array of items")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Turns::Text(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Turns::Text(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Turns::Text(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut instructions = Vec::new();
        let mut latest = Vec::new();
        while let Some(MaybeItem(item)) = seq.next_element()? {
            // Items that are not objects or carry unknown shapes are skipped: the backend
            // validates the schema, the router only needs the text it can find.
            let Some(item) = item else { continue };
            match item.role {
                Role::User => {
                    latest.clear();
                    latest.push(item);
                }
                Role::None => latest.push(item),
                Role::Instruction => instructions.push(item),
                Role::Assistant => {}
            }
        }
        Ok(Turns::Items {
            instructions,
            latest,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(Turns::Other)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Turns::Other)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Turns::Other)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Turns::Other)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Turns::Other)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Turns::Other)
    }
}

/// An array element: `Some` for an object whose text-bearing fields have the expected types.
struct MaybeItem<'a>(Option<Item<'a>>);

impl<'de> Deserialize<'de> for MaybeItem<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = MaybeItem<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let (mut kind, mut role, mut content, mut output) = (None, None, None, None);
        let mut valid = true;
        while let Some(key) = map.next_key::<ItemKey>()? {
            // A duplicated or mistyped field makes the item unusable, as a strict parse would.
            match key {
                ItemKey::Type if kind.is_none() => {
                    kind = Some(map.next_value::<LenientStr<'de>>()?)
                }
                ItemKey::Role if role.is_none() => {
                    role = Some(map.next_value::<LenientStr<'de>>()?)
                }
                ItemKey::Content if content.is_none() => content = Some(map.next_value()?),
                ItemKey::Output if output.is_none() => output = Some(map.next_value()?),
                ItemKey::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
                ItemKey::Type | ItemKey::Role | ItemKey::Content | ItemKey::Output => {
                    map.next_value::<IgnoredAny>()?;
                    valid = false;
                }
            }
        }
        let (LenientStr::Str(kind), LenientStr::Str(role)) = (
            kind.unwrap_or(LenientStr::Str(None)),
            role.unwrap_or(LenientStr::Str(None)),
        ) else {
            return Ok(MaybeItem(None));
        };
        Ok(MaybeItem(valid.then(|| Item {
            kind,
            role: Role::of(role.as_deref()),
            content: content.flatten(),
            output: output.flatten(),
        })))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(MaybeItem(None))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MaybeItem(None))
    }
}

/// An item's key, matched without allocating (most keys of a long history are these four).
enum ItemKey {
    Type,
    Role,
    Content,
    Output,
    Other,
}

impl<'de> Deserialize<'de> for ItemKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_identifier(ItemKeyVisitor)
    }
}

struct ItemKeyVisitor;

impl Visitor<'_> for ItemKeyVisitor {
    type Value = ItemKey;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(match v {
            "type" => ItemKey::Type,
            "role" => ItemKey::Role,
            "content" => ItemKey::Content,
            "output" => ItemKey::Output,
            _ => ItemKey::Other,
        })
    }
}

/// A string field that may be absent or null (`Str(None)`), or of another type (`Wrong`).
enum LenientStr<'a> {
    Str(Option<Cow<'a, str>>),
    Wrong,
}

impl<'de> Deserialize<'de> for LenientStr<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientStrVisitor)
    }
}

struct LenientStrVisitor;

impl<'de> Visitor<'de> for LenientStrVisitor {
    type Value = LenientStr<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(LenientStr::Str(Some(Cow::Borrowed(v))))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(LenientStr::Str(Some(Cow::Owned(v.to_owned()))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(LenientStr::Str(None))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(LenientStr::Wrong)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        drain_map(map)?;
        Ok(LenientStr::Wrong)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(LenientStr::Wrong)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(LenientStr::Wrong)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(LenientStr::Wrong)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(LenientStr::Wrong)
    }
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}
