//! The command-line client: `cloudphone login|profiles|phones|lease|release|queue|hosts|users`.
//! Readable tables by default, `--json` for scripts. Credentials come from `--url`/`--token`,
//! the environment (CLOUDPHONE_URL, CLOUDPHONE_TOKEN) or the file `login` saves.

pub mod client;
pub mod table;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::leases::AcquireResponse;
use crate::api::users::{NewToken, UserWithToken};
use crate::model::{Host, Lease, Phone, Profile, QueueEntry, User};
use client::Client;

/// Connection options shared by client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// Control service URL.
    #[arg(long, env = "CLOUDPHONE_URL", global = true)]
    pub url: Option<String>,
    /// API token.
    #[arg(long, env = "CLOUDPHONE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Client subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Check a token against a server and save both for later commands.
    Login,
    /// Device profiles (lists them without a subcommand).
    Profiles {
        #[command(subcommand)]
        cmd: Option<ProfilesCmd>,
    },
    /// Your phones (operators: all).
    Phones {
        /// Show one phone.
        id: Option<String>,
    },
    /// Ask for a phone; waits in the queue (with progress) unless --no-wait.
    Lease {
        #[arg(long)]
        profile: String,
        #[arg(long, default_value_t = 3600)]
        duration_s: u64,
        #[arg(long)]
        persistent: bool,
        #[arg(long)]
        no_wait: bool,
    },
    /// Release a lease.
    Release { lease_id: String },
    /// Waiting lease requests (yours; operators: all).
    Queue,
    /// Hosts (operators).
    Hosts,
    /// Users (operators) and tokens (lists them without a subcommand).
    Users {
        #[command(subcommand)]
        cmd: Option<UsersCmd>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProfilesCmd {
    List,
    Create {
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 720)]
        width: u32,
        #[arg(long, default_value_t = 1280)]
        height: u32,
        #[arg(long, default_value_t = 320)]
        dpi: u32,
        #[arg(long, default_value_t = 2)]
        vcpus: u32,
        #[arg(long, default_value_t = 2048)]
        memory_mib: u32,
        #[arg(long, default_value = "")]
        image: String,
        #[arg(long, default_value_t = 0)]
        pool_size: u32,
    },
    /// Resize a profile's warm pool.
    Pool {
        profile: String,
        size: u32,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsersCmd {
    List,
    /// Create a user; prints its token.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "user")]
        role: String,
        /// Password for web login (read from CLOUDPHONE_NEW_PASSWORD if set).
        #[arg(long, env = "CLOUDPHONE_NEW_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        #[arg(long)]
        max_phones: Option<u32>,
        #[arg(long)]
        max_minutes_per_day: Option<u32>,
    },
    /// Mint another token for a user id (yourself: `me`).
    Token {
        user_id: String,
    },
}

#[derive(Serialize, Deserialize, Default)]
struct Saved {
    url: Option<String>,
    token: Option<String>,
}

fn config_path() -> PathBuf {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cloudphone").join("client.json")
}

fn load_saved() -> Saved {
    std::fs::read(config_path())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

fn save(s: &Saved) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = config_path();
    std::fs::create_dir_all(p.parent().expect("has parent"))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&p)?;
    f.write_all(&serde_json::to_vec_pretty(s)?)?;
    println!("saved credentials to {}", p.display());
    Ok(())
}

