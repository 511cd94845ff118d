//! The cloudphone guest **phone agent**: stands in for Android's SurfaceFlinger + launcher in
//! the test phone image. It draws a phone home screen into the virtio-gpu scanout (DRM dumb
//! buffer + DIRTYFB damage, or /dev/fb0), turns virtio-input evdev events into taps, strokes
//! and phone keys, reports readiness and every handled input on a virtio-console port, and
//! runs a real adbd on vsock port 5555 ([`adbd`]).
//!
//! # Building the guest binary
//! From the workspace root (the gnu target with a static C runtime; no extra rustup target):
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" cargo build -p cloudphone-phone-agent \
//!     --release --target x86_64-unknown-linux-gnu
//! ```
//! The binary is `$CARGO_TARGET_DIR/x86_64-unknown-linux-gnu/release/phone-agent`
//! (`ldd` says "not a dynamic executable"). The build embeds DejaVuSans from
//! `fonts-dejavu-core` (`apt-get install fonts-dejavu-core`).
//!
//! # Guest contract
//! * Started by init as `/bin/phone-agent` with /proc, /sys and /dev mounted and the virtio
//!   modules loaded (virtio_pci, virtio-gpu, virtio_input, **evdev**, virtio_console, vsock +
//!   vmw_vsock_virtio_transport); waits up to 30 s for /dev/dri/card0 (else /dev/fb0) and
//!   input devices. Run as PID 1 (`exec`), it forks and the parent reaps and restarts it.
//! * Kernel cmdline keys read: `cloudphone.report=/dev/hvcN|PATH|stdout` (report port, default
//!   `/dev/hvc1`), `cloudphone.display=drm|fbdev` (default drm, fbdev fallback),
//!   `cloudphone.profile=NAME`, `androidboot.*` (also from /proc/bootconfig).
//! * adbd: vsock port 5555, adb protocol 0x01000001 after the host's `CLOUDPHONE-ADB 1` key
//!   preamble (only the keys it names may AUTH; see [`adbd`] and the `cloudphone-adb` crate).
//!   Services `shell:` (and `shell,v2`), `exec:`, `sync:` (confined to /data and /sdcard),
//!   `reboot:`; built-in commands `screencap -p`, `input tap|swipe|keyevent` (fed to the UI
//!   like virtio-input events), `pm install|list packages` (app bundles: a ustar with a
//!   `manifest` of `name=`/`exec=`, unpacked into /data/app/<name> and started), `logcat`
//!   (agent and app output), `wm size`. Everything else runs in busybox `sh`.
//! * Report lines (see [`report`]): `PHONE_READY width=W height=H`,
//!   `SCREEN app=home|paint|info|clock`, `INPUT t_us=.. kind=touch|key .. frame_us=..`,
//!   `POWER_OFF reason=power-button`, `IDENTITY vmgenid=<hex> hostname=<name>` (at start and
//!   whenever the VM generation id changes: the phone is a new clone of a snapshot, see
//!   [`identity`]).
//! * The ACPI power button (input device "Power Button", needs the kernel's `button` module)
//!   powers the phone off (sync + reboot(RB_POWER_OFF)): the VMM's `PUT /shutdown` exits 0.
//! * Idle means idle: the agent sleeps in poll() until input, the next minute or the next
//!   once-a-second look at the VM generation id, and puts the
//!   active VT (/dev/tty0) into graphics mode so fbcon stops blinking its cursor underneath.
//! * `phone-agent render --screen home|info|paint|clock --width W --height H --out F.png`
//!   renders goldens on the host with the same drawing code (`--time HH:MM`, `--info k=v`);
//!   `phone-agent layout --width W --height H` prints icon and region rectangles (tap targets).
//! * `tools/guest_smoke.py` boots the static binary under QEMU (virtio-gpu/keyboard/tablet)
//!   and checks PHONE_READY, the golden match, tap Info, BACK, and a Paint stroke.

pub mod canvas;
pub mod clock;
pub mod font;
pub mod golden;
pub mod identity;
pub mod input;
pub mod report;
pub mod sysinfo;
pub mod ui;

#[cfg(target_os = "linux")]
pub mod adbd;
#[cfg(target_os = "linux")]
pub mod agent;
#[cfg(target_os = "linux")]
pub mod display;
#[cfg(target_os = "linux")]
pub mod phone_link;
#[cfg(target_os = "linux")]
pub mod power;
#[cfg(target_os = "linux")]
pub mod supervisor;

#[cfg(test)]
mod testutil;
