//! Persistent memory: the `pmem` config section as virtio-pmem devices,
//! each a host file mapped into guest-physical memory above RAM.

use api::{PmemConfig, VmConfig};
use devices::virtio::pmem::{Pmem, PmemArgs};

use super::DeviceKind;
use crate::memory::HostRegion;

/// The `pmem` registration.
pub struct PmemKind;

impl DeviceKind for PmemKind {
    type Device = Pmem;
    type Config = PmemConfig;
    type Patch = ();

    const KIND: &'static str = "pmem";
    const SECTION: &'static str = "pmem";

    /// The root device first, so it is `/dev/pmem0`.
    fn configs(config: &VmConfig) -> Vec<&PmemConfig> {
        let root = config.pmem.iter().filter(|p| p.root_device);
        let others = config.pmem.iter().filter(|p| !p.root_device);
        root.chain(others).collect()
    }

    fn id(config: &PmemConfig) -> &str {
        &config.id
    }

    fn args(config: &PmemConfig) -> Result<PmemArgs, String> {
        Ok(PmemArgs {
            id: config.id.clone(),
            path: config.path_on_host.clone(),
            read_only: config.read_only,
        })
    }

    fn create(args: PmemArgs) -> Result<Pmem, String> {
        Pmem::new(args).map_err(|e| e.to_string())
    }

    fn boot_args(config: &PmemConfig) -> Option<String> {
        config.root_device.then(|| {
            let mode = if config.read_only { "ro" } else { "rw" };
            format!("root=/dev/pmem0 {mode}")
        })
    }

    fn region(pmem: &Pmem) -> Option<HostRegion> {
        Some(HostRegion {
            host_addr: pmem.mapping().host_addr(),
            size: pmem.mapping().len(),
            read_only: pmem.read_only(),
        })
    }

    /// A restored device keeps its saved address; placement is
    /// deterministic, so a different one means the configuration changed.
    fn place(pmem: &mut Pmem, gpa: u64) {
        if pmem.start() != 0 && pmem.start() != gpa {
            log::warn!(
                "pmem: the guest saw its region at {:#x}, now placed at {gpa:#x}",
                pmem.start()
            );
        }
        pmem.set_start(gpa);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_device_comes_first_and_sets_root() {
        let config: VmConfig = serde_json::from_str(
            r#"{"boot-source":{"kernel_image_path":"/k"},
                "pmem":[{"id":"data","path_on_host":"/d"},
                        {"id":"root","path_on_host":"/r","root_device":true,"read_only":true}]}"#,
        )
        .unwrap();
        let ids: Vec<&str> = PmemKind::configs(&config)
            .into_iter()
            .map(PmemKind::id)
            .collect();
        assert_eq!(ids, ["root", "data"]);
        assert_eq!(
            PmemKind::boot_args(&config.pmem[1]).as_deref(),
            Some("root=/dev/pmem0 ro")
        );
        assert_eq!(PmemKind::boot_args(&config.pmem[0]), None);
    }
}
