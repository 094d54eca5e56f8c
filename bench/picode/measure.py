"""Measurements for bench/picode/run, one subcommand each; every one prints a
JSON object on stdout so the run script can collect them into the report.

  ttft RUNS REGEX -- CMD...       exec CMD RUNS times; time from just before
                                  exec to the first stdout match of REGEX
  ttft-alternate RUNS REGEX BIN... -- ARGS...
                                  `ttft` for several builds of one program,
                                  run in turn (the order reversed every
                                  other round) so the machine's load falls
                                  on all alike; one summary per BIN
  provider-ttft RUNS URL          the provider's own time to first token: a
                                  new connection, a streaming chat request,
                                  time to the first content delta
  session TURNS READY DONE -- CMD run CMD in a pseudo-terminal, wait for READY
                                  (the prompt), read RSS (idle), then send
                                  TURNS prompts, each finished when DONE
                                  appears, and read RSS again; `{n}` in DONE
                                  stands for the turn's number

Environment of `session`: SETTLE_SECS (wait before each RSS reading, default
2), ENTER_DELAY (seconds between typing a prompt and pressing Enter, default
0; left out of the reported turn time).

Regexes are Python `re` patterns matched against the output bytes decoded as
UTF-8 (ANSI escapes removed for the pseudo-terminal). RSS is VmRSS from
/proc, for the process and for its whole process tree, in KiB.
"""

import fcntl
import http.client
import json
import os
import pty
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
import urllib.parse

ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
TIMEOUT = float(os.environ.get("STEP_TIMEOUT", "60"))


# Programs started and still running, ended on SIGTERM so that an
# interrupted benchmark leaves nothing behind.
RUNNING = set()


def on_term(_signum, _frame):
    for pid in RUNNING:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    sys.exit(143)


signal.signal(signal.SIGTERM, on_term)


def summary(samples_ms):
    return {
        "runs": len(samples_ms),
        "median_ms": round(statistics.median(samples_ms), 2),
        "min_ms": round(min(samples_ms), 2),
        "max_ms": round(max(samples_ms), 2),
    }


def fail(reason, output=b""):
    tail = output[-2000:].decode("utf-8", "replace")
    print(json.dumps({"error": reason, "output_tail": tail}))
    sys.exit(1)


# ------------------------------------------------------------------ ttft --


