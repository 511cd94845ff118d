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

mod logcap;
mod relay;
mod vmm;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::client::{ApiFailure, Client};
use crate::model::{Host, Phone, PhoneState};
use crate::wire::hosts::{
    DesiredPhone, Heartbeat, HeartbeatReply, JoinHost, Joined, RegisterHost, StateReport,
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
    /// Optional VMM devices each phone gets: any of gpu,input,rng, or none.
    #[arg(long, default_value = "gpu,input,rng", value_parser = vmm::Devices::parse)]
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
    let key = host_key(&opts.control, opts.join_token.as_deref(), &key_file).await?;
    let client = Client::new(&opts.control, Some(key));
    let relay = match opts.relay_listen {
        Some(addr) => {
            let roots = [&opts.state_dir, &opts.framebuffer_root];
            Some(relay::Relay::start(addr, cloudphone_stream::Confinement::new(roots)).await?)
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
    };
    let mut phones = HashMap::new();
    for (id, pid) in vmm::adopt_all(&cfg) {
        let generation = PhoneDir::new(&cfg, &id).generation().unwrap_or(0);
        tracing::info!(phone = %id, pid, "adopted running VMM");
        phones.insert(id, Local::new(Some(Running::Adopted(pid)), generation));
    }
    let mut agent = Agent {
        opts,
        cfg,
        client,
        host,
        phones,
        relay,
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
    let anon = Client::new(control, None);
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
        let reply: HeartbeatReply = self
            .client
            .post(
                &format!("/hosts/{}/heartbeat", self.host.id),
                &Heartbeat { running },
            )
            .await?;
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
            vmm::remove(&dir);
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
            let fresh = local.generation != phone.generation;
            let r = vmm::start(&self.cfg, &d.profile, &dir, phone.generation, fresh).await;
            let local = self.phones.get_mut(&phone.id).expect("inserted above");
            match r {
                Ok(run) => {
                    local.running = Some(run);
                    local.generation = phone.generation;
                    local.restart_at = None;
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
                    // A phone image speaks the guest contract: it is ready for a user once its
                    // agent says PHONE_READY, not when the VMM merely runs.
                    Ok(s) if s == "running" && self.opts.boot_img.is_some() => {
                        if !vmm::guest_reported_ready(&dir) {
                            return Ok(());
                        }
                        self.report(phone, PhoneState::Ready, "guest reported PHONE_READY")
                            .await
                    }
                    Ok(s) if s == "running" => {
                        self.report(phone, PhoneState::Ready, "VMM API reports running")
                            .await
                    }
                    _ => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }

    async fn stop_local(&mut self, id: &str) {
        if let Some(run) = self.phones.get_mut(id).and_then(|l| l.running.take()) {
            vmm::stop(&PhoneDir::new(&self.cfg, id), run, Duration::from_secs(3)).await;
        }
    }
}
