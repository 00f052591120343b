//! Address buses that route vCPU port-I/O and MMIO exits to devices.
//!
//! The guest may touch any address; only ranges a device was inserted at reach
//! a device. Everything else is ignored (reads return zeros) and counted, so a
//! probing guest kernel never stops the VM.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A device that can sit on a bus.
///
/// `base` is the start of the range the device was inserted at and `offset`
/// the accessed address relative to it; `data.len()` is the access size.
pub trait BusDevice: Send {
    /// A guest read; the device fills `data` (it is zeroed beforehand).
    fn read(&mut self, base: u64, offset: u64, data: &mut [u8]);
    /// A guest write of `data`.
    fn write(&mut self, base: u64, offset: u64, data: &[u8]);
}

/// Why a device could not be inserted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The range is empty or wraps around the address space.
    #[error("invalid range {base:#x}+{len:#x}")]
    InvalidRange {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("range {base:#x}+{len:#x} overlaps a device at {other:#x}")]
    Overlap {
        /// Start of the rejected range.
        base: u64,
        /// Its length.
        len: u64,
        /// Start of the device it collides with.
        other: u64,
    },
}

/// Counters of accesses that no device answered.
#[derive(Debug, Default)]
pub struct UnhandledAccesses {
    /// Reads of addresses without a device.
    pub reads: AtomicU64,
    /// Writes to addresses without a device.
    pub writes: AtomicU64,
}

type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// A set of non-overlapping `[base, base + len)` ranges, each owned by a device.
#[derive(Default)]
pub struct Bus {
    /// Keyed by range start; value is (length, device).
    devices: BTreeMap<u64, (u64, SharedDevice)>,
    unhandled: UnhandledAccesses,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Puts `device` at `[base, base + len)`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        // The nearest device starting at or before `end - 1` is the only candidate
        // for overlap, given the ranges already present are disjoint.
        if let Some((&other, &(other_len, _))) = self.devices.range(..end).next_back() {
            if other + other_len > base {
                return Err(BusError::Overlap { base, len, other });
            }
        }
        self.devices.insert(base, (len, device));
        Ok(())
    }

    /// The device whose range holds `[addr, addr + size)` entirely, with its base.
    fn resolve(&self, addr: u64, size: usize) -> Option<(u64, &SharedDevice)> {
        let (&base, (len, device)) = self.devices.range(..=addr).next_back()?;
        let end = addr.checked_add(size as u64)?;
        (end <= base + len).then_some((base, device))
    }

    /// Dispatches a guest read. Returns false (and leaves `data` zeroed) when no
    /// device covers the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                lock(device).read(base, addr - base, data);
                true
            }
            None => {
                self.unhandled.reads.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Dispatches a guest write. Returns false when no device covers the access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((base, device)) => {
                lock(device).write(base, addr - base, data);
                true
            }
            None => {
                self.unhandled.writes.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// How many accesses hit no device so far.
    pub fn unhandled(&self) -> &UnhandledAccesses {
        &self.unhandled
    }
}

/// Locks a device, recovering it if another vCPU thread panicked while holding
/// it: device state stays usable and the panic is reported where it happened.
fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records accesses and answers reads with the offset.
    #[derive(Default)]
    struct Probe {
        writes: Vec<(u64, u64, Vec<u8>)>,
    }

    impl BusDevice for Probe {
        fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 + 1);
        }
        fn write(&mut self, base: u64, offset: u64, data: &[u8]) {
            self.writes.push((base, offset, data.to_vec()));
        }
    }

    #[test]
    fn routes_by_range_with_offsets() {
        let mut bus = Bus::new();
        let probe = Arc::new(Mutex::new(Probe::default()));
        bus.insert(probe.clone(), 0x3f8, 8).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x3fa, &mut b));
        assert_eq!(b, [3]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(probe.lock().unwrap().writes, vec![(0x3f8, 7, vec![9])]);
    }

    #[test]
    fn unhandled_accesses_are_zero_and_counted() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Probe::default())), 0x60, 5)
            .unwrap();
        let mut b = [0xffu8; 4];
        assert!(!bus.read(0x80, &mut b));
        assert_eq!(b, [0; 4]);
        // An access straddling the end of a device is not given to it.
        assert!(!bus.read(0x63, &mut b));
        assert!(!bus.write(0x5f, &[1, 2]));
        assert!(!bus.write(u64::MAX, &[1, 2]));
        assert_eq!(bus.unhandled().reads.load(Ordering::Relaxed), 2);
        assert_eq!(bus.unhandled().writes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn overlaps_and_bad_ranges_are_refused() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Probe::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert!(matches!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap { other: 0x100, .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0xf8, 0x10),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x0, 0x1000),
            Err(BusError::Overlap { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), 0x200, 0),
            Err(BusError::InvalidRange { .. })
        ));
        assert!(matches!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange { .. })
        ));
        bus.insert(dev(), 0x110, 0x10).unwrap();
        bus.insert(dev(), 0xf0, 0x10).unwrap();
    }
}
