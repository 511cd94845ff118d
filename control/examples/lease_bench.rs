//! Lease throughput benchmark against a running `cloudphone serve` (driven by
//! `scripts/bench/control`). Sets up a profile with one phone per client (playing the host
//! agent to boot them), one user per client, then every client loops
//! `POST /leases` (persistent, wait=false) → `DELETE /leases/{id}` for `--seconds`.
//! Prints requests/s (both calls counted) and p50/p99 latency.
//!
//! Usage: lease_bench --url http://127.0.0.1:8080 --token <operator token> --clients 16 --seconds 10 --label sqlite

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cloudphone::client::Client;
use serde_json::{json, Value};

struct Args {
    url: String,
    token: String,
    clients: usize,
    seconds: u64,
    label: String,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        url: String::new(),
        token: String::new(),
        clients: 16,
        seconds: 10,
        label: "db".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().with_context(|| format!("{k} needs a value"))?;
        match k.as_str() {
            "--url" => a.url = v,
            "--token" => a.token = v,
            "--clients" => a.clients = v.parse()?,
            "--seconds" => a.seconds = v.parse()?,
            "--label" => a.label = v,
            other => bail!("unknown flag {other}"),
        }
    }
    if a.url.is_empty() || a.token.is_empty() {
        bail!("--url and --token are required");
    }
    Ok(a)
}

async fn setup(a: &Args) -> anyhow::Result<Vec<String>> {
    let admin = Client::new(&a.url, Some(a.token.clone()));
    let tag = cloudphone::ids::random_hex(4);
    let profile = format!("bench-{tag}");
    let _: Value = admin
        .post("/profiles", &json!({"name": profile, "width": 720, "height": 1280, "dpi": 320, "vcpus": 1, "memory_mib": 64, "image": "", "pool_size": a.clients}))
        .await?;
    let enrolled: Value = admin
        .post(
            "/hosts",
            &json!({"name": format!("bench-{tag}"), "state_root": "/var/lib/bench", "vcpus": 4096, "memory_mib": 1 << 24, "max_phones": a.clients}),
        )
        .await?;
    let joined: Value = Client::new(&a.url, None)
        .post(
            "/hosts/join",
            &json!({"join_token": enrolled["join_token"]}),
        )
        .await?;
    let agent = Client::new(&a.url, joined["host_key"].as_str().map(str::to_owned));
    let host: Value = agent
        .post(
            "/hosts/register",
            &json!({"vcpus": 4096, "memory_mib": 1 << 24, "max_phones": a.clients}),
        )
        .await?;
    let hid = host["id"].as_str().context("host id")?.to_owned();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let hb: Value = agent
            .post(&format!("/hosts/{hid}/heartbeat"), &json!({"running": []}))
            .await?;
        let phones = hb["phones"].as_array().context("phones")?;
        let mut ready = 0;
        for p in phones {
            let (id, g) = (
                p["phone"]["id"].as_str().unwrap_or(""),
                &p["phone"]["generation"],
            );
            let path = format!("/hosts/{hid}/phones/{id}/state");
            match p["phone"]["state"].as_str() {
                Some("creating") => {
                    let _: Value = agent
                        .put(&path, &json!({"state": "booting", "generation": g}))
                        .await?;
                    let _: Value = agent
                        .put(&path, &json!({"state": "ready", "generation": g}))
                        .await?;
                }
                Some("ready") => ready += 1,
                _ => {}
            }
        }
        if ready >= a.clients {
            break;
        }
        if Instant::now() > deadline {
            bail!("phones did not come up");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut tokens = Vec::new();
    for i in 0..a.clients {
        let u: Value = admin.post("/users", &json!({"name": format!("bench-{tag}-{i}"), "role": "user", "max_phones": 1, "max_minutes_per_day": 1_000_000})).await?;
        tokens.push(u["token"].as_str().context("token")?.to_owned());
    }
    let _ = profile;
    Ok(tokens.into_iter().map(|t| format!("{t} {tag}")).collect())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let a = args()?;
    let creds = setup(&a).await?;
    let stop = Instant::now() + Duration::from_secs(a.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in creds {
        let url = a.url.clone();
        tasks.push(tokio::spawn(async move {
            let (token, tag) = c.split_once(' ').expect("token and tag");
            let client = Client::new(&url, Some(token.to_owned()));
            let body = json!({"profile": format!("bench-{tag}"), "persistent": true, "wait": false, "duration_s": 600});
            let mut lat = Vec::new();
            while Instant::now() < stop {
                let t = Instant::now();
                let r: Value = client.post("/leases", &body).await?;
                lat.push(t.elapsed());
                let id = r["lease"]["id"].as_str().context("granted lease")?.to_owned();
                let t = Instant::now();
                let _: Value = client.delete(&format!("/leases/{id}")).await?;
                lat.push(t.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct =
        |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)].as_secs_f64() * 1000.0;
    let rps = all.len() as f64 / secs;
    println!(
        "{}: clients {} requests {} in {:.1}s: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
        a.label,
        a.clients,
        all.len(),
        secs,
        rps,
        pct(0.5),
        pct(0.99)
    );
    println!("rps-{} {:.0}", a.label, rps);
    Ok(())
}
