"""Inside the kvm-sandbox: cold boot, snapshot, clones and a QEMU migration-file restore of one
guest (see scripts/bench/density); prints the measurements and the ratio lines."""
import json, os, socket, statistics, subprocess, sys, time

vmm, kernel, initrd, work, clones = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=4"
MEM_MIB = 256
BUDGET_MIB = 8192
TIMEOUT = 600.0
# Unix sockets cannot live on the sandbox's 9p share: keep them (and the snapshot) on its /tmp.
SOCKS = "/tmp/bench-density"
os.makedirs(SOCKS, exist_ok=True)


def ticks(path):
    try:
        with open(path, "rb") as f:
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return []
    return [int(l.split()[1]) for l in text.splitlines() if l.startswith("TICK ") and len(l.split()) >= 3]


def wait_tick(proc, serial, after, start, what):
    while True:
        t = [n for n in ticks(serial) if n > after]
        if t:
            return time.monotonic() - start, max(t)
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode} before a tick; see {serial}*")
        if time.monotonic() - start > TIMEOUT:
            sys.exit(f"{what}: no tick within {TIMEOUT} s; see {serial}")
        time.sleep(0.002)


def spawn(cmd, serial):
    open(serial, "wb").close()
    err = open(serial + ".stderr", "wb")
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)


def api(sock, method, path, body=None):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    data = json.dumps(body).encode() if body is not None else b""
    s.sendall(f"{method} {path} HTTP/1.1\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    reply = b""
    while chunk := s.recv(65536):
        reply += chunk
        if b"\r\n\r\n" in reply:
            head, _, rest = reply.partition(b"\r\n\r\n")
            n = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
            if n and len(rest) >= n[0]:
                break
    s.close()
    status = int(reply.split(b" ", 2)[1])
    if status != 200:
        sys.exit(f"{method} {path}: {reply.decode(errors='replace')}")


def private_kib(pid):
    """(private, pss) KiB of a process, from smaps_rollup."""
    fields = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0].endswith(":"):
                fields[parts[0][:-1]] = int(parts[1])
    return fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0), fields.get("Pss", 0)


def wait_socket(path, proc):
    deadline = time.monotonic() + TIMEOUT
    while not os.path.exists(path):
        if proc.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"no API socket {path}")
        time.sleep(0.01)


# 0. KSM for cold-booted phones (first, in the fresh sandbox): KSM_PHONES guests with --mergeable, then ksmd turned on until
# the merged page count settles; each phone's private memory before and after.
KSM = "/sys/kernel/mm/ksm/"
KSM_PHONES = 4


def ksm_read(name):
    with open(KSM + name) as f:
        return int(f.read())


def ksm_write(name, value):
    with open(KSM + name, "w") as f:
        f.write(str(value))


ksm_line = "ksm: not measured (this kernel has no KSM)"
if os.path.exists(KSM + "run"):
    saved = {n: ksm_read(n) for n in ("run", "pages_to_scan", "sleep_millisecs")}
    ksm_write("run", 2)  # unmerge whatever an earlier run left, so the count starts at zero
    ksm_write("run", 0)
    kprocs = []
    for i in range(KSM_PHONES):  # one at a time: four nested cold boots at once overload the sandbox
        s = os.path.join(work, f"ksm{i}.serial")
        p = spawn([vmm, "--kernel", kernel, "--initrd", initrd, "--cmdline", CMDLINE, "--cpus", "1",
                   "--memory", str(MEM_MIB), "--mergeable", "--serial", "file:" + s], s)
        kprocs.append((p, s))
        wait_tick(p, s, 0, time.monotonic(), f"mergeable phone {i}")
    time.sleep(2)
    before = [private_kib(p.pid)[0] for p, _ in kprocs]
    ksm_write("pages_to_scan", 20000)
    ksm_write("sleep_millisecs", 10)
    ksm_write("run", 1)
    t0, last_sharing, stable_since = time.monotonic(), -1, time.monotonic()
    while time.monotonic() - t0 < 90 and time.monotonic() - stable_since < 5:
        time.sleep(0.5)
        sharing = ksm_read("pages_sharing")
        if sharing != last_sharing:
            last_sharing, stable_since = sharing, time.monotonic()
    merge_s = time.monotonic() - t0
    after = [private_kib(p.pid)[0] for p, _ in kprocs]
    saved_mib = ksm_read("pages_sharing") * 4 / 1024
    for p, _ in kprocs:
        p.kill(); p.wait()
    ksm_write("run", 2)
    for n, v in saved.items():
        if n != "run":
            ksm_write(n, v)
    ksm_write("run", saved["run"])
    kb, ka = statistics.median(before) / 1024, statistics.median(after) / 1024
    ksm_line = (f"ksm: {KSM_PHONES} cold-booted --mergeable phones, private memory median {kb:.1f} MiB before "
                f"and {ka:.1f} MiB after ksmd settled ({merge_s:.0f} s), {saved_mib:.0f} MiB saved in all "
                f"(pages_sharing); ratio {ka / kb:.3f}")
print(ksm_line, flush=True)

# 1. Cold boot of our VMM, then pause and snapshot through the API.
serial = os.path.join(work, "cold.serial")
sock = os.path.join(SOCKS, "cold.sock")
start = time.monotonic()
cold = spawn([vmm, "--kernel", kernel, "--initrd", initrd, "--cmdline", CMDLINE, "--cpus", "1",
              "--memory", str(MEM_MIB), "--serial", "file:" + serial, "--api-socket", sock], serial)
