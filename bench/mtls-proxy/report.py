#!/usr/bin/env python3
"""Turns the raw measurements of bench/mtls-proxy/run into a Markdown report.

Reads `runs.tsv` (round, scenario, proxy, oha JSON file, CPU ticks, backend
connections accepted, load core busy %) and `facts.tsv`
(key, value) from the work directory and prints the tables and the verdict
on each target.
"""

import argparse
import json
import os
import statistics

SCENARIOS = [
    ("plain", "Plain HTTP, keep-alive"),
    ("tls_ka", "TLS 1.3, keep-alive"),
    ("tls_new", "TLS 1.3, new connection per request"),
    ("mtls_new", "mTLS, new connection per request"),
    ("mtls_ka", "mTLS, keep-alive, recording off"),
    ("mtls_ka_rec", "mTLS, keep-alive, recording on (headers)"),
]
DEADLINE = "aborted due to deadline"
PROXIES = ("mtls-proxy", "nginx", "haproxy")


def load(path):
    with open(path) as f:
        data = json.load(f)
    ok = sum(v for k, v in data["statusCodeDistribution"].items() if k == "200")
    other = sum(v for k, v in data["statusCodeDistribution"].items() if k != "200")
    errors = sum(v for k, v in data["errorDistribution"].items() if k != DEADLINE)
    seconds = data["summary"]["total"]
    lat = data["metrics"]["latency_ms"]
    return {
        "ok": ok,
        "failed": other + errors,
        "errors": {k: v for k, v in data["errorDistribution"].items() if k != DEADLINE},
        "seconds": seconds,
        "rps": ok / seconds if seconds else 0.0,
        # oha leaves latencies out when nothing was answered.
        "p50": lat["p50"] if lat["p50"] is not None else float("nan"),
        "p99": lat["p99"] if lat["p99"] is not None else float("nan"),
    }


