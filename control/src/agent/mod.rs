//! `cloudphone agent`: runs on a host with KVM, one `cloudphone-vmm` per phone.
//!
//! Identity: the first start trades `--join-token` (from `cloudphone hosts enrol`) for this
//! host's own key, kept in `--key-file` (mode 0600); later starts use the key.
//! Protocol with the control service (polling, see `api::hosts`, bodies in `wire::hosts`): register once
//! (retried until the service answers), then every
//! `--interval-ms` send a heartbeat listing the phones whose VMM runs here; the reply is
//! the full desired set for this host, which the agent converges to:
//! `creating`/`booting` → start the VMM, report `booting`, then `ready` once its API answers;
//! `resetting` → stop, recreate the overlay over the clean base, boot, report `ready`;
//! `stopping` → stop, delete the phone's directory, report `stopped`;
//! `ready`/`assigned` → keep running. Any VMM not in the set is stopped (no orphans) and its
//! directory, like a crash-looped phone's, moved to `<state-dir>/quarantine/ID.TIMESTAMP`
//! rather than deleted: the agent never deletes data it does not recognise.
//! Supervision: exit 32 (guest reboot) restarts at once; other exits restart with backoff;
//! `--max-crashes` within `--crash-window-ms` report the phone `failed`.
//! VMMs run in their own process group and survive an agent restart; a new agent adopts
//! them from their pid files.
//! With `--relay-listen ADDR --relay-url URL` the agent also serves its running phones'
//! screens and input ([`relay`]) and registers URL + a fresh random key, so a control service
//! that cannot reach the VMM sockets (agent in a VM or on another machine) can stream them.

mod jail;
mod logcap;
mod relay;
mod usage;
pub mod vmm;
mod warm;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{ApiFailure, Client};
use crate::model::{Host, Phone, PhoneState};
use crate::wire::hosts::{
    DesiredPhone, Heartbeat, HeartbeatReply, HostUsage, JoinHost, Joined, RegisterHost, StateReport,
};
use cloudphone_vmm_api::VmmApi;
use vmm::Running;
pub use vmm::{command_line, PhoneDir, VmmConfig};

