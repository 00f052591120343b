//! Finding host processes by command line or parent, for tests that check
//! what a runtime started and that nothing is left behind.

/// Pids of live processes whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        // Arguments are NUL-separated: compare with spaces.
        let cmdline: Vec<u8> = cmdline
            .iter()
            .map(|&b| if b == 0 { b' ' } else { b })
            .collect();
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Live children of `parent` whose command name is `name`.
pub fn children_named(parent: u32, name: &str) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
        let Some((comm, rest)) = stat.split_once(" (").and_then(|(_, r)| r.rsplit_once(") "))
        else {
            continue;
        };
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if comm == name && ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Resident memory of process `pid` in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// SIGKILLs every process whose command line contains `needle` (a test's
/// temp dir: the shims it started), and first their `flint` children: a
/// pod's jailed flint runs as `flint run --api-sock /api.sock`, with
/// nothing of the temp dir on its command line, and outlives a killed
/// shim (containerd's cleanup would stop it, but the test has killed
/// containerd first).
pub fn kill_with_their_vms(needle: &str) {
    for pid in pids_with(needle) {
        for vm in children_named(pid, "flint") {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(vm as i32, libc::SIGKILL) };
        }
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}
