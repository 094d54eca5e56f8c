#!/usr/bin/env python3
"""Opens many idle TLS connections to a proxy and reports how its RSS grew.

Each connection completes the handshake (with a client certificate when one
is given), sends one keep-alive request and reads the answer, then stays
open and idle. The proxy's RSS (summed over the given PIDs) is read before
and after; the output is one line: `opened before_kib after_kib`.
"""

import argparse
import asyncio
import resource
import ssl
import time


def rss_kib(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total


async def open_one(host, port, ctx, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=ctx, server_hostname="localhost"
        )
        writer.write(
            b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n"
        )
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length:
            await reader.readexactly(length)
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.split(b"\r\n")[0].decode())
        return writer


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--pid", type=int, action="append", required=True)
    p.add_argument("--settle", type=float, default=1.0)
    args = p.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if args.cert:
        ctx.load_cert_chain(args.cert, args.key)

    before = rss_kib(args.pid)
    # A few handshakes at a time keeps the listen backlog from overflowing.
    sem = asyncio.Semaphore(50)
    results = await asyncio.gather(
        *(open_one("127.0.0.1", args.port, ctx, sem) for _ in range(args.count)),
        return_exceptions=True,
    )
    writers = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"# {len(errors)} connections failed, first: {errors[0]!r}", flush=True)
    time.sleep(args.settle)
    after = rss_kib(args.pid)
    print(len(writers), before, after, flush=True)
    for w in writers:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
