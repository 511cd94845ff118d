//! Helpers shared by the end-to-end (tier 2) tests: the cached guest kernel, a busybox
//! initramfs builder, a `cloudphone-vmm` process wrapper and a per-VM API client.
//!
//! Tier-2 tests are `#[ignore = "tier 2: ..."]`; `scripts/test` builds them on the host and runs
//! them with `--ignored` inside `scripts/kvm-sandbox` (one sandbox boot per batch), because this
//! host's `/dev/kvm` cannot boot a normal guest.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub mod adb;
pub mod control;
pub mod http;
pub mod phone;
pub mod webdriver;

use anyhow::{anyhow, bail, Context, Result};
use cloudphone_vmm_api::VmmApi;

/// How often the waiters below look at logs, sockets and the child process.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Cap on one VMM API reply in tests (a full-screen PNG screenshot is the largest).
const API_MAX_REPLY: usize = 64 << 20;

/// Call `probe` every `every` until it yields a value or fails; `Ok(None)` once `timeout` has
/// passed. The one polling loop behind the waiters of these tests (VM logs, sockets, the
/// control API, the browser).
pub fn poll<T>(
    timeout: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<Option<T>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe()? {
            return Ok(Some(value));
        }
        if Instant::now() > deadline {
            return Ok(None);
        }
        std::thread::sleep(every);
    }
}

/// The repository root (this crate lives in `<root>/tests`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests crate has a parent directory")
        .to_path_buf()
}

/// The cache shared with the scripts (`CLOUDPHONE_CACHE`, default `<root>/.cache`).
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CLOUDPHONE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"))
}

/// Brings loopback up: `scripts/kvm-sandbox` starts with `lo` down, and the control service,
/// the adb server and the tunnels listen on 127.0.0.1. Harmless where it is already up (or
/// where the caller may not change links).
pub fn loopback_up() {
    let _ = std::process::Command::new("ip")
        .args(["link", "set", "lo", "up"])
        .status();
}

