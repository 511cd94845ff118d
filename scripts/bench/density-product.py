#!/usr/bin/env python3
"""Density through the product, run inside one kvm-sandbox by `scripts/bench/density --product`.

Starts `cloudphone serve` (SQLite) and one `cloudphone agent` with the test phone image on the
sandbox's KVM, sets the host's overcommit policy, creates a phone profile and raises its warm
pool to 1 and, once that phone (snapshotted by the agent) is ready, to MAX; then records when each phone first reaches `ready` until placement
stops (no phone starting and the count unchanged for STALL seconds). Prints phones ready, the
time to the first and to the Nth phone, which limit stopped placement, and `cloudphone hosts`
(committed against used).

usage: density-product.py BIN_DIR IMAGE_DIR MAX LOG_DIR
State (database, phones) lives on the sandbox's tmpfs (Unix sockets cannot live on its 9p
share); the service's and agent's logs are copied to LOG_DIR at the end.
env: BENCH_PROFILE_MIB (256), BENCH_VCPU_PCT (2000), BENCH_MEMORY_PCT (1000),
     BENCH_RESERVE_MIB (512), BENCH_CPU_LIMIT_PCT (100), BENCH_STALL_S (60),
     BENCH_TIMEOUT_S (1500)
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

LIVE = ("creating", "booting", "ready", "assigned", "resetting")
STARTING = ("creating", "booting", "resetting")


def env_int(name, default):
    v = os.environ.get(name, str(default))
    if not re.fullmatch(r"[0-9]+", v):
        sys.exit(f"density-product: {name} must be a non-negative integer, got {v!r}")
    return int(v)


class Api:
    """The control service's REST API as the bootstrap operator."""

    def __init__(self, url, token):
        self.url, self.token = url, token

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"{self.url}/api/v1{path}", data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.load(r)


