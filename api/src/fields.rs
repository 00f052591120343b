//! Reading a struct's serde field names from its `Deserialize` impl, so
//! tests and tools can compare a type with a schema (the OpenAPI test) or
//! know the config's sections (the API's test double) without a list kept
//! by hand.

use serde::de::{self, DeserializeOwned, Visitor};

/// The field names `T` deserializes from, as serde spells them (renames
/// applied), or an empty list if `T` does not deserialize from a struct.
/// Types deserialized `from` another (e.g. `ActionType`) report that type's
/// fields.
pub fn serde_field_names<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut probe = Probe(None);
    // The probe always fails after recording what it was asked for.
    let _ = T::deserialize(&mut probe);
    probe.0.unwrap_or(&[])
}

/// A deserializer that records the field list of the first struct it is
/// asked for and then gives up.
struct Probe(Option<&'static [&'static str]>);

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("field probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Self {
        Stop
    }
}

impl<'de> de::Deserializer<'de> for &mut Probe {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Stop> {
        self.0 = Some(fields);
        Err(Stop)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_serde() {
        let sections = serde_field_names::<crate::VmConfig>();
        assert!(sections.contains(&"boot-source"));
        assert!(sections.contains(&"network-interfaces"));
        assert!(sections.contains(&"balloon"));
        assert_eq!(
            serde_field_names::<crate::ActionType>(),
            ["action_type"].as_slice()
        );
        assert!(serde_field_names::<u32>().is_empty());
    }
}