/// A scratch directory for one test, outside `/tmp` (the sandbox hides host `/tmp`) and
/// inside the target dir (which `scripts/test` shares read-write with the sandbox).
pub fn scratch_dir(test: &str) -> PathBuf {
    let target = target_profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| repo_root().join("target"));
    let dir = target
        .join("tier2-scratch")
        .join(format!("{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// `target/<profile>` of the running test binary (`target/<profile>/deps/<test>-<hash>`).
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .expect("test binary lives in target/<profile>/deps")
}

/// A binary of this workspace built next to the test binary (override with `CLOUDPHONE_<NAME>`,
/// e.g. `CLOUDPHONE_VMM` for `cloudphone-vmm`).
pub fn workspace_binary(name: &str) -> PathBuf {
    let var = format!(
        "CLOUDPHONE_{}",
        name.trim_start_matches("cloudphone-")
            .to_uppercase()
            .replace('-', "_")
    );
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let path = target_profile_dir().join(name);
    assert!(
        path.exists(),
        "{} not built: run `cargo build -p <its package>` (or set {var})",
        path.display()
    );
    path
}

/// The `cloudphone-vmm` binary under test.
pub fn vmm_binary() -> PathBuf {
    workspace_binary("cloudphone-vmm")
}

/// The Debian kernel cached by `scripts/fetch-guest-kernel`.
pub struct GuestKernel {
    /// bzImage to boot.
    pub vmlinuz: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// `lib/modules/<version>` with a depmod-generated `modules.dep`.
    pub modules: PathBuf,
}

/// A static guest helper built from a workspace example (`RUSTFLAGS="-C
/// target-feature=+crt-static" cargo build -p PACKAGE --release --example NAME --target
/// x86_64-unknown-linux-gnu`, which `scripts/test` does), to copy into an initramfs; override
/// with `CLOUDPHONE_<NAME>` (e.g. `CLOUDPHONE_NET_PUMP`). Panics with the build command when
/// it is missing.
pub fn guest_example(package: &str, name: &str) -> PathBuf {
    let var = format!("CLOUDPHONE_{}", name.to_uppercase().replace('-', "_"));
    if let Some(path) = std::env::var_os(&var) {
        return PathBuf::from(path);
    }
    let target = target_profile_dir()
        .parent()
        .map(Path::to_path_buf)
        .expect("target/<profile> has a parent");
    let path = target
        .join("x86_64-unknown-linux-gnu/release/examples")
        .join(name);
    assert!(
        path.exists(),
        "{} missing: build it with RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build -p \
         {package} --release --example {name} --target x86_64-unknown-linux-gnu (or set {var})",
        path.display()
    );
    path
}

/// The cached guest kernel; panics with the command to run when it is missing.
pub fn guest_kernel() -> GuestKernel {
    let dir = cache_dir().join("kernel");
    let version = std::fs::read_to_string(dir.join("version")).unwrap_or_else(|_| {
        panic!(
            "no guest kernel in {}: run scripts/fetch-guest-kernel",
            dir.display()
        )
    });
    let version = version.trim().to_string();
    GuestKernel {
        vmlinuz: dir.join("vmlinuz"),
        modules: dir.join("lib/modules").join(&version),
        version,
    }
}

impl GuestKernel {
    /// Module files (relative to [`Self::modules`]) needed to load `names`, dependencies first.
    pub fn resolve_modules(&self, names: &[&str]) -> Result<Vec<String>> {
        let dep_text = std::fs::read_to_string(self.modules.join("modules.dep"))
            .with_context(|| format!("read modules.dep in {}", self.modules.display()))?;
        let mut deps: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut by_name: BTreeMap<String, String> = BTreeMap::new();
        for line in dep_text.lines() {
            let Some((module, rest)) = line.split_once(':') else {
                continue;
            };
            let name = module_name(module);
            by_name.insert(name, module.to_string());
            deps.insert(
                module.to_string(),
                rest.split_whitespace().map(str::to_string).collect(),
            );
        }
        let mut order = Vec::new();
        let mut seen = HashSet::new();
        for name in names {
            let key = name.replace('-', "_");
            let module = by_name.get(&key).ok_or_else(|| {
                anyhow!(
                    "kernel module {name} not found in {}",
                    self.modules.display()
                )
            })?;
            visit_module(module, &deps, &mut seen, &mut order);
        }
        Ok(order)
    }
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).replace('-', "_")
}

fn visit_module(
    module: &str,
    deps: &BTreeMap<String, Vec<String>>,
    seen: &mut HashSet<String>,
    order: &mut Vec<String>,
) {
    if !seen.insert(module.to_string()) {
        return;
    }
    // modules.dep lists the full transitive closure; load the deepest first.
    if let Some(list) = deps.get(module) {
        for dep in list.iter().rev() {
            visit_module(dep, deps, seen, order);
        }
    }
    order.push(module.to_string());
}

/// Builds an uncompressed newc initramfs: busybox (static) + kernel modules + files + `/init`.
///
/// The generated `/init` mounts proc/sys/devtmpfs, loads the requested modules in dependency
/// order, then runs the test's script body with `/bin/sh`.
pub struct Initramfs {
    modules: Vec<String>,
    files: Vec<(String, Vec<u8>, u32)>,
    script: String,
}

impl Default for Initramfs {
    fn default() -> Self {
        Self::new()
    }
}

impl Initramfs {
    /// An initramfs with nothing but busybox.
    pub fn new() -> Self {
        Self {
            modules: Vec::new(),
            files: Vec::new(),
            script: String::new(),
        }
    }

    /// Load these kernel modules (and their dependencies) before the script runs.
    pub fn modules(mut self, names: &[&str]) -> Self {
        self.modules.extend(names.iter().map(|s| s.to_string()));
        self
    }

    /// Add a file with contents `data` at `dest` (absolute path in the guest).
    pub fn bytes(mut self, dest: &str, data: Vec<u8>, mode: u32) -> Self {
        self.files.push((dest.to_string(), data, mode));
        self
    }

