"""Measures Rivetr (see bench/rivetr/run, which builds the binaries first).

Prints a Markdown report on stdout; progress goes to stderr.
"""

import http.client
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

BIN = sys.argv[1]
APPS = int(os.environ.get("APPS", "20"))
REDEPLOYS = int(os.environ.get("REDEPLOYS", "20"))
DURATION = int(os.environ.get("DURATION", "10"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
DOMAIN = "bench.test"


def log(*a):
    print("#", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(*args, cwd=None):
    subprocess.run(args, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def backend_repo(path):
    """A git repository whose image is nginx copied FROM scratch with its libraries."""
    rootfs = os.path.join(path, "rootfs")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    files = [nginx]
    for line in subprocess.run(["ldd", nginx], capture_output=True, text=True).stdout.splitlines():
        m = re.search(r"(/\S+)", line)
        if m:
            files.append(m.group(1))
    for f in files:
        dest = os.path.join(rootfs, f.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        shutil.copy2(os.path.realpath(f), dest)
    os.makedirs(os.path.join(rootfs, "etc"), exist_ok=True)
    os.makedirs(os.path.join(rootfs, "tmp"), exist_ok=True)
    open(os.path.join(rootfs, "tmp", ".keep"), "w").close()
    with open(os.path.join(rootfs, "etc/passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n")
    with open(os.path.join(rootfs, "etc/group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    with open(os.path.join(rootfs, "etc/bench-nginx.conf"), "w") as f:
        f.write(
            "daemon off; master_process off; worker_processes 1; user root;\n"
            "error_log stderr warn; pid /tmp/nginx.pid;\n"
            "events { worker_connections 4096; }\n"
            "http { access_log off; client_body_temp_path /tmp/b; proxy_temp_path /tmp/p;\n"
            " fastcgi_temp_path /tmp/f; uwsgi_temp_path /tmp/u; scgi_temp_path /tmp/s;\n"
            " keepalive_requests 1000000;\n"
            " server { listen 8080; location / { return 200 \"ok\\n\"; } } }\n"
        )
    with open(os.path.join(path, "Dockerfile"), "w") as f:
        f.write('FROM scratch\nCOPY rootfs/ /\nCMD ["' + nginx + '", "-c", "/etc/bench-nginx.conf"]\n')
    with open(os.path.join(path, "rivetr.toml"), "w") as f:
        f.write('[health]\npath = "/"\ninterval_ms = 20\n')
    run("git", "init", "-q", "-b", "main", cwd=path)
    run("git", "-c", "user.email=b@bench.test", "-c", "user.name=b", "add", "-A", cwd=path)
    run("git", "-c", "user.email=b@bench.test", "-c", "user.name=b", "commit", "-q", "-m", "backend", cwd=path)


class Api:
    def __init__(self, base, token):
        self.base, self.token = base, token

    def call(self, method, path, body=None):
        req = urllib.request.Request(self.base + path, method=method)
        req.add_header("authorization", "Bearer " + self.token)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            req.add_header("content-type", "application/json")
        with urllib.request.urlopen(req, data, timeout=30) as r:
            text = r.read().decode()
            return json.loads(text) if text.startswith(("{", "[")) else text

    def deploy_and_wait(self, app):
        dep = self.call("POST", f"/api/apps/{app}/deploy")["deployment"]
        deadline = time.time() + 180
        while time.time() < deadline:
            d = self.call("GET", f"/api/deployments/{dep}")
            if d["status"] in ("running", "failed"):
                if d["status"] != "running":
                    raise SystemExit(f"deployment {dep} of {app} failed: {d.get('reason')}")
                return dep
            time.sleep(0.05)
        raise SystemExit(f"deployment {dep} of {app} did not end")

    def switch_ms(self, dep):
        text = self.call("GET", f"/api/deployments/{dep}/logs")
        m = re.search(r"traffic switched to deployment \d+ \((\d+) ms after the image was ready\)", text)
        return int(m.group(1)) if m else None


def oha(url, host, seconds):
    out = subprocess.run(
        ["taskset", "-c", "1", "oha", "--no-tui", "--ipv4", "-c", "64", "-z", f"{seconds}s",
         "--host", host, "--output-format", "json", url],
        capture_output=True, text=True, check=True)
    j = json.loads(out.stdout)
    codes = j.get("statusCodeDistribution", {})
    return j["summary"]["requestsPerSec"], codes, j.get("errorDistribution", {})


def load_loop(router, host, stop, counts):
    """Keep-alive GETs without pause; counts answers that are not 200."""
    conn = None
    while not stop.is_set():
        try:
            if conn is None:
                conn = http.client.HTTPConnection(router.split(":")[0], int(router.split(":")[1]), timeout=10)
            conn.request("GET", "/", headers={"Host": host})
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                counts["ok"] += 1
            else:
                counts["bad"] += 1
                counts["what"].append(str(r.status))
        except Exception as e:  # a broken connection is a failed request too
            counts["bad"] += 1
            counts["what"].append(type(e).__name__)
            conn = None


def main():
    work = tempfile.mkdtemp(prefix="rivetr-bench-")
    router_port, api_port = free_port(), free_port()
    network = f"rivetr-bench-{os.getpid()}"
    config = os.path.join(work, "server.toml")
    with open(config, "w") as f:
        f.write(
            f'data_dir = "{work}/data"\ndatabase = "{work}/rivetr.db"\nkey_file = "{work}/rivetr.key"\n'
            f'router_listen = ["127.0.0.1:{router_port}"]\napi_listen = "127.0.0.1:{api_port}"\n'
            f'base_domain = "{DOMAIN}"\nnetwork = "{network}"\ndrain_timeout_secs = 5\n'
            f'stop_grace_secs = 1\nkeep_images = 3\nlog = "warn"\n')
    server = subprocess.Popen(["taskset", "-c", "0", f"{BIN}/rivetr", "serve", "--config", config],
                              stdout=subprocess.PIPE, stderr=open(os.path.join(work, "server.log"), "w"), text=True)
    proxy = None
    apps = []
    try:
        server.stdout.readline()
        token = server.stdout.readline().strip().rsplit(" ", 1)[1]
        api = Api(f"http://127.0.0.1:{api_port}", token)
        time.sleep(3)
        idle0 = rss_kib(server.pid)
        log(f"idle RSS with 0 apps: {idle0} KiB")

        repo = os.path.join(work, "repo")
        os.makedirs(repo)
        backend_repo(repo)
        for i in range(APPS):
            name = f"b{i:02d}"
            api.call("POST", "/api/apps", {"name": name, "git": repo})
            apps.append(name)
        t0 = time.time()
        first_switch = []
        for name in apps:
            dep = api.deploy_and_wait(name)
            first_switch.append(api.switch_ms(dep))
        log(f"{APPS} apps deployed in {time.time() - t0:.1f} s")
        time.sleep(5)
        idle20 = rss_kib(server.pid)
        log(f"idle RSS with {APPS} apps: {idle20} KiB")

        # The same backend container behind mtls-proxy's plain listener.
        status = api.call("GET", "/api/apps/b00")
        upstream = status["routed"]["upstreams"][0]
        proxy_port = free_port()
        pconf = os.path.join(work, "proxy.toml")
        with open(pconf, "w") as f:
            f.write(f'[server]\nhttp = "127.0.0.1:{proxy_port}"\n\n[log]\nlevel = "warn"\n\n'
                    f'[[routes]]\nname = "bench"\nupstreams = ["{upstream}"]\nclient_auth = "off"\n')
        proxy = subprocess.Popen(["taskset", "-c", "0", f"{BIN}/mtls-proxy", "run", "-c", pconf],
                                 stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "proxy.log"), "w"))
        time.sleep(1)
        host = f"b00.{DOMAIN}"
        rows = []
        for r in range(ROUNDS):
            order = [("rivetr", router_port), ("mtls-proxy", proxy_port)]
            if r % 2:
                order.reverse()
            res = {}
            for name, port in order:
                oha(f"http://127.0.0.1:{port}/", host, 2)  # warm-up
                rps, codes, errors = oha(f"http://127.0.0.1:{port}/", host, DURATION)
                # oha ends a timed run by cutting its in-flight requests
                # ("aborted due to deadline"); those are not answers.
                bad = sum(v for k, v in codes.items() if k != "200") + sum(
                    v for k, v in errors.items() if "deadline" not in k)
                res[name] = (rps, bad)
                log(f"round {r + 1}: {name} {rps:,.0f} req/s, {bad} not 200")
            rows.append(res)
        ratio = statistics.median(x["rivetr"][0] / x["mtls-proxy"][0] for x in rows)
        riv = statistics.median(x["rivetr"][0] for x in rows)
        mtp = statistics.median(x["mtls-proxy"][0] for x in rows)
        bad_tp = sum(x["rivetr"][1] + x["mtls-proxy"][1] for x in rows)

        # Back-to-back redeploys of one app while clients request without pause.
        stop = threading.Event()
        counts = {"ok": 0, "bad": 0, "what": []}
        loops = [threading.Thread(target=load_loop, args=(f"127.0.0.1:{router_port}", host, stop, counts))
                 for _ in range(4)]
        for t in loops:
            t.start()
        switches = []
        t0 = time.time()
        for i in range(REDEPLOYS):
            dep = api.deploy_and_wait("b00")
            switches.append(api.switch_ms(dep))
            log(f"redeploy {i + 1}: switch {switches[-1]} ms, so far {counts['ok']} ok / {counts['bad']} failed")
        took = time.time() - t0
        time.sleep(1)
        stop.set()
        for t in loops:
            t.join()
        rss_after = rss_kib(server.pid)
    finally:
        for name in apps:
            try:
                api.call("DELETE", f"/api/apps/{name}")
            except Exception as e:
                log(f"deleting {name}: {e}")
        if proxy:
            proxy.terminate()
            proxy.wait()
        server.terminate()
        server.wait()
        subprocess.run(["podman", "network", "rm", "-f", network], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)

    sw = sorted(s for s in switches if s is not None)
    first = sorted(s for s in first_switch if s is not None)
    load = os.getloadavg()
    print("Command: `bench/rivetr/run`\n")
    print(f"`rivetr serve` (release build) and mtls-proxy pinned to core 0, oha on core 1, "
          f"Podman {subprocess.run(['podman', '--version'], capture_output=True, text=True).stdout.strip()}; "
          f"the apps are nginx copied into a FROM-scratch image (`return 200`). Load average at the end: "
          f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.\n")
    print("| Measure | Rivetr | Target |")
    print("|---|---:|---|")
    print(f"| Idle RSS, 0 apps | {idle0 / 1024:.1f} MiB | at most 10 MiB |")
    print(f"| Idle RSS, {APPS} running apps | {idle20 / 1024:.1f} MiB | |")
    print(f"| RSS after the redeploys and throughput runs | {rss_after / 1024:.1f} MiB | |")
    print(f"| Image built to traffic on the new version, median (min-max) of {len(sw)} redeploys "
          f"| {statistics.median(sw):.0f} ms ({sw[0]}-{sw[-1]}) | under 1 s |")
    print(f"| ... of the {len(first)} first deploys | {statistics.median(first):.0f} ms ({first[0]}-{first[-1]}) | |")
    print(f"| Failed requests during {REDEPLOYS} back-to-back redeploys under load "
          f"({counts['ok'] + counts['bad']:,} requests in {took:.0f} s, 4 keep-alive clients) "
          f"| {counts['bad']} | 0 |")
    print(f"| Router keep-alive throughput, 64 connections, median of {ROUNDS} "
          f"| {riv:,.0f} req/s; mtls-proxy {mtp:,.0f} req/s; ratio {ratio:.2f}x | within 5% (0.95x) |")
    print(f"\nRequests that were not 200 in the throughput runs: {bad_tp}.")
    if counts["what"]:
        print(f"Failures during the redeploys: {', '.join(sorted(set(counts['what'])))}.")
    print("\nRounds (req/s): " + "; ".join(
        f"rivetr {x['rivetr'][0]:,.0f}, mtls-proxy {x['mtls-proxy'][0]:,.0f}" for x in rows))


main()
