//! The virtio device kinds a VM can have, each registered once.
//!
//! A kind ([`DeviceKind`]) says in one place which config section its
//! devices come from, how to build one (and rebuild it from saved state),
//! what it is called in placement, snapshots and metrics (`"<kind> <id>"`,
//! e.g. `drive rootfs`), and how a run-time `PATCH` reaches it. Everything
//! else is generic: [`attach_all`] builds or restores every configured
//! device and wires it through the [`DeviceManager`]; snapshots save each
//! device through its [`Persist`] impl; metrics come from
//! `VirtioDevice::counters`.
//!
//! # Adding a virtio device
//!
//! 1. **Device model**, in `devices/src/virtio/<name>/` (plus `pub mod
//!    <name>;` in `devices/src/virtio/mod.rs`): a struct implementing
//!    `VirtioDevice` (type, features, queues, config space, activation) and
//!    `event_manager::MutEventSubscriber` (its queue work on the event loop),
//!    and, in `<name>/persist.rs`, `Persist<'static>` with a plain
//!    serializable `<Name>State` holding the device's *whole* state (acked
//!    features, queue positions, anything the guest can observe), checked in
//!    `restore` (at least: acked features ⊆ offered features). A device with
//!    queues keeps a `devices::virtio::PendingRestore` from `restore` and
//!    applies it in its next `activate` (the transport re-activates a running
//!    device right after restoring it), as block and net do. Metrics come
//!    from `VirtioDevice::counters`, under the device's name.
//! 2. **Config type**, in `api/`: its config struct, a field for it in
//!    `VmConfig` (a `Vec`, or an `Option` for a single device), validation,
//!    and a patch type if it can change at run time.
//! 3. **Registration**, here: a `<name>.rs` (and `pub mod <name>;` above)
//!    with a unit struct implementing [`DeviceKind`]: `KIND` (the first
//!    word of its device names; also its snapshot section `device:<KIND>
//!    <id>`), `SECTION` (its config section, for errors), `configs` (its
//!    entries in `VmConfig`), `id`, `args` (config entry → the device's
//!    `Persist` constructor arguments), `create`, and `patch_id`/`update`/
//!    `update_config` if it has a patch; then one line
//!    `v.visit::<<name>::<Name>Kind>()?;` in [`for_each_kind`]. Creation,
//!    MMIO/IRQ placement, the kernel command line, snapshots and their
//!    validation, restore and metrics then work with no other change. A
//!    run-time `PATCH` route in the controller calls
//!    `MicroVm::update_device::<<name>::<Name>Kind>(&patch)` (a kind with
//!    several run-time changes makes `Patch` an enum, as the balloon's
//!    target and statistics interval); a run-time request that reads or
//!    drives the device without changing its configuration (`GET
//!    /balloon/statistics`, hinting) calls
//!    `MicroVm::with_device::<<name>::<Name>Kind, _>(id, |device| ...)`.
//!
//! A device that maps host memory into guest-physical space (virtio-pmem's
//! file) also implements `region` (its host mapping) and `place` (where it
//! landed): `attach` then reserves 2 MiB-aligned space above RAM for it
//! from a [`DeviceSpace`] (deterministic, in attach order, so a restore
//! lands at the same place), tells the device, and registers the mapping
//! as a KVM memory slot. Memory the guest should use as RAM (virtio-mem's
//! hotplug region) is instead part of guest memory from the start
//! (`memory::create_guest_memory_with`), so devices can DMA into it and
//! snapshots carry it.
//!
//! If the device's backend makes syscalls or ioctls the VMM thread's
//! seccomp filter does not allow yet, add them in `vmm/src/seccomp.rs`.
//!
//! A device's `State` is encoded with postcard, which is not
//! self-describing: no `skip_serializing_if` anywhere inside it (the
//! balloon keeps its state, whose statistics skip absent figures, as a JSON
//! string); the postcard round-trip test below covers each kind.
//!
//! A device that holds a guest buffer between queue events (the balloon's
//! statistics buffer) saves that buffer's head in its state and holds it
//! again after the restore: the guest waits for it back.
//!
//! What adding vsock, entropy and balloon took, per device (device model
//! and config type already existed):
//! * vsock: `devices/src/virtio/vsock/persist.rs` (the `Persist` impl with
//!   queue positions; TRANSPORT_RESET after restore), `vsock/mod.rs` and
//!   `vsock/device.rs` (the `restored` field applied in `activate`), its
//!   persist test; `vmm/src/devices/vsock.rs`; one line below.
//! * entropy: `devices/src/virtio/rng/persist.rs` (new), `rng/mod.rs`,
//!   `rng/device.rs` (same `restored` field), a test;
//!   `vmm/src/devices/rng.rs`; one line below.
//! * balloon: `devices/src/virtio/balloon/persist.rs` (new), `balloon/mod.rs`,
//!   `balloon/device.rs`, a test; `vmm/src/devices/balloon.rs`; one line
//!   below; its run-time requests in `vmm/src/controller/requests.rs`
//!   (through [`with_device`], added to this module and `MicroVm` for it).
//! * seccomp (`vmm/src/seccomp.rs`): the vCPU thread may call
//!   `timerfd_settime` and `epoll_ctl`, because activation and reset run
//!   on the vCPU thread that wrote the status register (the balloon arms its
//!   statistics timer there; a vsock reset takes its host sockets off its
//!   epoll set). The VMM thread already allowed madvise, getrandom and the
//!   Unix socket calls.
//! * `devices/Cargo.toml`: `serde_json` as a normal dependency (the
//!   balloon's state, below).
//! * Not a device kind: the `serial` section is read where the console
//!   output is chosen (`microvm.rs`, `build_skeleton`).
//!
//! Run-time updates find their device in the [`DeviceManager`]'s single
//! list by kind and id, then get the typed device back with an `Any`
//! downcast of the entry's handle (`Mutex<K::Device>`): the list stays one
//! list of `dyn VirtioDevice`, the update code stays typed, and a wrong
//! downcast (impossible while kind names are unique) is an error, not a
//! panic.

