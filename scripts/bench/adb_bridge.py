"""Reach a test phone's adbd from a benchmark: Debian's `adb` client with a private HOME, key
and server port, and a local TCP port bridged to the VMM's hybrid vsock socket (CONNECT 5555)
that first writes the CLOUDPHONE-ADB key preamble naming that client's key, as the host
tunnel does. Used by scripts/bench/adb and scripts/bench/display."""
import os, socket, subprocess, tempfile, threading, time


def _relay(src, dst):
    try:
        while chunk := src.recv(1 << 20):
            dst.sendall(chunk)
    except OSError:
        pass
    for s in (src, dst):
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def vsock_connect(uds, port=5555):
    """A stream to guest vsock `port` through the VMM's hybrid vsock socket."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(uds)
    s.sendall(f"CONNECT {port}\n".encode())
    line = b""
    while not line.endswith(b"\n"):  # byte by byte: the adb bytes that follow stay unread
        b = s.recv(1)
        if not b:
            raise OSError(f"vsock CONNECT {port} closed: {line!r}")
        line += b
    if not line.startswith(b"OK "):
        raise OSError(f"vsock CONNECT {port} answered {line!r}")
    return s


def bridge(open_stream, keys):
    """Listens on 127.0.0.1; each client gets open_stream(), the preamble for `keys` (base64
    Android public keys), then relayed bytes. Returns the port."""
    preamble = b"CLOUDPHONE-ADB 1\n" + b"".join(b"KEY " + k.encode() + b"\n" for k in keys) + b"END\n"
    lst = socket.socket()
    lst.bind(("127.0.0.1", 0))
    lst.listen(8)

    def serve():
        while True:
            c, _ = lst.accept()
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                g = open_stream()
            except OSError:
                c.close()
                continue
            g.sendall(preamble)
            threading.Thread(target=_relay, args=(c, g), daemon=True).start()
            threading.Thread(target=_relay, args=(g, c), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return lst.getsockname()[1]


class AdbClient:
    """`adb` with its own HOME (fresh key) and its own adb server on 127.0.0.1 (adb's
    autostart connects to `localhost`, which may mean ::1, absent in the kvm-sandbox); call
    kill() at the end."""

    def __init__(self):
        self.home = tempfile.mkdtemp(prefix="adb-home-")
        os.makedirs(f"{self.home}/.android")
        subprocess.run(["adb", "keygen", f"{self.home}/.android/adbkey"], check=True,
                       env=dict(os.environ, HOME=self.home), capture_output=True)
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.server_port = probe.getsockname()[1]
        probe.close()
        self.server = subprocess.Popen(
            ["adb", "-L", f"tcp:{self.server_port}", "server", "nodaemon"],
            # No USB or mDNS discovery (only the TCP device is wanted; in the kvm-sandbox the
            # server stalled before listening with them on).
            env=dict(os.environ, HOME=self.home, ADB_USB="0", ADB_MDNS="0", ADB_EMU="0"), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.server_port)).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the adb server did not start")
                time.sleep(0.05)
        self.serial = None

    def key(self):
        with open(f"{self.home}/.android/adbkey.pub") as f:
            return f.read().split(" ")[0].strip()

    def run(self, *args, check=True, timeout=300):
        env = dict(os.environ, HOME=self.home, ADB_SERVER_SOCKET=f"tcp:127.0.0.1:{self.server_port}")
        env.pop("ADB_VENDOR_KEYS", None)
        p = subprocess.run(["adb", *args], env=env, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise RuntimeError(f"adb {' '.join(args)}: exit {p.returncode}: {p.stdout!r} {p.stderr!r}")
        return p

    def on(self, *args, **kw):
        return self.run("-s", self.serial, *args, **kw)

    def connect(self, port, timeout=60):
        """Connects to 127.0.0.1:port and waits until the device is online."""
        self.serial = f"127.0.0.1:{port}"
        self.run("connect", self.serial)
        deadline = time.monotonic() + timeout
        while self.on("get-state", check=False).stdout.strip() != b"device":
            if time.monotonic() > deadline:
                raise RuntimeError(f"adb device {self.serial} never came online")
            time.sleep(0.2)

    def kill(self):
        self.server.kill()
        self.server.wait()


def unix_connect(path):
    """A stream to an adbd on a host Unix socket (`phone-agent adbd --unix PATH`)."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    return s
