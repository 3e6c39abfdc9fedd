"""Simulated IDE users against the completions server: continuous batching vs a baseline.

Each of N users types into their own file (a stdlib module, cursor at a random point):
every keystroke sends a streaming 20-token completion, and the next keystroke, 50-300 ms
later, cancels it (closes the connection, as Continue's debounce does) and sends the
prompt with one more character. After `--burst` keystrokes the user pauses and waits for
the completion: those are the single-line completions whose latency we report. Same
process, same weights, same workload for both servers:

  - ours: continuous batching (rows join and leave slots between decode steps);
  - baseline: the same server with `--continuous_batching=false` (rows join only an
    empty machine: static batching).

Reported per (server, users): p50/p95 time to first token (all requests that got one),
p50/p95 latency of the awaited completions, tokens/s delivered, the share of decoded
tokens (decoded and prefilled) thrown away by cancellations, and compilations after start-up (must be 0).

    python benchmarks/serve.py [--preset cpu_small] [--users 1,8] [--duration_s 20]

Connection burst (`--scenario burst`): 100 simultaneous connects each sending a request
the moment it connects; reports connect times (a full listen backlog shows as ~1 s SYN
retries) and connect-to-response times (goal: all within 100 ms), against a tiny server
of ours or any running server (`--url http://127.0.0.1:8000`, e.g. the old one):

    python benchmarks/serve.py --scenario burst [--url URL] [--repeats 5]
"""

from __future__ import annotations

import argparse
import glob
import json
import random
import select
import selectors
import socket
import sys
import sysconfig
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zen_code_jax.infer.__main__ import build_server  # noqa: E402


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def one_request(
    port: int, body: dict, deadline: float | None
) -> tuple[float | None, float | None, int]:
    """(ttft, latency, tokens) of a streaming request; closed at `deadline` (cancelled)."""
    data = json.dumps(body).encode()
    t0 = time.monotonic()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    buf, ttft, pieces = b"", None, 0
    try:
        while b"data: [DONE]" not in buf:
            wait = None if deadline is None else deadline - time.monotonic()
            if wait is not None and wait <= 0:
                return ttft, None, pieces  # cancelled
            r, _, _ = select.select([s], [], [], wait)
            if not r:
                continue
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            n = buf.count(b'"text":"') - buf.count(b'"text":""')  # compact JSON
            if n and ttft is None:
                ttft = time.monotonic() - t0
            pieces = n
        return ttft, time.monotonic() - t0, pieces
    finally:
        s.close()


def user(port, text, stop_at, rng, args, out):
    """Type into `text` at a cursor: the suffix (text after the cursor) stays, the prefix
    grows by the next character of the file per keystroke, from a fixed window start."""
    cursor = rng.randint(len(text) // 4, len(text) // 2)
    start, suffix = max(0, cursor - args.prompt_chars), text[cursor : cursor + 200]
    while time.monotonic() < stop_at:
        for k in range(args.burst + 1):
            body = {
                "prompt": text[start:cursor],
                "suffix": suffix,
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "stream": True,
            }
            final = k == args.burst
            deadline = None if final else time.monotonic() + rng.uniform(0.05, 0.3)
            ttft, lat, _ = one_request(port, body, deadline)
            if ttft is not None:
                out["ttft"].append(ttft)
            if final and lat is not None:
                out["latency"].append(lat)
            if not final:
                out["cancelled"] += lat is None
            cursor += 1
        time.sleep(rng.uniform(0.05, 0.2))  # the user reads, then types on


def connection_burst(host: str, port: int, n: int = 100, path: str = "/health") -> dict:
    """`n` simultaneous connects (non-blocking, one thread, so the client adds no thread
    scheduling), each sending `GET path` the moment it connects. Per connection: connect
    time (a full listen backlog shows as ~1 s SYN retries) and accept-to-response time
    (connect done -> whole response read). Goal: every response within 100 ms."""
    sel = selectors.DefaultSelector()
    req = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
    t0 = time.monotonic()
    state = {}
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex((host, port))
        state[s] = {"i": i, "connected": None, "done": None, "buf": b""}
        sel.register(s, selectors.EVENT_WRITE)
    left, deadline = n, t0 + 30
    while left and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=1):
            s, st = key.fileobj, state[key.fileobj]
            now = time.monotonic()
            if st["connected"] is None:
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    st["done"], left = float("nan"), left - 1
                    sel.unregister(s)
                    continue
                st["connected"] = now
                s.sendall(req)
                sel.modify(s, selectors.EVENT_READ)
                continue
            chunk = s.recv(65536)
            st["buf"] += chunk
            if not chunk:
                st["done"], left = now, left - 1
                sel.unregister(s)
    for s in state:
        s.close()
    rows = list(state.values())
    ok = [r for r in rows if r["buf"].startswith(b"HTTP/1.1 200")]
    connect = [r["connected"] - t0 for r in rows if r["connected"] is not None]
    serve = [r["done"] - r["connected"] for r in ok if r["done"] is not None]
    return {
        "connections": n,
        "answered_200": len(ok),
        "connect_p50_ms": 1000 * pct(connect, 0.5),
        "connect_max_ms": 1000 * max(connect, default=float("nan")),
        "serve_p50_ms": 1000 * pct(serve, 0.5),
        "serve_p95_ms": 1000 * pct(serve, 0.95),
        "serve_max_ms": 1000 * max(serve, default=float("nan")),
        "within_100ms": sum(x <= 0.1 for x in serve),
    }


