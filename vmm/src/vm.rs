//! A running guest: KVM VM + memory + devices + vCPU threads, and the controls the API uses
//! (pause, resume, power button, forced stop).

use std::fs::File;
use std::os::unix::thread::JoinHandleExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::acpi::{self, GED_EVENT_POWER_BUTTON, GED_EVENT_VMGENID, GED_GSI, PM_PORTS};
use crate::arch::x86_64::{cpuid::vcpu_cpuid, regs};
use crate::boot::{prepare_guest, BootInfo};
use crate::bus::{lock, SharedDevice};
use crate::config::VmConfig;
use crate::exit::{ExitSignal, GuestExit};
use crate::legacy::{
    i8042::{I8042_LEN, I8042_PORT},
    rtc::{CMOS_LEN, CMOS_PORT},
    serial::{COM1_IRQ, COM1_PORT},
    Cmos, PowerManagement, SerialDevice, I8042,
};
use crate::memory::{self, GuestMemoryMmap};
use crate::pci::{
    slots, GsiRoutes, KvmMsiSink, PciRoot, SlotState, PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN,
};
use crate::snapshot::{self, LegacyState, SnapshotError, VmSnapshot};
use crate::vcpu::{kick, Request, Vcpu, VcpuContext, VcpuOutcome};

mod devices;
pub use devices::{DeviceHandles, DeviceSetupError};

/// How long a pause may take to park every vCPU.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long parked vCPUs may take to hand over their state for a snapshot.
const SAVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The VM's run state as the API reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmState {
    /// vCPUs running.
    Running,
    /// vCPUs parked.
    Paused,
    /// A shutdown was requested and the guest has not powered off yet.
    ShuttingDown,
}

impl VmState {
    /// Name used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Running => "running",
            VmState::Paused => "paused",
            VmState::ShuttingDown => "shutting_down",
        }
    }
}

/// Kernel, initrd and command line ready to load (files may be memfds from Android images).
pub struct BootPayload {
    /// Kernel image.
    pub kernel: File,
    /// Initrd, if any.
    pub initrd: Option<File>,
    /// Command line.
    pub cmdline: String,
}

/// Where a VM's first state comes from.
pub enum VmSource {
    /// Boot this kernel.
    Boot(BootPayload),
    /// Resume the snapshot in `dir` (checked by [`snapshot::load`]).
    Restore {
        /// The snapshot directory (its memory file is mapped from here).
        dir: PathBuf,
        /// Its state file's contents.
        snapshot: Box<VmSnapshot>,
    },
}

/// The devices every VM has, kept for snapshots.
struct LegacyDevices {
    serial: Arc<Mutex<SerialDevice>>,
    cmos: Arc<Mutex<Cmos>>,
    pm: Arc<Mutex<PowerManagement>>,
    pci: Arc<Mutex<PciRoot>>,
}

impl LegacyDevices {
    fn state(&self) -> LegacyState {
        LegacyState {
            serial: lock(&self.serial).state(),
            cmos: lock(&self.cmos).state(),
            ged_pending: lock(&self.pm).pending(),
            pci_config_address: lock(&self.pci).config_address(),
        }
    }
}

/// The part of a VM that other threads (the API) act on.
pub struct VmControl {
    ctx: Arc<VcpuContext>,
    threads: Mutex<Vec<libc::pthread_t>>,
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    legacy: LegacyDevices,
    shutdown_requested: Mutex<bool>,
    started: Instant,
    /// vCPU count.
    pub vcpus: u8,
    /// Memory size.
    pub memory_mib: u64,
    /// Handles of the GPU, input and balloon devices (for the API).
    pub devices: DeviceHandles,
}

impl VmControl {
    fn kick_all(&self) {
        for t in lock(&self.threads).iter() {
            kick::kick(*t);
        }
    }