def start_service(bin_dir, work, port):
    """`cloudphone serve` on 127.0.0.1:port; returns (process, admin token)."""
    log = open(os.path.join(work, "serve.log"), "w+")
    proc = subprocess.Popen(
        [f"{bin_dir}/cloudphone", "serve", "--listen", f"127.0.0.1:{port}",
         "--data-dir", os.path.join(work, "data"), "--bootstrap-admin", "admin"],
        stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    while time.time() < deadline:
        log.seek(0)
        text = log.read()
        m = re.search(r"token: (\S+)", text)
        if m and "listening on" in text:
            return proc, m.group(1)
        if proc.poll() is not None:
            sys.exit(f"density-product: cloudphone serve exited:\n{text}")
        time.sleep(0.2)
    sys.exit("density-product: cloudphone serve did not start in 60 s")


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    bin_dir, image, max_phones, log_dir = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    work = tempfile.mkdtemp(prefix="density-product-")
    profile_mib = env_int("BENCH_PROFILE_MIB", 256)
    policy = {
        "vcpu_pct": env_int("BENCH_VCPU_PCT", 2000),
        "memory_pct": env_int("BENCH_MEMORY_PCT", 1000),
        "reserve_mib": env_int("BENCH_RESERVE_MIB", 512),
        "cpu_busy_limit_pct": env_int("BENCH_CPU_LIMIT_PCT", 100),
    }
    stall_s, timeout_s = env_int("BENCH_STALL_S", 60), env_int("BENCH_TIMEOUT_S", 1500)
    # The sandbox brings loopback up only when it has a NIC; service and agent talk over it.
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    port = 18080
    url = f"http://127.0.0.1:{port}"
    os.makedirs(work, exist_ok=True)
    serve, token = start_service(bin_dir, work, port)
    api = Api(url, token)
    root = os.path.join(work, "agent")
    os.makedirs(root, exist_ok=True)
    mem_mib = int(open("/proc/meminfo").read().split("MemTotal:")[1].split()[0]) // 1024
    enrolled = api.call("POST", "/hosts", {
        "name": "sandbox", "state_root": root, "vcpus": os.cpu_count(),
        "memory_mib": mem_mib, "max_phones": max_phones})
    host_id = enrolled["host"]["id"]
    api.call("PUT", f"/hosts/{host_id}/policy", policy)
    agent_log = open(os.path.join(work, "agent.log"), "w")
    agent = subprocess.Popen(
        [f"{bin_dir}/cloudphone", "agent", "--control", url, "--join-token",
         enrolled["join_token"], "--state-dir", root, "--vmm", f"{bin_dir}/cloudphone-vmm",
         "--boot-img", f"{image}/boot.img", "--vendor-boot", f"{image}/vendor_boot.img",
         "--max-phones", str(max_phones)],
        stdout=agent_log, stderr=subprocess.STDOUT)
    try:
        measure(api, host_id, policy, profile_mib, max_phones, stall_s, timeout_s, agent)
        env = dict(os.environ, CLOUDPHONE_URL=url, CLOUDPHONE_TOKEN=token)
        print(subprocess.run([f"{bin_dir}/cloudphone", "hosts"], env=env, check=True,
                             capture_output=True, text=True).stdout, flush=True)
    finally:
        agent.terminate()
        agent.wait()
        serve.terminate()
        serve.wait()
        for log in ("serve.log", "agent.log"):
            shutil.copy(os.path.join(work, log), log_dir)


def measure(api, host_id, policy, profile_mib, max_phones, stall_s, timeout_s, agent):
    print(f"product: host policy {policy}; profile 1 vCPU, {profile_mib} MiB; warm pool 1, "
          f"then raised to {max_phones} once the first phone (the snapshot) is ready", flush=True)
    profile = api.call("POST", "/profiles", {
        "name": "density", "width": 720, "height": 1280, "dpi": 320, "vcpus": 1,
        "memory_mib": profile_mib, "image": "", "pool_size": 1})
    start = time.time()
    ready_at = {}
    last_change, last_live = start, -1
    busiest = 0
    raised = None
    while True:
        now = time.time()
        if agent.poll() is not None:
            sys.exit("density-product: the agent exited (see agent.log)")
        phones = api.call("GET", "/phones")
        for p in phones:
            if p["state"] in ("ready", "assigned") and p["id"] not in ready_at:
                ready_at[p["id"]] = now - start
                print(f"product: phone {len(ready_at)} ready at {now - start:.1f} s", flush=True)
        if ready_at and raised is None:
            # Cold boots all at once would swamp the host; clones of the snapshot do not.
            api.call("PATCH", f"/profiles/{profile['id']}", {"pool_size": max_phones})
            raised = now - start
        live = sum(p["state"] in LIVE for p in phones)
        starting = sum(p["state"] in STARTING for p in phones)
        host = api.call("GET", f"/hosts/{host_id}")
        busiest = max(busiest, host.get("cpu_busy_pct") or 0)
        if live != last_live:
            last_change, last_live = now, live
        if raised is not None and starting == 0 and now - last_change >= stall_s:
            break
        if now - start >= timeout_s:
            print(f"product: timed out after {timeout_s} s with {starting} phones starting",
                  flush=True)
            break
        time.sleep(0.5)
    times = sorted(ready_at.values())
    load = host["load"]
    print(f"product: placement stopped at {live} live phones; {stop_reason(host, profile_mib, max_phones)}")
    print(f"product: host memory {host['memory_mib']} MiB, available {host.get('mem_available_mib')} MiB, "
          f"phones use {load['used_memory_mib']} MiB (counted {load['counted_memory_mib']}) of "
          f"{load['committed_memory_mib']} MiB committed; CPU busy now {host.get('cpu_busy_pct')} %, "
          f"at most {busiest} %")
    print(f"product: phones-ready {len(times)}")
    if live:
        print(f"product: private-mib-per-phone {load['used_memory_mib'] / live:.1f} "
              f"(nominal {profile_mib})")
    if times:
        print(f"product: time-to-first-phone {times[0]:.1f} s")
        print(f"product: time-to-phone-{len(times)} {times[-1]:.1f} s "
              f"({times[-1] - raised:.1f} s after the pool was raised)")


def stop_reason(host, mib, max_phones):
    """Which of the scheduler's limits (scheduler::HostLoad::fits) one more phone would break."""
    p, load = host["policy"], host["load"]
    reasons = []
    if load["phones"] >= min(host["max_phones"], max_phones):
        reasons.append("phone slots")
    if (load["committed_vcpus"] + 1) * 100 > host["vcpus"] * p["vcpu_pct"]:
        reasons.append("vCPU overcommit")
    if (load["committed_memory_mib"] + mib) * 100 > host["memory_mib"] * p["memory_pct"]:
        reasons.append("nominal memory overcommit")
    if load["counted_memory_mib"] + mib > host["memory_mib"]:
        reasons.append("memory by use")
    avail = host.get("mem_available_mib")
    if avail is not None and avail < p["reserve_mib"] + mib:
        reasons.append("memory reserve")
    busy = host.get("cpu_busy_pct")
    if busy is not None and busy > p["cpu_busy_limit_pct"]:
        reasons.append("CPU busy limit")
    return "limit reached: " + (", ".join(reasons) or "none (phones failed to start?)")


if __name__ == "__main__":
    main()
