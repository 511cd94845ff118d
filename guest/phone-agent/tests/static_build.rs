//! The guest binary must be static: the test image has no libc. Builds the release binary the
//! way scripts/build-test-image does and checks `ldd` and that it runs. Ignored by default
//! (a release build takes minutes): `cargo test -p cloudphone-phone-agent -- --ignored`.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>; the target dir is two levels up.
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("test binary inside a target dir")
        .to_path_buf()
}

/// True when the ELF64 file has a PT_INTERP program header (i.e. needs a dynamic loader).
fn has_interpreter(elf: &[u8]) -> bool {
    assert!(
        elf.len() > 64 && &elf[..4] == b"\x7fELF" && elf[4] == 2,
        "not an ELF64 file"
    );
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap()) as usize;
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap()) as usize;
    let (phoff, phentsize, phnum) = (u64_at(0x20), u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        u32::from_le_bytes(elf[o..o + 4].try_into().unwrap()) == 3
    })
}

#[test]
#[ignore = "builds the static release binary (minutes)"]
fn release_build_is_static_and_runs() {
    let target = target_dir();
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "cloudphone-phone-agent",
            "--release",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "static release build failed");
    let bin = target.join("x86_64-unknown-linux-gnu/release/phone-agent");
    let ldd = Command::new("ldd").arg(&bin).output().expect("run ldd");
    let text =
        String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    // glibc's ldd says "not a dynamic executable" for static binaries and "statically linked"
    // for static-pie ones; either way there must be no program interpreter.
    assert!(
        text.contains("not a dynamic executable") || text.contains("statically linked"),
        "ldd {}: {text}",
        bin.display()
    );
    assert!(
        !has_interpreter(&std::fs::read(&bin).expect("read binary")),
        "{} has a PT_INTERP",
        bin.display()
    );

    let png = target.join("static-build-check.png");
    let out = Command::new(&bin)
        .args([
            "render", "--screen", "home", "--width", "240", "--height", "320", "--time", "09:30",
            "--out",
        ])
        .arg(&png)
        .output()
        .expect("run the static binary");
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(&png).expect("PNG written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 1000);
}
