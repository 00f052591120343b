//! MAC addresses as they are written in configs and API bodies.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An Ethernet MAC address, written `"06:00:ac:10:00:02"`.
///
/// Its own type rather than a `String` so that a malformed address is
/// rejected while the config is parsed (with the JSON path of the field),
/// not later when the network device is being created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

/// Why a string is not a MAC address; kept separate from `ConfigError` so
/// the parser can be used on its own (command line, HTTP path parameters).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid MAC address {input:?}: expected six two-digit hex bytes separated by ':', \
     like \"06:00:ac:10:00:02\""
)]
pub struct MacParseError {
    /// The rejected text, echoed back so the user sees what was read.
    pub input: String,
}

impl MacAddr {
    /// The address bytes, in wire order, for the device model to put in its
    /// config space.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Whether this is a group (multicast/broadcast) address; such an address
    /// cannot be a NIC's own address, so validation rejects it.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(bytes: [u8; 6]) -> Self {
        MacAddr(bytes)
    }
}

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError {
            input: s.to_owned(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            // from_str_radix alone would accept a leading '+'.
            if part.len() != 2 || !part.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MacVisitor;

        impl Visitor<'_> for MacVisitor {
            type Value = MacAddr;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a MAC address string like \"06:00:ac:10:00:02\"")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<MacAddr, E> {
                v.parse().map_err(E::custom)
            }
        }

        deserializer.deserialize_str(MacVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_any_case_and_displays_lowercase() {
        let mac: MacAddr = "06:00:AC:10:00:0f".parse().unwrap();
        assert_eq!(mac.bytes(), [0x06, 0x00, 0xac, 0x10, 0x00, 0x0f]);
        assert_eq!(mac.to_string(), "06:00:ac:10:00:0f");
        assert!(!mac.is_multicast());
        assert!(MacAddr([0x01, 0, 0, 0, 0, 0]).is_multicast());
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "06:00:ac:10:00",
            "06:00:ac:10:00:02:03",
            "06-00-ac-10-00-02",
            "6:00:ac:10:00:02",
            "+6:00:ac:10:00:02",
            "g6:00:ac:10:00:02",
            "06:00:ac:10:00:02:",
        ] {
            let err = bad.parse::<MacAddr>().unwrap_err();
            assert!(err.to_string().contains("invalid MAC address"), "{bad}");
        }
    }
}