pub mod balloon;
pub mod block;
pub mod fs;
pub mod mem;
pub mod net;
pub mod pmem;
pub mod rng;
pub mod vsock;

use std::any::Any;
use std::sync::{Arc, Mutex};

use ::devices::persist::Persist;
use ::devices::virtio::VirtioDevice;
use api::VmConfig;
use event_manager::MutEventSubscriber;

use crate::device_manager::{DeviceError, DeviceManager, VirtioDeviceState, VirtioEntry};
use crate::memory::{DeviceSpace, GuestMemory, HostRegion};
use crate::snapshot::format;
use crate::vstate::vm::Vm;

/// The constructor arguments of a kind's device.
pub type ArgsOf<K> = <<K as DeviceKind>::Device as Persist<'static>>::ConstructorArgs;
/// The saved state of a kind's device.
pub type StateOf<K> = <<K as DeviceKind>::Device as Persist<'static>>::State;

/// One kind of virtio device (see the module docs).
pub trait DeviceKind: 'static {
    /// The device model.
    type Device: VirtioDevice + MutEventSubscriber + Persist<'static> + Send + 'static;
    /// One entry of the kind's config section.
    type Config;
    /// The body of the kind's run-time `PATCH` (`()` if it has none).
    type Patch;

    /// The kind's name: the first word of its devices' names.
    const KIND: &'static str;
    /// The config section its devices come from (for error messages).
    const SECTION: &'static str;

    /// The kind's entries in `config`, in attach order.
    fn configs(config: &VmConfig) -> Vec<&Self::Config>;
    /// An entry's id (unique within the kind).
    fn id(config: &Self::Config) -> &str;
    /// What building the device needs (opens host resources).
    fn args(config: &Self::Config) -> Result<ArgsOf<Self>, String>;
    /// A new device, as the guest first sees it.
    fn create(args: ArgsOf<Self>) -> Result<Self::Device, String>;
    /// Kernel command-line words the entry needs (e.g. `root=`).
    fn boot_args(_config: &Self::Config) -> Option<String> {
        None
    }

    /// The host mapping the device puts into guest-physical memory, if any
    /// (see the module docs).
    fn region(_device: &Self::Device) -> Option<HostRegion> {
        None
    }
    /// Tells the device where its region was placed.
    fn place(_device: &mut Self::Device, _gpa: u64) {}

    /// The id a patch is for.
    fn patch_id(_patch: &Self::Patch) -> &str {
        ""
    }
    /// Applies a patch to the running device; `Ok(true)` if its config
    /// space changed (the guest is then told).
    fn update(_device: &mut Self::Device, _patch: &Self::Patch) -> Result<bool, String> {
        Err(format!(
            "{} devices cannot be changed at run time",
            Self::KIND
        ))
    }
    /// Records an applied patch in the VM's configuration (so snapshots and
    /// `GET /vm/config` show it).
    fn update_config(_config: &mut VmConfig, _patch: &Self::Patch) {}
}

