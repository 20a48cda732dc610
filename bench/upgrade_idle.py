#!/usr/bin/env python3
"""Binary upgrade with many idle plain sessions open (bench/README.md, upgrade).

Starts a release `strait` in front of an echo backend, opens N idle sessions
through it, then runs `strait upgrade` and reports: the time from the
command to the old generation's exit, how many sessions moved (the new
generation's /status), both generations' RSS, and whether every session
still echoes afterwards.

    python3 bench/upgrade_idle.py [--sessions 9000] [--binary target/release/strait]

Each session takes two descriptors in this script and two in the gateway:
with the machine's hard limit of 20,000 open files, 9,000 is the most.
"""

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request


def rss(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=9000)
    ap.add_argument("--binary", default="target/release/strait")
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    n = args.sessions

    async def echo(reader, writer):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    backend = await asyncio.start_server(echo, "127.0.0.1", 0, backlog=4096)
    bport = backend.sockets[0].getsockname()[1]
    tmp = tempfile.mkdtemp(prefix="strait-upgrade-bench-")
    port, status = 29400, 29401
    with open(f"{tmp}/kong.yml", "w") as f:
        f.write(f'_format_version: "3.0"\nservices:\n- url: tcp://127.0.0.1:{bport}\n  routes:\n'
                f'  - protocols: [tcp]\n    destinations: [{{port: {port}}}]\n')
    conf = f"{tmp}/strait.toml"
    with open(conf, "w") as f:
        f.write(f'prefix = "{tmp}/prefix"\ndatabase = "off"\ndeclarative_config = "{tmp}/kong.yml"\n'
                f'stream_listen = "127.0.0.1:{port} backlog=4096"\nadmin_listen = "off"\n'
                f'status_listen = "127.0.0.1:{status}"\nproxy_stream_access_log = "off"\n'
                f'worker_threads = 1\nlog_level = "warn"\ndrain_timeout = "60s"\n')
    gw = subprocess.Popen([args.binary, "start", "-c", conf], stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{status}/status", timeout=1)
            break
        except OSError:
            time.sleep(0.05)
    conns = []
    for i in range(n):
        conns.append(await asyncio.open_connection("127.0.0.1", port))
    for r, w in conns[:100]:
        w.write(b"x")
        await w.drain()
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"x"
    time.sleep(1)
    old_rss = rss(gw.pid)
    t0 = time.monotonic()
    out = subprocess.run([args.binary, "upgrade", "-c", conf], capture_output=True, text=True)
    ready = time.monotonic() - t0
    if out.returncode != 0:
        sys.exit(f"upgrade failed: {out.stderr}")
    new_pid = int(out.stdout.split("(pid ")[1].split(")")[0])
    while alive(gw.pid):
        gw.poll()
        await asyncio.sleep(0.005)
    exited = time.monotonic() - t0
    time.sleep(1)
    st = json.load(urllib.request.urlopen(f"http://127.0.0.1:{status}/status", timeout=5))
    new_rss = rss(new_pid)
    ok = 0
    for r, w in conns:
        w.write(b"y")
        await w.drain()
    for r, w in conns:
        if await asyncio.wait_for(r.readexactly(1), 10) == b"y":
            ok += 1
    up = st["generation"]["last_upgrade"]
    print(f"sessions open: {n}")
    print(f"strait upgrade returned (next generation ready): {ready * 1000:.0f} ms")
    print(f"old generation exited: {exited * 1000:.0f} ms after the command")
    print(f"moved: {up['sessions_moved']}, drained: {up['sessions_drained']}, closed: {up['sessions_closed']}")
    print(f"RSS old generation: {old_rss / 1e6:.1f} MB, new generation: {new_rss / 1e6:.1f} MB")
    print(f"sessions echoing after the upgrade: {ok}/{n}")
    for r, w in conns:
        w.close()
    subprocess.run(["kill", "-KILL", str(new_pid)])
    # The echo tasks still wait on their sockets: leave without tearing them down.
    sys.stdout.flush()
    os._exit(0)


asyncio.run(main())
