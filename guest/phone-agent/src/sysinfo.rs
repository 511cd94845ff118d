//! What the Info page shows and where the agent reports: parsed from the kernel command line,
//! /proc/bootconfig, /proc/cpuinfo, /proc/meminfo and uname. Parsers are pure and bounded
//! (the cmdline is guest-controlled input as far as the agent is concerned).

/// Most rows on the Info page; extra `androidboot.*` keys are dropped.
pub const MAX_ROWS: usize = 16;
/// Longest key or value kept, in characters.
pub const MAX_FIELD: usize = 64;

/// Kernel cmdline key choosing the report port (`/dev/hvcN`, any path, or `stdout`).
pub const REPORT_KEY: &str = "cloudphone.report";
/// Kernel cmdline key choosing the display backend (`drm`, the default, or `fbdev`).
pub const DISPLAY_KEY: &str = "cloudphone.display";
/// Kernel cmdline key naming the device profile.
pub const PROFILE_KEY: &str = "cloudphone.profile";
/// Prefix of the Android boot parameters shown on the Info page.
pub const ANDROIDBOOT_PREFIX: &str = "androidboot.";

/// The Info page's table: ordered (label, value) rows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceInfo {
    rows: Vec<(String, String)>,
}

fn bounded(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(MAX_FIELD)
        .collect()
}

impl DeviceInfo {
    /// The rows in display order.
    pub fn rows(&self) -> &[(String, String)] {
        &self.rows
    }

    /// Sets `key` to `value`, replacing an existing row or appending (up to [`MAX_ROWS`]).
    pub fn set(&mut self, key: &str, value: &str) {
        let (key, value) = (bounded(key), bounded(value));
        if let Some(row) = self.rows.iter_mut().find(|(k, _)| *k == key) {
            row.1 = value;
        } else if self.rows.len() < MAX_ROWS {
            self.rows.push((key, value));
        }
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.rows
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The fixed rows every Info page starts with, in order, all "unknown".
    pub fn skeleton() -> Self {
        let mut info = DeviceInfo::default();
        for key in ["profile", "hardware", "vcpus", "memory", "kernel", "screen"] {
            info.set(key, "unknown");
        }
        info
    }

    /// Builds the table from raw sources (each may be empty when unavailable).
    pub fn from_sources(src: &Sources, width: u32, height: u32) -> Self {
        let mut info = DeviceInfo::skeleton();
        let params = boot_params(&src.cmdline, &src.bootconfig);
        // The profile comes as a plain cmdline key or, from vendor_boot, as a bootconfig
        // `androidboot.` key (one row either way).
        let bootconfig_profile = format!("{ANDROIDBOOT_PREFIX}{PROFILE_KEY}");
        if let Some(v) =
            lookup(&params, PROFILE_KEY).or_else(|| lookup(&params, &bootconfig_profile))
        {
            info.set("profile", v);
        }
        if let Some(v) = lookup(&params, "androidboot.hardware") {
            info.set("hardware", v);
        }
        let vcpus = count_cpus(&src.cpuinfo).unwrap_or(src.online_cpus);
        info.set("vcpus", &vcpus.to_string());
        if let Some(mib) = mem_total_mib(&src.meminfo) {
            info.set("memory", &format!("{mib} MiB"));
        }
        if !src.kernel.is_empty() {
            info.set("kernel", &src.kernel);
        }
        info.set("screen", &format!("{width}x{height}"));
        for (k, v) in &params {
            if let Some(short) = k.strip_prefix(ANDROIDBOOT_PREFIX) {
                if short != "hardware" && short != PROFILE_KEY {
                    info.set(short, v);
                }
            }
        }
        info
    }
}

/// Raw text of everything the Info page is built from.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub cmdline: String,
    pub bootconfig: String,
    pub cpuinfo: String,
    pub meminfo: String,
    pub kernel: String,
    pub online_cpus: u32,
}

/// Reads at most this much of each /proc file.
const MAX_PROC_READ: u64 = 256 * 1024;

fn read_bounded(path: &str) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(MAX_PROC_READ).read_to_string(&mut s);
    }
    s
}

impl Sources {
    /// Reads the running system's files (missing ones stay empty).
    pub fn read_system() -> Self {
        Sources {
            cmdline: read_bounded("/proc/cmdline"),
            bootconfig: read_bounded("/proc/bootconfig"),
            cpuinfo: read_bounded("/proc/cpuinfo"),
            meminfo: read_bounded("/proc/meminfo"),
            kernel: kernel_release(),
            // SAFETY: sysconf has no memory effects.
            online_cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.clamp(1, 4096) as u32,
        }
    }
}