/// Options of `cloudphone agent`.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentOptions {
    /// Control service URL, e.g. http://10.0.0.1:8080.
    #[arg(long)]
    pub control: String,
    /// One-time join token from `cloudphone hosts enrol` (first start only; later starts
    /// use the key it was traded for).
    #[arg(long, env = "CLOUDPHONE_JOIN_TOKEN")]
    pub join_token: Option<String>,
    /// Where this host's key is kept (default: <state-dir>/host.key).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Per-phone directories (overlay, API socket, pid file, logs) live here; the state root
    /// the host was enrolled with.
    #[arg(long)]
    pub state_dir: PathBuf,
    /// The VMM binary.
    #[arg(long, default_value = "cloudphone-vmm")]
    pub vmm: PathBuf,
    /// Guest kernel (or boot the Android images given with --boot-img).
    #[arg(long, required_unless_present = "boot_img")]
    pub kernel: Option<PathBuf>,
    /// Android boot.img to boot phones from (the test phone image, or a real one).
    #[arg(long, conflicts_with = "kernel")]
    pub boot_img: Option<PathBuf>,
    /// Android vendor_boot.img that goes with --boot-img.
    #[arg(long, requires = "boot_img")]
    pub vendor_boot: Option<PathBuf>,
    /// Guest initrd.
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Guest kernel command line.
    #[arg(long, default_value = "console=hvc0 quiet")]
    pub cmdline: String,
    /// Directory holding the profiles' base images.
    #[arg(long, default_value = "/var/lib/cloudphone/images")]
    pub image_dir: PathBuf,
    /// qemu-img binary used to create overlays.
    #[arg(long, default_value = "qemu-img")]
    pub qemu_img: PathBuf,
    /// vCPUs offered to phones (default: all CPUs).
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory offered to phones in MiB (default: 80% of RAM).
    #[arg(long)]
    pub memory_mib: Option<u32>,
    /// Most phones this host runs.
    #[arg(long, default_value_t = 16)]
    pub max_phones: u32,
    /// Optional VMM devices each phone gets: any of gpu,input,rng,balloon,vsock, or none; `ksm`
    /// also offers each phone's RAM to KSM.
    #[arg(long, default_value = "gpu,input,rng,balloon,vsock", value_parser = vmm::Devices::parse)]
    pub devices: vmm::Devices,
    /// Heartbeat period.
    #[arg(long, default_value_t = 1_000)]
    pub interval_ms: u64,
    /// Crashes within the window that mark a phone failed.
    #[arg(long, default_value_t = 3)]
    pub max_crashes: usize,
    #[arg(long, default_value_t = 60_000)]
    pub crash_window_ms: u64,
    /// Largest size (MiB) of each phone's log files (vmm.log, serial.log, console.log,
    /// report.log) before it is rotated to NAME.1: a guest cannot fill the host's disk.
    #[arg(long, default_value_t = 8)]
    pub phone_log_cap_mib: u64,
    /// PEM CA certificate(s) to trust when --control is an https URL.
    #[arg(long, env = "CLOUDPHONE_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Serve the phones' screens and input on this address (e.g. 0.0.0.0:7070) for a control
    /// service that cannot reach this host's VMM sockets and /dev/shm.
    #[arg(long, requires = "relay_url")]
    pub relay_listen: Option<SocketAddr>,
    /// Framebuffers the relay may map lie here (the VMM writes them to /dev/shm) or under
    /// --state-dir; any other path a VMM reports is refused.
    #[arg(long, default_value = "/dev/shm")]
    pub framebuffer_root: PathBuf,
    /// URL at which the control service reaches --relay-listen (through any port forward),
    /// e.g. http://10.0.0.5:7070; registered with a random key generated at start.
    #[arg(long, requires = "relay_listen")]
    pub relay_url: Option<String>,
    /// Run phones without the per-phone jail (debugging only: a VMM its guest took over then
    /// reaches everything the agent's user can). By default each VMM is jailed in its phone's
    /// directory (`cloudphone-vmm --jail`, vmm/API.md).
    #[arg(long)]
    pub no_jail: bool,
    /// First uid (and gid) of the phones' range when the agent runs as root: each phone gets
    /// its own. Without root, phones keep the agent's uid inside a user namespace.
    #[arg(long, default_value_t = 200_000)]
    pub jail_uid_base: u32,
    /// How many uids the range holds (the most phones jailed at once).
    #[arg(long, default_value_t = 1000)]
    pub jail_uids: u32,
    /// Cold-boot every phone. By default (with --boot-img) the first phone of a profile that
    /// reports PHONE_READY is snapshotted and later phones of the profile are restored from it.
    #[arg(long)]
    pub no_snapshots: bool,
    /// How long a clone's guest has to report IDENTITY (its own identity taken) before the
    /// clone is given up and the phone cold-booted.
    #[arg(long, default_value_t = 30_000)]
    pub clone_identity_timeout_ms: u64,
    /// PEM certificate chain: serve the relay over TLS (with --relay-tls-key; give
    /// --relay-url as https and the control service `serve --relay-ca-file`).
    #[arg(long, requires_all = ["relay_tls_key", "relay_listen"])]
    pub relay_tls_cert: Option<PathBuf>,
    /// PEM private key of --relay-tls-cert.
    #[arg(long, requires = "relay_tls_cert")]
    pub relay_tls_key: Option<PathBuf>,
}

/// What the agent tracks per local phone.
struct Local {
    running: Option<Running>,
    /// Generation the current VMM was booted for.
    generation: i64,
    crashes: VecDeque<Instant>,
    restart_at: Option<Instant>,
    /// Crash-looped: reported failed, not restarted.
    failed: bool,
    last_exit: i32,
    /// The balloon holds memory back because the host ran short (see `balance_balloons`).
    ballooned: bool,
    /// The current VMM was restored from the profile's snapshot (a clone).
    restored: bool,
    /// When the current VMM started, until the phone is reported ready (for the timing).
    starting_since: Option<Instant>,
    /// A restore failed: the next start cold-boots on a fresh overlay.
    cold_fallback: bool,
}

