//! Compiles the small C layer over libvpx (`src/vp8_shim.c`) against the system's libvpx headers
//! and links libvpx, both found through pkg-config.

fn main() {
    println!("cargo:rerun-if-changed=src/vp8_shim.c");
    let vpx = match pkg_config::Config::new()
        .atleast_version("1.8")
        .probe("vpx")
    {
        Ok(lib) => lib,
        Err(e) => panic!(
            "libvpx (>= 1.8) not found through pkg-config: install it \
             (Debian/Ubuntu: `apt-get install libvpx-dev`). {e}"
        ),
    };
    cc::Build::new()
        .file("src/vp8_shim.c")
        .includes(&vpx.include_paths)
        .std("c11")
        .warnings(true)
        .extra_warnings(true)
        .compile("cloudphone_vp8_shim");
}
