//! Shared directories: the `fs` section as virtio-fs devices over
//! vhost-user (the daemon, e.g. virtiofsd, must be listening at boot).
//! Guest memory is then a shared memfd (`memory::MemoryBacking`), so the
//! daemon can map it. Such a VM cannot be snapshotted or migrated (the
//! controller refuses with the device's tag; the device's `save` refuses
//! too).

use api::{FsConfig, VmConfig};
use devices::virtio::fs::{Fs, FsArgs};

use super::DeviceKind;

/// The `fs` registration (one device per entry, id = mount tag).
pub struct FsKind;

impl DeviceKind for FsKind {
    type Device = Fs;
    type Config = FsConfig;
    type Patch = ();

    const KIND: &'static str = "fs";
    const SECTION: &'static str = "fs";

    fn configs(config: &VmConfig) -> Vec<&FsConfig> {
        config.fs.iter().collect()
    }

    fn id(config: &FsConfig) -> &str {
        &config.tag
    }

    fn args(config: &FsConfig) -> Result<FsArgs, String> {
        Ok(FsArgs {
            tag: config.tag.clone(),
            socket: config.socket.clone(),
            num_request_queues: config.num_request_queues,
            queue_size: config.queue_size,
            // Spawned by a confined thread, the watchdog inherits that
            // filter; otherwise it confines itself when flint uses filters.
            thread_init: (crate::seccomp::enabled() && !crate::seccomp::thread_confined())
                .then_some(confine_watchdog as fn()),
        })
    }

    /// Connects to the daemon and negotiates with it.
    fn create(args: FsArgs) -> Result<Fs, String> {
        Fs::new(args).map_err(|e| e.to_string())
    }
}

fn confine_watchdog() {
    if let Err(e) = crate::seccomp::install(crate::seccomp::ThreadKind::Watchdog) {
        log::error!("virtio-fs watchdog: {e}");
    }
}

/// The refusal for a snapshot or migration of `config`'s VM, if it has a
/// virtio-fs device (`what`: "snapshotted", "migrated").
pub fn refuse_snapshot(config: &VmConfig, what: &str) -> Result<(), String> {
    match config.fs.first() {
        Some(fs) => Err(format!(
            "virtio-fs device {} cannot be {what}: its state lives in virtiofsd",
            fs.tag
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_and_migrations_of_a_vm_with_fs_are_refused_naming_the_tag() {
        let mut config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/vmlinux"},
        }))
        .unwrap();
        assert_eq!(refuse_snapshot(&config, "snapshotted"), Ok(()));
        config.fs.push(FsConfig {
            tag: "vol0".into(),
            socket: "/run/v.sock".into(),
            num_request_queues: 1,
            queue_size: 1024,
        });
        assert_eq!(
            refuse_snapshot(&config, "snapshotted").unwrap_err(),
            "virtio-fs device vol0 cannot be snapshotted: its state lives in virtiofsd"
        );
        assert!(refuse_snapshot(&config, "migrated")
            .unwrap_err()
            .contains("cannot be migrated"));
        assert_eq!(
            super::super::configured_names(&config),
            ["fs vol0".to_string()]
        );
    }
}
