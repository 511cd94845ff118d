//! Each phone's log files (the VMM's own log, the serial console, the virtio consoles) are
//! written by a guest-influenced process, so they are capped: a file past the cap is rotated
//! "copy-truncate" style — copied to `NAME.1` (replacing the previous one), then truncated in
//! place. Every writer opens these files `O_APPEND`, so it goes on at the new end, and a
//! phone's logs never take more than about twice the cap each.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

/// The files in a phone's directory that are capped.
pub const PHONE_LOGS: [&str; 4] = ["vmm.log", "serial.log", "console.log", "report.log"];

/// Rotate every file of [`PHONE_LOGS`] in `dir` that is larger than `cap` bytes; returns the
/// names rotated. A missing file is not an error (not every phone has every log).
pub fn cap_logs(dir: &Path, cap: u64) -> io::Result<Vec<&'static str>> {
    let mut rotated = Vec::new();
    for name in PHONE_LOGS {
        let path = dir.join(name);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if len <= cap {
            continue;
        }
        std::fs::copy(&path, dir.join(format!("{name}.1")))?;
        OpenOptions::new().write(true).open(&path)?.set_len(0)?;
        rotated.push(name);
    }
    Ok(rotated)
}

/// Open `path` for a child's output: created, emptied, and `O_APPEND` so a rotation's
/// truncation moves the writer back to the start instead of leaving a hole.
pub fn open_log(path: &Path) -> io::Result<std::fs::File> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    file.set_len(0)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn big_logs_rotate_and_appending_writers_go_on_at_the_start() {
        let dir = std::env::temp_dir().join(format!("cp-logcap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut vmm = open_log(&dir.join("vmm.log")).unwrap();
        vmm.write_all(&[b'a'; 100]).unwrap();
        std::fs::write(dir.join("serial.log"), [b's'; 10]).unwrap();

        assert_eq!(cap_logs(&dir, 64).unwrap(), vec!["vmm.log"]);
        assert_eq!(
            std::fs::read(dir.join("vmm.log.1")).unwrap(),
            vec![b'a'; 100]
        );
        vmm.write_all(b"after").unwrap();
        // No hole of 100 zero bytes: the append-mode writer continued at offset 0.
        assert_eq!(std::fs::read(dir.join("vmm.log")).unwrap(), b"after");
        assert_eq!(
            std::fs::read(dir.join("serial.log")).unwrap(),
            vec![b's'; 10]
        );

        // A second rotation replaces the first copy; the total stays bounded.
        vmm.write_all(&[b'b'; 100]).unwrap();
        assert_eq!(cap_logs(&dir, 64).unwrap(), vec!["vmm.log"]);
        let kept = std::fs::read(dir.join("vmm.log.1")).unwrap();
        assert!(kept.starts_with(b"after") && kept.len() == 105);
        assert!(cap_logs(&dir, 64).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
