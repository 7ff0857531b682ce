#!/usr/bin/env python3
"""The cost of many /v1/watch streams at one node (make bench-watch).

    watch_bench.py HOST PORT NODE_PID WATCHERS STARTS IMAGE OUT.json

Twice, the same churn of real containers on this host's Docker (STARTS
`docker run`, each followed by its `docker rm -f`, one at a time): first
with no watcher (the baseline), then with WATCHERS streams open at the
node, each filtered to the churn's names. Records the node's CPU time
during each churn, its memory before and with the watchers, how long each
change took to reach the first and the last watcher, and whether every
watcher got every change once. Loopback only; bounded in count and time.
"""

import asyncio
import json
import os
import sys
import time

HOST, PORT, PID, WATCHERS, STARTS, IMAGE, OUT = sys.argv[1:8]
PORT, PID, WATCHERS, STARTS = int(PORT), int(PID), int(WATCHERS), int(STARTS)
PREFIX = f"bw{os.getpid()}-"
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds():
    fields = open(f"/proc/{PID}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def memory_kib():
    status = dict(l.split(":", 1) for l in open(f"/proc/{PID}/status") if ":" in l)
    return int(status["VmRSS"].split()[0]), int(status.get("RssAnon", "0 kB").split()[0])


class Watcher:
    def __init__(self):
        self.synced = asyncio.Event()
        self.seen = []  # (kind, name, monotonic)
        self.resets = 0

    async def run(self, stop):
        reader, writer = await asyncio.open_connection(HOST, PORT)
        writer.write(f"GET /v1/watch?name={PREFIX} HTTP/1.1\r\nHost: {HOST}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"watch answered {status!r}")
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        pending = b""
        try:
            while not stop.is_set():
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                if size == 0:
                    return
                pending += await reader.readexactly(size)
                await reader.readexactly(2)
                while b"\n\n" in pending:
                    block, pending = pending.split(b"\n\n", 1)
                    self.take(block.decode())
        finally:
            writer.close()

    def take(self, block):
        event, data = None, None
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
        if event == "synced":
            self.synced.set()
        elif event == "reset":
            self.resets += 1
        elif event in ("added", "removed"):
            self.seen.append((event, data["container"]["names"][0], time.monotonic()))


async def docker(*args):
    p = await asyncio.create_subprocess_exec("docker", *args, stdout=asyncio.subprocess.DEVNULL,
                                             stderr=asyncio.subprocess.PIPE)
    _, err = await p.communicate()
    if p.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args)}: {err.decode().strip()}")


async def churn(tag):
    """STARTS containers, each run then removed; returns when each call
    began, by (kind, name), and the node's CPU seconds over the churn."""
    began = {}
    cpu0, t0 = cpu_seconds(), time.monotonic()
    for i in range(STARTS):
        name = f"{PREFIX}{tag}{i}"
        began[("added", name)] = time.monotonic()
        await docker("run", "-d", "--name", name, IMAGE, "sleep", "600")
        await asyncio.sleep(0.2)
        began[("removed", name)] = time.monotonic()
        await docker("rm", "-f", name)
        await asyncio.sleep(0.2)
    await asyncio.sleep(1.0)
    return began, cpu_seconds() - cpu0, time.monotonic() - t0


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))] if values else None


async def main():
    result = {"watchers": WATCHERS, "starts": STARTS}
    rss, anon = memory_kib()
    result["idle_rss_kib"], result["idle_anon_kib"] = rss, anon
    _, cpu, secs = await churn("base")
    result["baseline"] = {"cpu_s": cpu, "wall_s": secs, "changes": 2 * STARTS}

    stop = asyncio.Event()
    watchers = [Watcher() for _ in range(WATCHERS)]
    t0 = time.monotonic()
    tasks = []
    for i, w in enumerate(watchers):
        tasks.append(asyncio.create_task(w.run(stop)))
        if i % 100 == 99:
            await asyncio.sleep(0.05)
    await asyncio.wait_for(asyncio.gather(*(w.synced.wait() for w in watchers)), 120)
    result["open_s"] = time.monotonic() - t0
    await asyncio.sleep(1.0)
    rss, anon = memory_kib()
    result["watching_rss_kib"], result["watching_anon_kib"] = rss, anon
    began, cpu, secs = await churn("live")
    result["watched"] = {"cpu_s": cpu, "wall_s": secs, "changes": 2 * STARTS}
    stop.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    first, last, spread, complete, doubled = [], [], [], 0, 0
    for key, at in began.items():
        arrivals = []
        for w in watchers:
            got = [t for (k, n, t) in w.seen if (k, n) == key]
            if len(got) > 1:
                doubled += 1
            if got:
                arrivals.append(got[0] - at)
        if len(arrivals) == WATCHERS:
            complete += 1
        if arrivals:
            first.append(min(arrivals) * 1000)
            last.append(max(arrivals) * 1000)
            spread.append((max(arrivals) - min(arrivals)) * 1000)
    result["changes_to_every_watcher"] = complete
    result["doubled"] = doubled
    result["resets"] = sum(w.resets for w in watchers)
    result["first_ms"] = {"p50": pct(first, 50), "p99": pct(first, 99), "max": max(first, default=None)}
    result["last_ms"] = {"p50": pct(last, 50), "p99": pct(last, 99), "max": max(last, default=None)}
    result["spread_ms"] = {"p50": pct(spread, 50), "p99": pct(spread, 99), "max": max(spread, default=None)}
    json.dump(result, open(OUT, "w"), indent=1)
    print(json.dumps(result))


asyncio.run(main())
