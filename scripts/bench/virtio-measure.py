"""Inside the kvm-sandbox: boot cloudphone-vmm and QEMU in turn on the same disk file and TAP,
collect the guest's block figures from its serial console and time the network both ways from
the host side. Called by scripts/bench/virtio (see there for what is measured)."""
import argparse, os, socket, statistics, subprocess, sys, time

ap = argparse.ArgumentParser()
for name in ("vmm", "kernel", "initrd", "work"):
    ap.add_argument(name)
ap.add_argument("--runs", type=int, required=True)
ap.add_argument("--disk-mib", type=int, required=True)
ap.add_argument("--net-mib", type=int, required=True)
args = ap.parse_args()

CMDLINE = "console=ttyS0 panic=-1 quiet loglevel=4"
TIMEOUT = 1200.0
TAP, HOST_IP, GUEST_IP = "cpbench0", "10.78.0.1", "10.78.0.2"
NET_BYTES = args.net_mib << 20
OURS, QEMU = "cloudphone-vmm", "qemu"


def sh(*cmd):
    subprocess.run(cmd, check=True)


# This script runs under `unshare --net`: the TAP and its addresses exist only here.
sh("ip", "link", "set", "lo", "up")
sh("ip", "tuntap", "add", "dev", TAP, "mode", "tap")
sh("ip", "addr", "add", HOST_IP + "/24", "dev", TAP)
sh("ip", "link", "set", TAP, "up")

# One fully allocated backing file, shared by both VMMs, on the sandbox's own tmpfs (the 9p
# share the work dir lives on would dominate the measurement).
os.makedirs("/tmp/bench-virtio", exist_ok=True)
DISK = "/tmp/bench-virtio/disk.raw"
with open(DISK, "wb") as f:
    chunk = b"\xa5" * (1 << 20)
    for _ in range(args.disk_mib):
        f.write(chunk)


def command(name, serial):
    if name == OURS:
        return [args.vmm, "--kernel", args.kernel, "--initrd", args.initrd, "--cmdline", CMDLINE,
                "--cpus", "1", "--memory", "256", "--serial", "file:" + serial,
                "--disk", DISK, "--net", "tap=" + TAP]
    # Both userspace device models: vhost off; host page cache for the disk, like ours.
    return ["qemu-system-x86_64", "-M", "q35", "-enable-kvm", "-cpu", "host", "-smp", "1",
            "-m", "256M", "-nodefaults", "-no-user-config", "-display", "none",
            "-serial", "file:" + serial, "-kernel", args.kernel, "-initrd", args.initrd,
            "-append", CMDLINE,
            "-drive", f"file={DISK},format=raw,if=none,id=d0,cache=writeback,aio=threads",
            "-device", "virtio-blk-pci,drive=d0",
            "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
            "-device", "virtio-net-pci,netdev=n0"]


class Guest:
    """A running VMM and its serial log."""

    def __init__(self, name, run):
        self.serial = os.path.join(args.work, f"{name}-{run}.serial")
        open(self.serial, "wb").close()
        self.err = open(self.serial + ".stderr", "wb")
        self.proc = subprocess.Popen(command(name, self.serial), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=self.err)
        self.start = time.monotonic()

    def text(self):
        with open(self.serial, "rb") as f:
            return f.read().decode(errors="replace")

    def wait_for(self, marker):
        while marker not in self.text():
            if ("BENCH_ERROR" in self.text() or self.proc.poll() is not None
                    or time.monotonic() - self.start > TIMEOUT):
                sys.exit(f"no {marker} (exit {self.proc.poll()}); see {self.serial}*")
            time.sleep(0.05)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.err.close()


def blk_results(text):
    """`BENCH <kind> <bytes> <ms>` lines -> {kind: (MiB, seconds)}."""
    res = {}
    for line in text.splitlines():
        parts = line.strip().split()
        if len(parts) == 4 and parts[0] == "BENCH":
            res[parts[1]] = (int(parts[2]) / 2**20, max(int(parts[3]), 10) / 1e3)
    return res


def net_rx():
    """Host -> guest: seconds to move NET_BYTES into the guest's `nc -l`."""
    deadline = time.monotonic() + 60
    while True:
        try:
            s = socket.create_connection((GUEST_IP, 5001), timeout=5)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    s.settimeout(TIMEOUT)
    chunk = b"\x5a" * (1 << 20)
    t = time.monotonic()
    for _ in range(NET_BYTES >> 20):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    while s.recv(1 << 20):  # the guest's nc closes after it has read everything
        pass
    elapsed = time.monotonic() - t
    s.close()
    return elapsed


def net_tx(listener):
    """Guest -> host: seconds from accept to the guest's close; the byte count must match."""
    conn, _ = listener.accept()
    conn.settimeout(TIMEOUT)
    t, total = time.monotonic(), 0
    while data := conn.recv(1 << 20):
        total += len(data)
    elapsed = time.monotonic() - t
    conn.close()
    if total != NET_BYTES:
        sys.exit(f"host received {total} bytes from the guest, expected {NET_BYTES}")
    return elapsed


def run(name, i):
    listener = socket.create_server((HOST_IP, 5002))
    listener.settimeout(TIMEOUT)
    guest = Guest(name, i)
    try:
        guest.wait_for("BENCH_NET_READY")
        rx_s = net_rx()
        tx_s = net_tx(listener)
        guest.wait_for("BENCH_DONE")
        guest.proc.wait(timeout=60)
    finally:
        listener.close()
        guest.stop()
    res = blk_results(guest.text())
    mib = NET_BYTES / 2**20
    res["net-rx"], res["net-tx"] = (mib, rx_s), (mib, tx_s)
    print(f"run {i} {name}: " + ", ".join(f"{k} {m / s:.1f} MiB/s" for k, (m, s) in res.items()),
          flush=True)
    return res


names = [OURS, QEMU]
results = {n: [] for n in names}
for i in range(args.runs):
    for n in names:
        results[n].append(run(n, i))


def rate(name, kinds):
    """Median over runs of (total MiB / total seconds) over `kinds`."""
    return statistics.median(sum(r[k][0] for k in kinds) / sum(r[k][1] for k in kinds)
                             for r in results[name])


for k in ["seq-write", "seq-read", "rand-read", "rand-write", "net-rx", "net-tx"]:
    print(f"{k}: {OURS} {rate(OURS, [k]):.1f} MiB/s, {QEMU} {rate(QEMU, [k]):.1f} MiB/s"
          f" (median of {args.runs})")
groups = [("blk-rand", ["rand-read", "rand-write"]), ("blk-seq", ["seq-write", "seq-read"]),
          ("net", ["net-rx", "net-tx"])]
for label, kinds in groups:
    ours, qemu = rate(OURS, kinds), rate(QEMU, kinds)
    print(f"{label}: ours {ours:.1f} MiB/s, qemu {qemu:.1f} MiB/s")
for label, kinds in groups:
    target = "" if label == "blk-rand" else " (target >= 1.0)"
    print(f"ratio: {label} {rate(OURS, kinds) / rate(QEMU, kinds):.2f}{target}")