impl Local {
    fn new(running: Option<Running>, generation: i64) -> Self {
        Self {
            running,
            generation,
            crashes: VecDeque::new(),
            restart_at: None,
            failed: false,
            last_exit: 0,
            ballooned: false,
            restored: false,
            starting_since: None,
            cold_fallback: false,
        }
    }
}

struct Agent {
    opts: AgentOptions,
    cfg: VmmConfig,
    client: Client,
    host: Host,
    phones: HashMap<String, Local>,
    relay: Option<relay::Relay>,
    /// Profiles whose snapshot failed to restore in this run: they cold-boot from now on.
    restore_failed: HashSet<String>,
    /// Snapshots being written, by profile id: (the phone, the task). Heartbeats go on
    /// meanwhile; the phone is reported ready once its task ends.
    snapshotting: HashMap<String, (String, tokio::task::JoinHandle<anyhow::Result<()>>)>,
    /// The host's CPU time at the previous measurement, for its busy share since then.
    last_cpu: Option<usage::CpuSample>,
}

fn default_capacity() -> (u32, u32) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(1 << 20);
    (cpus, ((mem_kib / 1024) * 8 / 10).max(64) as u32)
}

/// Runs the agent until killed.
pub async fn run(mut opts: AgentOptions) -> anyhow::Result<()> {
    std::fs::create_dir_all(opts.state_dir.join("phones"))
        .with_context(|| format!("creating {}", opts.state_dir.display()))?;
    // Reported socket paths must lie under the enrolled state root, which is canonical.
    opts.state_dir = std::fs::canonicalize(&opts.state_dir)
        .with_context(|| format!("resolving {}", opts.state_dir.display()))?;
    let (cpus, mem) = default_capacity();
    let key_file = opts
        .key_file
        .clone()
        .unwrap_or_else(|| opts.state_dir.join("host.key"));
    let ca_file = opts.ca_file.as_deref();
    let key = host_key(
        &opts.control,
        ca_file,
        opts.join_token.as_deref(),
        &key_file,
    )
    .await?;
    let client = Client::with_ca_file(&opts.control, Some(key), ca_file)?;
    let relay = match opts.relay_listen {
        Some(addr) => {
            let tls = match (&opts.relay_tls_cert, &opts.relay_tls_key) {
                (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
                _ => None,
            };
            let roots = [&opts.state_dir, &opts.framebuffer_root];
            let confinement = cloudphone_stream::Confinement::new(roots);
            Some(relay::Relay::start(addr, tls, confinement).await?)
        }
        None => None,
    };
    let reg = RegisterHost {
        vcpus: opts.vcpus.unwrap_or(cpus),
        memory_mib: opts.memory_mib.unwrap_or(mem),
        max_phones: opts.max_phones,
        relay_url: relay.as_ref().and(opts.relay_url.clone()),
        relay_key: relay.as_ref().map(|r| r.key().to_owned()),
    };
    let host: Host = until_answered("registering this host", || {
        client.post("/hosts/register", &reg)
    })
    .await?;
    tracing::info!(host = %host.id, name = %host.name, "registered");
    println!("registered host {} ({})", host.id, host.name);
    let cfg = VmmConfig {
        vmm: opts.vmm.clone(),
        boot: match &opts.boot_img {
            Some(boot_img) => vmm::GuestBoot::Android {
                boot_img: boot_img.clone(),
                vendor_boot: opts.vendor_boot.clone(),
            },
            None => vmm::GuestBoot::Kernel {
                kernel: opts
                    .kernel
                    .clone()
                    .context("--kernel or --boot-img is required")?,
                initrd: opts.initrd.clone(),
            },
        },
        cmdline: opts.cmdline.clone(),
        image_dir: opts.image_dir.clone(),
        qemu_img: opts.qemu_img.clone(),
        state_dir: opts.state_dir.clone(),
        devices: opts.devices,
        jail: if opts.no_jail {
            tracing::warn!("--no-jail: phones run unjailed, as the agent's user (debugging only)");
            None
        } else {
            let jail = jail::JailConfig::new(
                opts.jail_uid_base,
                opts.jail_uids,
                &opts.state_dir,
                &opts.framebuffer_root,
            );
            match jail.uid_base {
                Some(base) => {
                    tracing::info!(uids = %format!("{base}..{}", base + jail.uids), framebuffers = %jail.shm_root.display(), "phones are jailed, each with its own uid")
                }
                None => {
                    tracing::info!(framebuffers = %jail.shm_root.display(), "phones are jailed in user namespaces under this (non-root) agent's uid")
                }
            }
            Some(jail)
        },
    };
    let mut phones = HashMap::new();
    for a in vmm::adopt_all(&cfg) {
        let generation = PhoneDir::new(&cfg, &a.phone_id).generation().unwrap_or(0);
        tracing::info!(phone = %a.phone_id, pid = a.pid, restored = a.restored, "adopted running VMM");
        let mut local = Local::new(Some(Running::Adopted(a.pid)), generation);
        local.restored = a.restored;
        phones.insert(a.phone_id, local);
    }
    let mut agent = Agent {
        opts,
        cfg,
        client,
        host,
        phones,
        relay,
        restore_failed: HashSet::new(),
        snapshotting: HashMap::new(),
        last_cpu: None,
    };
    let mut interval = tokio::time::interval(Duration::from_millis(agent.opts.interval_ms.max(50)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        if let Err(e) = agent.step().await {
            tracing::warn!("agent step failed: {e:#}");
        }
    }
}

/// This host's key: read from `key_file`, or on first start traded for `join_token` and
/// written there (0600, never overwritten).
async fn host_key(
    control: &str,
    ca_file: Option<&Path>,
    join_token: Option<&str>,
    key_file: &Path,
) -> anyhow::Result<String> {
    match std::fs::read_to_string(key_file) {
        Ok(key) => return Ok(key.trim().to_owned()),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("reading the host key {}", key_file.display()))
        }
        Err(_) => {}
    }
    let token = join_token.with_context(|| {
        format!(
            "no host key at {}: start once with --join-token from `cloudphone hosts enrol`",
            key_file.display()
        )
    })?;
    let anon = Client::with_ca_file(control, None, ca_file)?;
    let body = JoinHost {
        join_token: token.to_owned(),
    };
    let joined: Joined = until_answered("joining with --join-token", || {
        anon.post("/hosts/join", &body)
    })
    .await?;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(key_file)
        .with_context(|| format!("creating the host key file {}", key_file.display()))?;
    writeln!(f, "{}", joined.host_key)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing the host key file {}", key_file.display()))?;
    tracing::info!(host = %joined.host.id, file = %key_file.display(), "joined: host key stored");
    Ok(joined.host_key)
}

