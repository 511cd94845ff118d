#!/usr/bin/env python3
"""Boots the static phone-agent in a real Linux guest under QEMU (virtio-gpu, virtio-keyboard,
virtio-tablet, virtio-console) and checks it end to end: PHONE_READY on hvc1, a screendump that
matches the host-rendered golden (status bar masked: the clock differs), a tap on "Info" that
opens the Info page, BACK that returns home, and a drag on Paint that leaves a stroke.

usage: guest_smoke.py --agent PATH --kernel-dir DIR --work DIR [--kvm]
This is a developer check of the agent against QEMU's devices (the tier-2 tests run it under
cloudphone-vmm). Exit 0 when every check passes.
"""
import argparse, json, os, shutil, socket, struct, subprocess, sys, time, zlib

MODULES = ["virtio_pci", "virtio_console", "virtio_input", "evdev", "virtio-gpu", "vmw_vsock_virtio_transport"]


def sh(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def build_initramfs(agent, kdir, work):
    ver = open(os.path.join(kdir, "version")).read().strip()
    root = os.path.join(work, "root")
    shutil.rmtree(root, ignore_errors=True)
    for d in ["bin", "dev", "proc", "sys", "lib/modules"]:
        os.makedirs(os.path.join(root, d))
    shutil.copy("/bin/busybox", os.path.join(root, "bin/busybox"))
    shutil.copy(agent, os.path.join(root, "bin/phone-agent"))
    order = []
    for m in MODULES:
        for line in sh("modprobe", "--show-depends", "-d", kdir, "-S", ver, m).splitlines():
            if line.startswith("insmod "):
                path = line.split()[1]
                if path not in order:
                    order.append(path)
    names = []
    for path in order:
        name = os.path.basename(path).replace(".xz", "")
        data = open(path, "rb").read()
        if path.endswith(".xz"):
            data = subprocess.run(["xz", "-dc"], input=data, capture_output=True, check=True).stdout
        open(os.path.join(root, "lib/modules", name), "wb").write(data)
        names.append(name)
    init = "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n"
    init += "mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev\n"
    init += "".join(f"insmod /lib/modules/{n}\n" for n in names)
    init += "echo INIT_DONE\nexec /bin/phone-agent\n"
    open(os.path.join(root, "init"), "w").write(init)
    os.chmod(os.path.join(root, "init"), 0o755)
    cpio = os.path.join(work, "initrd.cpio")
    files = sh("sh", "-c", "cd %s && find . | sort" % root)
    with open(cpio, "wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(), stdout=out, check=True)
    return cpio


class Qmp:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        for _ in range(100):
            try:
                self.s.connect(path)
                break
            except OSError:
                time.sleep(0.1)
        self.f = self.s.makefile("rw")
        self.f.readline()
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "return" in r or "error" in r:
                if "error" in r:
                    raise RuntimeError(f"{name}: {r['error']}")
                return r["return"]


def read_ppm(path):
    data = open(path, "rb").read()
    parts = data.split(b"\n", 3)
    w, h = map(int, parts[1].split())
    return w, h, parts[3]


def write_png(path, w, h, rgb):
    raw = b"".join(b"\0" + rgb[y * w * 3:(y + 1) * w * 3] for y in range(h))
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    open(path, "wb").write(png)


def read_png_rgb(path):
    data = open(path, "rb").read()
    pos, idat, w, h = 8, b"", 0, 0
    while pos < len(data):
        n, t = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + n]
        if t == b"IHDR":
            w, h = struct.unpack(">II", body[:8])
        elif t == b"IDAT":
            idat += body
        pos += 12 + n
    raw, out, prev = zlib.decompress(idat), bytearray(), bytearray(w * 3)
    for y in range(h):
        f, line = raw[y * (w * 3 + 1)], bytearray(raw[y * (w * 3 + 1) + 1:(y + 1) * (w * 3 + 1)])
        for i in range(len(line)):
            a = line[i - 3] if i >= 3 else 0
            b, c = prev[i], prev[i - 3] if i >= 3 else 0
            if f == 1: line[i] = (line[i] + a) & 255
            elif f == 2: line[i] = (line[i] + b) & 255
            elif f == 3: line[i] = (line[i] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        out += line
        prev = line
    return w, h, bytes(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agent", required=True)
    ap.add_argument("--kernel-dir", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--kvm", action="store_true")
    ap.add_argument("--width", type=int, default=720)
    ap.add_argument("--height", type=int, default=1280)
    ap.add_argument("--cmdline", default="", help="extra kernel cmdline, e.g. cloudphone.display=fbdev")
    a = ap.parse_args()
    os.makedirs(a.work, exist_ok=True)
    W, H = a.width, a.height
    initrd = build_initramfs(a.agent, a.kernel_dir, a.work)
    report, console, qmp_path = (os.path.join(a.work, n) for n in ("report.log", "console.log", "qmp.sock"))
    for p in (report, console, qmp_path):
        if os.path.exists(p):
            os.unlink(p)
    accel = ["-enable-kvm", "-cpu", "host"] if a.kvm else ["-cpu", "max"]
    qemu = subprocess.Popen(["qemu-system-x86_64", *accel, "-M", "q35", "-m", "512", "-smp", "2", "-nodefaults",
        "-display", "none", "-vga", "none", "-kernel", os.path.join(a.kernel_dir, "vmlinuz"), "-initrd", initrd,
        "-append", "console=ttyS0 quiet cloudphone.profile=smoke androidboot.hardware=qemu_smoke " + a.cmdline,
        "-serial", "file:" + console, "-qmp", f"unix:{qmp_path},server=on,wait=off",
        "-device", f"virtio-gpu-pci,xres={W},yres={H}", "-device", "virtio-keyboard-pci", "-device", "virtio-tablet-pci",
        "-device", "virtio-serial-pci", "-chardev", "null,id=c0", "-device", "virtconsole,chardev=c0",
        "-chardev", f"file,id=c1,path={report}", "-device", "virtconsole,chardev=c1"])
    ok = True
    try:
        qmp = Qmp(qmp_path)

        def wait_line(prefix, timeout=240, after=0):
            end = time.time() + timeout
            while time.time() < end:
                if os.path.exists(report):
                    lines = open(report).read().splitlines()[after:]
                    for i, l in enumerate(lines):
                        if l.startswith(prefix):
                            return l, after + i + 1
                time.sleep(0.2)
            sys.exit(f"timeout waiting for {prefix!r}; console tail:\n" + open(console).read()[-3000:])

        def shot(name):
            time.sleep(1.0)
            ppm = os.path.join(a.work, name + ".ppm")
            qmp.cmd("screendump", filename=ppm)
            w, h, rgb = read_ppm(ppm)
            write_png(os.path.join(a.work, name + ".png"), w, h, rgb)
            return w, h, rgb

        def tap(x, y, slide=None):
            ax = lambda v, size: v * 32767 // (size - 1)
            ev = lambda x, y: [{"type": "abs", "data": {"axis": "x", "value": ax(x, W)}}, {"type": "abs", "data": {"axis": "y", "value": ax(y, H)}}]
            qmp.cmd("input-send-event", events=ev(x, y) + [{"type": "btn", "data": {"down": True, "button": "left"}}])
            for (sx, sy) in slide or []:
                time.sleep(0.05)
                qmp.cmd("input-send-event", events=ev(sx, sy))
            time.sleep(0.1)
            qmp.cmd("input-send-event", events=[{"type": "btn", "data": {"down": False, "button": "left"}}])

        def key(qcode):
            for down in (True, False):
                qmp.cmd("input-send-event", events=[{"type": "key", "data": {"down": down, "key": {"type": "qcode", "data": qcode}}}])

        def check(cond, what):
            nonlocal ok
            print(("PASS " if cond else "FAIL ") + what)
            ok &= bool(cond)

        line, n = wait_line("PHONE_READY")
        t0 = time.time()
        print("report:", line)
        check(line == f"PHONE_READY width={W} height={H}", "PHONE_READY line")
        line, n = wait_line("SCREEN app=", after=n)
        check(line == "SCREEN app=home", f"first page: {line}")
        w, h, rgb = shot("home")
        golden = os.path.join(a.work, "golden-home.png")
        sh(a.agent, "render", "--screen", "home", "--width", str(W), "--height", str(H), "--out", golden)
        gw, gh, grgb = read_png_rgb(golden)
        layout = {}
        for l in sh(a.agent, "layout", "--width", str(W), "--height", str(H)).splitlines():
            f = dict(kv.split("=") for kv in l.split()[1:])
            layout[f["name"]] = tuple(int(f[k]) for k in "xywh")
        sb = layout["status_bar"]
        diff = sum(1 for i in range(sb[3] * w * 3, len(rgb), 3) if abs(rgb[i] - grgb[i]) + abs(rgb[i + 1] - grgb[i + 1]) + abs(rgb[i + 2] - grgb[i + 2]) > 6)
        check((w, h) == (gw, gh) and diff == 0, f"home screen matches golden below the status bar ({diff} px differ)")
        ix, iy, iw, ih = layout["Info"]
        tap(ix + iw // 2, iy + ih // 2)
        line, n = wait_line("SCREEN app=", after=n)
        check(line == "SCREEN app=info", f"tap Info -> {line}")
        w, h, rgb = shot("info")
        text = open(report).read()
        check("kind=touch slot=0 action=down" in text and "frame_us=" in text, "INPUT touch lines reported")
        key("ac_back")
        line, n = wait_line("SCREEN app=", after=n)
        check(line == "SCREEN app=home", f"BACK -> {line}")
        px, py, pw, ph = layout["Paint"]
        tap(px + pw // 2, py + ph // 2)
        line, n = wait_line("SCREEN app=", after=n)
        check(line == "SCREEN app=paint", f"tap Paint -> {line}")
        tap(100, 500, slide=[(200, 600), (300, 700)])
        time.sleep(1)
        w, h, rgb = shot("paint")
        o = (600 * w + 200) * 3
        check(rgb[o:o + 3] == bytes([0xe5, 0x39, 0x35]), f"paint stroke pixel at (200,600) is {rgb[o:o+3].hex()}")
        moves = [l for l in open(report).read().splitlines() if "action=move" in l]
        check(len(moves) >= 2, f"{len(moves)} move lines; last: {moves[-1] if moves else None}")
        key("power")
        _, _, off = shot("power-off")
        check(bytes([0xe5, 0x39, 0x35]) * 3 not in off, "POWER off: the scanout no longer shows the page")
        key("power")
        w, h, rgb = shot("paint-after-power")
        powers = [l for l in open(report).read().splitlines() if "key=POWER down=1" in l]
        check(len(powers) == 2 and rgb[o:o + 3] == bytes([0xe5, 0x39, 0x35]), f"POWER off/on keeps the stroke ({len(powers)} POWER lines)")
        print("elapsed after ready: %.1fs" % (time.time() - t0))
    finally:
        qemu.kill()
        qemu.wait()
    print("report log:\n" + open(report).read()[-1500:])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
