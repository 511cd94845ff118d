//! Which files a consumer of VMM-reported paths (the streamer in `serve`, the agent's relay)
//! may open: only those that resolve, symlinks and `..` followed, inside its configured
//! roots. A taken-over VMM or a hostile agent reports any path it likes; without this check
//! `serve` would map or connect to whatever it names.

use std::path::{Path, PathBuf};

use crate::StreamError;

/// The directories a consumer may open paths under, canonical.
#[derive(Debug, Clone, Default)]
pub struct Confinement {
    roots: Vec<PathBuf>,
}

impl Confinement {
    /// Paths under any of `roots` (a root that does not exist admits nothing).
    pub fn new(roots: impl IntoIterator<Item = impl AsRef<Path>>) -> Self {
        Self {
            roots: roots
                .into_iter()
                .filter_map(|r| std::fs::canonicalize(r).ok())
                .collect(),
        }
    }

    /// `path` resolved (symlinks, `..`), if that lies strictly inside a root; otherwise an
    /// error naming `what` and the roots.
    pub fn check(&self, what: &str, path: &Path) -> Result<PathBuf, StreamError> {
        self.resolve(what, path, false)
    }

    /// `path` resolved if it lies inside a root (or, with `root_itself`, is one).
    fn resolve(&self, what: &str, path: &Path, root_itself: bool) -> Result<PathBuf, StreamError> {
        let refused = |why: String| {
            StreamError::Vmm(format!(
                "{what} {} refused: {why} (allowed under {:?})",
                path.display(),
                self.roots
            ))
        };
        let real = std::fs::canonicalize(path).map_err(|e| refused(e.to_string()))?;
        if self
            .roots
            .iter()
            .any(|r| real.starts_with(r) && (root_itself || &real != r))
        {
            Ok(real)
        } else {
            Err(refused(format!("it resolves to {}", real.display())))
        }
    }

    /// Like [`Confinement::check`] for a socket that may not exist yet (a VMM still
    /// starting): then its directory must resolve inside a root and it gets a plain name.
    pub fn check_socket(&self, path: &Path) -> Result<PathBuf, StreamError> {
        if path.exists() {
            return self.check("VMM API socket", path);
        }
        let plain = path
            .file_name()
            .filter(|n| *n != ".." && *n != ".")
            .ok_or_else(|| {
                StreamError::Vmm(format!(
                    "VMM API socket {} has no file name",
                    path.display()
                ))
            })?;
        let dir = path.parent().unwrap_or(Path::new("/"));
        Ok(self
            .resolve("VMM API socket directory", dir, true)?
            .join(plain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_paths_resolving_inside_a_root_pass() {
        let base = std::env::temp_dir().join(format!("confine-{}", std::process::id()));
        let (root, outside) = (base.join("root"), base.join("outside"));
        std::fs::create_dir_all(root.join("phones")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(root.join("phones/fb"), b"x").unwrap();
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), root.join("phones/link")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("dirlink")).unwrap();
        let c = Confinement::new([&root]);
        assert!(c.check("framebuffer", &root.join("phones/fb")).is_ok());
        assert!(c
            .check("framebuffer", &root.join("phones/../phones/fb"))
            .is_ok());
        for bad in [
            root.join("phones/link"),
            root.join("dirlink/secret"),
            root.join("../outside/secret"),
            root.join("phones/missing"),
            root.clone(),
            PathBuf::from("/etc/passwd"),
        ] {
            let e = c.check("framebuffer", &bad).unwrap_err().to_string();
            assert!(e.contains("refused"), "{bad:?}: {e}");
        }
        assert_eq!(
            c.check_socket(&root.join("phones/api.sock")).unwrap(),
            root.canonicalize().unwrap().join("phones/api.sock")
        );
        for bad in [
            root.join("dirlink/api.sock"),
            root.join("phones/link"),
            root.join(".."),
        ] {
            assert!(c.check_socket(&bad).is_err(), "{bad:?}");
        }
        assert!(Confinement::new([base.join("nope")])
            .check("socket", &root.join("phones/fb"))
            .is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