/// Runs `call` until the control service answers: connection failures and 5xx (service down
/// or restarting) are retried with backoff up to 10 s; an API refusal (4xx) is returned.
async fn until_answered<T, F, Fut>(what: &str, mut call: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e)
                if e.downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status < 500) =>
            {
                return Err(e.context(what.to_owned()))
            }
            Err(e) => {
                tracing::warn!(?delay, "{what}: {e:#}; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Agent {
    async fn step(&mut self) -> anyhow::Result<()> {
        self.collect_exits();
        self.cap_logs();
        let running: Vec<String> = self
            .phones
            .iter()
            .filter(|(_, l)| l.running.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        let usage = self.measure();
        let available = usage.mem_available_mib;
        let reply: HeartbeatReply = self
            .client
            .post(
                &format!("/hosts/{}/heartbeat", self.host.id),
                &Heartbeat {
                    running,
                    usage: Some(usage),
                },
            )
            .await?;
        self.balance_balloons(&reply, available).await;
        let wanted: Vec<String> = reply.phones.iter().map(|d| d.phone.id.clone()).collect();
        for d in &reply.phones {
            if let Err(e) = self.converge(d).await {
                tracing::warn!(phone = %d.phone.id, "{e:#}");
            }
        }
        let orphans: Vec<String> = self
            .phones
            .keys()
            .filter(|id| !wanted.contains(id))
            .cloned()
            .collect();
        for id in orphans {
            tracing::info!(phone = %id, "not known to the control service: stopping, quarantining its directory");
            self.stop_local(&id).await;
            vmm::quarantine(&self.cfg, &PhoneDir::new(&self.cfg, &id));
            self.phones.remove(&id);
        }
        for dir in self.unknown_dirs(&wanted) {
            vmm::quarantine(&self.cfg, &dir);
        }
        self.publish_to_relay();
        Ok(())
    }

    /// Phone directories on disk that neither the control service wants nor this agent runs
    /// (left by an earlier agent, a restore, a hand): candidates for quarantine.
    fn unknown_dirs(&self, wanted: &[String]) -> Vec<PhoneDir> {
        let Ok(entries) = std::fs::read_dir(self.cfg.state_dir.join("phones")) else {
            return Vec::new();
        };
        entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|id| !wanted.contains(id) && !self.phones.contains_key(id))
            .map(|id| PhoneDir::new(&self.cfg, &id))
            .collect()
    }

    /// This host's available memory, its CPU busy share since the last measurement, and each
    /// running VMM's private memory and CPU time.
    fn measure(&mut self) -> HostUsage {
        let phones = self
            .phones
            .iter()
            .filter_map(|(id, l)| usage::measure_phone(id, l.running.as_ref()?.pid()?))
            .collect();
        let cpu = usage::cpu_sample();
        let cpu_busy_pct = self
            .last_cpu
            .zip(cpu)
            .and_then(|(a, b)| usage::busy_pct(a, b));
        self.last_cpu = cpu;
        HostUsage {
            mem_available_mib: usage::mem_available_mib().unwrap_or(0),
            cpu_busy_pct,
            phones,
        }
    }

    /// Memory pressure relief before the kernel's OOM killer: while the host has less
    /// available memory than its policy's reserve, each idle phone (ready, not leased, not
    /// parked for an owner) is asked to inflate its balloon to half its memory; once twice
    /// the reserve is available again, or the phone is leased, the balloon gives it all back.
    /// (The control service meanwhile places no new phone here.) Needs `--devices ...,balloon`.
    async fn balance_balloons(&mut self, reply: &HeartbeatReply, available: u64) {
        if !self.cfg.devices.balloon {
            return;
        }
        let reserve = u64::try_from(reply.host.policy.reserve_mib).unwrap_or(0);
        let short = available < reserve;
        let relieved = available >= reserve.saturating_mul(2);
        for d in &reply.phones {
            let Some(local) = self.phones.get_mut(&d.phone.id) else {
                continue;
            };
            if local.running.is_none() {
                continue;
            }
            let idle = d.phone.state == PhoneState::Ready && d.phone.reserved_for.is_none();
            let target = match (local.ballooned, short && idle, relieved || !idle) {
                (false, true, _) => usage::reclaim_target_mib(d.profile.memory_mib),
                (true, _, true) => 0,
                _ => continue,
            };
            let api = VmmApi::new(PhoneDir::new(&self.cfg, &d.phone.id).api_socket());
            match api.set_balloon(target).await {
                Ok(()) => {
                    local.ballooned = target > 0;
                    tracing::info!(phone = %d.phone.id, target_mib = target, available_mib = available, reserve_mib = reserve, "balloon resized for host memory pressure");
                }
                Err(e) => tracing::warn!(phone = %d.phone.id, "resizing the balloon: {e}"),
            }
        }
    }

    /// Let the relay serve exactly the phones whose VMM runs now.
    fn publish_to_relay(&self) {
        if let Some(relay) = &self.relay {
            relay.publish(
                self.phones
                    .iter()
                    .filter(|(_, l)| l.running.is_some())
                    .map(|(id, _)| (id.clone(), PhoneDir::new(&self.cfg, id).api_socket())),
            );
        }
    }

    /// Rotates every running phone's log files that grew past `--phone-log-cap-mib`.
    fn cap_logs(&self) {
        let cap = self.opts.phone_log_cap_mib << 20;
        for (id, _) in self.phones.iter().filter(|(_, l)| l.running.is_some()) {
            match logcap::cap_logs(&PhoneDir::new(&self.cfg, id).dir, cap) {
                Ok(rotated) if !rotated.is_empty() => {
                    tracing::info!(phone = %id, ?rotated, cap_mib = self.opts.phone_log_cap_mib, "rotated phone logs past their cap");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(phone = %id, error = %e, "cannot cap the phone's logs"),
            }
        }
    }

    /// Notices VMM exits and schedules restarts (or gives up after repeated crashes).
    fn collect_exits(&mut self) {
        let window = Duration::from_millis(self.opts.crash_window_ms);
        for (id, l) in self.phones.iter_mut() {
            let Some(code) = l.running.as_mut().and_then(|r| r.exited()) else {
                continue;
            };
            l.running = None;
            l.last_exit = code;
            let _ = std::fs::remove_file(PhoneDir::new(&self.cfg, id).pid_file());
            if l.restored && l.starting_since.is_some() {
                tracing::warn!(phone = %id, code, "restoring from the profile's snapshot failed (see the phone's vmm.log): cold-booting it instead");
                l.cold_fallback = true;
                l.restart_at = Some(Instant::now());
                continue;
            }
            if code == 32 {
                tracing::info!(phone = %id, "guest rebooted: restarting VMM");
                l.restart_at = Some(Instant::now());
                continue;
            }
            let now = Instant::now();
            l.crashes.push_back(now);
            while l
                .crashes
                .front()
                .is_some_and(|t| now.duration_since(*t) > window)
            {
                l.crashes.pop_front();
            }
            if l.crashes.len() >= self.opts.max_crashes {
                tracing::error!(phone = %id, code, crashes = l.crashes.len(), "VMM crash loop: giving up");
                l.failed = true;
                l.restart_at = None;
            } else {
                let delay = vmm::backoff(l.crashes.len() as u32 - 1);
                tracing::warn!(phone = %id, code, ?delay, "VMM exited: restarting after backoff");
                l.restart_at = Some(now + delay);
            }
        }
    }

    async fn report(&self, phone: &Phone, state: PhoneState, reason: &str) -> anyhow::Result<()> {
        let dir = PhoneDir::new(&self.cfg, &phone.id);
        let body = StateReport {
            state,
            generation: phone.generation,
            reason: reason.to_owned(),
            api_socket: Some(dir.api_socket().display().to_string()),
        };
        let _: Phone = self
            .client
            .put(
                &format!("/hosts/{}/phones/{}/state", self.host.id, phone.id),
                &body,
            )
            .await?;
        Ok(())
    }

    async fn converge(&mut self, d: &DesiredPhone) -> anyhow::Result<()> {
        let phone = &d.phone;
        let dir = PhoneDir::new(&self.cfg, &phone.id);
        if phone.state == PhoneState::Stopping {
            self.stop_local(&phone.id).await;
            vmm::remove(&self.cfg, &dir);
            self.phones.remove(&phone.id);
            return self
                .report(phone, PhoneState::Stopped, "stopped by agent")
                .await;
        }
        if matches!(phone.state, PhoneState::Lost) {
            return Ok(()); // the next heartbeat reconciles it
        }
        let reset = phone.state == PhoneState::Resetting
            && self
                .phones
                .get(&phone.id)
                .is_some_and(|l| l.generation != phone.generation);
        if reset {
            tracing::info!(phone = %phone.id, generation = phone.generation, "resetting to the clean base");
            self.stop_local(&phone.id).await;
            self.phones.remove(&phone.id);
        }
        // A phone unknown to this run keeps its disk if the overlay on disk belongs to the
        // phone's current generation (persistent phones survive agent restarts).
        let on_disk = dir.generation().unwrap_or(-1);
        let local = self
            .phones
            .entry(phone.id.clone())
            .or_insert_with(|| Local::new(None, on_disk));
        if local.failed {
            let reason = format!(
                "VMM crashed {} times (last exit code {})",
                local.crashes.len(),
                local.last_exit
            );
            self.phones.remove(&phone.id);
            // Its disk may hold a persistent phone's data: kept aside, never deleted here.
            vmm::quarantine(&self.cfg, &dir);
            return self.report(phone, PhoneState::Failed, &reason).await;
        }
        if local.running.is_none() {
            if local.restart_at.is_some_and(|t| Instant::now() < t) {
                return Ok(());
            }
            let fresh = local.generation != phone.generation || local.cold_fallback;
            if local.cold_fallback && self.restore_failed.insert(d.profile.id.clone()) {
                warm::discard(&self.cfg, &d.profile.id);
            }
            // A phone that needs a clean disk is a clone of the profile's snapshot if there
            // is one; a restart after a crash or reboot keeps its disk and cold-boots.
            let snapshot = (fresh && self.snapshots_enabled(&d.profile))
                .then(|| warm::usable(&self.cfg, &d.profile))
                .flatten();
            let r = vmm::start(
                &self.cfg,
                &d.profile,
                &dir,
                phone.generation,
                fresh,
                snapshot.as_ref(),
            )
            .await;
            let local = self.phones.get_mut(&phone.id).expect("inserted above");
            match r {
                Ok(run) => {
                    local.running = Some(run);
                    local.generation = phone.generation;
                    local.restart_at = None;
                    local.restored = snapshot.is_some();
                    local.starting_since = Some(Instant::now());
                    local.cold_fallback = false;
                }
                Err(e) => {
                    local.crashes.push_back(Instant::now());
                    local.restart_at =
                        Some(Instant::now() + vmm::backoff(local.crashes.len() as u32));
                    local.failed = local.crashes.len() >= self.opts.max_crashes;
                    return Err(e.context("starting the VMM"));
                }
            }
        }
        match phone.state {
            PhoneState::Creating => self.report(phone, PhoneState::Booting, "VMM started").await,
            PhoneState::Booting | PhoneState::Resetting => {
                match VmmApi::new(dir.api_socket())
                    .status()
                    .await
                    .map(|s| s.state)
                {
                    // A clone runs the snapshot of a phone that had reported PHONE_READY; it is
                    // handed out once its guest has taken an identity of its own.
                    Ok(s) if s == "running" && self.phones[&phone.id].restored => {
                        self.clone_ready(phone, &dir).await
                    }
                    // A phone image speaks the guest contract: it is ready for a user once its
                    // agent says PHONE_READY, not when the VMM merely runs.
                    Ok(s) if s == "running" && self.opts.boot_img.is_some() => {
                        if !vmm::guest_reported(&dir, vmm::READY_MARKER) {
                            return Ok(());
                        }
                        if !self.snapshot_done(d, &dir).await {
                            return Ok(());
                        }
                        self.report_ready(phone, "guest reported PHONE_READY").await
                    }
                    Ok(s) if s == "running" => {
                        self.report_ready(phone, "VMM API reports running").await
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    /// Whether phones of `profile` are snapshotted and cloned: phone images only (their agent
    /// says when the guest is ready to be copied), unless turned off or a restore failed.
    fn snapshots_enabled(&self, profile: &crate::model::Profile) -> bool {
        self.opts.boot_img.is_some()
            && !self.opts.no_snapshots
            && !self.restore_failed.contains(&profile.id)
    }

    /// For a cold-booted phone that reported PHONE_READY: whether it may be reported ready,
    /// or first becomes its profile's snapshot (started here in the background, `false` until
    /// written; a failed snapshot is logged and the profile keeps cold-booting).
    async fn snapshot_done(&mut self, d: &DesiredPhone, dir: &PhoneDir) -> bool {
        let (profile, phone_id) = (&d.profile, &d.phone.id);
        // Another phone's finished snapshot (that phone may be gone): its result is on disk.
        if self
            .snapshotting
            .get(&profile.id)
            .is_some_and(|(other, task)| other != phone_id && task.is_finished())
        {
            self.snapshotting.remove(&profile.id);
        }
        match self.snapshotting.get(&profile.id) {
            Some((snapshotting, task)) if snapshotting == phone_id => {
                if !task.is_finished() {
                    return false;
                }
                let (_, task) = self.snapshotting.remove(&profile.id).expect("present");
                match task.await {
                    Ok(Ok(())) => {
                        tracing::info!(phone = %phone_id, profile = %profile.name, "snapshotted: later phones of this profile are clones")
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(phone = %phone_id, profile = %profile.name, "snapshot failed, phones keep cold-booting: {e:#}")
                    }
                    Err(e) => tracing::warn!(phone = %phone_id, "snapshot task failed: {e}"),
                }
                true
            }
            // Another phone of the profile is being snapshotted.
            Some(_) => true,
            None if self.snapshots_enabled(profile)
                && warm::usable(&self.cfg, profile).is_none() =>
            {
                let (cfg, profile, dir) = (self.cfg.clone(), profile.clone(), dir.clone());
                let task = tokio::spawn(async move { warm::take(&cfg, &profile, &dir).await });
                self.snapshotting
                    .insert(d.profile.id.clone(), (phone_id.clone(), task));
                false
            }
            None => true,
        }
    }

    /// A restored clone is ready once its guest reports `IDENTITY` (it noticed its new VM
    /// generation id: new hostname, reseeded RNG). One that stays silent past
    /// `--clone-identity-timeout-ms` is stopped and cold-booted like a failed restore.
    async fn clone_ready(&mut self, phone: &Phone, dir: &PhoneDir) -> anyhow::Result<()> {
        if vmm::guest_reported(dir, vmm::IDENTITY_MARKER) {
            return self
                .report_ready(
                    phone,
                    "restored from the profile's snapshot, own identity taken",
                )
                .await;
        }
        let limit = Duration::from_millis(self.opts.clone_identity_timeout_ms);
        let waited = self.phones.get(&phone.id).and_then(|l| l.starting_since);
        if waited.is_some_and(|t| t.elapsed() > limit) {
            tracing::warn!(phone = %phone.id, ?limit, "the clone's guest reported no IDENTITY: cold-booting it instead");
            self.stop_local(&phone.id).await;
            if let Some(l) = self.phones.get_mut(&phone.id) {
                l.cold_fallback = true;
                l.restart_at = Some(Instant::now());
            }
        }
        Ok(())
    }

    /// Reports the phone ready, the reason saying how long it took since its VMM started.
    async fn report_ready(&mut self, phone: &Phone, why: &str) -> anyhow::Result<()> {
        let took = self
            .phones
            .get_mut(&phone.id)
            .and_then(|l| l.starting_since.take())
            .map(|t| format!(" ({} ms after the VMM started)", t.elapsed().as_millis()))
            .unwrap_or_default();
        self.report(phone, PhoneState::Ready, &format!("{why}{took}"))
            .await
    }

    async fn stop_local(&mut self, id: &str) {
        if let Some(run) = self.phones.get_mut(id).and_then(|l| l.running.take()) {
            vmm::stop(&PhoneDir::new(&self.cfg, id), run, Duration::from_secs(3)).await;
        }
    }
}
