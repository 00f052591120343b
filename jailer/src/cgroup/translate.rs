//! Translates the common cgroup keys between v1 and v2 names, so one
//! command line works on either kind of host.

use log::info;

use super::Setting;
use crate::JailError;

fn bad(s: &Setting, reason: &str) -> JailError {
    JailError::CgroupArg {
        arg: format!("{}={}", s.key, s.value),
        reason: reason.to_owned(),
    }
}

/// Rewrites v2 keys (`cpu.max`, `memory.max`) as their v1 equivalents; other
/// keys pass through unchanged.
pub(crate) fn to_v1(settings: &[Setting]) -> Result<Vec<Setting>, JailError> {
    let mut out = Vec::with_capacity(settings.len());
    for s in settings {
        let translated = match s.key.as_str() {
            "cpu.max" => {
                let mut parts = s.value.split_whitespace();
                let (Some(quota), period, None) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(bad(s, "expected \"QUOTA [PERIOD]\""));
                };
                let quota = match quota {
                    "max" => "-1".to_owned(),
                    q => q
                        .parse::<u64>()
                        .map_err(|_| bad(s, "quota must be \"max\" or an integer"))?
                        .to_string(),
                };
                let mut v = Vec::new();
                // Period first: the kernel checks the quota against it.
                if let Some(p) = period {
                    let p = p
                        .parse::<u64>()
                        .map_err(|_| bad(s, "period must be an integer"))?;
                    v.push(Setting::new("cpu.cfs_period_us", &p.to_string()));
                }
                v.push(Setting::new("cpu.cfs_quota_us", &quota));
                v
            }
            "memory.max" => {
                let value = if s.value == "max" {
                    "-1"
                } else {
                    s.value.as_str()
                };
                vec![Setting::new("memory.limit_in_bytes", value)]
            }
            _ => {
                out.push(s.clone());
                continue;
            }
        };
        log_translation("v1", s, &translated);
        out.extend(translated);
    }
    Ok(out)
}

/// Rewrites v1 keys (`cpu.cfs_quota_us` + `cpu.cfs_period_us`,
/// `memory.limit_in_bytes`) as their v2 equivalents; other keys pass through.
pub(crate) fn to_v2(settings: &[Setting]) -> Result<Vec<Setting>, JailError> {
    let find = |key: &str| settings.iter().find(|s| s.key == key);
    let (quota, period) = (find("cpu.cfs_quota_us"), find("cpu.cfs_period_us"));
    let mut out = Vec::with_capacity(settings.len());
    let mut cpu_done = false;
    for s in settings {
        let translated = match s.key.as_str() {
            "cpu.cfs_quota_us" | "cpu.cfs_period_us" if cpu_done => continue,
            "cpu.cfs_quota_us" | "cpu.cfs_period_us" => {
                cpu_done = true;
                let quota = match quota {
                    None => "max".to_owned(),
                    Some(q) => match q.value.parse::<i64>() {
                        Ok(v) if v < 0 => "max".to_owned(),
                        Ok(v) => v.to_string(),
                        Err(_) => return Err(bad(q, "quota must be an integer")),
                    },
                };
                let value = match period {
                    None => quota,
                    Some(p) => {
                        let p = p
                            .value
                            .parse::<u64>()
                            .map_err(|_| bad(p, "period must be an integer"))?;
                        format!("{quota} {p}")
                    }
                };
                let from: Vec<&Setting> = quota_period(settings);
                info!(
                    "cgroup v2 host: translating {} to cpu.max={value:?}",
                    from.iter()
                        .map(|s| format!("{}={}", s.key, s.value))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                out.push(Setting::new("cpu.max", &value));
                continue;
            }
            "memory.limit_in_bytes" => {
                let value = match s.value.parse::<i64>() {
                    Ok(v) if v < 0 => "max",
                    _ => s.value.as_str(),
                };
                vec![Setting::new("memory.max", value)]
            }
            _ => {
                out.push(s.clone());
                continue;
            }
        };
        log_translation("v2", s, &translated);
        out.extend(translated);
    }
    Ok(out)
}

fn quota_period(settings: &[Setting]) -> Vec<&Setting> {
    settings
        .iter()
        .filter(|s| s.key == "cpu.cfs_quota_us" || s.key == "cpu.cfs_period_us")
        .collect()
}

fn log_translation(version: &str, from: &Setting, to: &[Setting]) {
    let to: Vec<String> = to
        .iter()
        .map(|s| format!("{}={}", s.key, s.value))
        .collect();
    info!(
        "cgroup {version} host: translating {}={:?} to {}",
        from.key,
        from.value,
        to.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(pairs: &[(&str, &str)]) -> Vec<Setting> {
        pairs.iter().map(|(k, v)| Setting::new(k, v)).collect()
    }

    #[test]
    fn v2_keys_to_v1() {
        let got = to_v1(&set(&[
            ("cpu.max", "50000 100000"),
            ("memory.max", "268435456"),
            ("pids.max", "10"),
        ]))
        .expect("ok");
        let want = set(&[
            ("cpu.cfs_period_us", "100000"),
            ("cpu.cfs_quota_us", "50000"),
            ("memory.limit_in_bytes", "268435456"),
            ("pids.max", "10"),
        ]);
        assert_eq!(got, want);
        let got = to_v1(&set(&[("cpu.max", "max"), ("memory.max", "max")])).expect("ok");
        assert_eq!(
            got,
            set(&[("cpu.cfs_quota_us", "-1"), ("memory.limit_in_bytes", "-1")])
        );
        // v1 keys pass through untouched.
        let v1 = set(&[("cpu.cfs_quota_us", "1000"), ("memory.limit_in_bytes", "1")]);
        assert_eq!(to_v1(&v1).expect("ok"), v1);
        for bad in ["", "x", "1 2 3", "1 x", "-5"] {
            assert!(to_v1(&set(&[("cpu.max", bad)])).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn v1_keys_to_v2() {
        let got = to_v2(&set(&[
            ("memory.limit_in_bytes", "-1"),
            ("cpu.cfs_period_us", "100000"),
            ("pids.max", "10"),
            ("cpu.cfs_quota_us", "50000"),
        ]))
        .expect("ok");
        assert_eq!(
            got,
            set(&[
                ("memory.max", "max"),
                ("cpu.max", "50000 100000"),
                ("pids.max", "10")
            ])
        );
        assert_eq!(
            to_v2(&set(&[("cpu.cfs_quota_us", "-1")])).expect("ok"),
            set(&[("cpu.max", "max")])
        );
        assert_eq!(
            to_v2(&set(&[("cpu.cfs_period_us", "20000")])).expect("ok"),
            set(&[("cpu.max", "max 20000")])
        );
        assert_eq!(
            to_v2(&set(&[("memory.limit_in_bytes", "256M")])).expect("ok"),
            set(&[("memory.max", "256M")])
        );
        let v2 = set(&[("cpu.max", "1 2"), ("memory.max", "3")]);
        assert_eq!(to_v2(&v2).expect("ok"), v2);
        assert!(to_v2(&set(&[("cpu.cfs_quota_us", "x")])).is_err());
        assert!(to_v2(&set(&[
            ("cpu.cfs_quota_us", "1"),
            ("cpu.cfs_period_us", "-1")
        ]))
        .is_err());
    }
}
