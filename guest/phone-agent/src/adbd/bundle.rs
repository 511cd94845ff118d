//! App bundles, the test phone's `.apk`: a ustar archive of regular files and directories
//! with a `manifest` at its root of `key=value` lines:
//! ```text
//! name=org.example.game      (the app id: [a-z0-9][a-z0-9._-]*, up to 64 bytes)
//! exec=bin/game              (the program the agent launches, a file in the bundle)
//! ```
//! `adb install game.apk` (Debian adb 29 without the `cmd` feature) pushes the file to
//! /data/local/tmp and runs `pm install /data/local/tmp/game.apk`: the bundle is checked
//! completely (entry types, paths, sizes, manifest) before anything is written, unpacked into
//! `<apps_dir>/<name>/` only, replacing and stopping an older install, and the app started
//! with its output going to logcat as `app/<name>`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, ensure, Context};

use super::{files, logs};

/// Largest bundle accepted.
const MAX_BUNDLE: u64 = 64 << 20;
/// Most entries in a bundle.
const MAX_ENTRIES: usize = 1024;
const BLOCK: usize = 512;

/// One archive member.
#[derive(Debug, PartialEq, Eq)]
enum Entry {
    File { path: PathBuf, data: Vec<u8> },
    Dir(PathBuf),
}

/// The parsed manifest.
#[derive(Debug, PartialEq, Eq)]
struct Manifest {
    name: String,
    exec: PathBuf,
}

/// A number field of a tar header (octal, NUL/space padded).
fn octal(field: &[u8]) -> anyhow::Result<u64> {
    let text = std::str::from_utf8(field)?.trim_matches(|c| c == '\0' || c == ' ');
    if text.is_empty() {
        return Ok(0);
    }
    Ok(u64::from_str_radix(text, 8)?)
}

/// A member path made safe: relative, only normal components (`./` dropped).
fn member_path(raw: &[u8]) -> anyhow::Result<PathBuf> {
    let text = std::str::from_utf8(raw).context("member name is not UTF-8")?;
    let mut clean = PathBuf::new();
    for c in Path::new(text).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::CurDir => {}
            _ => bail!("member {text:?} leaves the app directory"),
        }
    }
    Ok(clean)
}

/// Parses a ustar archive; refuses links, devices, traversal and anything malformed.
fn parse_tar(bytes: &[u8]) -> anyhow::Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut at = 0;
    while at + BLOCK <= bytes.len() {
        let h = &bytes[at..at + BLOCK];
        if h.iter().all(|&b| b == 0) {
            return Ok(entries);
        }
        ensure!(
            &h[257..262] == b"ustar",
            "not a tar archive (no ustar header at byte {at})"
        );
        let stored = octal(&h[148..156])?;
        let sum: u64 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(b)
                }
            })
            .sum();
        ensure!(stored == sum, "tar header checksum mismatch at byte {at}");
        let name_end = |f: &[u8]| f.iter().position(|&b| b == 0).unwrap_or(f.len());
        let (name, prefix) = (&h[..100], &h[345..500]);
        let mut full = prefix[..name_end(prefix)].to_vec();
        if !full.is_empty() {
            full.push(b'/');
        }
        full.extend_from_slice(&name[..name_end(name)]);
        let path = member_path(&full)?;
        let size = octal(&h[124..136])?;
        ensure!(size <= MAX_BUNDLE, "member {} is too large", path.display());
        let start = at + BLOCK;
        let end = start
            .checked_add(size as usize)
            .filter(|&e| e <= bytes.len())
            .context("archive is truncated")?;
        ensure!(
            entries.len() < MAX_ENTRIES,
            "more than {MAX_ENTRIES} members"
        );
        match h[156] {
            b'0' | 0 => entries.push(Entry::File {
                path,
                data: bytes[start..end].to_vec(),
            }),
            b'5' => entries.push(Entry::Dir(path)),
            t => bail!(
                "member {} has type {:?}: only files and directories are allowed",
                path.display(),
                t as char
            ),
        }
        at = start + (size as usize).div_ceil(BLOCK) * BLOCK;
    }
    bail!("archive ends without its end marker")
}

/// Reads the manifest from the entries.
fn manifest(entries: &[Entry]) -> anyhow::Result<Manifest> {
    let text = entries
        .iter()
        .find_map(|e| match e {
            Entry::File { path, data } if path == Path::new("manifest") => Some(data),
            _ => None,
        })
        .context("no `manifest` file at the bundle's root")?;
    let text = std::str::from_utf8(text).context("manifest is not UTF-8")?;
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
            .map(str::trim)
            .with_context(|| format!("manifest has no `{key}=` line"))
    };
    let name = field("name")?;
    let valid = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c));
    ensure!(
        valid,
        "app name {name:?} must be [a-z0-9][a-z0-9._-]*, up to 64 bytes"
    );
    let exec = member_path(field("exec")?.as_bytes())?;
    ensure!(
        entries
            .iter()
            .any(|e| matches!(e, Entry::File { path, .. } if *path == exec)),
        "manifest's exec={} is not a file in the bundle",
        exec.display()
    );
    Ok(Manifest {
        name: name.to_string(),
        exec,
    })
}

