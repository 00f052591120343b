//! The example Uffd page-fault handler's region message (what a VMM sends
//! with the userfaultfd): any bytes either parse into regions that all lie
//! inside the memory file, page-aligned and not overlapping, or are refused.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The memory file the regions must fit in: 64 MiB.
const BACKING: u64 = 64 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(regions) = uffd_handler::parse_regions(data, BACKING) {
        assert!(!regions.is_empty());
        for r in &regions {
            assert!(r.page_size.is_power_of_two() && r.page_size >= 4096);
            assert_eq!(r.base_host_virt_addr % r.page_size, 0);
            assert_eq!(r.size % r.page_size, 0);
            assert!(r.size > 0);
            assert!(r
                .offset
                .checked_add(r.size)
                .is_some_and(|end| end <= BACKING));
        }
        for (i, a) in regions.iter().enumerate() {
            for b in &regions[i + 1..] {
                let a_end = a.base_host_virt_addr + a.size;
                let b_end = b.base_host_virt_addr + b.size;
                assert!(a_end <= b.base_host_virt_addr || b_end <= a.base_host_virt_addr);
            }
        }
    }
});