/// The name of a device of kind `K` with id `id`.
pub fn device_name<K: DeviceKind>(id: &str) -> String {
    format!("{} {id}", K::KIND)
}

/// Something done once per registered device kind.
pub trait KindVisitor {
    /// Does it for kind `K`.
    fn visit<K: DeviceKind>(&mut self) -> Result<(), DeviceError>;
}

/// **The registration list**: every device kind, in attach order (block
/// first, so the root drive is `/dev/vda`). Adding a kind is one line here.
pub fn for_each_kind(v: &mut impl KindVisitor) -> Result<(), DeviceError> {
    v.visit::<block::BlockKind>()?;
    v.visit::<net::NetKind>()?;
    v.visit::<vsock::VsockKind>()?;
    v.visit::<rng::RngKind>()?;
    v.visit::<balloon::BalloonKind>()?;
    v.visit::<pmem::PmemKind>()?;
    v.visit::<mem::MemKind>()?;
    v.visit::<fs::FsKind>()?;
    Ok(())
}

/// Builds (or, with `saved`, restores) every configured virtio device and
/// attaches it. Returns the extra kernel command-line words the devices
/// need.
pub fn attach_all(
    dm: &mut DeviceManager,
    vm: &Vm,
    mem: &GuestMemory,
    config: &VmConfig,
    saved: Option<&[VirtioDeviceState]>,
) -> Result<Vec<String>, DeviceError> {
    struct Attach<'a> {
        dm: &'a mut DeviceManager,
        vm: &'a Vm,
        mem: &'a GuestMemory,
        config: &'a VmConfig,
        saved: Option<&'a [VirtioDeviceState]>,
        words: Vec<String>,
        space: DeviceSpace,
    }
    impl KindVisitor for Attach<'_> {
        fn visit<K: DeviceKind>(&mut self) -> Result<(), DeviceError> {
            let words = attach::<K>(
                self.dm,
                self.vm,
                self.mem,
                self.config,
                self.saved,
                &mut self.space,
            )?;
            self.words.extend(words);
            Ok(())
        }
    }
    let mut attach = Attach {
        dm,
        vm,
        mem,
        config,
        saved,
        words: Vec::new(),
        space: DeviceSpace::new(config),
    };
    for_each_kind(&mut attach)?;
    Ok(attach.words)
}

/// The names of every device `config` asks for (what a snapshot of it must
/// hold a state for).
pub fn configured_names(config: &VmConfig) -> Vec<String> {
    struct Names<'a>(&'a VmConfig, Vec<String>);
    impl KindVisitor for Names<'_> {
        fn visit<K: DeviceKind>(&mut self) -> Result<(), DeviceError> {
            let names = K::configs(self.0)
                .into_iter()
                .map(|c| device_name::<K>(K::id(c)));
            self.1.extend(names);
            Ok(())
        }
    }
    let mut names = Names(config, Vec::new());
    // Listing names cannot fail.
    let _ = for_each_kind(&mut names);
    names.1
}

