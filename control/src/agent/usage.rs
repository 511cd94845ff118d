//! What this host and each phone's VMM really use, read from `/proc`: the control service
//! places phones by it (`scheduler::HostLoad`), and the agent reclaims memory from idle phones
//! with it before the kernel would have to OOM-kill one.

use std::path::Path;

use crate::wire::hosts::PhoneUsage;

/// Clock ticks per second of `/proc/PID/stat` times: `USER_HZ`, 100 on every Linux ABI we run.
const USER_HZ: u64 = 100;

/// `MemAvailable` of this host, in MiB.
pub fn mem_available_mib() -> Option<u64> {
    meminfo_kib(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
    .map(|k| k / 1024)
}

/// The value in KiB of the `key:` line of a `/proc/meminfo` or `smaps_rollup` text.
fn meminfo_kib(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Cumulative CPU time of the whole host from the first (`cpu `) line of `/proc/stat`:
/// `(busy, total)` ticks, busy being everything but idle and I/O wait. Two samples give the
/// busy share in between ([`busy_pct`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuSample {
    busy: u64,
    total: u64,
}

/// Samples this host's CPU time now; `None` when `/proc/stat` is unreadable.
pub fn cpu_sample() -> Option<CpuSample> {
    parse_cpu_line(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The `cpu ` line of a `/proc/stat` text: user nice system idle iowait irq softirq steal
/// (guest time is already inside user and nice, so later fields are not added).
fn parse_cpu_line(stat: &str) -> Option<CpuSample> {
    let fields: Vec<u64> = stat
        .lines()
        .find_map(|l| l.strip_prefix("cpu "))?
        .split_whitespace()
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    if fields.len() < 5 {
        return None;
    }
    let total = fields.iter().try_fold(0u64, |a, f| a.checked_add(*f))?;
    Some(CpuSample {
        busy: total - fields[3] - fields[4],
        total,
    })
}

/// Percent of the host's CPU time that was busy between two samples; `None` when no time
/// passed (or the counters went backwards).
pub fn busy_pct(earlier: CpuSample, later: CpuSample) -> Option<u64> {
    let total = later.total.checked_sub(earlier.total).filter(|t| *t > 0)?;
    let busy = later.busy.checked_sub(earlier.busy)?;
    Some((busy * 100 / total).min(100))
}

/// Measures the VMM process `pid` of phone `id`; `None` when it is gone or unreadable. A
/// jailed VMM is the child of `pid` (its supervisor, outside the jail's pid namespace): both
/// are counted.
pub fn measure_phone(id: &str, pid: i32) -> Option<PhoneUsage> {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    let pids =
        std::iter::once(pid).chain(children.split_whitespace().filter_map(|c| c.parse().ok()));
    let mut sum = (0, 0, 0);
    for (n, p) in pids.enumerate() {
        match measure_process(p) {
            Some((private, pss, ticks)) => sum = (sum.0 + private, sum.1 + pss, sum.2 + ticks),
            // The VMM itself must be readable; a child that just ended is not counted.
            None if n == 0 => return None,
            None => {}
        }
    }
    Some(PhoneUsage {
        id: id.to_owned(),
        private_mib: sum.0 / 1024,
        pss_mib: sum.1 / 1024,
        cpu_ms: sum.2 * 1000 / USER_HZ,
    })
}

/// Private and proportional memory (KiB) and CPU ticks of one process.
fn measure_process(pid: i32) -> Option<(u64, u64, u64)> {
    let proc = Path::new("/proc").join(pid.to_string());
    let rollup = std::fs::read_to_string(proc.join("smaps_rollup")).ok()?;
    let stat = std::fs::read_to_string(proc.join("stat")).ok()?;
    let private = meminfo_kib(&rollup, "Private_Clean:")? + meminfo_kib(&rollup, "Private_Dirty:")?;
    Some((private, meminfo_kib(&rollup, "Pss:")?, cpu_ticks(&stat)?))
}

/// `utime + stime` of a `/proc/PID/stat` line. The command name (field 2) may hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11); // fields 14 (utime) and 15 (stime)
    Some(f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?)
}

/// Balloon size to ask of an idle phone of `memory_mib` while the host is short of memory:
/// half of it, which a phone idling at its home screen does not touch.
pub fn reclaim_target_mib(memory_mib: i64) -> u64 {
    u64::try_from(memory_mib / 2).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_process() {
        let me = measure_phone("ph-x", std::process::id() as i32).expect("own /proc");
        assert!(me.pss_mib > 0 && me.private_mib > 0, "{me:?}");
        assert!(mem_available_mib().unwrap() > 0);
        assert_eq!(measure_phone("ph-x", i32::MAX), None);
    }

    #[test]
    fn cpu_busy_share_comes_from_two_samples() {
        let a = parse_cpu_line("cpu  100 0 100 700 100 0 0 0 50 0\ncpu0 1 2 3 4 5\n").unwrap();
        let b = parse_cpu_line("cpu  250 0 150 850 150 0 0 0 90 0\n").unwrap();
        // 200 busy ticks of 400: user 150 + system 50 against idle 150 + iowait 50.
        assert_eq!(busy_pct(a, b), Some(50));
        assert_eq!(busy_pct(a, a), None, "no time passed");
        assert_eq!(busy_pct(b, a), None, "counters went backwards");
        assert_eq!(parse_cpu_line("cpu0 1 2 3 4 5\n"), None);
        assert_eq!(parse_cpu_line("cpu  1 x 3 4 5\n"), None);
        assert_eq!(parse_cpu_line("cpu  1 2 3\n"), None);
        let before = cpu_sample().expect("own /proc/stat");
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let pct = busy_pct(before, cpu_sample().unwrap()).expect("time passed while spinning");
        assert!(pct > 0 && pct <= 100, "{pct}");
    }

    #[test]
    fn stat_fields_count_from_the_last_paren() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(400));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(meminfo_kib("Pss:   2048 kB\n", "Pss:"), Some(2048));
        assert_eq!(meminfo_kib("Pss: x kB\n", "Pss:"), None);
    }
}
