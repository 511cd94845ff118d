//! Warm pool from snapshots: the first phone of a profile that cold-boots to `PHONE_READY`
//! is paused, snapshotted and resumed; later phones of that profile (and resets) are restored
//! from the snapshot (`cloudphone-vmm --restore`) instead of booting, which takes milliseconds
//! instead of a whole Android boot.
//!
//! Layout: `<state-dir>/snapshots/<profile id>/` holds `vm/` (the VMM's `state` and `memory`),
//! `disk.qcow2` (the phone's overlay frozen at snapshot time: each clone starts from its own
//! copy, so no clone sees another's writes) and `identity` (written last: a directory with it
//! is complete). The identity names everything that would change the guest (VMM binary, boot
//! files, kernel command line, base image, the profile's hardware, the device set); when any of
//! it changes the snapshot is deleted and the next cold-booted phone makes a new one.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cloudphone_vmm_api::VmmApi;

use super::vmm::{GuestBoot, PhoneDir, VmmConfig};
use crate::model::Profile;

/// Longest wait for the VMM to write a snapshot (guest RAM is written out, holes skipped).
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A complete snapshot whose identity matches what a phone of its profile would boot now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// The directory to pass to `--restore`.
    pub vm: PathBuf,
    /// The frozen overlay each clone copies (absent for profiles without a disk image).
    pub disk: PathBuf,
}

fn profile_dir(cfg: &VmmConfig, profile_id: &str) -> PathBuf {
    cfg.state_dir.join("snapshots").join(profile_id)
}

/// `path size mtime` of a file, or `path missing` (so a file appearing also changes it).
fn file_identity(path: &Path) -> String {
    let found = if path.components().count() == 1 {
        // A bare program name (the default `cloudphone-vmm`) is looked up on PATH.
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|d| d.join(path))
            .find(|p| p.is_file())
    } else {
        Some(path.to_path_buf())
    };
    match found.as_deref().map(|p| (p, std::fs::metadata(p))) {
        Some((p, Ok(m))) => {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{} size={} mtime={}.{:09}",
                p.display(),
                m.len(),
                m.mtime(),
                m.mtime_nsec()
            )
        }
        _ => format!("{} missing", path.display()),
    }
}

/// Everything about a phone of `profile` on this host that the guest could notice, one item a
/// line; two equal identities restore to the same guest.
pub fn identity(cfg: &VmmConfig, profile: &Profile) -> String {
    let mut out = String::new();
    let mut line = |key: &str, value: String| {
        let _ = writeln!(out, "{key}: {value}");
    };
    line("vmm", file_identity(&cfg.vmm));
    match &cfg.boot {
        GuestBoot::Kernel { kernel, initrd } => {
            line("kernel", file_identity(kernel));
            if let Some(i) = initrd {
                line("initrd", file_identity(i));
            }
            line("cmdline", cfg.cmdline.clone());
        }
        GuestBoot::Android {
            boot_img,
            vendor_boot,
        } => {
            line("boot-img", file_identity(boot_img));
            if let Some(v) = vendor_boot {
                line("vendor-boot", file_identity(v));
            }
        }
    }
    if !profile.image.is_empty() {
        line("image", file_identity(&cfg.image_dir.join(&profile.image)));
    }
    line(
        "profile",
        format!(
            "vcpus={} memory_mib={} width={} height={} dpi={}",
            profile.vcpus, profile.memory_mib, profile.width, profile.height, profile.dpi
        ),
    );
    line("devices", format!("{:?}", cfg.devices));
    out
}

/// The profile's snapshot if it is complete and still matches the profile; a stale one is
/// deleted (the next cold-booted phone makes a new one).
pub fn usable(cfg: &VmmConfig, profile: &Profile) -> Option<Snapshot> {
    let dir = profile_dir(cfg, &profile.id);
    let stored = std::fs::read_to_string(dir.join("identity")).ok()?;
    if stored != identity(cfg, profile) {
        tracing::info!(profile = %profile.name, dir = %dir.display(), "profile, image or boot files changed: deleting the stale snapshot");
        discard(cfg, &profile.id);
        return None;
    }
    Some(Snapshot {
        vm: dir.join("vm"),
        disk: dir.join("disk.qcow2"),
    })
}

