//! The guest binary must be static: the test image has no libc. Builds the release binary the
//! way scripts/build-test-image does and checks `ldd` and that it runs. Ignored by default
//! (a release build takes minutes): `cargo test -p cloudphone-phone-agent -- --ignored`.

use std::path::PathBuf;
use std::process::Command;

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/<name>; the target dir is two levels up.
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors().nth(3).expect("test binary inside a target dir").to_path_buf()
}

#[test]
#[ignore = "builds the static release binary (minutes)"]
fn release_build_is_static_and_runs() {
    let target = target_dir();
    let status = Command::new(env!("CARGO"))
        .args(["build", "-p", "cloudphone-phone-agent", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env("CARGO_TARGET_DIR", &target)
        .status()
        .expect("run cargo");
    assert!(status.success(), "static release build failed");
    let bin = target.join("x86_64-unknown-linux-gnu/release/phone-agent");
    let ldd = Command::new("ldd").arg(&bin).output().expect("run ldd");
    let text = String::from_utf8_lossy(&ldd.stdout).to_string() + &String::from_utf8_lossy(&ldd.stderr);
    assert!(text.contains("not a dynamic executable"), "ldd {}: {text}", bin.display());

    let png = target.join("static-build-check.png");
    let out = Command::new(&bin)
        .args(["render", "--screen", "home", "--width", "240", "--height", "320", "--time", "09:30", "--out"])
        .arg(&png)
        .output()
        .expect("run the static binary");
    assert!(out.status.success(), "render failed: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(&png).expect("PNG written");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 1000);
}
