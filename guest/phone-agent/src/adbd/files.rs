//! The `sync:` service (push, pull, stat, ls), confined to the configured roots (e.g. /data
//! and /sdcard): a path must be absolute, without `..`, and its parent must resolve (symlinks
//! followed) inside a root; the last component is never followed (O_NOFOLLOW, lstat), so a
//! symlink planted in a root cannot lead a push or pull outside it.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use cloudphone_adb::sync::{reply, Chunk, Request, Stat, SyncError, MAX_DATA};

use super::stream::{StreamReader, StreamWriter};

/// Resolves `raw` to a path inside one of `roots`, or says why not.
pub fn confine(raw: &[u8], roots: &[PathBuf]) -> Result<PathBuf, String> {
    let shown = String::from_utf8_lossy(raw);
    let path = Path::new(OsStr::from_bytes(raw));
    if raw.contains(&0) || !path.is_absolute() {
        return Err(format!("{shown}: not an absolute path"));
    }
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{shown}: `..` is not allowed"));
    }
    let outside = || {
        let allowed: Vec<_> = roots.iter().map(|r| r.display().to_string()).collect();
        format!(
            "{shown}: outside the allowed directories ({})",
            allowed.join(", ")
        )
    };
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(outside());
    };
    let mut existing = parent;
    while !existing.exists() {
        existing = existing.parent().ok_or_else(outside)?;
    }
    let real = existing
        .canonicalize()
        .map_err(|e| format!("{shown}: {e}"))?
        .join(parent.strip_prefix(existing).unwrap_or(Path::new("")))
        .join(name);
    let inside = roots
        .iter()
        .filter_map(|r| r.canonicalize().ok())
        .any(|root| real.starts_with(root));
    if inside {
        Ok(real)
    } else {
        Err(outside())
    }
}

/// Serves sync requests until QUIT or the client closes the stream.
pub fn serve(
    mut reader: StreamReader,
    writer: &mut StreamWriter,
    roots: &[PathBuf],
) -> anyhow::Result<()> {
    // Replies are batched into WRTEs of up to 1 MiB (one OKAY round trip each).
    let mut out = BufWriter::with_capacity(1 << 20, writer);
    loop {
        let request = match Request::read_from(&mut reader) {
            Ok(r) => r,
            Err(SyncError::Io(_)) => return Ok(()),
            Err(e) => {
                reply::fail(&mut out, &e.to_string())?;
                out.flush()?;
                anyhow::bail!("sync: {e}");
            }
        };
        match request {
            Request::Stat(p) => reply::stat(&mut out, lstat(&p, roots))?,
            Request::List(p) => list(&mut out, &p, roots)?,
            Request::Recv(p) => {
                if let Err(e) = send_file(&mut out, &p, roots) {
                    reply::fail(&mut out, &e)?;
                }
            }
            Request::Send { path, mode } => {
                let result = receive_file(&mut reader, &path, mode, roots)?;
                match result {
                    Ok(()) => reply::okay(&mut out)?,
                    Err(e) => {
                        tracing::info!("adb push refused: {e}");
                        reply::fail(&mut out, &e)?;
                    }
                }
            }
            Request::Quit => {
                out.flush()?;
                return Ok(());
            }
        }
        out.flush()?;
    }
}

fn stat_of(m: &std::fs::Metadata) -> Stat {
    Stat {
        mode: m.mode(),
        size: m.size().min(u64::from(u32::MAX)) as u32,
        mtime: m.mtime().clamp(0, i64::from(u32::MAX)) as u32,
    }
}

/// lstat inside the roots; all zeros (adb's "does not exist") otherwise.
fn lstat(raw: &[u8], roots: &[PathBuf]) -> Stat {
    confine(raw, roots)
        .ok()
        .and_then(|p| std::fs::symlink_metadata(p).ok())
        .map(|m| stat_of(&m))
        .unwrap_or_default()
}

