//! CPU time of the sender's threads (Linux `/proc`) and the process's resident memory.

use std::fs;
use std::time::Duration;

/// Thread-name prefix of the sender runtime's threads (workers and blocking pool alike).
pub const SENDER_THREADS: &str = "cmp-send";

/// CPU time consumed so far by live threads whose name starts with `prefix`, from
/// `/proc/self/task/*/schedstat` (nanoseconds on the CPU).
pub fn threads_cpu(prefix: &str) -> anyhow::Result<Duration> {
    let mut total = 0u64;
    for task in fs::read_dir("/proc/self/task")? {
        let dir = task?.path();
        let Ok(name) = fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        if !name.starts_with(prefix) {
            continue;
        }
        let Ok(stat) = fs::read_to_string(dir.join("schedstat")) else {
            continue;
        };
        let ns = stat
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok());
        total +=
            ns.ok_or_else(|| anyhow::anyhow!("unreadable {}/schedstat: {stat:?}", dir.display()))?;
    }
    Ok(Duration::from_nanos(total))
}

/// CPU time (user + system) of the whole process, receivers included.
pub fn process_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let usage = unsafe {
        let mut usage = std::mem::zeroed::<libc::rusage>();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// Resident set size in KiB (`VmRSS` of `/proc/self/status`).
pub fn rss_kib() -> anyhow::Result<u64> {
    let status = fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS in /proc/self/status"))
}
