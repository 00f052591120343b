//! Firecracker's custom CPU template (`PUT /cpu-config`, the config file's
//! `cpu-config`): which CPUID and MSR bits the guest sees, forced per bit.
//!
//! Parsed and checked while deserializing (a body that deserializes is
//! usable), so every route and file that takes one gets the same checks and
//! a 400 naming the bad field. Bitmaps are Firecracker's: `0b` then `0`, `1`
//! or `x` (keep the host's bit) per bit, most significant first, `_` as a
//! separator; a shorter bitmap is padded with `x` on the left.

use serde::{Deserialize, Serialize};

/// At most this many CPUID or MSR modifiers: more than any real CPU has
/// leaves, and a bound on what a hostile body can make flint hold.
pub const MAX_CPU_MODIFIERS: usize = 512;

/// One CPUID output register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CpuidRegisterName {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// Bits to force: where `mask` is 1 the register takes `value`'s bit,
/// elsewhere it keeps the host's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BitmapFilter {
    /// The bits the template decides.
    pub mask: u64,
    /// Their values (zero outside `mask`).
    pub value: u64,
}

/// A checked CPUID leaf/subleaf modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuidLeafModifier {
    /// The leaf (EAX input).
    pub leaf: u32,
    /// The subleaf (ECX input).
    pub subleaf: u32,
    /// KVM's entry flags.
    pub flags: u32,
    /// Register changes, in order.
    pub modifiers: Vec<(CpuidRegisterName, BitmapFilter)>,
}

/// A checked MSR modifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MsrModifier {
    /// The MSR index.
    pub addr: u32,
    /// The bits to force.
    pub bitmap: BitmapFilter,
}

/// A checked custom CPU template.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "RawCpuConfig", into = "WireCpuConfig")]
pub struct CpuConfig {
    /// CPUID changes, applied after flint's normalization.
    pub cpuid_modifiers: Vec<CpuidLeafModifier>,
    /// MSR changes, applied to each vCPU after its boot MSRs (the fixed
    /// bits replace those KVM_GET_MSRS reads).
    pub msr_modifiers: Vec<MsrModifier>,
}