    /// Copy a host file into the guest at `dest`, keeping its permission bits.
    pub fn file(self, dest: &str, src: &Path) -> Result<Self> {
        let data = std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
        let mode = std::fs::metadata(src)?.permissions().mode() & 0o7777;
        Ok(self.bytes(dest, data, mode))
    }

    /// The shell script run by `/init` after setup (busybox sh; `set -x` is not applied).
    pub fn script(mut self, body: &str) -> Self {
        self.script = body.to_string();
        self
    }

    /// Write the initramfs to `out`.
    pub fn build(&self, kernel: &GuestKernel, out: &Path) -> Result<()> {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists())
            .ok_or_else(|| anyhow!("busybox not installed: apt-get install busybox-static"))?;
        let mut cpio = CpioWriter::default();
        for dir in [
            "bin", "sbin", "dev", "proc", "sys", "tmp", "mnt", "etc", "lib",
        ] {
            cpio.dir(dir);
        }
        cpio.file("bin/busybox", &std::fs::read(busybox)?, 0o755);
        let modules =
            kernel.resolve_modules(&self.modules.iter().map(String::as_str).collect::<Vec<_>>())?;
        let mut load = String::new();
        for module in &modules {
            let data = std::fs::read(kernel.modules.join(module))
                .with_context(|| format!("read module {module}"))?;
            let name = format!("lib/modules/{}.ko", module_name(module));
            cpio.file(&name, &data, 0o644);
            load.push_str(&format!(
                "insmod /{name} || echo \"INIT: insmod {name} failed\"\n"
            ));
        }
        for (dest, data, mode) in &self.files {
            cpio.file(dest.trim_start_matches('/'), data, *mode);
        }
        let init = format!(
            "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin:/sbin\n\
             mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
             {load}echo INIT_READY\n{}\n",
            self.script
        );
        cpio.file("init", init.as_bytes(), 0o755);
        let bytes = cpio.finish();
        std::fs::write(out, bytes).with_context(|| format!("write {}", out.display()))?;
        Ok(())
    }
}

/// Minimal `newc` cpio archive writer (the format the kernel unpacks as an initramfs).
#[derive(Default)]
struct CpioWriter {
    out: Vec<u8>,
    ino: u32,
    dirs: HashSet<String>,
}

impl CpioWriter {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8]) {
        self.ino += 1;
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            0,
            0,
            name.len() + 1,
            0
        );
        self.out.extend_from_slice(header.as_bytes());
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while self.out.len() % 4 != 0 {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        if self.dirs.insert(name.to_string()) {
            self.entry(name, 0o040755, &[]);
        }
    }

    /// Add a regular file, creating its parent directories first.
    fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        let mut parent = String::new();
        let parts: Vec<&str> = name.split('/').collect();
        for part in &parts[..parts.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(part);
            self.dir(&parent.clone());
        }
        self.entry(name, 0o100000 | mode, data);
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.out
    }
}

/// A running `cloudphone-vmm` with its serial console captured to a file.
pub struct VmProcess {
    child: Child,
    /// Where the guest's serial console (ttyS0) is written.
    pub serial_log: PathBuf,
    /// Where the VMM's own stderr (tracing logs) is written.
    pub vmm_log: PathBuf,
    /// The per-VM API socket.
    pub api_socket: PathBuf,
    status: Option<ExitStatus>,
}

impl VmProcess {
    /// Start `cloudphone-vmm` with `args` plus `--serial file:<dir>/serial.log` and
    /// `--api-socket <dir>/api.sock`, logs in `dir`.
    pub fn spawn(dir: &Path, args: &[String]) -> Result<Self> {
        Self::spawn_with_env(dir, args, &[])
    }