    /// The exit signal the VM reports to.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.ctx.exit
    }

    /// Current state.
    pub fn state(&self) -> VmState {
        if *lock(&self.shutdown_requested) {
            VmState::ShuttingDown
        } else if self.ctx.control.request() == Request::Pause {
            VmState::Paused
        } else {
            VmState::Running
        }
    }

    /// Milliseconds since the vCPUs started.
    pub fn uptime_ms(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    /// Park every vCPU; returns once they are all out of KVM_RUN.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.ctx.control.set(Request::Pause);
        self.kick_all();
        let n = lock(&self.threads).len();
        if !self.ctx.control.wait_parked(n, PAUSE_TIMEOUT) {
            return Err(anyhow!(
                "not every vCPU stopped within {PAUSE_TIMEOUT:?}; the VM may be exiting"
            ));
        }
        Ok(())
    }

    /// Let parked vCPUs run again.
    pub fn resume(&self) {
        self.ctx.control.set(Request::Run);
    }

    /// Press the ACPI power button; if the guest has not powered off after `timeout`, stop it
    /// (exit code 34).
    pub fn request_shutdown(self: &Arc<Self>, timeout: Duration) -> anyhow::Result<()> {
        *lock(&self.shutdown_requested) = true;
        self.resume();
        lock(&self.legacy.pm)
            .raise_ged(GED_EVENT_POWER_BUTTON)
            .context("raising the power-button interrupt")?;
        let exit = self.ctx.exit.clone();
        std::thread::Builder::new()
            .name("shutdown-timer".into())
            .spawn(move || {
                if exit.wait(Some(timeout)).is_none() {
                    tracing::warn!(?timeout, "guest ignored the power button; forcing it off");
                    exit.request(GuestExit::ShutdownHung);
                }
            })
            .context("spawning the shutdown timer")?;
        Ok(())
    }

    /// Reset the guest as if it had rebooted itself.
    pub fn request_reboot(&self) {
        self.ctx.exit.request(GuestExit::Reboot);
    }

    /// Write a snapshot of the paused VM into `dir`, a directory this call creates (its parent
    /// must exist): a snapshot never overwrites or removes anything the caller names. The
    /// state file is written last, so a directory with a state file holds a complete snapshot.
    pub fn snapshot(&self, dir: &Path) -> Result<(), SnapshotError> {
        if self.state() != VmState::Paused {
            return Err(SnapshotError::NotPaused);
        }
        std::fs::create_dir(dir).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => SnapshotError::DirExists(dir.to_path_buf()),
            _ => SnapshotError::Io {
                path: dir.to_path_buf(),
                source,
            },
        })?;
        lock(&self.ctx.saved).states.clear();
        let n = usize::from(self.vcpus);
        // A vCPU that did not answer in time has no state below and is named in the error.
        self.ctx.control.save_all(n, SAVE_TIMEOUT);
        let mut states = std::mem::take(&mut lock(&self.ctx.saved).states);
        states.resize_with(n, || None);
        let vcpus = states
            .into_iter()
            .enumerate()
            .map(|(id, s)| match s {
                Some(r) => r.map_err(SnapshotError::from),
                None => Err(SnapshotError::VcpuTimeout(id as u8)),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let legacy = self.legacy.state();
        // Devices hold still (workers parked) from their state until RAM is saved, so no
        // used-ring write lands between the two.
        let pci = lock(&self.legacy.pci);
        let unsettled = pci.quiesce_all();
        if !unsettled.is_empty() {
            tracing::warn!(slots = ?unsettled, "devices still busy; snapshot taken anyway");
        }
        let written = self.save_devices_and_memory(&pci, dir, vcpus, legacy);
        pci.unquiesce_all();
        let written = written?;
        tracing::info!(dir = %dir.display(), ram_bytes = written, "snapshot written");
        Ok(())
    }

    /// The quiesced part of [`snapshot`](Self::snapshot): device state, RAM, state file.
    fn save_devices_and_memory(
        &self,
        pci: &PciRoot,
        dir: &Path,
        vcpus: Vec<snapshot::VcpuState>,
        legacy: LegacyState,
    ) -> Result<u64, SnapshotError> {
        let pci_slots = pci
            .save_slots()
            .map_err(|(slot, source)| SnapshotError::UnsupportedDevice { slot, source })?;
        let snap = VmSnapshot {
            memory_bytes: self.memory_mib << 20,
            vcpus,
            vm: snapshot::VmState::save(&self.vm)?,
            legacy,
            pci_slots,
        };
        let (state_path, mem_path) = snapshot::paths(dir);
        let written = snapshot::memory::save(&self.mem, &mem_path)?;
        snapshot::file::write(&state_path, &snap)?;
        Ok(written)
    }
}

