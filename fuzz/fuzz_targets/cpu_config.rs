//! Custom CPU templates (`PUT /cpu-config`): any bytes either parse into a
//! checked template or are refused, and a parsed one writes back to JSON
//! that parses to the same template.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(config) = serde_json::from_slice::<api::CpuConfig>(data) {
        assert!(config.cpuid_modifiers.len() <= api::MAX_CPU_MODIFIERS);
        assert!(config.msr_modifiers.len() <= api::MAX_CPU_MODIFIERS);
        let mut addrs: Vec<u32> = config.msr_modifiers.iter().map(|m| m.addr).collect();
        addrs.sort_unstable();
        addrs.dedup();
        assert_eq!(
            addrs.len(),
            config.msr_modifiers.len(),
            "one modifier per MSR"
        );
        for m in &config.cpuid_modifiers {
            for (_, f) in &m.modifiers {
                assert_eq!(f.mask >> 32, 0, "a CPUID bitmap has 32 bits");
                assert_eq!(f.value & !f.mask, 0);
            }
        }
        let text = serde_json::to_vec(&config).expect("a template serializes");
        let again: api::CpuConfig = serde_json::from_slice(&text).expect("written form parses");
        assert_eq!(again, config);
    }
});