def ratio(a, b):
    return a / b if b else float("nan")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dir", required=True)
    p.add_argument("--command", required=True)
    args = p.parse_args()

    facts = {}
    with open(os.path.join(args.dir, "facts.tsv")) as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("\t")
            facts[key] = value
    tck = int(facts.get("clk_tck", "100"))

    rounds = {}
    with open(os.path.join(args.dir, "runs.tsv")) as f:
        for line in f:
            rnd, scenario, proxy, path, ticks, accepts, load_pct = line.rstrip("\n").split("\t")
            r = load(path)
            cpu_s = int(ticks) / tck
            r["round"] = int(rnd)
            r["cpu_us"] = cpu_s * 1e6 / r["ok"] if r["ok"] else float("nan")
            r["cpu_pct"] = 100 * cpu_s / r["seconds"] if r["seconds"] else 0.0
            r["upstream_conns"] = int(accepts)
            r["load_pct"] = int(load_pct)
            rounds.setdefault((scenario, proxy), []).append(r)
    # Each figure is the median over the rounds, taken on its own.
    res = {}
    for key, rs in rounds.items():
        med = {
            f: statistics.median(r[f] for r in rs)
            for f in ("rps", "p50", "p99", "cpu_us", "cpu_pct", "load_pct", "upstream_conns")
        }
        med["failed"] = sum(r["failed"] for r in rs)
        errors = {}
        for r in rs:
            for k, v in r["errors"].items():
                errors[k] = errors.get(k, 0) + v
        med["errors"] = errors
        res[key] = med

    def paired(key_a, proxy_a, key_b, proxy_b, field):
        """Median over the rounds of a's figure divided by b's in the same round."""
        b = {r["round"]: r[field] for r in rounds.get((key_b, proxy_b), [])}
        per_round = [
            ratio(r[field], b[r["round"]])
            for r in rounds.get((key_a, proxy_a), [])
            if r["round"] in b
        ]
        return statistics.median(per_round) if per_round else float("nan")

    def thread_cpu(scenario, rnd):
        """CPU µs per answered request of each thread, (user, system) by name."""
        base = os.path.join(args.dir, f"threads-{scenario}-{rnd}")
        try:
            with open(base + ".before") as f0, open(base + ".after") as f1:
                before, after = f0.read().splitlines(), f1.read().splitlines()
        except FileNotFoundError:
            return None
        ok = next(r["ok"] for r in rounds[(scenario, "mtls-proxy")] if r["round"] == rnd)
        per = {}
        for line in after:
            name, user, system = line.split("\t")
            per.setdefault(name, [0, 0])
            per[name][0] += int(user)
            per[name][1] += int(system)
        for line in before:
            name, user, system = line.split("\t")
            per[name][0] -= int(user)
            per[name][1] -= int(system)
        scale = 1e6 / tck / ok if ok else float("nan")
        return {name: (u * scale, s * scale) for name, (u, s) in per.items()}

    def recorder_line():
        """The writer thread's share of the recording runs, per round."""
        rows = [
            thread_cpu("mtls_ka_rec", r["round"]) for r in rounds.get(("mtls_ka_rec", "mtls-proxy"), [])
        ]
        rows = [t for t in rows if t and "recorder" in t]
        if not rows:
            return "The recording runs have no per-thread CPU figures."
        writer = [t["recorder"][0] + t["recorder"][1] for t in rows]
        others = [sum(u + s for name, (u, s) in t.items() if name != "recorder") for t in rows]
        return (
            "Per thread, in the recording runs (CPU µs per request, from "
            "`/proc/PID/task/*/stat`, median of the rounds): the writer thread "
            f"(`recorder`) {statistics.median(writer):.1f} "
            f"(user {statistics.median(t['recorder'][0] for t in rows):.1f}, "
            f"system {statistics.median(t['recorder'][1] for t in rows):.1f}), "
            f"the proxy's other threads {statistics.median(others):.1f}. Rounds, writer / others: "
            + ", ".join(f"{a:.1f} / {b:.1f}" for a, b in zip(writer, others))
            + "."
        )

    out = []
    w = out.append
    w(f"Command: `{args.command}`")
    w("")
    w(
        f"mtls-proxy {facts['proxy_version']} (commit {facts['commit']}, {facts['build']}), nginx {facts['nginx_version']} "
        f"(one worker) and HAProxy {facts.get('haproxy_version', '?')} (`nbthread 1`, `http-reuse always`) pinned to core 0; backend (nginx `return 200`) and oha "
        f"{facts['oha_version']} pinned to core 1, all at niceness {facts['nice']}. "
        f"Medians of {facts['rounds']} rounds of {facts['duration']} s per scenario and proxy "
        f"(the three proxies back to back, and so recording off and on, the order "
        f"turning from round to round), "
        f"{facts['connections']} connections for keep-alive runs, "
        f"{facts['new_connections']} concurrent clients for new-connection runs. "
        f"CPU: {facts['cpu']}; load average before/after: {facts['load_before']} / "
        f"{facts['load_after']}."
    )
    w("")
    w(
        "| Scenario | mtls-proxy req/s | nginx req/s | HAProxy req/s | vs nginx (paired) "
        "| vs HAProxy (paired) | p50 / p99 ms (mtls-proxy; nginx; HAProxy) "
        "| CPU µs/req (mtls-proxy / nginx / HAProxy) "
        "| proxy core busy | load core busy | backend connections opened |"
    )
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")

    def cell(d, fmt, field):
        return fmt.format(d[field]) if d else "-"

    for key, label in SCENARIOS:
        m, n, h = (res.get((key, p)) for p in PROXIES)
        if not m or not n:
            continue
        vs_h = paired(key, "mtls-proxy", key, "haproxy", "rps") if h else float("nan")
        w(
            f"| {label} | {m['rps']:,.0f} | {n['rps']:,.0f} | {cell(h, '{:,.0f}', 'rps')} "
            f"| {paired(key, 'mtls-proxy', key, 'nginx', 'rps'):.2f}x | "
            + (f"{vs_h:.2f}x" if h else "-")
            + f" | {m['p50']:.2f} / {m['p99']:.2f}; {n['p50']:.2f} / {n['p99']:.2f}; "
            + (f"{h['p50']:.2f} / {h['p99']:.2f}" if h else "-")
            + f" | {m['cpu_us']:.0f} / {n['cpu_us']:.0f} / {cell(h, '{:.0f}', 'cpu_us')} "
            f"| {m['cpu_pct']:.0f}% / {n['cpu_pct']:.0f}% / {cell(h, '{:.0f}%', 'cpu_pct')} "
            f"| {m['load_pct']:.0f}% / {n['load_pct']:.0f}% / {cell(h, '{:.0f}%', 'load_pct')} "
            f"| {m['upstream_conns']:.0f} / {n['upstream_conns']:.0f} / {cell(h, '{:.0f}', 'upstream_conns')} |"
        )
    failures = [
        f"{label} ({proxy}): {res[(key, proxy)]['failed']} failed, "
        f"{res[(key, proxy)]['errors']}"
        for key, label in SCENARIOS
        for proxy in PROXIES
        if (key, proxy) in res and res[(key, proxy)]["failed"]
    ]
    w("")
    if failures:
        w("Failed requests: " + "; ".join(failures) + ".")
    else:
        w("Every request answered 200.")
    w("")

    def conns(key):
        opened, before, after = (int(x) for x in facts[key].split())
        return opened, (after - before) * 1000 / opened / 1024 if opened else float("nan")

    def served(proxy):
        return sum(r["ok"] for r in rounds.get(("mtls_ka_rec", proxy), []))

    def kept_vs_sent(proxy, extra):
        """Records kept against the requests sent, in words."""
        if proxy == "mtls-proxy":
            kept = int(facts.get("records_metrics", "?").split()[0])
        else:
            kept = int(facts["records_nginx"])
        sent = served(proxy) + int(facts["warmup"]) * int(facts["rounds"]) + 2 + extra
        return f"{sent - kept:,} fewer" if kept < sent else f"{kept - sent:,} more"

    pc_open, pc_mib = conns("idle_conns_proxy")
    nc_open, nc_mib = conns("idle_conns_nginx")
    hc_open, hc_mib = conns("idle_conns_haproxy")
    idle_p = int(facts["idle_rss_proxy"]) / 1024
    idle_pr = int(facts["idle_rss_proxy_rec"]) / 1024
    idle_n = int(facts["idle_rss_nginx"]) / 1024
    idle_h = int(facts["idle_rss_haproxy"]) / 1024
    sp, sn = float(facts["startup_proxy"]), float(facts["startup_nginx"])
    w("| Resource | mtls-proxy | nginx | HAProxy |")
    w("|---|---:|---:|---:|")
    w(
        f"| Idle RSS (MiB; nginx: master + worker) | {idle_p:.1f} "
        f"({idle_pr:.1f} with recording) | {idle_n:.1f} | {idle_h:.1f} |"
    )
    w(
        f"| RSS per 1,000 idle mTLS connections (MiB; opened {pc_open} / {nc_open} / {hc_open}) "
        f"| {pc_mib:.1f} | {nc_mib:.1f} | {hc_mib:.1f} |"
    )
    w(
        f"| Startup to first proxied 200, median of {len(facts['startup_proxy_runs'].split())} (ms) "
        f"| {sp:.1f} | {sn:.1f} | - |"
    )
    w("")
    written, dropped, failed = (int(x) for x in facts["records_metrics"].split())
    retained = (
        " (size retention deleted the oldest once the file passed `max_bytes`, 1 GiB by default)"
        if int(facts["records_proxy"]) < written
        else ""
    )
    w(
        f"Startup runs (ms): mtls-proxy {facts['startup_proxy_runs']}; "
        f"nginx {facts['startup_nginx_runs']}. mtls-proxy ran "
        f"{facts['proxy_threads']} threads. Records kept: the mtls-proxy recorder wrote "
        f"{written:,} records and dropped {dropped:,} ({failed:,} failed writes), of which its "
        f"store still holds {int(facts['records_proxy']):,} rows{retained}; the nginx access log "
        f"holds {int(facts['records_nginx']):,} lines. Against {served('mtls-proxy'):,} and "
        f"{served('nginx'):,} answers oha counted in the measured recording runs, plus "
        f"{int(facts['warmup'])} warm-up requests per round and 2 checks (and for nginx a 300-request "
        f"resumption check), the records written are {kept_vs_sent('mtls-proxy', 0)} and the "
        f"log lines {kept_vs_sent('nginx', 300)} than that. (A timed run stops with requests "
        f"in flight, which the proxy answers and records but oha no longer counts.)"
    )
    w("")
    full, resumed = (int(x) for x in facts.get("handshakes_proxy", "0 0").split())
    w(
        f"TLS 1.3 session resumption (checked with `openssl s_client`): mtls-proxy "
        f"{facts['resumes_proxy']}, nginx {facts['resumes_nginx']}, HAProxy "
        f"{facts.get('resumes_haproxy', '?')}. In a check run of "
        f"oha's new-connection mode against nginx, {facts['oha_resumed']} handshakes "
        f"were resumptions; the mTLS proxy counted {resumed:,} resumed of "
        f"{full + resumed:,} handshakes ({100 * ratio(resumed, full + resumed):.0f}%, "
        f"its `mtls_proxy_tls_handshakes_total`) over the whole run, nearly all from the "
        f"new-connection runs. So the new-connection rows measure what oha does: "
        f"resumed handshakes where the server allows them, full ones otherwise."
    )
    w("")
    f0, r0, f1, r1 = (int(x) for x in facts["resumed_share_proxy"].split())
    n_res, _, n_all = facts["resumed_share_nginx"].split()
    p_share = ratio(r1 - r0, (f1 - f0) + (r1 - r0))
    n_share = ratio(int(n_res), int(n_all))
    w(
        f"Resumed share at the new-connection runs' concurrency ({facts['new_connections']} "
        f"clients, 1,000 mTLS connections each, oha's rustls client): mtls-proxy "
        f"{100 * p_share:.0f}% ({r1 - r0:,} of {(f1 - f0) + (r1 - r0):,}), nginx "
        f"{100 * n_share:.0f}% ({int(n_res):,} of {int(n_all):,})."
    )
    w("")

    ka_each = [paired(k, "mtls-proxy", k, "nginx", "rps") for k in ("plain", "tls_ka", "mtls_ka")]
    ka = min(ka_each)
    new_mtls = paired("mtls_new", "mtls-proxy", "mtls_new", "nginx", "rps")
    rec_cost = 1 - paired("mtls_ka_rec", "mtls-proxy", "mtls_ka", "mtls-proxy", "rps")
    rec_cpu = paired("mtls_ka_rec", "mtls-proxy", "mtls_ka", "mtls-proxy", "cpu_us") - 1

    def verdict(ok):
        return "met" if ok else "**missed**"

    w(
        "Targets are judged on ratios taken within each round, between runs next "
        "to each other, and their median over the rounds (the table above divides "
        "medians taken on their own)."
    )
    w("")
    w("| Target | Observed | |")
    w("|---|---|---|")
    w(
        f"| Keep-alive throughput at least nginx's | lowest ratio over plain, TLS and mTLS "
        f"keep-alive ({', '.join(f'{x:.2f}x' for x in ka_each)}): {ka:.2f}x "
        f"| {verdict(ka >= 1.0)} |"
    )
    w(
        f"| New mTLS connections at least 1.5x nginx | {new_mtls:.2f}x "
        f"| {verdict(new_mtls >= 1.5)} |"
    )
    w(
        f"| Recording costs under 15% of throughput | {100 * rec_cost:.1f}% fewer req/s "
        f"({100 * rec_cpu:+.1f}% CPU per request) | {verdict(rec_cost < 0.15)} |"
    )
    w(
        f"| Idle RSS under 10 MB | {idle_p * 1.048576:.1f} MB ({idle_p:.1f} MiB); "
        f"{idle_pr * 1.048576:.1f} MB with recording on | {verdict(idle_p * 1.048576 < 10)} |"
    )
    w(f"| Startup under 100 ms | {sp:.1f} ms | {verdict(sp < 100)} |")
    vs_h = [paired(k, "mtls-proxy", k, "haproxy", "rps") for k, _ in SCENARIOS if (k, "haproxy") in res]
    w(
        f"| (no target) Against HAProxy, paired | "
        + ", ".join(f"{k} {paired(k, 'mtls-proxy', k, 'haproxy', 'rps'):.2f}x" for k, _ in SCENARIOS if (k, "haproxy") in res)
        + (f" | {'ahead' if vs_h and min(vs_h) >= 1.0 else 'behind in some'} |" if vs_h else " | - |")
    )
    w(
        f"| (no target) Idle mTLS connection below nginx's memory | {pc_mib:.1f} against {nc_mib:.1f} "
        f"MiB per 1,000 (HAProxy {hc_mib:.1f}) | {verdict(pc_mib < nc_mib)} |"
    )
    w("")
    w(recorder_line())
    w("")
    w("Every round (req/s, CPU µs per request):")
    w("")
    w("| Scenario | mtls-proxy | nginx | HAProxy |")
    w("|---|---|---|---|")
    for key, label in SCENARIOS:
        cells = [
            ", ".join(f"{r['rps']:,.0f} ({r['cpu_us']:.0f})" for r in rounds.get((key, proxy), []))
            or "-"
            for proxy in PROXIES
        ]
        w(f"| {label} | {cells[0]} | {cells[1]} | {cells[2]} |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