/// A VM with its vCPU threads.
pub struct Vm {
    _vm: Arc<VmFd>,
    _mem: GuestMemoryMmap,
    control: Arc<VmControl>,
    pending: Vec<Vcpu>,
    joins: Vec<JoinHandle<VcpuOutcome>>,
}

fn add_pio(ctx: &VcpuContext, dev: SharedDevice, base: u16, len: u16) -> anyhow::Result<()> {
    ctx.pio
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .insert(dev, u64::from(base), u64::from(len))
        .with_context(|| format!("placing a device at port {base:#x}"))
}

fn irqfd(vm: &VmFd, gsi: u32) -> anyhow::Result<EventFd> {
    let evt = EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd")?;
    vm.register_irqfd(&evt, gsi)
        .with_context(|| format!("KVM_IRQFD for GSI {gsi}"))?;
    Ok(evt)
}

/// Create `n` vCPUs: set up for the kernel entry in `boot`, or given the saved states.
fn create_vcpus(
    kvm: &Kvm,
    vm: &VmFd,
    ctx: &Arc<VcpuContext>,
    n: u8,
    start: VcpuStart<'_>,
) -> anyhow::Result<Vec<Vcpu>> {
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_SUPPORTED_CPUID")?;
    (0..n)
        .map(|id| {
            let fd = vm
                .create_vcpu(u64::from(id))
                .with_context(|| format!("creating vCPU {id}"))?;
            match start {
                VcpuStart::Boot(boot) => {
                    fd.set_cpuid2(&vcpu_cpuid(&supported, id, n))
                        .with_context(|| format!("KVM_SET_CPUID2 on vCPU {id}"))?;
                    regs::setup_msrs(&fd)?;
                    regs::setup_fpu(&fd)?;
                    regs::setup_lapic(&fd)?;
                    if id == 0 {
                        regs::setup_long_mode_sregs(&fd, boot.cr3)?;
                        regs::setup_boot_regs(&fd, boot.entry.0)?;
                    }
                }
                VcpuStart::Restore(states) => states[usize::from(id)].restore(kvm, &fd)?,
            }
            Ok(Vcpu {
                id,
                fd,
                ctx: ctx.clone(),
            })
        })
        .collect()
}

/// How vCPUs begin: at the kernel entry, or where a snapshot left them.
#[derive(Clone, Copy)]
enum VcpuStart<'a> {
    Boot(BootInfo),
    Restore(&'a [snapshot::VcpuState]),
}

/// Put `device` behind the virtio-pci transport at `slot`, with MSI-X routed through KVM; on a
/// restore, in the state `saved` holds for that slot (BARs where the guest had them, MSI-X
/// routes programmed again; `PciRoot::resume_all` restarts running devices once the vCPUs
/// are back).
fn attach_virtio(
    pci: &mut PciRoot,
    routes: &Arc<GsiRoutes>,
    mem: &GuestMemoryMmap,
    slot: u8,
    device: Box<dyn cloudphone_virtio::VirtioDevice>,
    saved: &[SlotState],
) -> anyhow::Result<()> {
    let vectors = device.queue_max_sizes().len() as u16 + 1;
    let sink = Arc::new(KvmMsiSink::new(routes.clone(), vectors));
    let saved = saved.iter().find(|s| s.slot == slot);
    let dev = match saved {
        Some(s) => {
            cloudphone_virtio::VirtioPciDevice::restore(device, mem.clone(), sink, &s.transport)
                .with_context(|| format!("restoring the virtio-pci function at slot {slot}"))?
        }
        None => cloudphone_virtio::VirtioPciDevice::new(device, mem.clone(), sink)
            .with_context(|| format!("creating the virtio-pci function for slot {slot}"))?,
    };
    let notify = dev
        .notify_eventfds()
        .into_iter()
        .map(|(off, fd)| {
            Ok((
                cloudphone_virtio::transport::VIRTIO_BAR,
                off,
                fd.try_clone()?,
            ))
        })
        .collect::<std::io::Result<Vec<_>>>()
        .context("duplicating queue notify eventfds")?;
    let dev = Arc::new(Mutex::new(dev));
    match saved {
        Some(_) => pci.attach_restored(slot, dev, notify),
        None => pci.attach(slot, dev, notify),
    }
    .with_context(|| format!("attaching the device at PCI slot {slot}"))?;
    Ok(())
}

