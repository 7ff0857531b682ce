#!/usr/bin/env python3
"""make bench-jobs: jobs through shoal against the same containers made
straight on the engines, in one run.

Three extra dockerds (scripts/extra-dockerd.sh) play three hosts. For
each offered load (COUNT containers spread evenly over SECONDS):
  - baseline: the same create + start calls sent straight to the engines
    over their sockets, round robin, by as many workers as shoal has (ten
    per engine); latency is from the request's due time to the start's
    answer;
  - shoal: three release nodes on those engines, COUNT `POST /v1/jobs`
    round robin at the nodes (a 429 is sent again after its Retry-After);
    latency is the job's created_at to its started_at (the owner hearing
    `running`).
Every container runs `sleep 2`. Prints a Markdown section on stdout.

    bench/jobs.py SHOAL_BINARY [COUNT:SECONDS ...]
"""
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "shoal-test/busybox:latest"
ENGINES = ["bj1", "bj2", "bj3"]
TOKEN = "bench-jobs-token-" + uuid.uuid4().hex[:16]
WORKERS_PER_ENGINE = 10


def say(*a):
    print("bench-jobs:", *a, file=sys.stderr, flush=True)


def extra(*args):
    subprocess.run(["bash", f"{ROOT}/scripts/extra-dockerd.sh", *args], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=120)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(120)
        self.sock.connect(self.path)


def engine_call(engine, method, path, body=None):
    c = UnixHTTP(f"/run/shoal-{engine}.sock")
    c.request(method, path, body=json.dumps(body) if body is not None else None,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def clean(engine):
    subprocess.run(f"DOCKER_HOST=unix:///run/shoal-{engine}.sock docker ps -aq | "
                   f"xargs -r env DOCKER_HOST=unix:///run/shoal-{engine}.sock docker rm -f",
                   shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round((len(xs) - 1) * p))] if xs else 0


def paced(count, seconds, workers, act):
    """Calls act(i, due) for i in 0..count, the i-th at its due time (an
    even pace over `seconds`, from half a second on), from `workers`
    threads; answers when all are done, with the pace's start."""
    t0 = time.monotonic() + 0.5
    spacing = seconds / count
    next_i, lock = [0], threading.Lock()

    def worker():
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                return
            due = t0 + i * spacing
            time.sleep(max(0, due - time.monotonic()))
            act(i, due)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return t0


def baseline(count, seconds):
    """create + start straight on the engines, paced like the jobs."""
    lat, errors, lock = [], [], threading.Lock()

    def create_and_start(i, due):
        e = ENGINES[i % len(ENGINES)]
        s, d = engine_call(e, "POST", f"/containers/create?name=bench-{uuid.uuid4().hex[:12]}",
                           {"Image": IMAGE, "Cmd": ["sleep", "2"], "Labels": {"bench": "1"}})
        if s != 201:
            with lock:
                errors.append(d[:200])
            return
        cid = json.loads(d)["Id"]
        s, d = engine_call(e, "POST", f"/containers/{cid}/start")
        with lock:
            if s in (204, 304):
                lat.append((time.monotonic() - due) * 1000)
            else:
                errors.append(d[:200])

    t0 = paced(count, seconds, WORKERS_PER_ENGINE * len(ENGINES), create_and_start)
    # From the first call's due time to the last start.
    took = time.monotonic() - t0
    return {"n": len(lat), "errors": len(errors), "p50": pct(lat, .5), "p99": pct(lat, .99),
            "max": max(lat, default=0), "took": took}


