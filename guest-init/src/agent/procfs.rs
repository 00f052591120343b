//! Processes and resource figures from `/proc`, for `ListProcesses` and
//! `Stats`. The parsers are pure, so they are tested on sample text.

use agent_protocol::{CpuTimes, ProcessInfo, Stats};

/// The fields of `/proc/PID/stat` the agent reports: (pid, ppid, state,
/// utime + stime in ticks, rss in pages). The command name may hold spaces
/// and parentheses, so the fields are counted from its last `)`.
pub fn parse_pid_stat(text: &str) -> Option<(i32, i32, char, u64, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text.get(..open)?.trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 1..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field N is rest[N - 3].
    let state = rest.first()?.chars().next()?;
    let ppid = rest.get(1)?.parse().ok()?;
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    let rss: i64 = rest.get(21)?.parse().ok()?;
    Some((pid, ppid, state, utime + stime, rss.max(0) as u64))
}

/// `MemTotal` and `MemAvailable` of `/proc/meminfo`, in bytes.
pub fn parse_meminfo(text: &str) -> (u64, u64) {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("MemTotal"), field("MemAvailable"))
}

/// The aggregate `cpu` line of `/proc/stat`.
pub fn parse_cpu_line(text: &str) -> CpuTimes {
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return CpuTimes::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    CpuTimes {
        user: at(0),
        nice: at(1),
        system: at(2),
        idle: at(3),
        iowait: at(4),
        irq: at(5),
        softirq: at(6),
        steal: at(7),
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn pids() -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every process `/proc` lists (those that vanish meanwhile are skipped).
pub fn list_processes() -> Vec<ProcessInfo> {
    let page = page_size();
    let mut list: Vec<ProcessInfo> = pids()
        .into_iter()
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (pid, ppid, state, cpu_ticks, rss_pages) = parse_pid_stat(&stat)?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv = cmdline
                .split(|&b| b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            Some(ProcessInfo {
                pid,
                ppid,
                state,
                argv,
                rss_bytes: rss_pages * page,
                cpu_ticks,
            })
        })
        .collect();
    list.sort_by_key(|p| p.pid);
    list
}

/// The guest's memory and CPU figures.
pub fn stats() -> Stats {
    let read = |path| std::fs::read_to_string(path).unwrap_or_default();
    let (mem_total_bytes, mem_available_bytes) = parse_meminfo(&read("/proc/meminfo"));
    Stats {
        mem_total_bytes,
        mem_available_bytes,
        cpu: parse_cpu_line(&read("/proc/stat")),
        processes: pids().len() as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_text() {
        let stat = "42 (my (odd) prog) S 1 42 42 0 -1 4194560 100 0 0 0 7 5 0 0 20 0 1 0 123 4096000 321 18446744073709551615";
        assert_eq!(parse_pid_stat(stat), Some((42, 1, 'S', 12, 321)));
        assert_eq!(parse_pid_stat("garbage"), None);
        assert_eq!(parse_pid_stat("1 (x) S"), None);
        let mem = "MemTotal:        2000 kB\nMemFree:  10 kB\nMemAvailable:     1500 kB\n";
        assert_eq!(parse_meminfo(mem), (2000 * 1024, 1500 * 1024));
        assert_eq!(parse_meminfo(""), (0, 0));
        let cpu = parse_cpu_line("cpu  1 2 3 4 5 6 7 8 9 10\ncpu0 1 1 1 1 1 1 1 1\n");
        assert_eq!((cpu.user, cpu.idle, cpu.steal), (1, 4, 8));
    }
}
