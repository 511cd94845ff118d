//! The command-line client: `cloudphone login|profiles|phones|lease|release|adb|queue|keys|hosts|users`.
//! Readable tables by default, `--json` for scripts. Credentials come from `--url`/`--token`,
//! the environment (CLOUDPHONE_URL, CLOUDPHONE_TOKEN) or the file `login` saves.

pub mod adb;
pub mod table;

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::client::Client;
use crate::model::{AdbKey, Host, Lease, Phone, Profile, QueueEntry, User};
use crate::scheduler::OvercommitPolicy;
use crate::wire::hosts::{EnrolHost, Enrolled};
use crate::wire::keys::AddKey;
use crate::wire::leases::{AcquireRequest, AcquireResponse};
use crate::wire::profiles::{CreateProfile, UpdateProfile};
use crate::wire::users::{CreateUser, NewToken, UserWithToken};

/// Connection options shared by client commands.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientOptions {
    /// Control service URL.
    #[arg(long, env = "CLOUDPHONE_URL", global = true)]
    pub url: Option<String>,
    /// API token.
    #[arg(long, env = "CLOUDPHONE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA certificate(s) to trust for an https URL (exactly these; no bundled roots).
    #[arg(long, env = "CLOUDPHONE_CA_FILE", global = true)]
    pub ca_file: Option<PathBuf>,
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
    #[command(args_conflicts_with_subcommands = true)]
    Phones {
        /// Show one phone.
        id: Option<String>,
        #[command(subcommand)]
        cmd: Option<PhonesCmd>,
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
    /// Tunnel adb to a leased phone: prints `adb connect 127.0.0.1:PORT` and relays until
    /// the lease ends.
    Adb {
        lease_id: String,
        /// Local port (0: any free one).
        #[arg(long, default_value_t = 0)]
        port: u16,
    },
    /// Waiting lease requests (yours; operators: all).
    Queue,
    /// Hosts (operators; lists them without a subcommand).
    Hosts {
        #[command(subcommand)]
        cmd: Option<HostsCmd>,
    },
    /// Your adb public keys (lists them without a subcommand): phones you lease accept them.
    Keys {
        #[command(subcommand)]
        cmd: Option<KeysCmd>,
    },
    /// Users (operators) and tokens (lists them without a subcommand).
    Users {
        #[command(subcommand)]
        cmd: Option<UsersCmd>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ProfilesCmd {
    List,
    /// Create a profile.
    Create(CreateProfile),
    /// Resize a profile's warm pool.
    Pool {
        profile: String,
        size: u32,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum PhonesCmd {
    /// Stop a phone and delete its disk (a persistent phone's data too): the one explicit,
    /// audited way to discard a phone's data.
    Wipe { id: String },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum HostsCmd {
    List,
    /// Enrol a host (or enrol it again to replace its key); prints its one-time join token
    /// for the agent's --join-token.
    Enrol(EnrolHost),
    /// Set how far the scheduler may overcommit a host (by vCPUs and nominal memory), and
    /// the memory it keeps free; phones are otherwise counted by measured use.
    Policy {
        /// The host's id.
        host_id: String,
        /// Phone vCPUs per 100 host CPUs (500: five per core).
        #[arg(long, default_value_t = OvercommitPolicy::default().vcpu_pct)]
        vcpu_pct: i64,
        /// Nominal phone memory per 100 MiB of host memory.
        #[arg(long, default_value_t = OvercommitPolicy::default().memory_pct)]
        memory_pct: i64,
        /// Available memory below which the host takes no phone and reclaims from idle ones.
        #[arg(long, default_value_t = OvercommitPolicy::default().reserve_mib)]
        reserve_mib: i64,
        /// Measured CPU busy percent above which the host takes no phone (100: never).
        #[arg(long, default_value_t = OvercommitPolicy::default().cpu_busy_limit_pct)]
        cpu_busy_limit_pct: i64,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCmd {
    List,
    /// Register an adb public key file (e.g. ~/.android/adbkey.pub).
    Add {
        file: PathBuf,
    },
    /// Remove a key by id.
    Rm {
        id: String,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum UsersCmd {
    List,
    /// Create a user; prints its token.
    Add(CreateUser),
    /// Mint another token for a user id (yourself: `me`).
    Token {
        user_id: String,
    },
    /// Change a password (yourself: `me`, which needs the current one). Every other token
    /// and web session of that user ends.
    Password {
        /// User id, or `me`.
        #[arg(default_value = "me")]
        user_id: String,
        /// The new password (read from CLOUDPHONE_NEW_PASSWORD if set).
        #[arg(long, env = "CLOUDPHONE_NEW_PASSWORD", hide_env_values = true)]
        new: String,
        /// Your current password (read from CLOUDPHONE_CURRENT_PASSWORD if set).
        #[arg(long, env = "CLOUDPHONE_CURRENT_PASSWORD", hide_env_values = true)]
        current: Option<String>,
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

/// A connected client plus the output mode: what every command needs.
struct Session {
    client: Client,
    json: bool,
}

/// Runs a client command.
pub async fn run(opts: ClientOptions, cmd: ClientCommand) -> anyhow::Result<()> {
    let saved = load_saved();
    let url = opts
        .url
        .clone()
        .or(saved.url)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let token = opts.token.clone().or(saved.token);
    let s = Session {
        client: Client::with_ca_file(&url, token.clone(), opts.ca_file.as_deref())?,
        json: opts.json,
    };
    match cmd {
        ClientCommand::Login => login(&s, url, token).await,
        ClientCommand::Profiles { cmd } => match cmd {
            None | Some(ProfilesCmd::List) => list_profiles(&s).await,
            Some(ProfilesCmd::Create(body)) => create_profile(&s, &body).await,
            Some(ProfilesCmd::Pool { profile, size }) => resize_pool(&s, &profile, size).await,
        },
        ClientCommand::Phones {
            cmd: Some(PhonesCmd::Wipe { id }),
            ..
        } => wipe_phone(&s, &id).await,
        ClientCommand::Phones { id, cmd: None } => phones(&s, id).await,
        ClientCommand::Lease {
            profile,
            duration_s,
            persistent,
            no_wait,
        } => {
            let body = AcquireRequest {
                profile,
                duration_s: Some(duration_s),
                persistent,
                wait: Some(!no_wait),
            };
            lease(&s, &body).await
        }
        ClientCommand::Release { lease_id } => release(&s, &lease_id).await,
        ClientCommand::Adb { lease_id, port } => {
            let target = adb::Target {
                url: url.clone(),
                token: token
                    .clone()
                    .context("adb needs a token (--token or login)")?,
                tls: opts
                    .ca_file
                    .as_deref()
                    .map(crate::tls::client_config)
                    .transpose()?,
                lease_id,
            };
            adb::run(&s.client, target, port).await
        }
        ClientCommand::Queue => queue(&s).await,
        ClientCommand::Hosts { cmd } => match cmd {
            None | Some(HostsCmd::List) => hosts(&s).await,
            Some(HostsCmd::Enrol(body)) => enrol_host(&s, &body).await,
            Some(HostsCmd::Policy {
                host_id,
                vcpu_pct,
                memory_pct,
                reserve_mib,
                cpu_busy_limit_pct,
            }) => {
                let policy = OvercommitPolicy {
                    vcpu_pct,
                    memory_pct,
                    reserve_mib,
                    cpu_busy_limit_pct,
                };
                let h: Host = s
                    .client
                    .put(&format!("/hosts/{host_id}/policy"), &policy)
                    .await?;
                show_hosts(&s, &[h])
            }
        },
        ClientCommand::Keys { cmd } => match cmd {
            None | Some(KeysCmd::List) => {
                let keys: Vec<AdbKey> = s.client.get("/keys").await?;
                show_keys(&s, &keys)
            }
            Some(KeysCmd::Add { file }) => add_key(&s, &file).await,
            Some(KeysCmd::Rm { id }) => {
                let k: AdbKey = s.client.delete(&format!("/keys/{id}")).await?;
                show_keys(&s, &[k])
            }
        },
        ClientCommand::Users { cmd } => match cmd {
            None | Some(UsersCmd::List) => list_users(&s).await,
            Some(UsersCmd::Add(body)) => add_user(&s, &body).await,
            Some(UsersCmd::Token { user_id }) => new_token(&s, user_id).await,
            Some(UsersCmd::Password {
                user_id,
                new,
                current,
            }) => change_password(&s, user_id, new, current).await,
        },
    }
}

/// `login`: check the token, then save URL and token for later commands.
async fn login(s: &Session, url: String, token: Option<String>) -> anyhow::Result<()> {
    let me: User = s
        .client
        .get("/auth/whoami")
        .await
        .context("checking the token")?;
    println!("logged in to {url} as {} ({})", me.name, me.role.as_str());
    save(&Saved {
        url: Some(url),
        token,
    })
}

/// `keys add FILE`: the file holds `BASE64 [comment]` as adb writes adbkey.pub.
async fn add_key(s: &Session, file: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading the adb public key {}", file.display()))?;
    let text = text.trim();
    let (key, comment) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let body = AddKey {
        key: key.to_owned(),
        comment: comment.trim().to_owned(),
    };
    let k: AdbKey = s.client.post("/keys", &body).await?;
    show_keys(s, &[k])
}

fn show_keys(s: &Session, keys: &[AdbKey]) -> anyhow::Result<()> {
    show(s.json, keys, &["id", "fingerprint", "comment"], |k| {
        vec![k.id.clone(), k.fingerprint.clone(), k.comment.clone()]
    })
}

/// `profiles [list]`.
async fn list_profiles(s: &Session) -> anyhow::Result<()> {
    let v: Vec<Profile> = s.client.get("/profiles").await?;
    show(
        s.json,
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
    )
}

/// `profiles create`.
async fn create_profile(s: &Session, body: &CreateProfile) -> anyhow::Result<()> {
    let p: Profile = s.client.post("/profiles", body).await?;
    show(s.json, &[p], &["id", "name"], |p| {
        vec![p.id.clone(), p.name.clone()]
    })
}

/// `profiles pool PROFILE SIZE`.
async fn resize_pool(s: &Session, profile: &str, size: u32) -> anyhow::Result<()> {
    let body = UpdateProfile { pool_size: size };
    let p: Profile = s
        .client
        .patch(&format!("/profiles/{profile}"), &body)
        .await?;
    show(s.json, &[p], &["name", "pool"], |p| {
        vec![p.name.clone(), p.pool_size.to_string()]
    })
}

/// `phones [ID]`.
async fn phones(s: &Session, id: Option<String>) -> anyhow::Result<()> {
    let v: Vec<Phone> = match id {
        Some(id) => vec![s.client.get(&format!("/phones/{id}")).await?],
        None => s.client.get("/phones").await?,
    };
    show(
        s.json,
        &v,
        &["id", "state", "host", "profile", "socket"],
        |p| {
            vec![
                p.id.clone(),
                p.state.as_str().into(),
                p.host_id.clone(),
                p.profile_id.clone(),
                opt(&p.api_socket),
            ]
        },
    )
}

/// `lease`: granted at once, or (unless `--no-wait`) after waiting in the queue.
async fn lease(s: &Session, body: &AcquireRequest) -> anyhow::Result<()> {
    let lease = match s.client.post::<AcquireResponse>("/leases", body).await? {
        AcquireResponse::Granted { lease } => lease,
        AcquireResponse::Queued { queue } => wait_in_queue(&s.client, queue, s.json).await?,
    };
    show(s.json, &[lease], LEASE_HEADERS, lease_row)
}

/// `release LEASE`.
async fn release(s: &Session, lease_id: &str) -> anyhow::Result<()> {
    let l: Lease = s.client.delete(&format!("/leases/{lease_id}")).await?;
    show(s.json, &[l], LEASE_HEADERS, lease_row)
}

/// `queue`.
async fn queue(s: &Session) -> anyhow::Result<()> {
    let v: Vec<QueueEntry> = s.client.get("/queue").await?;
    show(
        s.json,
        &v,
        &["id", "position", "eta", "profile", "user"],
        |e| {
            vec![
                e.id.clone(),
                e.position.map_or("-".into(), |p| p.to_string()),
                e.eta_ms
                    .map_or("unknown".into(), |m| format!("{}s", m / 1000)),
                e.profile_id.clone(),
                e.user_id.clone(),
            ]
        },
    )
}

/// `phones wipe ID`.
async fn wipe_phone(s: &Session, id: &str) -> anyhow::Result<()> {
    let p: Phone = s.client.delete(&format!("/phones/{id}")).await?;
    println!(
        "phone {} {}: its disk is deleted once its host stops it",
        p.id,
        p.state.as_str()
    );
    Ok(())
}

/// `hosts enrol NAME ...`.
async fn enrol_host(s: &Session, body: &EnrolHost) -> anyhow::Result<()> {
    let e: Enrolled = s.client.post("/hosts", body).await?;
    if s.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        println!(
            "enrolled {} {} (state root {})\njoin token (works once): {}",
            e.host.id, e.host.name, e.host.state_root, e.join_token
        );
    }
    Ok(())
}

/// `hosts`.
async fn hosts(s: &Session) -> anyhow::Result<()> {
    let v: Vec<Host> = s.client.get("/hosts").await?;
    show_hosts(s, &v)
}

/// Hosts as a table: capacity, what their phones are promised (committed) against what they
/// use (measured), and the overcommit policy.
fn show_hosts(s: &Session, v: &[Host]) -> anyhow::Result<()> {
    let headers = [
        "id",
        "name",
        "state",
        "phones",
        "vcpus committed",
        "memory committed",
        "memory used",
        "available",
        "cpu busy",
        "policy",
        "heartbeat",
    ];
    show(s.json, v, &headers, |h| {
        let l = &h.load;
        vec![
            h.id.clone(),
            h.name.clone(),
            h.state.clone(),
            format!("{}/{}", l.phones, h.max_phones),
            format!("{}/{}", l.committed_vcpus, h.vcpus),
            format!("{}/{} MiB", l.committed_memory_mib, h.memory_mib),
            format!("{} MiB", l.used_memory_mib),
            h.mem_available_mib
                .map_or("-".into(), |m| format!("{m} MiB")),
            h.cpu_busy_pct.map_or("-".into(), |c| format!("{c}%")),
            format!(
                "vcpu {}%, mem {}%, reserve {} MiB, cpu busy <= {}%",
                h.policy.vcpu_pct,
                h.policy.memory_pct,
                h.policy.reserve_mib,
                h.policy.cpu_busy_limit_pct
            ),
            ms(h.last_heartbeat_ms),
        ]
    })
}

/// `users [list]`.
async fn list_users(s: &Session) -> anyhow::Result<()> {
    let v: Vec<User> = s.client.get("/users").await?;
    let headers = ["id", "name", "role", "max phones", "minutes/day"];
    show(s.json, &v, &headers, |u| {
        vec![
            u.id.clone(),
            u.name.clone(),
            u.role.as_str().into(),
            u.max_phones.to_string(),
            u.max_minutes_per_day.to_string(),
        ]
    })
}

/// `users add`: prints the new user's token (shown only once).
async fn add_user(s: &Session, body: &CreateUser) -> anyhow::Result<()> {
    let u: UserWithToken = s.client.post("/users", body).await?;
    if s.json {
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
    Ok(())
}

/// A user id argument: `me` is the caller.
async fn user_id(s: &Session, arg: String) -> anyhow::Result<String> {
    Ok(if arg == "me" {
        s.client.get::<User>("/users/me").await?.id
    } else {
        arg
    })
}

/// `users password [ID|me] --new ... [--current ...]`.
async fn change_password(
    s: &Session,
    user: String,
    new: String,
    current: Option<String>,
) -> anyhow::Result<()> {
    let id = user_id(s, user).await?;
    let body = json!({"password": new, "current_password": current});
    let u: User = s.client.patch(&format!("/users/{id}"), &body).await?;
    println!(
        "password of {} changed; their other tokens and sessions are ended",
        u.name
    );
    Ok(())
}

/// `users token ID|me`.
async fn new_token(s: &Session, user_id_arg: String) -> anyhow::Result<()> {
    let id = user_id(s, user_id_arg).await?;
    let t: NewToken = s
        .client
        .post(&format!("/users/{id}/tokens"), &json!(null))
        .await?;
    println!("token: {}", t.token);
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