/// One DENT per entry, then DONE (an unreadable directory lists as empty, as in adbd).
fn list(out: &mut impl Write, raw: &[u8], roots: &[PathBuf]) -> std::io::Result<()> {
    let dir = confine(raw, roots)
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .filter(|p| {
            roots
                .iter()
                .filter_map(|r| r.canonicalize().ok())
                .any(|r| p.starts_with(r))
        });
    if let Some(entries) = dir.and_then(|d| std::fs::read_dir(d).ok()) {
        for entry in entries.flatten() {
            if let Ok(m) = entry.path().symlink_metadata() {
                reply::dent(out, stat_of(&m), entry.file_name().as_bytes())?;
            }
        }
    }
    reply::list_done(out)
}

/// RECV: the file's bytes as DATA chunks, then DONE.
fn send_file(out: &mut impl Write, raw: &[u8], roots: &[PathBuf]) -> Result<(), String> {
    let path = confine(raw, roots)?;
    let shown = path.display();
    let mut file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{shown}: {e}"))?;
    if !file.metadata().map_err(|e| e.to_string())?.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let mut buf = vec![0u8; MAX_DATA];
    loop {
        let n = file.read(&mut buf).map_err(|e| format!("{shown}: {e}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&Chunk::Data(buf[..n].to_vec()).encode())
            .map_err(|e| e.to_string())?;
    }
    out.write_all(&Chunk::Done { mtime: 0 }.encode())
        .map_err(|e| e.to_string())
}

/// SEND: writes DATA chunks to the file until DONE. The outer error is the stream failing;
/// the inner one a refusal reported with FAIL (the chunks are still drained so the
/// session stays in step, and a partial file is removed).
fn receive_file(
    reader: &mut StreamReader,
    raw: &[u8],
    mode: u32,
    roots: &[PathBuf],
) -> anyhow::Result<Result<(), String>> {
    let opened = confine(raw, roots).and_then(|path| {
        if mode & libc::S_IFMT != libc::S_IFREG && mode & libc::S_IFMT != 0 {
            return Err(format!(
                "{}: only regular files can be pushed",
                path.display()
            ));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode & 0o777)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map(|f| (path.clone(), f))
            .map_err(|e| format!("{}: {e}", path.display()))
    });
    let mut state: Result<(PathBuf, File), String> = opened;
    loop {
        match Chunk::read_from(reader)? {
            Chunk::Data(d) => {
                if let Ok((path, f)) = &mut state {
                    if let Err(e) = f.write_all(&d) {
                        state = Err(format!("{}: {e}", path.display()));
                    }
                }
            }
            Chunk::Done { mtime } => {
                return Ok(match state {
                    Ok((_, f)) => {
                        let _ = f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime.into()));
                        Ok(())
                    }
                    Err(e) => {
                        if let Ok(p) = confine(raw, roots) {
                            let _ = std::fs::remove_file(p);
                        }
                        Err(e)
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confines_paths_to_the_roots() {
        let dir = tempfile_dir();
        let root = dir.join("data");
        std::fs::create_dir_all(root.join("local/tmp")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let roots = vec![root.clone()];
        let ok = |p: &Path| confine(p.as_os_str().as_bytes(), &roots);
        assert_eq!(
            ok(&root.join("local/tmp/x")).unwrap(),
            root.canonicalize().unwrap().join("local/tmp/x")
        );
        assert!(
            ok(&root.join("new/dir/file")).is_ok(),
            "missing parents are fine inside"
        );
        assert!(ok(&root).is_ok());
        assert!(
            ok(&root.join("escape")).is_ok(),
            "the link itself (never followed)"
        );
        assert!(ok(&root.join("escape/passwd"))
            .unwrap_err()
            .contains("outside"));
        assert!(ok(&root.join("../x")).unwrap_err().contains(".."));
        assert!(ok(Path::new("/etc/passwd"))
            .unwrap_err()
            .contains("outside"));
        assert!(confine(b"relative", &roots)
            .unwrap_err()
            .contains("absolute"));
        assert!(confine(b"/", &roots).unwrap_err().contains("outside"));
        assert!(confine(b"/data\0x", &roots).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "adbd-files-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