    /// [`Self::spawn`] with extra environment variables for the VMM (e.g. test-only hooks).
    pub fn spawn_with_env(dir: &Path, args: &[String], env: &[(&str, &str)]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let serial_log = dir.join("serial.log");
        let vmm_log = dir.join("vmm.log");
        // Unix sockets cannot be bound on the sandbox's 9p share (ENXIO): keep them on /tmp.
        let sock_dir = std::env::temp_dir().join(format!(
            "cloudphone-{}-{}",
            std::process::id(),
            dir.file_name().and_then(|n| n.to_str()).unwrap_or("vm")
        ));
        std::fs::create_dir_all(&sock_dir)?;
        let api_socket = sock_dir.join("api.sock");
        let _ = std::fs::remove_file(&serial_log);
        let _ = std::fs::remove_file(&api_socket);
        std::fs::write(&serial_log, b"")?;
        let child = Command::new(vmm_binary())
            .args(args)
            .arg("--serial")
            .arg(format!("file:{}", serial_log.display()))
            .arg("--api-socket")
            .arg(&api_socket)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&vmm_log)?)
            .spawn()
            .context("spawn cloudphone-vmm")?;
        Ok(Self {
            child,
            serial_log,
            vmm_log,
            api_socket,
            status: None,
        })
    }

    /// The arguments that boot `kernel` with `initrd` on `cpus` vCPUs and `memory_mib` of RAM,
    /// console on ttyS0 (add device options after these).
    pub fn boot_args(
        kernel: &GuestKernel,
        initrd: &Path,
        cpus: u32,
        memory_mib: u32,
    ) -> Vec<String> {
        vec![
            "--kernel".into(),
            kernel.vmlinuz.display().to_string(),
            "--initrd".into(),
            initrd.display().to_string(),
            "--cmdline".into(),
            "console=ttyS0 panic=-1 quiet loglevel=4".into(),
            "--cpus".into(),
            cpus.to_string(),
            "--memory".into(),
            memory_mib.to_string(),
        ]
    }

    /// Everything the guest printed on its serial console so far.
    pub fn serial(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.serial_log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// The VMM's own log so far.
    pub fn vmm_log(&self) -> String {
        std::fs::read_to_string(&self.vmm_log).unwrap_or_default()
    }

    /// Wait until a line of the VMM's own log contains `marker`; returns that line.
    pub fn wait_for_vmm_log(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let log = self.vmm_log.clone();
        self.wait_for_line_in(&log, marker, timeout)
    }

    /// Wait until a serial line contains `marker`; returns that line. Fails on timeout or when
    /// the VMM exits first, with both logs in the error.
    pub fn wait_for_line(&mut self, marker: &str, timeout: Duration) -> Result<String> {
        let serial = self.serial_log.clone();
        self.wait_for_line_in(&serial, marker, timeout)
    }

    /// Like [`Self::wait_for_line`], for another file the guest writes to (a console port).
    pub fn wait_for_line_in(
        &mut self,
        file: &Path,
        marker: &str,
        timeout: Duration,
    ) -> Result<String> {
        self.wait_for_lines_in(file, &format!("{marker:?}"), timeout, |lines| {
            lines
                .iter()
                .find(|l| l.contains(marker))
                .map(|line| line.to_string())
        })
    }

    /// Wait until `probe`, given every complete serial line so far, yields a value (e.g. a
    /// marker seen twice). Fails like [`Self::wait_for_line`].
    pub fn wait_for_serial<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        probe: impl FnMut(&[&str]) -> Option<T>,
    ) -> Result<T> {
        let serial = self.serial_log.clone();
        self.wait_for_lines_in(&serial, what, timeout, probe)
    }

    fn wait_for_lines_in<T>(
        &mut self,
        file: &Path,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut(&[&str]) -> Option<T>,
    ) -> Result<T> {
        self.poll_until(timeout, &format!("{what} in {}", file.display()), || {
            let text = std::fs::read(file)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default();
            // Only complete lines: the guest may be in the middle of writing the last one.
            let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
            let lines: Vec<&str> = complete.lines().map(|l| l.trim_end_matches('\r')).collect();
            probe(&lines)
        })
    }

    /// Wait for the VMM to exit; returns its exit code (None if killed by a signal).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<i32>> {
        let exited = poll(timeout, POLL_INTERVAL, || {
            Ok(self.try_exit()?.map(|status| status.code()))
        })?;
        match exited {
            Some(code) => Ok(code),
            None => bail!(
                "VMM still running after {timeout:?}\n{}",
                self.diagnostics()
            ),
        }
    }

    /// Wait for the VMM to exit and panic, with the logs, unless it exits with `code`.
    pub fn assert_exit(&mut self, code: i32, timeout: Duration) {
        let got = self.wait_exit(timeout).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(got, Some(code), "VMM exit status\n{}", self.diagnostics());
    }

    /// Poll `probe` until it yields a value; fails when the VMM exited without it, or on
    /// `timeout`.
    fn poll_until<T>(
        &mut self,
        timeout: Duration,
        what: &str,
        mut probe: impl FnMut() -> Option<T>,
    ) -> Result<T> {
        let found = poll(timeout, POLL_INTERVAL, || {
            // Exit status first: a VMM seen exited has written everything before the probe.
            let exited = self.try_exit()?;
            if let Some(value) = probe() {
                return Ok(Some(value));
            }
            match exited {
                Some(status) => bail!(
                    "VMM exited ({status}) before {what}\n{}",
                    self.diagnostics()
                ),
                None => Ok(None),
            }
        })?;
        found.ok_or_else(|| anyhow!("no {what} within {timeout:?}\n{}", self.diagnostics()))
    }

    /// The VMM's exit status once it has exited, `None` while it runs.
    pub fn try_exit(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    /// The VMM's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Serial and VMM logs, for failure messages.
    pub fn diagnostics(&self) -> String {
        format!(
            "--- serial ({}) ---\n{}\n--- vmm log ({}) ---\n{}",
            self.serial_log.display(),
            tail(&self.serial(), 60),
            self.vmm_log.display(),
            tail(&self.vmm_log(), 60)
        )
    }

    /// Call the per-VM API; returns (status code, body).
    pub fn api(&self, method: &str, path: &str, body: Option<&str>) -> Result<(u16, String)> {
        api_request(&self.api_socket, method, path, body)
    }

    /// Wait (up to `timeout`) until the API socket accepts connections.
    pub fn wait_for_api(&mut self, timeout: Duration) -> Result<()> {
        let socket = self.api_socket.clone();
        let what = format!("API socket {}", socket.display());
        self.poll_until(timeout, &what, || {
            UnixStream::connect(&socket).ok().map(drop)
        })
    }
}