/// The PCI bus with the host bridge and the devices the config asks for.
fn build_pci(
    vm: &Arc<VmFd>,
    ctx: &Arc<VcpuContext>,
    mem: &GuestMemoryMmap,
    config: &VmConfig,
    saved: &[SlotState],
) -> anyhow::Result<(PciRoot, DeviceHandles)> {
    let mut pci = PciRoot::new(vm.clone(), ctx.clone());
    pci.attach(
        0,
        Arc::new(Mutex::new(crate::pci::host_bridge::HostBridge)),
        Vec::new(),
    )?;
    let routes = Arc::new(GsiRoutes::new(vm.clone()));
    if !config.console_ports.is_empty() {
        let console = cloudphone_virtio::console::Console::new(&config.console_ports)
            .context("opening the --console ports")?;
        attach_virtio(
            &mut pci,
            &routes,
            mem,
            slots::CONSOLE,
            Box::new(console),
            saved,
        )?;
    }
    if config.rng {
        let rng = Box::new(cloudphone_virtio::rng::Rng::new());
        attach_virtio(&mut pci, &routes, mem, slots::RNG, rng, saved)?;
    }
    let handles = devices::attach_devices(
        &mut pci,
        &routes,
        mem,
        &config.devices,
        // The guest's RAM (a restore's comes from the snapshot, not from --memory).
        snapshot::memory::ram_bytes(mem) >> 20,
        saved,
    )?;
    if let Some(orphan) = saved.iter().find(|s| !pci.is_occupied(s.slot)) {
        anyhow::bail!(
            "the snapshot has a device at PCI slot {} that this configuration does not; \
             restore with the options the VM was started with",
            orphan.slot
        );
    }
    Ok((pci, handles))
}

impl Vm {
    /// Build the VM for `config` with `payload`, ready to [`start`](Self::start).
    /// Errors from loading the payload are [`crate::boot::BootError`]s (bad input).
    pub fn new(kvm: &Kvm, config: &VmConfig, payload: BootPayload) -> anyhow::Result<Self> {
        Self::build(kvm, config, VmSource::Boot(payload))
    }

