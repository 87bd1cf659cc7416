#!/usr/bin/env python3
"""Streaming overhead of the router: time to first byte and gaps between SSE chunks.

Starts, on free loopback ports, one simulator that streams N chunks D ms apart, the router, and two
Envoys rendered from the shipped deploy/envoy.yaml:
  bare    - the router's filters removed (ext_proc, the observer, stateful_session) and the route
            pointed straight at the simulator's cluster: Envoy alone, the floor;
  router  - the shipped config: decision on the request, learning from the stream (observer).
Then sends the same `stream: true` Responses requests through each, interleaved, and reports the
median and p90 time to first byte and the median and p99 extra delay between chunks (gap minus
the simulator's own delay). Results go to bench/results/stream_overhead.{md,json}.

    .venv/bin/python bench/stream_overhead.py [--requests 60] [--chunks 20] [--delay-ms 10]

RESPONSES_ROUTER_BIN=path uses a prebuilt router instead of `cargo build --release`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import (  # noqa: E402
    CARGO_PACKAGES, ROOT, SHIPPED_PORTS, Proc, bare_config, ensure_models, free_ports, http_status, render_envoy,
    start_simulator, tcp_open,
)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def one_stream(client: httpx.Client, url: str, body: bytes) -> tuple[float, list[float]]:
    """Returns (time to first byte, arrival time of each SSE event) in ms from the request start."""
    start = time.perf_counter()
    arrivals: list[float] = []
    first = None
    with client.stream("POST", url, content=body, headers={"content-type": "application/json"}) as r:
        r.raise_for_status()
        buf = b""
        for chunk in r.iter_raw():
            now = (time.perf_counter() - start) * 1000
            first = first if first is not None else now
            buf += chunk
            while b"\n\n" in buf:
                event, buf = buf.split(b"\n\n", 1)
                if b"response.output_text.delta" in event:
                    arrivals.append(now)
    return first or 0.0, arrivals


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=60)
    ap.add_argument("--chunks", type=int, default=20)
    ap.add_argument("--delay-ms", type=int, default=10)
    args = ap.parse_args()

    # RESPONSES_ROUTER_BIN: a prebuilt binary (as for the e2e tests and bench/e2e); else build.
    binary = os.environ.get("RESPONSES_ROUTER_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet", *CARGO_PACKAGES], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "responses-router")
    envoy = str(ROOT / ".venv" / "bin" / "envoy")
    work = Path(tempfile.mkdtemp(prefix="stream-overhead-"))
    shipped = (ROOT / "deploy" / "envoy.yaml").read_text()

    sim_port, router_port = free_ports(2)
    procs: list[Proc] = []
    urls = {}
    try:
        procs.append(start_simulator(binary, "sim", sim_port, "code-model", work,
                                     ["--chunk-delay-ms", str(args.delay_ms), "--stream-chunks", str(args.chunks)]))
        ensure_models()  # the routing YAML names an embedding model
        procs.append(Proc("router", [binary, "serve", "--config", str(ROOT / "deploy" / "routing.yaml"),
                                     "--listen", f"127.0.0.1:{router_port}"], work / "router.log"))
        for name, text in (("bare", bare_config(shipped, "code")), ("router", shipped)):
            listener, admin, *others = free_ports(6)
            ports = dict(zip(SHIPPED_PORTS, [listener, admin, router_port, others[0], sim_port, *others[1:4]]))
            config = work / f"envoy-{name}.yaml"
            config.write_text(render_envoy(text, ports, name))
            proc = Proc(f"envoy-{name}", [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "error"],
                        work / f"envoy-{name}.log")
            procs.append(proc)
            proc.wait_until(lambda a=admin: http_status(a, "/ready") == 200, 30, "/ready")
            proc.wait_until(lambda p=listener: tcp_open(p), 30, "listener")
            urls[name] = f"http://127.0.0.1:{listener}/v1/responses"
        procs[0].wait_until(lambda: http_status(sim_port, "/v1/models") == 200, 30, "simulator")

        body = json.dumps({"model": "code-model", "input": "count to twenty in python", "stream": True}).encode()
        results = {name: {"ttfb": [], "extra_gap": []} for name in urls}
        with httpx.Client(timeout=60) as client:
            for name in urls:  # warm-up
                one_stream(client, urls[name], body)
            for _ in range(args.requests):
                for name, url in urls.items():  # interleaved, so machine noise hits both alike
                    ttfb, arrivals = one_stream(client, url, body)
                    assert len(arrivals) == args.chunks, (name, len(arrivals))
                    results[name]["ttfb"].append(ttfb)
                    results[name]["extra_gap"] += [b - a - args.delay_ms for a, b in zip(arrivals, arrivals[1:])]
    finally:
        for proc in reversed(procs):
            proc.stop()

    summary = {
        name: {
            "ttfb_ms_p50": statistics.median(r["ttfb"]),
            "ttfb_ms_p90": percentile(r["ttfb"], 90),
            "extra_gap_ms_p50": statistics.median(r["extra_gap"]),
            "extra_gap_ms_p99": percentile(r["extra_gap"], 99),
        }
        for name, r in results.items()
    }
    meta = {"requests": args.requests, "chunks": args.chunks, "delay_ms": args.delay_ms}
    lines = [
        f"Streams of {args.chunks} chunks, {args.delay_ms} ms apart; {args.requests} requests each, interleaved.",
        "",
        "| path | TTFB p50 ms | TTFB p90 ms | extra gap p50 ms | extra gap p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['ttfb_ms_p50']:.2f} | {s['ttfb_ms_p90']:.2f} | "
                     f"{s['extra_gap_ms_p50']:.3f} | {s['extra_gap_ms_p99']:.3f} |")
    b, r = summary["bare"], summary["router"]
    lines += ["", f"router - bare: TTFB p50 {r['ttfb_ms_p50'] - b['ttfb_ms_p50']:+.2f} ms, "
                  f"extra gap p50 {r['extra_gap_ms_p50'] - b['extra_gap_ms_p50']:+.3f} ms, "
                  f"p99 {r['extra_gap_ms_p99'] - b['extra_gap_ms_p99']:+.3f} ms"]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "stream_overhead.md").write_text("\n".join(lines) + "\n")
    (out / "stream_overhead.json").write_text(json.dumps({"params": meta, "summary": summary}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