/// `uname -r`.
fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it completely on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, exclusively borrowed utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return String::new();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `key=value` pairs from the cmdline (later wins, like the kernel) then bootconfig lines
/// (`key = "value"`), which override the cmdline as Android's init does.
pub fn boot_params(cmdline: &str, bootconfig: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut put = |k: &str, v: &str| {
        let (k, v) = (bounded(k), bounded(v));
        if let Some(row) = out.iter_mut().find(|(ok, _)| *ok == k) {
            row.1 = v;
        } else if out.len() < 256 {
            out.push((k, v));
        }
    };
    for word in split_cmdline(cmdline) {
        if let Some((k, v)) = word.split_once('=') {
            put(k, v);
        }
    }
    for line in bootconfig.lines() {
        if let Some((k, v)) = line.split_once('=') {
            put(k.trim(), v.trim().trim_matches('"'));
        }
    }
    out
}

/// Splits the cmdline on whitespace, honouring double quotes (`key="a b"`).
fn split_cmdline(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in s.chars().take(64 * 1024) {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// The value of `key` among parsed boot parameters.
pub fn lookup<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Number of `processor` entries in /proc/cpuinfo.
pub fn count_cpus(cpuinfo: &str) -> Option<u32> {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    (n > 0).then_some(n as u32)
}

/// MemTotal from /proc/meminfo, in MiB.
pub fn mem_total_mib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_from_guest_sources() {
        let src = Sources {
            cmdline: "console=hvc0 cloudphone.profile=pixel-small androidboot.hardware=cutf_cvm androidboot.serialno=\"CP 01\" quiet".into(),
            bootconfig: "androidboot.slot_suffix = \"_a\"\n".into(),
            cpuinfo: "processor\t: 0\nmodel name\t: x\n\nprocessor\t: 1\nmodel name\t: x\n".into(),
            meminfo: "MemTotal:        2030000 kB\nMemFree: 1 kB\n".into(),
            kernel: "6.1.0-28-amd64".into(),
            online_cpus: 7,
        };
        // vendor_boot's bootconfig spelling of the profile gives the same single row.
        let from_bootconfig = DeviceInfo::from_sources(
            &Sources {
                cmdline: src.cmdline.replace("cloudphone.profile=pixel-small ", ""),
                bootconfig: format!(
                    "{}androidboot.cloudphone.profile = \"pixel-small\"\n",
                    src.bootconfig
                ),
                ..src.clone()
            },
            720,
            1280,
        );
        let info = DeviceInfo::from_sources(&src, 720, 1280);
        let rows: Vec<(&str, &str)> = info
            .rows()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            rows,
            vec![
                ("profile", "pixel-small"),
                ("hardware", "cutf_cvm"),
                ("vcpus", "2"),
                ("memory", "1982 MiB"),
                ("kernel", "6.1.0-28-amd64"),
                ("screen", "720x1280"),
                ("serialno", "CP 01"),
                ("slot_suffix", "_a"),
            ]
        );
        assert_eq!(from_bootconfig, info);
    }

    #[test]
    fn fallbacks_when_proc_is_missing() {
        let info = DeviceInfo::from_sources(
            &Sources {
                online_cpus: 3,
                ..Sources::default()
            },
            240,
            320,
        );
        assert_eq!(info.get("vcpus"), Some("3"));
        assert_eq!(info.get("memory"), Some("unknown"));
        assert_eq!(info.get("profile"), Some("unknown"));
    }

    #[test]
    fn hostile_cmdline_is_bounded() {
        let mut cmdline = String::new();
        for i in 0..1000 {
            cmdline.push_str(&format!("androidboot.k{i}={} ", "v".repeat(500)));
        }
        cmdline.push_str("androidboot.bad=\u{1b}[2J");
        let info = DeviceInfo::from_sources(
            &Sources {
                cmdline,
                ..Sources::default()
            },
            720,
            1280,
        );
        assert_eq!(info.rows().len(), MAX_ROWS);
        assert!(info
            .rows()
            .iter()
            .all(|(k, v)| k.len() <= MAX_FIELD && v.len() <= MAX_FIELD));
        assert!(boot_params("a=\u{1b}x", "")
            .iter()
            .all(|(_, v)| !v.contains('\u{1b}')));
    }

    #[test]
    fn later_params_override_earlier() {
        let p = boot_params("cloudphone.report=/dev/hvc1 cloudphone.report=stdout", "");
        assert_eq!(lookup(&p, REPORT_KEY), Some("stdout"));
    }
}