def api(port, method, path, body=None, token=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    c.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, r.getheader("Retry-After"), data


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_nodes(shoal, work):
    ports = [free_port() for _ in ENGINES]
    peers = ",".join(f"127.0.0.1:{p}" for p in ports)
    procs = []
    for e, p in zip(ENGINES, ports):
        log = open(f"{work}/{e}.log", "w")
        procs.append(subprocess.Popen(
            [shoal, "node", "--node-id", f"node-{e}", "--listen", f"127.0.0.1:{p}",
             "--docker-host", f"unix:///run/shoal-{e}.sock", "--peers", peers,
             "--no-history", "--data-dir", f"{work}/{e}", "--api-token", TOKEN],
            stdout=subprocess.DEVNULL, stderr=log))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if all(api(p, "GET", "/readyz")[0] == 200 for p in ports):
                return ports, procs
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("bench-jobs: the nodes did not become ready in 60 s")


def through_shoal(ports, count, seconds):
    ids, refused, lock = [], [0], threading.Lock()

    def create(i, _due):
        port = ports[i % len(ports)]
        for _ in range(60):
            s, retry, d = api(port, "POST", "/v1/jobs",
                               {"image": IMAGE, "arguments": ["sleep", "2"]}, TOKEN)
            if s == 202:
                with lock:
                    ids.append(json.loads(d)["job_id"])
                break
            if s != 429:
                raise SystemExit(f"bench-jobs: Create answered {s}: {d[:300]}")
            with lock:
                refused[0] += 1
            time.sleep(float(retry or 1))

    start = time.monotonic()
    paced(count, seconds, WORKERS_PER_ENGINE * len(ports), create)
    sent = time.monotonic() - start
    want = set(ids)
    deadline = time.time() + 600
    while time.time() < deadline:
        s, _, d = api(ports[0], "GET", "/v1/jobs?limit=10000")
        jobs = [j for j in json.loads(d)["jobs"] if j["job_id"] in want]
        if len(jobs) == len(want) and all(j["status"] in ("exited", "failed") for j in jobs):
            break
        time.sleep(1)
    took = time.monotonic() - start
    started = [j for j in jobs if j.get("started_at")]
    lat = [j["started_at"] - j["created_at"] for j in started]
    failed = sum(1 for j in jobs if j["status"] == "failed")
    # From the first Create to the last start, as the baseline counts.
    span = (max(j["started_at"] for j in started) - min(j["created_at"] for j in started)) / 1000 \
        if started else took
    return {"n": len(lat), "failed": failed, "refused": refused[0], "p50": pct(lat, .5),
            "p99": pct(lat, .99), "max": max(lat, default=0), "sent": sent, "took": span}


def main():
    shoal = sys.argv[1]
    loads = [tuple(int(x) for x in a.split(":")) for a in sys.argv[2:]] or [(100, 30), (500, 30)]
    work = tempfile.mkdtemp()
    for e in ENGINES:
        extra("start", e)
    rows = []
    try:
        for count, seconds in loads:
            for e in ENGINES:
                clean(e)
            say(f"baseline: {count} create+start straight on the engines over {seconds} s")
            b = baseline(count, seconds)
            for e in ENGINES:
                clean(e)
            say(f"shoal: {count} jobs over {seconds} s")
            ports, procs = start_nodes(shoal, work)
            try:
                s = through_shoal(ports, count, seconds)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(timeout=30)
            rows.append((count, seconds, b, s))
            say(f"{count}/{seconds}s: baseline {b}, shoal {s}")
    finally:
        for e in ENGINES:
            extra("stop", e, "--purge")
    commit = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty", "--exclude", "*"],
                            capture_output=True, text=True).stdout.strip()
    cpu = subprocess.run(["sh", "-c", "lscpu | awk -F: '/Model name/ {gsub(/^ +/, \"\", $2); print $2; exit}'"],
                         capture_output=True, text=True).stdout.strip()
    docker = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                            capture_output=True, text=True).stdout.strip()
    table = []
    for count, seconds, b, s in rows:
        table.append(f"| {count} over {seconds} s | engines directly | {b['n']} started, {b['errors']} errors "
                     f"| {b['p50']:.0f} ms | {b['p99']:.0f} ms | {b['max']:.0f} ms | {b['n'] / b['took']:.1f}/s |")
        table.append(f"| {count} over {seconds} s | shoal jobs | {s['n']} started, {s['failed']} failed, "
                     f"{s['refused']} Creates answered 429 and sent again | {s['p50']:.0f} ms | {s['p99']:.0f} ms "
                     f"| {s['max']:.0f} ms | {s['n'] / s['took']:.1f}/s |")
    print(f"""## Jobs: Create to running, against the engines directly

Written by `make bench-jobs` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, shoal {commit}, release
build; `bench/jobs.py`). Three extra dockerds (Docker {docker}, vfs storage,
as `make test` runs them) play three hosts on this one machine. Each
container runs `sleep 2` from the local busybox test image. In each row the
same number of containers is offered at an even pace over the same time:

- *engines directly*: the create and start calls shoal makes, sent
  straight to the engines' sockets, round robin, by 30 workers (shoal's
  ten per node); from each call's due time to the start's answer;
- *shoal jobs*: `POST /v1/jobs` round robin at three nodes (default
  `--queue-size` 100, `--worker-count` 10); from the job's `created_at` to
  its `started_at` (the owner hearing `running`). A 429 is sent again
  after its `Retry-After`.

The rate is the containers started over the time from the first request
to the last start.

| load | path | outcome | p50 | p99 | max | containers/s |
|---|---|---|---|---|---|---|
{chr(10).join(table)}

What the three engines take on two cores bounds both paths; when the
offered load is above it, jobs wait in the node queues (up to 100 each)
and the time to running is that wait.

- machine: {cpu}, {os.cpu_count()} cores
""")


if __name__ == "__main__":
    main()