/// Deletes the profile's snapshot (stale, or a restore from it failed).
pub fn discard(cfg: &VmmConfig, profile_id: &str) {
    let dir = profile_dir(cfg, profile_id);
    if let Err(e) = std::fs::remove_dir_all(&dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!("deleting snapshot {}: {e}", dir.display());
        }
    }
}

/// Pauses the ready phone in `phone`, snapshots it with its disk overlay as the profile's
/// snapshot and resumes it (also when the snapshot failed).
pub async fn take(cfg: &VmmConfig, profile: &Profile, phone: &PhoneDir) -> anyhow::Result<()> {
    let root = cfg.state_dir.join("snapshots");
    // The VMM wants an absolute directory.
    let partial = std::path::absolute(root.join(format!(".{}.partial", profile.id)))
        .context("resolving the snapshot directory")?;
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).with_context(|| format!("creating {}", partial.display()))?;
    let (written_at, api_dir) = super::jail::snapshot_target(cfg, phone, &partial.join("vm"))?;
    let api = VmmApi::new(phone.api_socket()).with_timeout(SNAPSHOT_TIMEOUT);
    api.pause()
        .await
        .context("pausing the phone to snapshot it")?;
    let written = async {
        api.snapshot(&api_dir)
            .await
            .context("writing the snapshot")?;
        if written_at != partial.join("vm") {
            std::fs::rename(&written_at, partial.join("vm")).with_context(|| {
                format!(
                    "moving the snapshot out of the jail ({})",
                    written_at.display()
                )
            })?;
        }
        if !profile.image.is_empty() {
            // Copied while the guest is still paused: the disk as the snapshot's RAM knows it.
            tokio::fs::copy(phone.overlay(), partial.join("disk.qcow2"))
                .await
                .with_context(|| format!("freezing the overlay {}", phone.overlay().display()))?;
        }
        anyhow::Ok(())
    }
    .await;
    let resumed = api.resume().await.context("resuming the snapshotted phone");
    let result = written.and_then(|()| {
        std::fs::write(partial.join("identity"), identity(cfg, profile))
            .context("writing the snapshot identity")?;
        let dir = profile_dir(cfg, &profile.id);
        discard(cfg, &profile.id);
        std::fs::rename(&partial, &dir)
            .with_context(|| format!("moving the snapshot into {}", dir.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&partial);
    }
    result.and(resumed)
}

/// Gives a clone its own copy of the snapshot's frozen overlay (replacing any old one).
pub async fn copy_disk(snapshot: &Snapshot, phone: &PhoneDir) -> anyhow::Result<()> {
    if !snapshot.disk.exists() {
        return Ok(());
    }
    let _ = std::fs::remove_file(phone.overlay());
    tokio::fs::copy(&snapshot.disk, phone.overlay())
        .await
        .with_context(|| {
            format!(
                "copying the snapshot disk {} for a clone",
                snapshot.disk.display()
            )
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::vmm::Devices;

    #[test]
    fn identity_changes_with_anything_the_guest_would_see() {
        let root = std::env::temp_dir().join(format!("cp-warm-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let boot = root.join("boot.img");
        std::fs::write(&boot, "boot").unwrap();
        std::fs::write(root.join("base.img"), "disk").unwrap();
        let cfg = VmmConfig {
            boot: GuestBoot::Android {
                boot_img: boot.clone(),
                vendor_boot: None,
            },
            image_dir: root.clone(),
            state_dir: root.clone(),
            devices: Devices::parse("gpu").unwrap(),
            ..super::super::vmm::test_config()
        };
        let p = super::super::vmm::test_profile();
        let first = identity(&cfg, &p);
        assert_eq!(first, identity(&cfg, &p), "stable while nothing changes");
        let renamed = Profile {
            name: "q".into(),
            pool_size: 5,
            ..p.clone()
        };
        assert_eq!(
            first,
            identity(&cfg, &renamed),
            "name and pool size are not the guest's"
        );
        let bigger = Profile {
            memory_mib: 4096,
            ..p.clone()
        };
        assert_ne!(first, identity(&cfg, &bigger));
        let more_devices = VmmConfig {
            devices: Devices::parse("gpu,rng").unwrap(),
            ..cfg.clone()
        };
        assert_ne!(first, identity(&more_devices, &p));
        std::fs::write(root.join("base.img"), "disk, grown").unwrap();
        assert_ne!(first, identity(&cfg, &p), "a new base image");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
