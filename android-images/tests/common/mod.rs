//! Helpers shared by the cross-check tests: scratch dirs, deterministic data, external tools.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh scratch directory under Cargo's per-target temp dir.
pub fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("android-images-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether an external tool is on PATH. When it is not, the caller skips loudly unless
/// `CLOUDPHONE_REQUIRE_TOOLS=1` (set by scripts/test after installing them), which fails.
pub fn have_tool(tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()));
    if !found {
        let msg = format!("!!! SKIPPING: `{tool}` not installed (apt-get install {package}) !!!");
        if std::env::var("CLOUDPHONE_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("{msg} but CLOUDPHONE_REQUIRE_TOOLS=1");
        }
        eprintln!("{msg}");
    }
    found
}

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
