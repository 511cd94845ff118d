//! Embeds the UI font: copies DejaVuSans from the Debian `fonts-dejavu-core` package into
//! OUT_DIR so `include_bytes!` works the same on every machine that has the package.
use std::path::Path;

const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

fn main() {
    println!("cargo:rerun-if-changed={FONT}");
    let path = std::env::var("PHONE_AGENT_FONT").unwrap_or_else(|_| FONT.to_string());
    println!("cargo:rerun-if-env-changed=PHONE_AGENT_FONT");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) => panic!(
            "phone-agent needs the DejaVuSans font at {path} ({e}); install it with \
             `apt-get install fonts-dejavu-core` (or point PHONE_AGENT_FONT at a .ttf)"
        ),
    };
    let out = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    std::fs::write(Path::new(&out).join("ui-font.ttf"), bytes).expect("write font into OUT_DIR");
}
