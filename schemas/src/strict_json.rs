//! Plain JSON only: valid UTF-8, bounded nesting, no duplicate keys, checked before anything is decoded.
//!
//! Two parsers can read one document differently when it repeats a key (one
//! keeps the first value, another the last) or nests past one parser's limit.
//! A signed record must mean one thing to every verifier, so envelopes, event
//! payloads and vault requests pass this check first, with their unknown fields
//! too: whatever the chain holds, a verifier in any language can parse.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::Deserializer;
use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};

/// Deepest nesting of arrays and objects accepted anywhere in a document.
pub const JSON_DEPTH_MAX: usize = 16;

/// Why bytes are not plain JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StrictJsonError {
    #[error("not valid UTF-8 at byte {0}")]
    Utf8(usize),
    #[error("{0}")]
    Syntax(String),
}

/// Checks that `bytes` are one JSON value, UTF-8, nested at most [`JSON_DEPTH_MAX`]
/// deep, with no object repeating a key.
pub fn check(bytes: &[u8]) -> Result<(), StrictJsonError> {
    let text = std::str::from_utf8(bytes).map_err(|e| StrictJsonError::Utf8(e.valid_up_to()))?;
    let mut de = serde_json::Deserializer::from_str(text);
    Value { depth: 0 }
        .deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| StrictJsonError::Syntax(e.to_string()))
}

/// One value at `depth` (the number of arrays and objects around it).
struct Value {
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for Value {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Value {
    fn inner<E: serde::de::Error>(&self) -> Result<Value, E> {
        if self.depth >= JSON_DEPTH_MAX {
            return Err(E::custom(format!(
                "nested deeper than {JSON_DEPTH_MAX} arrays or objects"
            )));
        }
        Ok(Value {
            depth: self.depth + 1,
        })
    }
}

impl<'de> Visitor<'de> for Value {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self.inner()?)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // Most objects have a few keys: a list is faster than hashing them; a big one
        // moves to a set, so a crafted object with thousands of keys stays linear.
        let mut few: Vec<Cow<'de, str>> = Vec::new();
        let mut many: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(Key(key)) = map.next_key_seed(KeySeed)? {
            let repeated = if many.is_empty() && few.len() < KEYS_LISTED_MAX {
                let r = few.contains(&key);
                few.push(key.clone());
                r
            } else {
                many.extend(few.drain(..));
                !many.insert(key.clone())
            };
            if repeated {
                let shown: String = key.chars().take(KEY_SHOWN_CHARS).collect();
                return Err(A::Error::custom(format!("duplicate key {shown:?}")));
            }
            map.next_value_seed(self.inner()?)?;
        }
        Ok(())
    }
}

/// Keys of one object compared as a list before they go into a set.
const KEYS_LISTED_MAX: usize = 16;

/// An object key, borrowed from the input when it has no escapes.
struct Key<'de>(Cow<'de, str>);

struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Key<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Key<'de>, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Key<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Key<'de>, E> {
        Ok(Key(Cow::Owned(v)))
    }
}

/// Characters of a repeated key shown in the error.
const KEY_SHOWN_CHARS: usize = 64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_json_passes() {
        check(br#"{"a":[1,{"b":null}],"c":"\u00e9t\u00e9","d":-1.5e3,"e":true}"#).unwrap();
    }

    #[test]
    fn a_repeated_key_is_refused_at_any_depth() {
        let e = check(br#"{"a":1,"a":2}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate key \"a\""), "{e}");
        assert!(check(br#"{"x":[{"k":1,"j":2,"k":3}]}"#).is_err());
        // The same key in sibling objects is not a repeat.
        check(br#"{"x":[{"k":1},{"k":2}]}"#).unwrap();
    }

    #[test]
    fn a_repeat_among_many_keys_is_found_too() {
        let keys: Vec<String> = (0..100).map(|i| format!("\"k{i}\":{i}")).collect();
        let ok = format!("{{{}}}", keys.join(","));
        check(ok.as_bytes()).unwrap();
        let twice = format!("{{{},\"k57\":0}}", keys.join(","));
        assert!(
            check(twice.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("\"k57\"")
        );
        // An escaped key is the same key as its plain spelling.
        assert!(check(br#"{"a":1,"\u0061":2}"#).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let ok = "[".repeat(JSON_DEPTH_MAX) + &"]".repeat(JSON_DEPTH_MAX);
        check(ok.as_bytes()).unwrap();
        let deep = "[".repeat(JSON_DEPTH_MAX + 1) + &"]".repeat(JSON_DEPTH_MAX + 1);
        assert!(
            check(deep.as_bytes())
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let attack = format!("{{\"x\":{}{}}}", "[".repeat(30_000), "]".repeat(30_000));
        assert!(check(attack.as_bytes()).is_err());
    }

    #[test]
    fn invalid_utf8_and_trailing_bytes_are_refused() {
        assert_eq!(check(b"{\"a\":\"\xff\"}"), Err(StrictJsonError::Utf8(6)));
        assert!(check(b"{} {}").is_err());
        assert!(check(b"").is_err());
    }
}
