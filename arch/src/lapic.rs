//! Local APIC wiring every vCPU needs before it runs.
//!
//! Without ACPI the kernel expects the BIOS to have programmed LINT0 as
//! ExtINT (the legacy PIC's output) and LINT1 as NMI, as the MP table says.

use kvm_bindings::kvm_lapic_state;
use kvm_ioctls::VcpuFd;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, b) in value.to_le_bytes().iter().enumerate() {
        state.regs[offset + i] = *b as _;
    }
}

fn with_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

/// Programs LINT0 as ExtINT and LINT1 as NMI in a LAPIC state.
pub fn wire_lints(state: &mut kvm_lapic_state) {
    let lvt0 = read_reg(state, APIC_LVT0);
    write_reg(state, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = read_reg(state, APIC_LVT1);
    write_reg(state, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

/// Reads the vCPU's LAPIC, wires its LINT pins, and writes it back.
pub fn setup_lapic(vcpu: &VcpuFd) -> Result<(), kvm_ioctls::Error> {
    let mut state = vcpu.get_lapic()?;
    wire_lints(&mut state);
    vcpu.set_lapic(&state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lints_get_extint_and_nmi() {
        let mut s = kvm_lapic_state::default();
        write_reg(&mut s, APIC_LVT0, 0x0001_0000 | 0x200);
        wire_lints(&mut s);
        assert_eq!(read_reg(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_reg(&s, APIC_LVT1), 0x400);
    }
}