def run(server, users: int, args, files: list[str]) -> dict:
    st = server.scheduler.stats
    before = dict(st)
    out = {"ttft": [], "latency": [], "cancelled": 0}
    t0 = time.monotonic()
    stop_at = t0 + args.duration_s
    threads = [
        threading.Thread(
            target=user,
            args=(server.port, files[i % len(files)], stop_at, random.Random(i), args, out),
        )
        for i in range(users)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - t0
    gen = st["generated_tokens"] - before.get("generated_tokens", 0)
    wasted = st["wasted_tokens"] - before.get("wasted_tokens", 0)
    prefill = st["prefill_tokens"] - before.get("prefill_tokens", 0)
    wasted_prefill = st["wasted_prefill_tokens"] - before.get("wasted_prefill_tokens", 0)
    return {
        "users": users,
        "ttft_p50": pct(out["ttft"], 0.5),
        "ttft_p95": pct(out["ttft"], 0.95),
        "lat_p50": pct(out["latency"], 0.5),
        "lat_p95": pct(out["latency"], 0.95),
        "completions": len(out["latency"]),
        "tok_s": (gen - wasted) / wall,
        "wasted": wasted / max(gen, 1),
        "wasted_prefill": wasted_prefill / max(prefill, 1),
        "prefill_tokens": prefill,
        "prefix_reused": st["prefix_reused_tokens"] - before.get("prefix_reused_tokens", 0),
        "compiles": server.compiles_since_start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="cpu_small")
    ap.add_argument("--users", default="1,8")
    ap.add_argument("--duration_s", type=float, default=20.0)
    ap.add_argument("--max_tokens", type=int, default=20)
    ap.add_argument("--prompt_chars", type=int, default=1500)
    ap.add_argument("--burst", type=int, default=3, help="cancelled keystrokes per pause")
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--prefill_chunk", type=int, default=128)
    ap.add_argument("--servers", default="ours,baseline")
    ap.add_argument("--prefill_interval", type=int, default=1)
    ap.add_argument(
        "--scenario",
        default="users",
        choices=("users", "burst"),
        help="burst: 100 simultaneous connects (against --url, or a tiny server of ours)",
    )
    ap.add_argument("--url", default=None, help="burst: a running server (e.g. an old one)")
    ap.add_argument("--repeats", type=int, default=5, help="burst: rounds")
    args = ap.parse_args()
    if args.scenario == "burst":
        burst_main(args)
        return
    files = [
        open(f).read() for f in sorted(glob.glob(sysconfig.get_paths()["stdlib"] + "/json/*.py"))
    ]
    files = [f for f in files if len(f) > 4 * args.prompt_chars] or files
    rows = []
    for name, flag in (("ours", "true"), ("baseline", "false")):
        if name not in args.servers.split(","):
            continue
        t = time.monotonic()
        server = build_server(
            [
                f"--random_preset={args.preset}",
                "--port=0",
                f"--max_batch_size={args.slots}",
                "--max_context=1024",
                f"--prefill_chunk={args.prefill_chunk}",
                f"--continuous_batching={flag}",
                f"--prefill_interval={args.prefill_interval}",
                "--max_queue=256",
            ]
        ).start()
        print(f"{name}: start-up (load + compile) {time.monotonic() - t:.1f} s", flush=True)
        for n in (int(u) for u in args.users.split(",")):
            r = run(server, n, args, files)
            rows.append((name, r))
            print(
                name,
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}),
                flush=True,
            )
        server.shutdown()
    print(
        "\n| server | users | TTFT p50 / p95 (s) | latency p50 / p95 (s) | completions | tok/s "
        "| wasted decode / prefill | prefix reused / prefilled | compiles |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, r in rows:
        print(
            f"| {name} | {r['users']} | {r['ttft_p50']:.3f} / {r['ttft_p95']:.3f} | "
            f"{r['lat_p50']:.3f} / {r['lat_p95']:.3f} | {r['completions']} | "
            f"{r['tok_s']:.0f} | {r['wasted']:.0%} / {r['wasted_prefill']:.0%} | "
            f"{r['prefix_reused']} / {r['prefill_tokens']} | {r['compiles']} |"
        )
    for name in ("ours", "baseline"):
        lat = {r["users"]: r["lat_p95"] for n, r in rows if n == name}
        if len(lat) >= 2:
            lo, hi = min(lat), max(lat)
            print(f"{name}: p95 latency {hi} users / {lo} user = {lat[hi] / lat[lo]:.2f}x")


def burst_main(args) -> None:
    """The connection-burst scenario: `--repeats` rounds of 100 simultaneous connects."""
    server = None
    if args.url:
        host, port = args.url.removeprefix("http://").rsplit(":", 1)
    else:
        server = build_server(["--random_preset=tiny", "--port=0", "--max_context=256"]).start()
        host, port = "127.0.0.1", str(server.port)
    print(
        "| round | answered 200 | connect p50 / max (ms) | served p50 / p95 / max (ms) "
        "| within 100 ms |"
    )
    print("|---|---|---|---|---|")
    for k in range(args.repeats):
        r = connection_burst(host, int(port))
        print(
            f"| {k} | {r['answered_200']}/{r['connections']} | {r['connect_p50_ms']:.1f} / "
            f"{r['connect_max_ms']:.1f} | {r['serve_p50_ms']:.1f} / {r['serve_p95_ms']:.1f} / "
            f"{r['serve_max_ms']:.1f} | {r['within_100ms']} |",
            flush=True,
        )
        time.sleep(0.5)
    if server is not None:
        server.shutdown()


if __name__ == "__main__":
    main()
