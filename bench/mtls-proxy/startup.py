#!/usr/bin/env python3
"""Measures how long a proxy takes from exec to serving its first request.

Starts the command, then polls the plain HTTP port with a request until a
200 answer comes back (a port that accepts TCP but cannot proxy yet does
not count), stops the process and repeats. Prints the median and every run
in milliseconds: `median run1 run2 ...`.
"""

import argparse
import signal
import socket
import statistics
import subprocess
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def answered(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(REQUEST)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def one_run(cmd, port, limit, log):
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log)
    try:
        while not answered(port):
            if proc.poll() is not None:
                raise SystemExit(
                    f"{' '.join(cmd)} exited with {proc.returncode} before answering"
                    f" (its output is in {log.name})"
                )
            if time.perf_counter() - start > limit:
                raise SystemExit(f"{cmd[0]} did not answer within {limit} s")
            time.sleep(0.0005)
        return (time.perf_counter() - start) * 1000
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--limit", type=float, default=10.0)
    p.add_argument("--log", default="/dev/null", help="file for the command's output")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    args = p.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if answered(args.port):
        raise SystemExit(f"port {args.port} already answers; something else is running")
    runs = []
    log = open(args.log, "a")
    for _ in range(args.runs):
        runs.append(one_run(cmd, args.port, args.limit, log))
        # Let the port and the process table settle between runs.
        time.sleep(0.2)
    print(f"{statistics.median(runs):.1f}", " ".join(f"{r:.1f}" for r in runs))


if __name__ == "__main__":
    main()