fn ms(v: i64) -> String {
    let d = v - crate::now_ms();
    if d >= 0 {
        format!("in {}s", d / 1000)
    } else {
        format!("{}s ago", -d / 1000)
    }
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Prints `v` as JSON or as a table built by `rows`.
fn show<T: Serialize>(
    json_out: bool,
    v: &[T],
    headers: &[&str],
    row: impl Fn(&T) -> Vec<String>,
) -> anyhow::Result<()> {
    if json_out {
        println!("{}", serde_json::to_string_pretty(v)?);
    } else {
        print!(
            "{}",
            table::render(headers, &v.iter().map(row).collect::<Vec<_>>())
        );
    }
    Ok(())
}

fn lease_row(l: &Lease) -> Vec<String> {
    vec![
        l.id.clone(),
        l.phone_id.clone(),
        l.state.as_str().into(),
        ms(l.expires_ms),
        l.persistent.to_string(),
    ]
}
const LEASE_HEADERS: &[&str] = &["lease", "phone", "state", "expires", "persistent"];

/// Runs a client command.
pub async fn run(opts: ClientOptions, cmd: ClientCommand) -> anyhow::Result<()> {
    let saved = load_saved();
    let url = opts
        .url
        .clone()
        .or(saved.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = opts.token.clone().or(saved.token);
    let c = Client::new(&url, token.clone());
    let j = opts.json;
    match cmd {
        ClientCommand::Login => {
            let me: User = c.get("/auth/whoami").await.context("checking the token")?;
            println!("logged in to {url} as {} ({})", me.name, me.role.as_str());
            save(&Saved {
                url: Some(url),
                token,
            })?;
        }
        ClientCommand::Profiles {
            cmd: None | Some(ProfilesCmd::List),
        } => {
            let v: Vec<Profile> = c.get("/profiles").await?;
            show(
                j,
                &v,
                &["name", "size", "dpi", "vcpus", "memory", "image", "pool"],
                |p| {
                    vec![
                        p.name.clone(),
                        format!("{}x{}", p.width, p.height),
                        p.dpi.to_string(),
                        p.vcpus.to_string(),
                        format!("{} MiB", p.memory_mib),
                        p.image.clone(),
                        p.pool_size.to_string(),
                    ]
                },
            )?;
        }
        ClientCommand::Profiles {
            cmd:
                Some(ProfilesCmd::Create {
                    name,
                    width,
                    height,
                    dpi,
                    vcpus,
                    memory_mib,
                    image,
                    pool_size,
                }),
        } => {
            let body = json!({"name": name, "width": width, "height": height, "dpi": dpi, "vcpus": vcpus,
                "memory_mib": memory_mib, "image": image, "pool_size": pool_size});
            let p: Profile = c.post("/profiles", &body).await?;
            show(j, &[p], &["id", "name"], |p| {
                vec![p.id.clone(), p.name.clone()]
            })?;
        }
        ClientCommand::Profiles {
            cmd: Some(ProfilesCmd::Pool { profile, size }),
        } => {
            let p: Profile = c
                .patch(&format!("/profiles/{profile}"), &json!({"pool_size": size}))
                .await?;
            show(j, &[p], &["name", "pool"], |p| {
                vec![p.name.clone(), p.pool_size.to_string()]
            })?;
        }
        ClientCommand::Phones { id } => {
            let v: Vec<Phone> = match id {
                Some(id) => vec![c.get(&format!("/phones/{id}")).await?],
                None => c.get("/phones").await?,
            };
            show(j, &v, &["id", "state", "host", "profile", "socket"], |p| {
                vec![
                    p.id.clone(),
                    p.state.as_str().into(),
                    p.host_id.clone(),
                    p.profile_id.clone(),
                    opt(&p.api_socket),
                ]
            })?;
        }
        ClientCommand::Lease {
            profile,
            duration_s,
            persistent,
            no_wait,
        } => {
            let body = json!({"profile": profile, "duration_s": duration_s, "persistent": persistent, "wait": !no_wait});
            let lease = match c.post::<AcquireResponse>("/leases", &body).await? {
                AcquireResponse::Granted { lease } => lease,
                AcquireResponse::Queued { queue } => wait_in_queue(&c, queue, j).await?,
            };
            show(j, &[lease], LEASE_HEADERS, lease_row)?;
        }
        ClientCommand::Release { lease_id } => {
            let l: Lease = c.delete(&format!("/leases/{lease_id}")).await?;
            show(j, &[l], LEASE_HEADERS, lease_row)?;
        }
        ClientCommand::Queue => {
            let v: Vec<QueueEntry> = c.get("/queue").await?;
            show(j, &v, &["id", "position", "eta", "profile", "user"], |e| {
                vec![
                    e.id.clone(),
                    e.position.map_or("-".into(), |p| p.to_string()),
                    e.eta_ms
                        .map_or("unknown".into(), |m| format!("{}s", m / 1000)),
                    e.profile_id.clone(),
                    e.user_id.clone(),
                ]
            })?;
        }
        ClientCommand::Hosts => {
            let v: Vec<Host> = c.get("/hosts").await?;
            show(
                j,
                &v,
                &[
                    "id",
                    "name",
                    "state",
                    "vcpus",
                    "memory",
                    "max phones",
                    "heartbeat",
                ],
                |h| {
                    vec![
                        h.id.clone(),
                        h.name.clone(),
                        h.state.clone(),
                        h.vcpus.to_string(),
                        format!("{} MiB", h.memory_mib),
                        h.max_phones.to_string(),
                        ms(h.last_heartbeat_ms),
                    ]
                },
            )?;
        }
        ClientCommand::Users {
            cmd: None | Some(UsersCmd::List),
        } => {
            let v: Vec<User> = c.get("/users").await?;
            show(
                j,
                &v,
                &["id", "name", "role", "max phones", "minutes/day"],
                |u| {
                    vec![
                        u.id.clone(),
                        u.name.clone(),
                        u.role.as_str().into(),
                        u.max_phones.to_string(),
                        u.max_minutes_per_day.to_string(),
                    ]
                },
            )?;
        }
        ClientCommand::Users {
            cmd:
                Some(UsersCmd::Add {
                    name,
                    role,
                    password,
                    max_phones,
                    max_minutes_per_day,
                }),
        } => {
            let body = json!({"name": name, "role": role, "password": password, "max_phones": max_phones,
                "max_minutes_per_day": max_minutes_per_day});
            let u: UserWithToken = c.post("/users", &body).await?;
            if j {
                println!("{}", serde_json::to_string_pretty(&u)?);
            } else {
                println!(
                    "created {} {} ({})\ntoken: {}",
                    u.user.id,
                    u.user.name,
                    u.user.role.as_str(),
                    u.token
                );
            }
        }
        ClientCommand::Users {
            cmd: Some(UsersCmd::Token { user_id }),
        } => {
            let id = if user_id == "me" {
                c.get::<User>("/users/me").await?.id
            } else {
                user_id
            };
            let t: NewToken = c.post(&format!("/users/{id}/tokens"), &json!(null)).await?;
            println!("token: {}", t.token);
        }
    }
    Ok(())
}

/// Polls a queue entry, showing position and ETA on stderr, until it is granted.
async fn wait_in_queue(c: &Client, mut e: QueueEntry, json_out: bool) -> anyhow::Result<Lease> {
    loop {
        match e.state.as_str() {
            "granted" => {
                let id = e.lease_id.context("granted entry without lease id")?;
                if !json_out {
                    eprintln!();
                }
                return c.get(&format!("/leases/{id}")).await;
            }
            "waiting" => {
                if !json_out {
                    let eta = e
                        .eta_ms
                        .map_or("unknown".into(), |m| format!("~{}s", m / 1000));
                    eprint!(
                        "\rqueued {}: position {} , ETA {eta}   ",
                        e.id,
                        e.position.unwrap_or(0)
                    );
                }
            }
            other => bail!("queue entry {} ended as {other}", e.id),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        e = c.get(&format!("/queue/{}", e.id)).await?;
    }
}