/// A number as Firecracker's templates write it: JSON number, or a string
/// in hex (`0x`), binary (`0b`) or decimal.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawNumber {
    Number(u64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRegisterModifier {
    register: CpuidRegisterName,
    bitmap: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLeafModifier {
    leaf: RawNumber,
    #[serde(default)]
    subleaf: Option<RawNumber>,
    #[serde(default)]
    flags: Option<RawNumber>,
    #[serde(default)]
    modifiers: Vec<RawRegisterModifier>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMsrModifier {
    addr: RawNumber,
    bitmap: String,
}

/// The wire form, before checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCpuConfig {
    #[serde(default)]
    kvm_capabilities: Vec<String>,
    #[serde(default)]
    cpuid_modifiers: Vec<RawLeafModifier>,
    #[serde(default)]
    msr_modifiers: Vec<RawMsrModifier>,
    /// aarch64 fields: refused by name on x86_64 unless empty.
    #[serde(default)]
    vcpu_features: Vec<serde_json::Value>,
    #[serde(default)]
    reg_modifiers: Vec<serde_json::Value>,
}

#[derive(Serialize)]
struct WireRegisterModifier {
    register: CpuidRegisterName,
    bitmap: String,
}

#[derive(Serialize)]
struct WireLeafModifier {
    leaf: String,
    subleaf: String,
    flags: u32,
    modifiers: Vec<WireRegisterModifier>,
}

#[derive(Serialize)]
struct WireMsrModifier {
    addr: String,
    bitmap: String,
}

/// The wire form written back (GET-style answers, the request channel):
/// full-width bitmaps, hex numbers, which [`RawCpuConfig`] reads again.
#[derive(Serialize)]
struct WireCpuConfig {
    cpuid_modifiers: Vec<WireLeafModifier>,
    msr_modifiers: Vec<WireMsrModifier>,
}

/// `filter` as a `width`-bit bitmap string.
fn bitmap_text(filter: BitmapFilter, width: u32) -> String {
    let bits = (0..width).rev().map(|i| {
        let bit = 1u64 << i;
        match (filter.mask & bit != 0, filter.value & bit != 0) {
            (false, _) => 'x',
            (true, false) => '0',
            (true, true) => '1',
        }
    });
    std::iter::once("0b".to_string())
        .chain(bits.map(String::from))
        .collect()
}

impl From<CpuConfig> for WireCpuConfig {
    fn from(c: CpuConfig) -> Self {
        WireCpuConfig {
            cpuid_modifiers: c
                .cpuid_modifiers
                .into_iter()
                .map(|m| WireLeafModifier {
                    leaf: format!("{:#x}", m.leaf),
                    subleaf: format!("{:#x}", m.subleaf),
                    flags: m.flags,
                    modifiers: m
                        .modifiers
                        .into_iter()
                        .map(|(register, f)| WireRegisterModifier {
                            register,
                            bitmap: bitmap_text(f, 32),
                        })
                        .collect(),
                })
                .collect(),
            msr_modifiers: c
                .msr_modifiers
                .into_iter()
                .map(|m| WireMsrModifier {
                    addr: format!("{:#x}", m.addr),
                    bitmap: bitmap_text(m.bitmap, 64),
                })
                .collect(),
        }
    }
}

/// Parses a template number into 32 bits.
fn number(raw: &RawNumber, what: &str) -> Result<u32, String> {
    let value = match raw {
        RawNumber::Number(n) => Some(*n),
        RawNumber::Text(text) => {
            let text = text.replace('_', "");
            if let Some(hex) = text.strip_prefix("0x") {
                u64::from_str_radix(hex, 16).ok()
            } else if let Some(bin) = text.strip_prefix("0b") {
                u64::from_str_radix(bin, 2).ok()
            } else {
                text.parse::<u64>().ok()
            }
        }
    };
    let shown = match raw {
        RawNumber::Number(n) => n.to_string(),
        RawNumber::Text(t) => format!("{t:?}"),
    };
    value.and_then(|v| u32::try_from(v).ok()).ok_or_else(|| {
        format!("{what}: {shown} is not a 32-bit number (0x hex, 0b binary or decimal)")
    })
}

/// Parses a bitmap of at most `width` bits (`0b` + `0`/`1`/`x`/`_`).
pub fn parse_bitmap(text: &str, width: u32, what: &str) -> Result<BitmapFilter, String> {
    let Some(bits) = text.strip_prefix("0b") else {
        return Err(format!("{what}: bitmap must start with \"0b\""));
    };
    let bits: Vec<char> = bits.chars().filter(|c| *c != '_').collect();
    if bits.is_empty() {
        return Err(format!("{what}: bitmap has no bits"));
    }
    if bits.len() > width as usize {
        return Err(format!(
            "{what}: bitmap has {} bits, at most {width} allowed",
            bits.len()
        ));
    }
    let mut filter = BitmapFilter::default();
    for (position, c) in bits.iter().rev().enumerate() {
        let bit = 1u64 << position;
        match c {
            '0' => filter.mask |= bit,
            '1' => {
                filter.mask |= bit;
                filter.value |= bit;
            }
            'x' => {}
            other => {
                return Err(format!(
                    "{what}: bitmap character {other:?} is not 0, 1, x or _"
                ))
            }
        }
    }
    Ok(filter)
}

impl TryFrom<RawCpuConfig> for CpuConfig {
    type Error = String;

    fn try_from(raw: RawCpuConfig) -> Result<Self, String> {
        if !raw.kvm_capabilities.is_empty() {
            return Err("kvm_capabilities: not supported by flint (it checks the KVM capabilities it needs itself)".into());
        }
        if !raw.vcpu_features.is_empty() || !raw.reg_modifiers.is_empty() {
            return Err(
                "vcpu_features/reg_modifiers: aarch64 templates do not apply to x86_64".into(),
            );
        }
        for (name, len) in [
            ("cpuid_modifiers", raw.cpuid_modifiers.len()),
            ("msr_modifiers", raw.msr_modifiers.len()),
        ] {
            if len > MAX_CPU_MODIFIERS {
                return Err(format!(
                    "{name}: {len} entries, at most {MAX_CPU_MODIFIERS}"
                ));
            }
        }
        let mut cpuid_modifiers: Vec<CpuidLeafModifier> = Vec::new();
        for (i, m) in raw.cpuid_modifiers.iter().enumerate() {
            let at = format!("cpuid_modifiers[{i}]");
            let leaf = number(&m.leaf, &format!("{at}.leaf"))?;
            let subleaf = match &m.subleaf {
                Some(s) => number(s, &format!("{at}.subleaf"))?,
                None => 0,
            };
            let flags = match &m.flags {
                Some(f) => number(f, &format!("{at}.flags"))?,
                None => 0,
            };
            if cpuid_modifiers
                .iter()
                .any(|c| c.leaf == leaf && c.subleaf == subleaf)
            {
                return Err(format!(
                    "{at}: leaf {leaf:#x} subleaf {subleaf:#x} appears twice"
                ));
            }
            let mut modifiers = Vec::new();
            for (j, r) in m.modifiers.iter().enumerate() {
                let what = format!("{at}.modifiers[{j}]");
                if modifiers.iter().any(|(reg, _)| *reg == r.register) {
                    return Err(format!("{what}: register {:?} appears twice", r.register));
                }
                modifiers.push((
                    r.register,
                    parse_bitmap(&r.bitmap, 32, &format!("{what}.bitmap"))?,
                ));
            }
            cpuid_modifiers.push(CpuidLeafModifier {
                leaf,
                subleaf,
                flags,
                modifiers,
            });
        }
        let mut msr_modifiers = Vec::new();
        for (i, m) in raw.msr_modifiers.iter().enumerate() {
            let at = format!("msr_modifiers[{i}]");
            let addr = number(&m.addr, &format!("{at}.addr"))?;
            if msr_modifiers.iter().any(|o: &MsrModifier| o.addr == addr) {
                return Err(format!("{at}: MSR {addr:#x} appears twice"));
            }
            let bitmap = parse_bitmap(&m.bitmap, 64, &format!("{at}.bitmap"))?;
            msr_modifiers.push(MsrModifier { addr, bitmap });
        }
        Ok(CpuConfig {
            cpuid_modifiers,
            msr_modifiers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<CpuConfig, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn firecracker_template_parses() {
        let c = parse(
            r#"{"cpuid_modifiers": [{"leaf": "0x1", "subleaf": "0x0", "flags": 0,
                "modifiers": [{"register": "eax", "bitmap": "0bxxxx000000000011xx00011011110010"}]},
                {"leaf": 7, "subleaf": "0b0", "modifiers": [{"register": "ebx", "bitmap": "0b0_xxxx"}]}]}"#,
        )
        .unwrap();
        let m = &c.cpuid_modifiers[0];
        assert_eq!((m.leaf, m.subleaf, m.flags), (1, 0, 0));
        let (reg, f) = m.modifiers[0];
        assert_eq!(reg, CpuidRegisterName::Eax);
        assert_eq!(f.mask, 0b0000_1111_1111_1111_0011_1111_1111_1111);
        assert_eq!(f.value, 0b0000_0000_0000_0011_0000_0110_1111_0010);
        // Contracted: "0b0_xxxx" is bit 4 cleared, everything else kept.
        assert_eq!(
            c.cpuid_modifiers[1].modifiers[0].1,
            BitmapFilter {
                mask: 1 << 4,
                value: 0
            }
        );
        assert_eq!(parse("{}").unwrap(), CpuConfig::default());
        let text = serde_json::to_string(&c).unwrap();
        assert!(
            text.contains("0bxxxx000000000011xx00011011110010"),
            "{text}"
        );
        assert_eq!(parse(&text).unwrap(), c, "the written form reads back");
    }

    #[test]
    fn msr_modifiers_parse_as_firecracker_writes_them() {
        let c = parse(
            r#"{"msr_modifiers": [{"addr": "0xc0000103", "bitmap": "0b1010_xxxx_0000_0101"},
                {"addr": 266, "bitmap": "0bxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx1"}]}"#,
        )
        .unwrap();
        assert_eq!(c.msr_modifiers[0].addr, 0xc000_0103);
        assert_eq!(
            c.msr_modifiers[0].bitmap,
            BitmapFilter {
                mask: 0xf0ff,
                value: 0xa005
            }
        );
        assert_eq!(
            c.msr_modifiers[1],
            MsrModifier {
                addr: 0x10a,
                bitmap: BitmapFilter { mask: 1, value: 1 }
            }
        );
        let text = serde_json::to_string(&c).unwrap();
        assert_eq!(parse(&text).unwrap(), c, "the written form reads back");
    }

    #[test]
    fn hostile_templates_are_refused_naming_the_problem() {
        let cases = [
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b2"}]}]}"#,
                "cpuid_modifiers[0].modifiers[0].bitmap",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "101"}]}]}"#,
                "must start with",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b"}]}]}"#,
                "no bits",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b000000000000000000000000000000000"}]}]}"#,
                "33 bits",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b1é"}]}]}"#,
                "not 0, 1, x",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "esp", "bitmap": "0b1"}]}]}"#,
                "esp",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": "0x1_0000_0000"}]}"#,
                "leaf",
            ),
            (r#"{"cpuid_modifiers": [{"leaf": "zz"}]}"#, "leaf"),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1}, {"leaf": "0x1"}]}"#,
                "twice",
            ),
            (
                r#"{"cpuid_modifiers": [{"leaf": 1, "modifiers": [{"register": "eax", "bitmap": "0b1"}, {"register": "eax", "bitmap": "0b0"}]}]}"#,
                "twice",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b0"}, {"addr": 266, "bitmap": "0b1"}]}"#,
                "msr_modifiers[1]: MSR 0x10a appears twice",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x1_0000_0000", "bitmap": "0b0"}]}"#,
                "msr_modifiers[0].addr",
            ),
            (
                r#"{"msr_modifiers": [{"addr": "0x10a", "bitmap": "0b2"}]}"#,
                "msr_modifiers[0].bitmap",
            ),
            (r#"{"kvm_capabilities": ["!56"]}"#, "kvm_capabilities"),
            (
                r#"{"reg_modifiers": [{"addr": "0x1", "bitmap": "0b1"}]}"#,
                "aarch64",
            ),
            (r#"{"cpuid": []}"#, "unknown field"),
        ];
        for (json, expected) in cases {
            let err = parse(json).expect_err(json);
            assert!(err.contains(expected), "{json}: {err}");
        }
        let many = format!(
            r#"{{"cpuid_modifiers": [{}]}}"#,
            vec![r#"{"leaf": 1}"#; MAX_CPU_MODIFIERS + 1].join(",")
        );
        assert!(parse(&many).unwrap_err().contains("at most"));
        let wide = format!(
            r#"{{"msr_modifiers": [{{"addr": 1, "bitmap": "0b{}"}}]}}"#,
            "1".repeat(65)
        );
        assert!(parse(&wide).unwrap_err().contains("65 bits"));
    }
}