/// Builds or restores every device of kind `K` in `config`.
pub fn attach<K: DeviceKind>(
    dm: &mut DeviceManager,
    vm: &Vm,
    mem: &GuestMemory,
    config: &VmConfig,
    saved: Option<&[VirtioDeviceState]>,
    space: &mut DeviceSpace,
) -> Result<Vec<String>, DeviceError> {
    let mut words = Vec::new();
    for entry in K::configs(config) {
        let id = K::id(entry);
        let name = device_name::<K>(id);
        let setup = |message: String| DeviceError::Setup {
            section: K::SECTION,
            id: id.to_string(),
            message,
        };
        let args = K::args(entry).map_err(setup)?;
        let (mut device, placement) = match saved {
            None => (K::create(args).map_err(setup)?, None),
            Some(saved) => {
                let state = saved.iter().find(|s| s.name == name).ok_or_else(|| {
                    DeviceError::State(name.clone(), "the snapshot has no state for it".into())
                })?;
                let device_state = decode_state::<K>(state)?;
                let device = K::Device::restore(args, &device_state)
                    .map_err(|e| DeviceError::State(name.clone(), e.to_string()))?;
                (device, Some(state))
            }
        };
        if let Some(region) = K::region(&device) {
            let (gpa, slot) = space
                .allocate(region.size)
                .ok_or_else(|| setup("no guest-physical space left for its region".into()))?;
            K::place(&mut device, gpa);
            vm.register_device_region(slot, gpa, region)
                .map_err(|e| setup(e.to_string()))?;
        }
        dm.attach_virtio(
            vm,
            mem,
            &name,
            K::KIND,
            id,
            device,
            placement,
            save_entry::<K>,
        )?;
        words.extend(K::boot_args(entry));
    }
    Ok(words)
}

fn decode_state<K: DeviceKind>(saved: &VirtioDeviceState) -> Result<StateOf<K>, DeviceError> {
    let refuse = |why: String| DeviceError::State(saved.name.clone(), why);
    if saved.kind != K::KIND {
        return Err(refuse(format!(
            "saved as a {:?} device, configured as {:?}",
            saved.kind,
            K::KIND
        )));
    }
    let version = <K::Device as Persist<'static>>::STATE_VERSION;
    if saved.version != version {
        return Err(refuse(format!(
            "state version {}, this flint reads version {version}",
            saved.version
        )));
    }
    format::from_bytes(&saved.state).map_err(|e| refuse(format!("decoding its state: {e}")))
}

/// Saves the device behind an entry's typed handle (one instance per kind,
/// stored in the entry as a function pointer).
pub type SaveFn = fn(&(dyn Any + Send + Sync)) -> Result<(u16, Vec<u8>), String>;