impl Drop for VmProcess {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One call on the per-VM API through the shared client; returns (status, body). Raw method,
/// path and body, so tests can send what a typed call never would.
pub fn api_request(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Result<(u16, String)> {
    let api = VmmApi::new(socket)
        .with_timeout(Duration::from_secs(30))
        .with_max_reply(API_MAX_REPLY);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the VMM API client")?;
    let (status, reply) = runtime.block_on(api.exchange(method, path, body.map(str::to_owned)))?;
    Ok((
        status.as_u16(),
        String::from_utf8_lossy(&reply).into_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpio_entries_are_aligned_and_terminated() {
        let mut w = CpioWriter::default();
        w.dir("bin");
        w.file("bin/x", b"hello", 0o755);
        let out = w.finish();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("bin/x\0"));
        assert!(text.contains("TRAILER!!!"));
        // header(110) + "bin\0" padded to 4 => next entry starts 4-aligned
        assert_eq!(&out[0..6], b"070701");
    }

    #[test]
    fn module_names_normalise_dashes_and_suffixes() {
        assert_eq!(
            module_name("kernel/drivers/virtio/virtio_pci.ko"),
            "virtio_pci"
        );
        assert_eq!(module_name("kernel/x/kvm-amd.ko.xz"), "kvm_amd");
    }
}
