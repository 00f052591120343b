//! Firecracker fields flint accepts in their shape but can honour only with
//! one value: deserializing any other value fails with a message saying so,
//! so the API answers 400 naming the field instead of ignoring it.

use serde::{de, Deserialize, Deserializer};

/// The message for refusing a field's unsupported value.
pub(crate) trait Refusal {
    /// What the client is told (names the field and what to send instead).
    const MESSAGE: &'static str;
}

/// Deserializes a `bool` that must be `false`.
pub(crate) fn only_false<'de, D: Deserializer<'de>, R: Refusal>(d: D) -> Result<bool, D::Error> {
    match bool::deserialize(d)? {
        false => Ok(false),
        true => Err(de::Error::custom(R::MESSAGE)),
    }
}

/// Deserializes an optional `bool` that, if given, must be `false`.
pub(crate) fn only_false_opt<'de, D: Deserializer<'de>, R: Refusal>(
    d: D,
) -> Result<Option<bool>, D::Error> {
    match Option::<bool>::deserialize(d)? {
        Some(true) => Err(de::Error::custom(R::MESSAGE)),
        other => Ok(other),
    }
}