def ttft_once(cmd, pattern):
    """Milliseconds from exec to the first match of `pattern` on stdout."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    RUNNING.add(proc.pid)
    out = b""
    found = None
    deadline = start + TIMEOUT
    fds = [proc.stdout.fileno(), proc.stderr.fileno()]
    err = b""
    while found is None and fds and time.perf_counter() < deadline:
        ready, _, _ = select.select(fds, [], [], 0.5)
        for fd in ready:
            data = os.read(fd, 65536)
            if not data:
                fds.remove(fd)
                continue
            if fd == proc.stdout.fileno():
                out += data
                if pattern.search(out.decode("utf-8", "replace")):
                    found = (time.perf_counter() - start) * 1000
            else:
                err += data
    # Let the run finish normally so sessions are written as they would be.
    try:
        rest, rest_err = proc.communicate(timeout=TIMEOUT)
        out += rest
        err += rest_err
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
    RUNNING.discard(proc.pid)
    if found is None:
        fail("no match for %r (exit %s); stderr: %s" % (pattern.pattern, proc.returncode, err[-1500:].decode("utf-8", "replace")), out)
    return found


def cmd_ttft(args):
    runs, pattern = int(args[0]), re.compile(args[1])
    cmd = args[args.index("--") + 1 :]
    ttft_once(cmd, pattern)  # warm the page cache and the provider
    samples = [ttft_once(cmd, pattern) for _ in range(runs)]
    print(json.dumps(summary(samples)))


def cmd_ttft_alternate(args):
    runs, pattern = int(args[0]), re.compile(args[1])
    split = args.index("--")
    bins, rest = args[2:split], args[split + 1 :]
    samples = {b: [] for b in bins}
    for b in bins:
        ttft_once([b] + rest, pattern)  # warm the page cache
    for i in range(runs):
        for b in bins if i % 2 == 0 else list(reversed(bins)):
            samples[b].append(ttft_once([b] + rest, pattern))
    print(json.dumps({b: summary(samples[b]) for b in bins}))


def provider_once(url, body):
    parsed = urllib.parse.urlsplit(url)
    start = time.perf_counter()
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=TIMEOUT)
    conn.request(
        "POST",
        parsed.path,
        body=body,
        headers={"content-type": "application/json", "authorization": "Bearer bench"},
    )
    resp = conn.getresponse()
    seen = b""
    while True:
        chunk = resp.read1(65536)
        if not chunk:
            conn.close()
            fail("the stream ended without a content delta", seen)
        seen += chunk
        if b'"content":"' in seen:
            elapsed = (time.perf_counter() - start) * 1000
            resp.read()
            conn.close()
            return elapsed


def cmd_provider_ttft(args):
    runs, url = int(args[0]), args[1]
    body = json.dumps(
        {
            "model": "fake-model",
            "stream": True,
            "messages": [{"role": "user", "content": "hi"}],
        }
    ).encode()
    provider_once(url, body)
    samples = [provider_once(url, body) for _ in range(runs)]
    print(json.dumps(summary(samples)))


# --------------------------------------------------------------- session --


def tree_pids(root):
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry) as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, []))
    return pids


def vm_rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def rss(pid):
    """RSS of the process, of its tree, and of the other processes whose
    command line contains $EXTRA_RSS (helpers a tool starts detached)."""
    tree = tree_pids(pid)
    out = {"rss_kib": vm_rss_kib(pid), "tree_rss_kib": sum(vm_rss_kib(p) for p in tree)}
    extra = os.environ.get("EXTRA_RSS")
    if extra:
        others = [
            int(e)
            for e in os.listdir("/proc")
            if e.isdigit() and int(e) not in tree and extra in cmdline(int(e))
        ]
        out["extra_rss_kib"] = sum(vm_rss_kib(p) for p in others)
        out["extra_processes"] = len(others)
    return out


class Pty:
    def __init__(self, cmd):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:
            # A terminal of a usual size: full-screen programs lay out
            # against it, and a 0x0 pseudo-terminal confuses some.
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
            try:
                os.execvp(cmd[0], cmd)
            finally:
                os._exit(127)
        RUNNING.add(self.pid)
        self.out = b""
        self.pos = 0

    def pump(self, timeout):
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        try:
            data = os.read(self.fd, 65536)
        except OSError:
            return False
        if not data:
            return False
        self.out += data
        # Answer terminal queries (cursor position, device attributes) the
        # way a terminal would, for full-screen programs that wait for them.
        if b"\x1b[6n" in data:
            os.write(self.fd, b"\x1b[1;1R")
        if b"\x1b[c" in data or b"\x1b[0c" in data:
            os.write(self.fd, b"\x1b[?62;c")
        return True

    def expect(self, pattern, what):
        deadline = time.time() + TIMEOUT
        while True:
            text = ANSI.sub(b"", self.out[self.pos :]).decode("utf-8", "replace")
            m = pattern.search(text)
            if m:
                # Advance past everything seen so far: the next expectation
                # must match output produced after this one.
                self.pos = len(self.out)
                return
            if time.time() > deadline or not self.pump(0.05):
                self.close()
                fail("timed out waiting for %s (%r)" % (what, pattern.pattern), ANSI.sub(b"", self.out))

    def send(self, line, enter_delay=0.0):
        # Some TUIs (Codex CLI) take keys that arrive in one burst for a
        # paste, and Enter inside a paste for a new line, not for sending:
        # such a program gets the prompt, a pause, then Enter.
        if enter_delay > 0:
            os.write(self.fd, line.encode())
            self.settle(enter_delay)
            os.write(self.fd, b"\r")
        else:
            os.write(self.fd, line.encode() + b"\r")

    def settle(self, seconds):
        end = time.time() + seconds
        while time.time() < end:
            if not self.pump(end - time.time()):
                break

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except OSError:
            pass
        RUNNING.discard(self.pid)


def cmd_session(args):
    turns, ready, done = int(args[0]), re.compile(args[1]), args[2]
    cmd = args[args.index("--") + 1 :]
    settle = float(os.environ.get("SETTLE_SECS", "2"))
    enter_delay = float(os.environ.get("ENTER_DELAY", "0"))
    p = Pty(cmd)
    p.expect(ready, "the first prompt")
    p.settle(settle)
    idle = rss(p.pid)
    start = time.time()
    for i in range(turns):
        p.send("hi %d" % (i + 1), enter_delay)
        p.expect(re.compile(done.replace("{n}", str(i + 1))), "the answer to turn %d" % (i + 1))
    # The pauses before Enter are the driver's, not the program's.
    elapsed = time.time() - start - turns * enter_delay
    p.settle(settle)
    after = rss(p.pid)
    p.close()
    print(
        json.dumps(
            {
                "idle": idle,
                "after": after,
                "turns": turns,
                "seconds": round(elapsed, 1),
                "enter_delay_s": enter_delay,
            }
        )
    )


# ----------------------------------------------------------------- quiet --


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return idle, sum(fields)


def idle_fraction(seconds):
    i0, t0 = cpu_times()
    time.sleep(seconds)
    i1, t1 = cpu_times()
    return (i1 - i0) / max(t1 - t0, 1)


def cmd_quiet(args):
    """Waits up to MAX seconds for the machine's CPUs to be at least MIN idle
    over two seconds (the machine may be shared), and reports what it saw."""
    want, limit = float(args[0]), float(args[1])
    start = time.time()
    idle = idle_fraction(2)
    while idle < want and time.time() - start < limit:
        idle = idle_fraction(2)
    print(json.dumps({"idle": round(idle, 3), "waited_s": round(time.time() - start, 1)}))


# ---------------------------------------------------------------- report --

TOOLS = [("picode", "PiCode"), ("codex", "Codex CLI"), ("aider", "aider")]
START_TARGET_MS = 20
TTFT_TARGET_MS = 5
RSS_TARGET_MIB = 30


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def ms(x):
    return "%.1f ms" % x if x < 100 else "%.0f ms" % x


def mib(kib):
    return "%.1f MiB" % (kib / 1024)


def rss_cell(r):
    """All the processes of a session, and the one the user started when
    they are not the same."""
    total = r["tree_rss_kib"] + r.get("extra_rss_kib", 0)
    if total == r["rss_kib"]:
        return mib(total)
    return "%s (%s in the process started, the rest in its helpers)" % (mib(total), mib(r["rss_kib"]))


def cmd_report(args):
    work, turns = args[0], int(args[1])
    notes = {tool: [] for tool, _ in TOOLS}
    for tool, _ in TOOLS:
        text = read_text(os.path.join(work, "note-%s.txt" % tool))
        notes[tool] += [line for line in text.splitlines() if line]
    present = [t for t in TOOLS if t[0] == "picode" or os.path.exists(os.path.join(work, "version-%s.txt" % t[0])) or notes[t[0]]]

    def get(name, tool):
        data = load_json(os.path.join(work, name + ".json"))
        if data is not None and "error" in data:
            notes[tool].append("%s failed: %s" % (name, data["error"]))
            return None
        return data

    def startup_ms(name):
        data = load_json(os.path.join(work, "startup-%s.json" % name))
        return data["results"][0]["median"] * 1000 if data else None

    provider = get("provider", "picode")
    provider_ms = provider["median_ms"] if provider else None
    curl = read_text(os.path.join(work, "provider-curl.txt"))

    rows = {
        "version": [],
        "start": [],
        "ttft": [],
        "over": [],
        "idle": [],
        "after": [],
        "took": [],
    }
    verdict = {}
    for tool, _ in present:
        rows["version"].append(read_text(os.path.join(work, "version-%s.txt" % tool)) or "not installed")

        start = startup_ms(tool)
        cell = ms(start) if start is not None else "n/a"
        if tool == "codex" and startup_ms("codex-npm") is not None:
            cell += " (npm launcher: %s)" % ms(startup_ms("codex-npm"))
        rows["start"].append(cell)
        if tool == "picode":
            verdict["start"] = start

        ttft = get("ttft-" + tool, tool)
        if ttft:
            rows["ttft"].append("%s (min %s, n=%d)" % (ms(ttft["median_ms"]), ms(ttft["min_ms"]), ttft["runs"]))
            over = ttft["median_ms"] - provider_ms if provider_ms is not None else None
            rows["over"].append("+" + ms(over) if over is not None else "n/a")
        else:
            rows["ttft"].append("n/a")
            rows["over"].append("n/a")
            over = None
        if tool == "picode":
            verdict["ttft"] = over

        session = get("session-" + tool, tool)
        if session:
            rows["idle"].append(rss_cell(session["idle"]))
            if session["turns"]:
                after = session["after"]
                rows["after"].append(rss_cell(after))
                took = "%.1f s" % session["seconds"]
                if session.get("enter_delay_s"):
                    took += " (without the driver's %.1f s pause before each Enter)" % session["enter_delay_s"]
                rows["took"].append(took)
                if tool == "picode":
                    verdict["rss"] = (after["tree_rss_kib"] + after.get("extra_rss_kib", 0)) / 1024
            else:
                rows["after"].append("n/a")
                rows["took"].append("n/a")
        else:
            for key in ("idle", "after", "took"):
                rows[key].append("n/a")

    def met(ok):
        return "**met**" if ok else "**missed**"

    targets = {
        "start": "< %d ms" % START_TARGET_MS,
        "ttft": "",
        "over": "<= %d ms" % TTFT_TARGET_MS,
        "after": "< %d MiB" % RSS_TARGET_MIB,
    }
    labels = [
        ("version", "version"),
        ("start", "cold start, `--version` (median)"),
        ("ttft", "headless: exec to first answer text on stdout (median)"),
        ("over", "... minus the provider's own time to first token"),
        ("idle", "RSS, interactive session idle at its prompt"),
        ("after", "RSS after %d turns in one interactive session" % turns),
        ("took", "%d turns took" % turns),
    ]
    out = []
    out.append("| | " + " | ".join(name for _, name in present) + " | PiCode target |")
    out.append("|---" * (len(present) + 2) + "|")
    for key, label in labels:
        out.append("| %s | %s | %s |" % (label, " | ".join(rows[key]), targets.get(key, "")))
    out.append("")
    if provider_ms is not None:
        out.append(
            "The provider's own time to first token, from a minimal client on "
            "the same server (a new connection per request, a streaming chat "
            "request for `hi`, time to the first content delta; median of %d): "
            "%s; curl's `time_starttransfer` for one request: %s."
            % (provider["runs"], ms(provider_ms), ms(float(curl) * 1000) if curl else "n/a")
        )
        out.append("")
    out.append("PiCode targets:")
    out.append("")
    s = verdict.get("start")
    out.append("- cold start under %d ms: %s" % (START_TARGET_MS, "not measured" if s is None else "%s (%s)" % (met(s < START_TARGET_MS), ms(s))))
    o = verdict.get("ttft")
    out.append("- headless time to first token within %d ms of the provider's: %s" % (TTFT_TARGET_MS, "not measured" if o is None else "%s (+%s)" % (met(o <= TTFT_TARGET_MS), ms(o))))
    r = verdict.get("rss")
    out.append("- RSS under %d MiB after %d turns: %s" % (RSS_TARGET_MIB, turns, "not measured" if r is None else "%s (%.1f MiB)" % (met(r < RSS_TARGET_MIB), r)))
    out.append("")
    for tool, name in present:
        for line in notes[tool]:
            out.append("- %s: %s" % (name, line))
    if any(notes[t] for t, _ in present):
        out.append("")
    machine = dict(
        line.split("=", 1) for line in read_text(os.path.join(work, "machine.txt")).splitlines() if "=" in line
    )
    quiet = []
    for tool, name in present:
        q = load_json(os.path.join(work, "quiet-%s.json" % tool))
        if q:
            quiet.append("%s %.0f%%" % (name, q["idle"] * 100))
    if quiet:
        out.append(
            "CPU idle just before each tool's measurements (other work on a "
            "shared machine skews the figures): %s." % ", ".join(quiet)
        )
        out.append("")
    out.append(
        "Machine: %s, %s cores, Linux %s; load average at the end: %s."
        % (machine.get("cpu", "?"), machine.get("nproc", "?"), machine.get("kernel", "?"), machine.get("load", "?"))
    )
    print("\n".join(out))


def main():
    sub, args = sys.argv[1], sys.argv[2:]
    {
        "ttft": cmd_ttft,
        "provider-ttft": cmd_provider_ttft,
        "session": cmd_session,
        "ttft-alternate": cmd_ttft_alternate,
        "report": cmd_report,
        "quiet": cmd_quiet,
    }[sub](args)


if __name__ == "__main__":
    main()
