//! MMDS configuration, in the shape of Firecracker's `PUT /mmds/config` body.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The link-local address EC2 and Firecracker use, so unmodified guest tools find MMDS.
pub const DEFAULT_IPV4_ADDR: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The MAC address MMDS answers ARP with (Firecracker's, locally administered).
pub const DEFAULT_MAC_ADDR: [u8; 6] = [0x06, 0x01, 0x23, 0x45, 0x67, 0x01];

/// Default data store limit in bytes of serialized JSON: Firecracker's
/// `--mmds-size-limit` default (its HTTP API payload limit, 51200).
pub const DEFAULT_SIZE_LIMIT: usize = 51_200;

/// Which protocol the guest must speak: V1 answers any GET, V2 requires a session token.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MmdsVersion {
    /// Token-less GETs (a token, if sent, is checked but not required, as Firecracker).
    #[default]
    V1,
    /// GETs need an `X-metadata-token` obtained by `PUT /latest/api/token`.
    V2,
}

/// The `PUT /mmds/config` body; the API crate deserializes it and hands it to the VMM,
/// which applies `version`/`imds_compat` to [`crate::Mmds`] and `ipv4_address` /
/// `network_interfaces` when building a [`crate::MmdsNetStack`] per listed interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// Protocol version; V1 when absent.
    #[serde(default)]
    pub version: MmdsVersion,
    /// `iface_id`s of the network interfaces whose guest traffic MMDS intercepts.
    pub network_interfaces: Vec<String>,
    /// The address MMDS answers on; 169.254.169.254 when absent.
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Always answer in IMDS plain text, ignoring `Accept` (as EC2 does).
    #[serde(default)]
    pub imds_compat: bool,
}

/// Why an [`MmdsConfig`] is refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Firecracker requires at least one interface; MMDS on none would be unreachable.
    #[error("The list of network interface IDs that allow forwarding MMDS requests is empty.")]
    NoInterfaces,
    /// Only link-local addresses are allowed, so MMDS never shadows a routable host.
    #[error("The MMDS IPv4 address is not link local: {0}.")]
    NotLinkLocal(Ipv4Addr),
    /// An interface listed twice is a config mistake.
    #[error("Duplicate network interface in MMDS config: {0}.")]
    DuplicateInterface(String),
}

impl MmdsConfig {
    /// The address to serve on, with the default applied.
    pub fn ipv4(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_IPV4_ADDR)
    }

    /// Checks the rules Firecracker applies to `PUT /mmds/config`, plus duplicate ids;
    /// that the ids name existing interfaces is for the caller, which knows them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.network_interfaces.is_empty() {
            return Err(ConfigError::NoInterfaces);
        }
        for (i, id) in self.network_interfaces.iter().enumerate() {
            if self.network_interfaces[..i].contains(id) {
                return Err(ConfigError::DuplicateInterface(id.clone()));
            }
        }
        let ip = self.ipv4();
        if !ip.is_link_local() {
            return Err(ConfigError::NotLinkLocal(ip));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c: MmdsConfig = serde_json::from_str(r#"{"network_interfaces":["eth0"]}"#).unwrap();
        assert_eq!(c.version, MmdsVersion::V1);
        assert_eq!(c.ipv4(), DEFAULT_IPV4_ADDR);
        assert!(!c.imds_compat);
        c.validate().unwrap();
        let c: MmdsConfig = serde_json::from_str(
            r#"{"version":"V2","network_interfaces":["a"],"ipv4_address":"169.254.1.2","imds_compat":true}"#,
        )
        .unwrap();
        assert_eq!(c.version, MmdsVersion::V2);
        c.validate().unwrap();
        let bad = MmdsConfig {
            ipv4_address: Some(Ipv4Addr::new(10, 0, 0, 1)),
            ..c.clone()
        };
        assert!(matches!(bad.validate(), Err(ConfigError::NotLinkLocal(_))));
        let none = MmdsConfig {
            network_interfaces: vec![],
            ..c.clone()
        };
        assert_eq!(none.validate(), Err(ConfigError::NoInterfaces));
        let dup = MmdsConfig {
            network_interfaces: vec!["a".into(), "a".into()],
            ..c
        };
        assert!(matches!(
            dup.validate(),
            Err(ConfigError::DuplicateInterface(_))
        ));
        assert!(serde_json::from_str::<MmdsConfig>(r#"{"network_interfaces":[],"x":1}"#).is_err());
    }
}
