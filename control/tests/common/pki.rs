//! A throwaway PKI made with the `openssl` CLI: two CAs and a server certificate for
//! 127.0.0.1/localhost signed by the first (`ca.pem`, `other-ca.pem`, `server.pem`,
//! `server.key`).

use std::path::{Path, PathBuf};
use std::process::Command;

use super::TempDir;

/// A throwaway PKI: a CA and a server certificate for 127.0.0.1/localhost signed by it.
pub struct Pki {
    dir: TempDir,
}

/// Runs the openssl CLI in `dir`, failing the test with its stderr.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI is installed (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    /// Makes both CAs and the server certificate in a fresh temp dir.
    pub fn new() -> Pki {
        let dir = TempDir::new("pki");
        let d = dir.0.as_path();
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let (key, pem, subj) = (
                format!("{ca}.key"),
                format!("{ca}.pem"),
                format!("/CN=cloudphone test {ca}"),
            );
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend(["-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
            openssl(d, &args);
        }
        let mut args = vec!["req"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        openssl(d, &args);
        std::fs::write(
            d.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.pem",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        );
        Pki { dir }
    }

    /// One of the PKI's files, by name.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.0.join(name)
    }
}
