//! `serve --tls-cert/--tls-key` with a CA and a server certificate made at test time by the
//! `openssl` CLI: the CLI over https with `--ca-file` works, without it (or with another CA)
//! it fails saying to pass `--ca-file`, and a plain-HTTP client gets nothing from the port.

mod common;

use std::path::Path;
use std::process::Command;

use common::pki::Pki;
use common::{bin, Kind, Server};

/// `serve` over TLS with the PKI's server certificate.
async fn tls_server(pki: &Pki) -> Server {
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let s = Server::start(Kind::Sqlite, &flags).await;
    assert!(s.url.starts_with("https://"), "{}", s.url);
    s
}
/// Runs the CLI `users list` against `s`; returns (success, stdout + stderr).
fn cli_users(s: &Server, ca_file: Option<&Path>) -> (bool, String) {
    let mut c = Command::new(bin());
    c.args(["--url", &s.url, "--token", &s.admin, "users", "list"])
        .env_remove("CLOUDPHONE_CA_FILE")
        .env("HOME", s.data_dir());
    if let Some(ca) = ca_file {
        c.arg("--ca-file").arg(ca);
    }
    let out = c.output().expect("run the CLI");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_speaks_https_with_the_ca_file_only() {
    let pki = Pki::new();
    let s = tls_server(&pki).await;
    let (ok, out) = cli_users(&s, Some(&pki.path("ca.pem")));
    assert!(ok, "CLI over https with --ca-file: {out}");
    assert!(out.contains("admin"), "{out}");
    for ca in [None, Some(pki.path("other-ca.pem"))] {
        let (ok, out) = cli_users(&s, ca.as_deref());
        assert!(!ok, "an untrusted certificate must fail (CA {ca:?}): {out}");
        assert!(
            out.contains("--ca-file"),
            "the error says what to do: {out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_gets_nothing() {
    let pki = Pki::new();
    let s = tls_server(&pki).await;
    let plain = s.url.replace("https://", "http://");
    let res = reqwest::Client::new()
        .get(format!("{plain}/healthz"))
        .send()
        .await;
    assert!(res.is_err(), "plain HTTP answered on the TLS port: {res:?}");
    // The failed handshake did not hurt the listener: https still works.
    let client = cloudphone::client::Client::with_ca_file(
        &s.url,
        Some(s.admin.clone()),
        Some(&pki.path("ca.pem")),
    )
    .unwrap();
    let me: serde_json::Value = client.get("/auth/whoami").await.unwrap();
    assert_eq!(me["name"], "admin");
}

/// Kills the process on drop (a test that fails must not leave an agent running).
struct Running(std::process::Child);
impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_registers_over_https_with_the_ca_file() {
    let pki = Pki::new();
    let s = tls_server(&pki).await;
    let ca = pki.path("ca.pem");
    let admin =
        cloudphone::client::Client::with_ca_file(&s.url, Some(s.admin.clone()), Some(&ca)).unwrap();
    let state = common::TempDir::new("tls-agent");
    let root = std::fs::canonicalize(&state.0).unwrap();
    let enrolled: serde_json::Value = admin
        .post(
            "/hosts",
            &serde_json::json!({"name": "h-tls", "state_root": root.display().to_string(),
                "vcpus": 4096, "memory_mib": 64 << 20, "max_phones": 16}),
        )
        .await
        .unwrap();
    let _agent = Running(
        Command::new(bin())
            .args([
                "agent",
                "--control",
                &s.url,
                "--kernel",
                "/dev/null",
                "--vmm",
                "/bin/false",
            ])
            .args(["--join-token", enrolled["join_token"].as_str().unwrap()])
            .arg("--state-dir")
            .arg(&state.0)
            .arg("--ca-file")
            .arg(&ca)
            .env("CLOUDPHONE_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("start the agent"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let hosts: serde_json::Value = admin.get("/hosts").await.unwrap();
        // Enrolled hosts claim nothing until their agent registers (over https).
        if hosts[0]["max_phones"] == 16 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent never registered over https: {hosts}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Bad TLS files stop `serve` at start with an error naming what is wrong.
#[test]
fn serve_refuses_bad_tls_files_clearly() {
    let pki = Pki::new();
    let data = common::TempDir::new("tls-bad");
    let (cert, key, other) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("other-ca.pem"),
    );
    let missing = pki.path("missing.pem");
    for (cert, key, says) in [
        (&missing, &key, "missing.pem"),
        (&key, &key, "no CERTIFICATE"),
        (&other, &key, "do not belong together"),
        (&cert, &cert, "private key"),
    ] {
        let out = Command::new(bin())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data.0)
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "serve started with {cert:?} {key:?}");
        assert!(err.contains(says), "{cert:?} {key:?}: {err}");
    }
}