cold_s, _ = wait_tick(cold, serial, 0, start, "cold boot")
wait_socket(sock, cold)
# On the sandbox's tmpfs, like a host's local disk: 9p does not serve shared file mappings well.
snap = os.path.join(SOCKS, "snap")
api(sock, "PUT", "/pause")
t0 = time.monotonic()
api(sock, "PUT", "/snapshot", {"dir": snap})
snap_s = time.monotonic() - t0
last = max(ticks(serial))
cold.kill(); cold.wait()
st = os.stat(os.path.join(snap, "memory"))
print(f"cold boot to first tick: {cold_s * 1000:.0f} ms; snapshot written in {snap_s * 1000:.0f} ms "
      f"(memory file {st.st_blocks * 512 >> 20} MiB of {MEM_MIB} MiB on disk)", flush=True)

# 2. Clones: all started together from the one snapshot.
procs = []
for i in range(clones):
    s = os.path.join(work, f"clone{i}.serial")
    procs.append((spawn([vmm, "--restore", snap, "--serial", "file:" + s], s), s, time.monotonic()))
clone_s = []
for i, (p, s, t) in enumerate(procs):
    took, _ = wait_tick(p, s, last, t, f"clone {i}")
    clone_s.append(took)
time.sleep(2)  # let every clone run on a little before its memory is read
mem = [private_kib(p.pid) for p, _, _ in procs]
for p, _, _ in procs:
    p.kill(); p.wait()
priv = statistics.median(m[0] for m in mem) / 1024
pss = statistics.median(m[1] for m in mem) / 1024
for i, (took, (pk, ps)) in enumerate(zip(clone_s, mem)):
    print(f"clone {i}: first tick {took * 1000:.0f} ms after start, private {pk / 1024:.1f} MiB, pss {ps / 1024:.1f} MiB")
clone_med = statistics.median(clone_s)

# 3. QEMU: the same guest booted cold, stopped, migrated to a file, restored with -incoming.
def qemu_cmd(serial, extra):
    return ["qemu-system-x86_64", "-M", "microvm", "-enable-kvm", "-cpu", "host", "-smp", "1",
            "-m", f"{MEM_MIB}M", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "file:" + serial, "-kernel", kernel, "-initrd", initrd, "-append", CMDLINE] + extra

def qmp(path, *commands):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rw")
    json.loads(f.readline())
    for cmd in ({"execute": "qmp_capabilities"},) + commands:
        f.write(json.dumps(cmd) + "\n"); f.flush()
        while True:
            msg = json.loads(f.readline())
            if "return" in msg or "error" in msg:
                break
        if "error" in msg:
            sys.exit(f"QMP {cmd}: {msg}")
    return s, f

qserial = os.path.join(work, "qemu.serial")
qmp_sock = os.path.join(SOCKS, "qemu.qmp")
qfile = os.path.join(SOCKS, "qemu.migration")
q = spawn(qemu_cmd(qserial, ["-qmp", f"unix:{qmp_sock},server=on,wait=off"]), qserial)
wait_tick(q, qserial, 0, time.monotonic(), "qemu cold boot")
wait_socket(qmp_sock, q)
# Migrated while running: the destination then resumes by itself once the stream is read (a
# stopped source would leave it paused, waiting for `cont`).
s, f = qmp(qmp_sock, {"execute": "migrate", "arguments": {"uri": f"exec:cat > {qfile}"}})
while True:
    f.write(json.dumps({"execute": "query-migrate"}) + "\n"); f.flush()
    msg = json.loads(f.readline())
    while "return" not in msg:
        msg = json.loads(f.readline())
    if msg["return"].get("status") == "completed":
        break
    if msg["return"].get("status") == "failed":
        sys.exit(f"QEMU migration failed: {msg}")
    time.sleep(0.05)
qlast = max(ticks(qserial))
q.kill(); q.wait()
rserial = os.path.join(work, "qemu-restore.serial")
t = time.monotonic()
r = spawn(qemu_cmd(rserial, ["-incoming", f"exec:cat {qfile}"]), rserial)
qemu_s, _ = wait_tick(r, rserial, qlast, t, "qemu restore")
r.kill(); r.wait()
print(f"qemu: migration file {os.path.getsize(qfile) >> 20} MiB, restore to first tick {qemu_s * 1000:.0f} ms", flush=True)

shared = st.st_blocks * 512 / 2**20
fit = int((BUDGET_MIB - shared) // max(priv, 0.1))
print(f"ours: cold boot {cold_s * 1000:.0f} ms, clone median {clone_med * 1000:.0f} ms ({clones} at once), "
      f"private median {priv:.1f} MiB, pss median {pss:.1f} MiB")
print(f"ratio: clone-vs-boot {clone_med / cold_s:.3f} (target <= 0.05)")
print(f"ratio: clone-vs-qemu-restore {clone_med / qemu_s:.3f} (ours {clone_med * 1000:.0f} ms, qemu {qemu_s * 1000:.0f} ms, target <= 0.5)")
print(f"ratio: phone-private-mem {priv / MEM_MIB:.3f} (median {priv:.1f} MiB of {MEM_MIB} MiB nominal, target <= 0.15)")
print(f"phones-in-budget: {fit} (budget {BUDGET_MIB} MiB: {shared:.0f} MiB of shared snapshot pages + {priv:.1f} MiB private each; projected from {clones} clones, serial-only test guest)")