fn save_entry<K: DeviceKind>(handle: &(dyn Any + Send + Sync)) -> Result<(u16, Vec<u8>), String> {
    let device = handle
        .downcast_ref::<Mutex<K::Device>>()
        .ok_or_else(|| format!("not a {} device", K::KIND))?;
    let state = lock(device).save().map_err(|e| e.to_string())?;
    let bytes = format::to_bytes(&state).map_err(|e| e.to_string())?;
    Ok((<K::Device as Persist<'static>>::STATE_VERSION, bytes))
}

/// Applies a run-time `PATCH` to the device of kind `K` it names, and
/// records it in `config`.
pub fn update<K: DeviceKind>(
    entries: &[VirtioEntry],
    config: &mut VmConfig,
    patch: &K::Patch,
) -> Result<(), String> {
    let config_changed = with_device::<K, _>(entries, K::patch_id(patch), |device| {
        K::update(device, patch)
    })??;
    if config_changed {
        let entry = find::<K>(entries, K::patch_id(patch))?;
        lock(&entry.transport).notify_config_change();
    }
    K::update_config(config, patch);
    Ok(())
}

/// Runs `f` on the typed device of kind `K` with id `id` (its lock held):
/// run-time requests that are not patches (`GET /balloon/statistics`,
/// hinting) read or drive a device through this.
pub fn with_device<K: DeviceKind, R>(
    entries: &[VirtioEntry],
    id: &str,
    f: impl FnOnce(&mut K::Device) -> R,
) -> Result<R, String> {
    let entry = find::<K>(entries, id)?;
    let device: Arc<dyn Any + Send + Sync> = entry.handle.clone();
    let device = device
        .downcast_ref::<Mutex<K::Device>>()
        .ok_or_else(|| format!("{}: not a {} device", entry.name, K::KIND))?;
    let result = f(&mut lock(device));
    Ok(result)
}

fn find<'a, K: DeviceKind>(
    entries: &'a [VirtioEntry],
    id: &str,
) -> Result<&'a VirtioEntry, String> {
    entries
        .iter()
        .find(|e| e.kind == K::KIND && e.id == id)
        .ok_or_else(|| format!("no {} {id:?}", K::KIND))
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered kind contributes its devices' names, in attach
    /// order: what snapshots hold states for and metrics are keyed by.
    #[test]
    fn every_registered_kind_names_its_devices() {
        let config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/vmlinux"},
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "drives": [{"drive_id": "root", "path_on_host": "/disk", "is_root_device": true}],
            "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0"}],
            "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
            "entropy": {},
            "balloon": {"amount_mib": 0, "deflate_on_oom": false},
        }))
        .unwrap();
        assert_eq!(
            configured_names(&config),
            [
                "drive root",
                "net eth0",
                "vsock vsock",
                "rng entropy",
                "balloon balloon"
            ]
        );
        let mut named = config.clone();
        if let Some(v) = named.vsock.as_mut() {
            v.vsock_id = Some("v0".into());
        }
        assert!(configured_names(&named).contains(&"vsock v0".to_string()));
    }

    /// The balloon's run-time changes are recorded in the configuration
    /// (snapshots and `GET /vm/config` show them).
    #[test]
    fn balloon_patches_update_the_config() {
        use balloon::{BalloonKind, BalloonPatch};
        let mut config: VmConfig = serde_json::from_value(serde_json::json!({
            "boot-source": {"kernel_image_path": "/vmlinux"},
            "balloon": {"amount_mib": 0, "deflate_on_oom": false, "stats_polling_interval_s": 1},
        }))
        .unwrap();
        BalloonKind::update_config(&mut config, &BalloonPatch::Target(64));
        BalloonKind::update_config(&mut config, &BalloonPatch::StatsInterval(5));
        let b = config.balloon.unwrap();
        assert_eq!((b.amount_mib, b.stats_polling_interval_s), (64, 5));
    }

    /// Snapshots encode device states with postcard, which cannot skip
    /// absent fields: every kind's state must round-trip through it.
    #[test]
    fn device_states_round_trip_through_the_snapshot_encoding() {
        use ::devices::virtio::balloon::{Balloon, BalloonConfig};
        use ::devices::virtio::rng::Rng;
        let balloon = Balloon::new(BalloonConfig {
            amount_mib: 4,
            deflate_on_oom: true,
            stats_polling_interval_s: 1,
            free_page_hinting: true,
            free_page_reporting: true,
        })
        .unwrap();
        let state = balloon.save().unwrap();
        let back: StateOf<balloon::BalloonKind> =
            format::from_bytes(&format::to_bytes(&state).unwrap()).unwrap();
        assert_eq!(back, state);
        let rng = Rng::new(None).unwrap();
        let state = rng.save().unwrap();
        let back: StateOf<rng::RngKind> =
            format::from_bytes(&format::to_bytes(&state).unwrap()).unwrap();
        assert_eq!(back, state);
    }
}