    /// Build the VM for `config` from `source` (a kernel to boot or a snapshot to resume),
    /// ready to [`start`](Self::start).
    pub fn build(kvm: &Kvm, config: &VmConfig, source: VmSource) -> anyhow::Result<Self> {
        let vm = crate::kvm::create_vm(kvm)?;
        let (mem, boot, start) = match source {
            VmSource::Boot(mut payload) => {
                let size = config.memory_mib << 20;
                let mem = memory::create_guest_memory_with(size, config.memory_backing)?;
                let boot = prepare_guest(
                    &mem,
                    &mut payload.kernel,
                    payload.initrd.as_mut(),
                    &payload.cmdline,
                    config.cpus,
                )?;
                acpi::vmgenid::write_new(&mem)?;
                (mem, Some(boot), None)
            }
            VmSource::Restore { dir, snapshot } => {
                let (_, mem_path) = snapshot::paths(&dir);
                let mem = snapshot::memory::map_private(&mem_path, snapshot.memory_bytes)?;
                // A clone is a new VM: a new generation id, in its own copy of the page.
                acpi::vmgenid::write_new(&mem)?;
                (mem, None, Some(snapshot))
            }
        };
        if config.mergeable {
            memory::advise_mergeable(&mem);
        }
        memory::register_with_kvm(&vm, &mem)?;
        let legacy = start.as_ref().map(|s| s.legacy.clone()).unwrap_or_default();

        let exit = Arc::new(ExitSignal::default());
        let ctx = Arc::new(VcpuContext::new(exit.clone()));
        {
            let mut saved = lock(&ctx.saved);
            saved.msr_list = snapshot::vcpu::msr_indices(kvm).context("KVM_GET_MSR_INDEX_LIST")?;
            saved.xsave_words = snapshot::vcpu::xsave_words(kvm);
        }
        let serial = SerialDevice::restored(&config.serial, irqfd(&vm, COM1_IRQ)?, &legacy.serial)
            .context("opening the --serial output")?;
        let serial = Arc::new(Mutex::new(serial));
        add_pio(&ctx, serial.clone(), COM1_PORT, 8)?;
        add_pio(
            &ctx,
            Arc::new(Mutex::new(I8042::new(exit.clone()))),
            I8042_PORT,
            I8042_LEN,
        )?;
        let cmos = Arc::new(Mutex::new(
            Cmos::restored(&legacy.cmos).map_err(|e| anyhow!("snapshot state: {e}"))?,
        ));
        add_pio(&ctx, cmos.clone(), CMOS_PORT, CMOS_LEN)?;
        let mut pm = PowerManagement::new(exit, irqfd(&vm, GED_GSI)?);
        pm.set_pending(legacy.ged_pending);
        let pm = Arc::new(Mutex::new(pm));
        add_pio(&ctx, pm.clone(), PM_PORTS.0, PM_PORTS.1)?;
        let vm = Arc::new(vm);
        let saved = start.as_ref().map_or(&[][..], |s| &s.pci_slots[..]);
        let (mut pci, devices) = build_pci(&vm, &ctx, &mem, config, saved)?;
        pci.set_config_address(legacy.pci_config_address);
        let pci = Arc::new(Mutex::new(pci));
        add_pio(&ctx, pci.clone(), PCI_CONFIG_PORT, PCI_CONFIG_PORT_LEN)?;

        let pending = match (boot, start) {
            (Some(boot), _) => create_vcpus(kvm, &vm, &ctx, config.cpus, VcpuStart::Boot(boot))?,
            (None, Some(snap)) => {
                snap.vm
                    .restore(&vm)
                    .context("restoring the VM's interrupt controllers and clock")?;
                let n = snap.vcpus.len() as u8;
                let vcpus = create_vcpus(kvm, &vm, &ctx, n, VcpuStart::Restore(&snap.vcpus))?;
                // Devices start once the VM can take their interrupts.
                lock(&pci).resume_all()?;
                // The guest learns of its new generation id (Linux reseeds its RNG).
                lock(&pm)
                    .raise_ged(GED_EVENT_VMGENID)
                    .context("notifying the guest of its new VM generation id")?;
                vcpus
            }
            (None, None) => unreachable!("a VM either boots or restores"),
        };
        let control = Arc::new(VmControl {
            ctx,
            threads: Mutex::new(Vec::new()),
            vm: vm.clone(),
            mem: mem.clone(),
            legacy: LegacyDevices {
                serial,
                cmos,
                pm,
                pci,
            },
            shutdown_requested: Mutex::new(false),
            started: Instant::now(),
            vcpus: pending.len() as u8,
            memory_mib: snapshot::memory::ram_bytes(&mem) >> 20,
            devices,
        });
        Ok(Self {
            _vm: vm,
            _mem: mem,
            control,
            pending,
            joins: Vec::new(),
        })
    }

    /// The handle the API uses.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// Spawn one thread per vCPU.
    pub fn start(&mut self) -> anyhow::Result<()> {
        kick::install_handler().context("installing the vCPU kick signal handler")?;
        for vcpu in self.pending.drain(..) {
            let id = vcpu.id;
            let join = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu.run_loop())
                .with_context(|| format!("spawning the vCPU {id} thread"))?;
            lock(&self.control.threads).push(join.as_pthread_t());
            self.joins.push(join);
        }
        Ok(())
    }

    /// Wait for the guest to end and stop every vCPU; returns why it ended.
    pub fn wait(mut self) -> GuestExit {
        let reason = self
            .control
            .ctx
            .exit
            .wait(None)
            .unwrap_or(GuestExit::VmmError);
        self.stop();
        reason
    }

    fn stop(&mut self) {
        self.control.ctx.control.set(Request::Stop);
        self.control.kick_all();
        for j in self.joins.drain(..) {
            if j.join().is_err() {
                tracing::error!("a vCPU thread panicked");
            }
        }
        lock(&self.control.threads).clear();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.stop();
    }
}