/// Installs the bundle at `raw` (a path inside `roots`) into `apps_dir` and starts it;
/// returns the app name.
pub fn install(raw: &[u8], roots: &[PathBuf], apps_dir: &Path) -> anyhow::Result<String> {
    let path = files::confine(raw, roots).map_err(anyhow::Error::msg)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    let mut bytes = Vec::new();
    file.by_ref().take(MAX_BUNDLE + 1).read_to_end(&mut bytes)?;
    ensure!(
        bytes.len() as u64 <= MAX_BUNDLE,
        "bundle is larger than {} MiB",
        MAX_BUNDLE >> 20
    );
    let entries = parse_tar(&bytes)?;
    let manifest = manifest(&entries)?;
    let staging = apps_dir.join(format!(".install-{}", manifest.name));
    let target = apps_dir.join(&manifest.name);
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    for entry in &entries {
        match entry {
            Entry::Dir(p) => std::fs::create_dir_all(staging.join(p))?,
            Entry::File { path, data } => {
                let dest = staging.join(path);
                if let Some(d) = dest.parent() {
                    std::fs::create_dir_all(d)?;
                }
                std::fs::write(&dest, data)
                    .with_context(|| format!("writing {}", dest.display()))?;
                let mode = if *path == manifest.exec { 0o755 } else { 0o644 };
                std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode))?;
            }
        }
    }
    stop(&manifest.name);
    let _ = std::fs::remove_dir_all(&target);
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving the app into {}", target.display()))?;
    launch(&manifest.name, &target, &manifest.exec)?;
    Ok(manifest.name)
}

/// The installed app names.
pub fn installed(apps_dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut names: Vec<String> = match std::fs::read_dir(apps_dir) {
        Ok(d) => d
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {}", apps_dir.display())),
    };
    names.sort();
    Ok(names)
}

fn running() -> &'static Mutex<HashMap<String, Child>> {
    static RUNNING: OnceLock<Mutex<HashMap<String, Child>>> = OnceLock::new();
    RUNNING.get_or_init(Default::default)
}

/// Stops the app's running process, if any (a reinstall replaces it).
fn stop(name: &str) {
    let child = running()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove(name);
    if let Some(mut c) = child {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Starts the app in its directory; its output lines go to logcat.
fn launch(name: &str, dir: &Path, exec: &Path) -> anyhow::Result<()> {
    let mut child = Command::new(dir.join(exec))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", exec.display()))?;
    let tag = format!("app/{name}");
    let pipes: [Option<Box<dyn Read + Send>>; 2] = [
        child.stdout.take().map(|p| Box::new(p) as _),
        child.stderr.take().map(|p| Box::new(p) as _),
    ];
    for pipe in pipes.into_iter().flatten() {
        let tag = tag.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(l) => logs::push(&tag, &l),
                    Err(_) => break,
                }
            }
        });
    }
    logs::push(&tag, &format!("started {}", exec.display()));
    running()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string(), child);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ustar archive built by the system's tar (a real implementation nobody here wrote).
    pub fn tar_of(dir: &Path) -> Vec<u8> {
        let out = Command::new("tar")
            .args(["--format=ustar", "-cf", "-", "-C"])
            .arg(dir)
            .arg(".")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    #[test]
    fn parses_real_tar_and_refuses_links_and_traversal() {
        let dir = std::env::temp_dir().join(format!("adbd-bundle-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("bin")).unwrap();
        std::fs::write(
            dir.join("manifest"),
            "name=org.example.demo\nexec=bin/run\n",
        )
        .unwrap();
        std::fs::write(dir.join("bin/run"), "#!/bin/sh\necho hello\n").unwrap();
        let entries = parse_tar(&tar_of(&dir)).unwrap();
        let m = manifest(&entries).unwrap();
        assert_eq!(
            m,
            Manifest {
                name: "org.example.demo".into(),
                exec: "bin/run".into()
            }
        );
        std::os::unix::fs::symlink("/etc/passwd", dir.join("link")).unwrap();
        let e = parse_tar(&tar_of(&dir)).unwrap_err();
        assert!(format!("{e}").contains("only files and directories"), "{e}");
        std::fs::remove_file(dir.join("link")).unwrap();
        let mut evil = tar_of(&dir);
        evil[..100].fill(0);
        evil[..9].copy_from_slice(b"../escape");
        let e = parse_tar(&evil).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
        evil[148..156].fill(b' ');
        let sum: u32 = evil[..BLOCK].iter().map(|&b| u32::from(b)).sum();
        evil[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
        let e = parse_tar(&evil).unwrap_err();
        assert!(e.to_string().contains("leaves the app directory"), "{e}");
        assert!(parse_tar(b"definitely not a tar").is_err());
        assert!(parse_tar(&vec![b'x'; 2048])
            .unwrap_err()
            .to_string()
            .contains("not a tar"));
        std::fs::write(dir.join("manifest"), "name=../up\nexec=bin/run\n").unwrap();
        assert!(manifest(&parse_tar(&tar_of(&dir)).unwrap()).is_err());
        std::fs::write(dir.join("manifest"), "name=ok\nexec=bin/missing\n").unwrap();
        assert!(manifest(&parse_tar(&tar_of(&dir)).unwrap()).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
