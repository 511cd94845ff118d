//! The agent's side of the per-phone jail (`cloudphone-vmm --jail`, vmm/API.md "Jail"): every
//! phone's VMM is jailed in its own directory unless `--no-jail`; as root each phone also gets
//! its own uid/gid from `--jail-uid-base`, claimed in `<state-dir>/jail-uids/<slot>` (a file
//! naming the phone, created exclusively, so two phones never share one and a restarted agent
//! keeps what it gave out).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

use super::vmm::{PhoneDir, VmmConfig};

/// How the agent jails phones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JailConfig {
    /// First uid (and gid) of the phones' range; `None` when the agent is not root (the
    /// VMM then jails itself in an unprivileged user namespace under the agent's uid).
    pub uid_base: Option<u32>,
    /// How many ids the range holds: the most phones jailed at once.
    pub uids: u32,
    /// Tmpfs directory holding one framebuffer directory per phone (under the relay's
    /// framebuffer root, specific to this state dir so two agents never share one).
    pub shm_root: PathBuf,
}

impl JailConfig {
    /// The jail for an agent with `state_dir` and `framebuffer_root` (both absolute).
    pub fn new(uid_base: u32, uids: u32, state_dir: &Path, framebuffer_root: &Path) -> Self {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        state_dir.hash(&mut h);
        // SAFETY: geteuid has no failure mode.
        let root = unsafe { libc::geteuid() } == 0;
        Self {
            uid_base: root.then_some(uid_base),
            uids,
            shm_root: framebuffer_root.join(format!("cloudphone-jail-{:016x}", h.finish())),
        }
    }
}

fn slots_dir(cfg: &VmmConfig) -> PathBuf {
    cfg.state_dir.join("jail-uids")
}

fn phone_id(dir: &PhoneDir) -> String {
    dir.dir
        .file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// The phone's uid (= gid): the slot already naming it, or the lowest free one.
fn claim_id(cfg: &VmmConfig, jail: &JailConfig, base: u32, phone: &str) -> anyhow::Result<u32> {
    let slots = slots_dir(cfg);
    std::fs::create_dir_all(&slots).with_context(|| format!("creating {}", slots.display()))?;
    let owner = |slot: u32| std::fs::read_to_string(slots.join(slot.to_string())).ok();
    if let Some(slot) = (0..jail.uids).find(|s| owner(*s).as_deref() == Some(phone)) {
        return Ok(base + slot);
    }
    for slot in 0..jail.uids {
        let path = slots.join(slot.to_string());
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                f.write_all(phone.as_bytes())
                    .with_context(|| format!("writing {}", path.display()))?;
                return Ok(base + slot);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("claiming {}", path.display())),
        }
    }
    bail!(
        "all {} jail uids from {base} are in use: raise --jail-uids or --jail-uid-base's range",
        jail.uids
    )
}

/// The `--jail` option for the phone in `dir` (claiming its uid as root).
pub fn vmm_args(cfg: &VmmConfig, jail: &JailConfig, dir: &PhoneDir) -> anyhow::Result<Vec<String>> {
    let phone = phone_id(dir);
    let mut spec = format!(
        "root={},shm={}",
        dir.dir.display(),
        jail.shm_root.join(&phone).display()
    );
    if let Some(base) = jail.uid_base {
        let id = claim_id(cfg, jail, base, &phone)?;
        spec.push_str(&format!(",uid={id},gid={id}"));
    }
    Ok(vec!["--jail".to_owned(), spec])
}

/// Frees what the phone's jail held (its uid slot, its framebuffer directory) once the phone
/// is removed or quarantined.
pub fn release(cfg: &VmmConfig, dir: &PhoneDir) {
    let Some(jail) = &cfg.jail else { return };
    let phone = phone_id(dir);
    let _ = std::fs::remove_dir_all(jail.shm_root.join(&phone));
    let slots = slots_dir(cfg);
    for slot in 0..jail.uids {
        let path = slots.join(slot.to_string());
        if std::fs::read_to_string(&path).ok().as_deref() == Some(phone.as_str()) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Where a snapshot of the phone in `dir` goes when the agent wants it at `target`: the host
/// path the VMM writes, and the path to give its API. A jailed VMM writes only inside its own
/// directory (`/snapshot/vm` there), which the agent then moves to `target`.
pub fn snapshot_target(
    cfg: &VmmConfig,
    dir: &PhoneDir,
    target: &Path,
) -> anyhow::Result<(PathBuf, PathBuf)> {
    let Some(jail) = &cfg.jail else {
        return Ok((target.to_path_buf(), target.to_path_buf()));
    };
    let host = dir.dir.join("snapshot");
    let _ = std::fs::remove_dir_all(&host);
    std::fs::create_dir(&host).with_context(|| format!("creating {}", host.display()))?;
    if let Some(base) = jail.uid_base {
        // The VMM runs as the phone's own uid (the slot it already holds).
        let id = claim_id(cfg, jail, base, &phone_id(dir))?;
        std::os::unix::fs::chown(&host, Some(id), Some(id))
            .with_context(|| format!("giving {} to the phone", host.display()))?;
    }
    Ok((host.join("vm"), PathBuf::from("/snapshot/vm")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_phone_gets_its_own_uid_until_it_is_released() {
        let state = std::env::temp_dir().join(format!("cp-jail-uids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.join("phones")).unwrap();
        let jail = JailConfig {
            uid_base: Some(300_000),
            uids: 2,
            shm_root: state.join("shm"),
        };
        let cfg = VmmConfig {
            jail: Some(jail.clone()),
            state_dir: state.clone(),
            ..super::super::vmm::test_config()
        };
        let dir = |id: &str| PhoneDir::new(&cfg, id);
        let uid = |id: &str| {
            vmm_args(&cfg, &jail, &dir(id)).map(|a| a[1].split("uid=").nth(1).unwrap().to_owned())
        };
        assert_eq!(uid("ph_a").unwrap(), "300000,gid=300000");
        assert_eq!(uid("ph_b").unwrap(), "300001,gid=300001");
        assert_eq!(
            uid("ph_a").unwrap(),
            "300000,gid=300000",
            "a restart keeps the uid"
        );
        let full = uid("ph_c").unwrap_err().to_string();
        assert!(full.contains("--jail-uids"), "{full}");
        release(&cfg, &dir("ph_a"));
        assert_eq!(uid("ph_c").unwrap(), "300000,gid=300000");
        let args = vmm_args(&cfg, &jail, &dir("ph_b")).unwrap();
        assert!(
            args[1].starts_with(&format!(
                "root={}/phones/ph_b,shm={}/shm/ph_b,",
                state.display(),
                state.display()
            )),
            "{args:?}"
        );
        std::fs::remove_dir_all(&state).unwrap();
    }
}
