//! A throwaway PostgreSQL cluster for tests: `CLOUDPHONE_TEST_POSTGRES` when set, else one
//! started from Debian's `postgresql` package on a Unix socket in a temp dir (as the
//! `postgres` user when we are root) and removed when the test process exits.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

static CLUSTER: OnceLock<String> = OnceLock::new();
static DIR: OnceLock<PathBuf> = OnceLock::new();

fn pg_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is not installed: `apt-get install postgresql`, or set CLOUDPHONE_TEST_POSTGRES")
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("no /usr/lib/postgresql/*/bin/initdb: `apt-get install postgresql`")
}

fn as_postgres(cmd: &str, args: &[&str]) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", cmd]).args(args);
        c
    } else {
        let mut c = Command::new(cmd);
        c.args(args);
        c
    }
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

extern "C" fn stop_cluster() {
    if let Some(dir) = DIR.get() {
        let ctl = pg_bin().join("pg_ctl").display().to_string();
        let data = dir.join("data").display().to_string();
        let _ = as_postgres(&ctl, &["-D", &data, "-m", "immediate", "stop"]).output();
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn start() -> String {
    if let Ok(url) = std::env::var("CLOUDPHONE_TEST_POSTGRES") {
        return url;
    }
    let bin = pg_bin();
    let dir = PathBuf::from(format!(
        "/tmp/cloudphone-pg-{}-{}",
        std::process::id(),
        cloudphone::ids::random_hex(4)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        run(
            {
                let mut c = Command::new("chown");
                c.args(["postgres:postgres", &dir.display().to_string()]);
                c
            },
            "chown pg dir",
        );
    }
    DIR.set(dir.clone()).unwrap();
    // SAFETY: registering a plain extern "C" fn with no captured state.
    unsafe { libc::atexit(stop_cluster) };
    let data = dir.join("data").display().to_string();
    run(
        as_postgres(
            &bin.join("initdb").display().to_string(),
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        ),
        "initdb",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let opts = format!(
        "-k {} -c listen_addresses='' -p {port} -c fsync=off -c max_connections=300",
        dir.display()
    );
    let log = dir.join("log").display().to_string();
    run(
        as_postgres(
            &bin.join("pg_ctl").display().to_string(),
            &["-D", &data, "-l", &log, "-o", &opts, "-w", "start"],
        ),
        "pg_ctl start",
    );
    format!(
        "postgres:///postgres?host={}&port={port}&user=postgres",
        dir.display()
    )
}

/// URL of a fresh, empty database in the test cluster.
pub async fn fresh_database() -> String {
    let admin = CLUSTER.get_or_init(start).clone();
    let name = format!("t_{}", cloudphone::ids::random_hex(6));
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .expect("connect to test postgres");
    let h = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create test database");
    drop(client);
    let _ = h.await;
    let (base, query) = admin
        .split_once('?')
        .map_or((admin.as_str(), None), |(b, q)| (b, Some(q)));
    let (prefix, _) = base.rsplit_once('/').expect("postgres URL has a path");
    match query {
        Some(q) => format!("{prefix}/{name}?{q}"),
        None => format!("{prefix}/{name}"),
    }
}
