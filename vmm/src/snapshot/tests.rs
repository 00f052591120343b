//! The state as sections: round trip, evolution (unknown sections), and the
//! checks made before anything reaches KVM.

use super::*;
use crate::vstate::vcpu_state::tests::sample as sample_vcpu;
use devices::legacy::serial::SerialState;
use devices::virtio::mmio::MmioTransportState;
use kvm_bindings::{kvm_clock_data, kvm_irqchip, kvm_pit_state2};

fn config(vcpus: u8, mem_mib: u64) -> VmConfig {
    serde_json::from_value(serde_json::json!({
        "boot-source": {"kernel_image_path": "/vmlinux"},
        "machine-config": {"vcpu_count": vcpus, "mem_size_mib": mem_mib},
        "drives": [{"drive_id": "root", "path_on_host": "/disk", "is_root_device": true}],
    }))
    .unwrap()
}

fn device(name: &str) -> VirtioDeviceState {
    VirtioDeviceState {
        name: name.into(),
        kind: "drive".into(),
        base: 0xd000_0000,
        gsi: 5,
        transport: MmioTransportState {
            regs: Default::default(),
            queues: vec![],
            interrupt_status: 0,
            activated: false,
        },
        version: 1,
        state: vec![1, 2, 3],
    }
}

pub(crate) fn sample() -> MicroVmState {
    MicroVmState {
        config: config(2, 2),
        memory: MemoryLayout {
            regions: vec![(0, 1 << 20), (1 << 30, 1 << 20)],
        },
        memory_kind: MemoryKind::Full,
        snapshot_id: 77,
        vm: VmState {
            pic_master: kvm_irqchip::default(),
            pic_slave: kvm_irqchip {
                chip_id: 1,
                ..Default::default()
            },
            ioapic: kvm_irqchip::default(),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data {
                clock: 123,
                ..Default::default()
            },
        },
        vcpus: vec![sample_vcpu(), sample_vcpu()],
        devices: DevicesState {
            serial: SerialState {
                scratch: 9,
                ..Default::default()
            },
            virtio: vec![device("drive root")],
        },
    }
}

fn path() -> &'static Path {
    Path::new("state")
}

fn with_section(mut sections: Vec<Section>, extra: Section) -> Vec<u8> {
    sections.push(extra);
    format::encode(&sections).unwrap()
}

fn refusal(bytes: &[u8]) -> String {
    match decode_state(bytes, path()) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn round_trip_keeps_every_part() {
    let state = sample();
    let bytes = encode_state(&state).unwrap();
    let back = decode_state(&bytes, path()).unwrap();
    assert_eq!(back.config, state.config);
    assert_eq!(back.memory, state.memory);
    assert_eq!(back.snapshot_id, 77);
    assert_eq!(back.vm.clock.clock, 123);
    assert_eq!(back.vm.pic_slave.chip_id, 1);
    assert_eq!(back.vcpus.len(), 2);
    assert_eq!(back.devices, state.devices);
    assert_eq!(encode_state(&back).unwrap(), bytes, "byte-identical again");
    // One section per device, named after it, with its state version.
    let sections = state.to_sections().unwrap();
    let dev = sections
        .iter()
        .find(|s| s.name == "device:drive root")
        .unwrap();
    assert!(dev.required && dev.version == 1);
}

#[test]
fn unknown_optional_sections_are_skipped() {
    let extra = Section::encode("balloon-stats", 4, false, &vec![1u64, 2]).unwrap();
    let bytes = with_section(sample().to_sections().unwrap(), extra);
    let back = decode_state(&bytes, path()).unwrap();
    assert_eq!(back.devices, sample().devices);
}

#[test]
fn unknown_required_sections_are_refused_by_name() {
    let extra = Section::encode("iommu", 1, true, &0u8).unwrap();
    let more = Section::encode("tpm", 2, true, &0u8).unwrap();
    let mut sections = sample().to_sections().unwrap();
    sections.push(extra);
    let bytes = with_section(sections, more);
    let why = refusal(&bytes);
    assert!(
        why.contains("iommu, tpm") && why.contains("required"),
        "{why}"
    );
}

#[test]
fn missing_sections_and_other_versions_are_refused_by_name() {
    let mut sections = sample().to_sections().unwrap();
    sections.retain(|s| s.name != "vcpus");
    assert!(refusal(&format::encode(&sections).unwrap()).contains("no \"vcpus\" section"));

    let mut sections = sample().to_sections().unwrap();
    sections
        .iter_mut()
        .find(|s| s.name == "vm")
        .unwrap()
        .version = 9;
    let why = refusal(&format::encode(&sections).unwrap());
    assert!(why.contains("\"vm\" has version 9"), "{why}");
}

/// Encodes a state without validating it, then decodes it (which validates).
fn refused_state(state: &MicroVmState) -> String {
    refusal(&encode_state(state).unwrap())
}

#[test]
fn impossible_memory_layouts_are_refused() {
    let mut state = sample();
    state.memory.regions = vec![(0, 2 << 20), (1 << 20, 0x1000)];
    assert!(refused_state(&state).contains("overlaps"));

    state.memory.regions = vec![(u64::MAX - 0xfff, 0x2000)];
    assert!(refused_state(&state).contains("past 2^64"));

    state.memory.regions = vec![(0x800, 0x1000)];
    assert!(refused_state(&state).contains("page-aligned"));

    state.memory.regions = vec![];
    assert!(refused_state(&state).contains("0 regions"));

    // More than the host has (checked directly: the host's RAM varies).
    let huge = MemoryLayout {
        regions: vec![(0, 1 << 40)],
    };
    assert!(huge
        .validate(1 << 30)
        .unwrap_err()
        .to_string()
        .contains("more than this host"));

    // A layout that is not the configured size.
    let mut state = sample();
    state.memory.regions = vec![(0, 1 << 20)];
    assert!(refused_state(&state).contains("the configuration 2 MiB"));
}

#[test]
fn a_recorded_memory_binding_that_does_not_match_the_layout_is_refused() {
    let mut sections = sample().to_sections().unwrap();
    let memory = sections.iter_mut().find(|s| s.name == "memory").unwrap();
    let mut m: MemorySection = format::from_bytes(&memory.payload).unwrap();
    m.file_len += 4096;
    memory.payload = format::to_bytes(&m).unwrap();
    assert!(refusal(&format::encode(&sections).unwrap()).contains("memory file length"));
}

#[test]
fn vcpu_counts_are_checked() {
    let mut state = sample();
    state.vcpus.clear();
    assert!(refused_state(&state).contains("0 vCPU states"));
    state.vcpus = vec![sample_vcpu(); 33];
    assert!(refused_state(&state).contains("33 vCPU states (1 to 32"));
    state.vcpus = vec![sample_vcpu(); 3];
    assert!(refused_state(&state).contains("3 vCPU states for 2 configured"));
}

#[test]
fn device_states_must_match_the_configured_devices() {
    let mut state = sample();
    state.devices.virtio.clear();
    assert!(refused_state(&state).contains("no device state for configured [\"drive root\"]"));

    let mut state = sample();
    state.devices.virtio.push(device("net eth9"));
    let why = refused_state(&state);
    assert!(
        why.contains("\"net eth9\"") && why.contains("not configured"),
        "{why}"
    );

    // A device section whose payload names another device.
    let mut sections = sample().to_sections().unwrap();
    sections
        .iter_mut()
        .find(|s| s.name == "device:drive root")
        .unwrap()
        .name = "device:drive other".into();
    assert!(refusal(&format::encode(&sections).unwrap()).contains("holds the state of"));
}
