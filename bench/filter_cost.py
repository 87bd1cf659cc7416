#!/usr/bin/env python3
"""Where the router's cost per request goes: Envoy and router CPU per request, and ext_proc
messages per request, for Envoy alone, Envoy with the routing filter only, and the shipped config
(routing filter + observer), each with the router on 1 and on 2 worker threads.

The profile behind BENCHMARKS.md's "Where the cost goes": Envoy's binary carries no symbols, so
its cost is split by configuration instead (ablation), and counted in messages from its own
ext_proc stats. Non-streaming `model: "auto"` Responses requests (what most traffic is), and
`stream: true` ones, at a fixed concurrency with oha; variants alternate over several rounds.

    .venv/bin/python bench/filter_cost.py --router-bin target/release/responses-router \
        --envoy .venv/bin/envoy --oha bench/.tools/bin/oha [--rounds 3] [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import tempfile
import urllib.request
from pathlib import Path

from stack import (
    ENVOY_YAML, ROOT, ROUTING_YAML, Proc, bare_config, cpu_seconds, ensure_models, free_ports, start_envoy,
    start_simulator, tcp_open, wait_http,
)

SIMULATORS = {"general": "general-model", "code": "code-model", "story-a": "story-model", "story-b": "story-model"}
TEXT = "Write a short story about a lighthouse keeper."


def routing_only(text: str) -> str:
    """The shipped config without filter (3), the observer."""
    out, n = re.subn(r"          # \(3\).*?(?=          # \(4\))", "", text, flags=re.S)
    if n != 1:
        raise RuntimeError("filter markers (3)..(4) not found in deploy/envoy.yaml")
    return out


def ext_proc_stats(admin_port: int) -> dict[str, int]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/stats", timeout=5).read().decode()
    return {k: int(v) for k, v in re.findall(r"^http\.openai\.(ext_proc\.\S+): (\d+)$", text, re.M)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--router-bin", default=str(ROOT / "target" / "release" / "responses-router"))
    ap.add_argument("--envoy", default=str(ROOT / ".venv" / "bin" / "envoy"))
    ap.add_argument("--oha", default=str(ROOT / "bench" / ".tools" / "bin" / "oha"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--connections", type=int, default=16)
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="filter-cost-"))
    procs: list[Proc] = []
    ports = dict(zip(["router", "router2", *SIMULATORS], free_ports(2 + len(SIMULATORS))))
    shipped = ENVOY_YAML.read_text()
    configs = {"envoy alone": bare_config(shipped, "stories"), "routing filter only": routing_only(shipped),
               "shipped (routing + observer)": shipped}
    try:
        for name, model in SIMULATORS.items():
            sim = start_simulator(args.router_bin, f"sim-{name}", ports[name], model, work)
            procs.append(sim)
            wait_http(sim, ports[name], "/v1/models", "simulator")
        routers = {}
        ensure_models()  # the routing YAML names an embedding model
        for threads, key in [(1, "router"), (2, "router2")]:
            router = Proc(f"router-{threads}", [args.router_bin, "serve", "--config", str(ROUTING_YAML), "--listen",
                                                f"127.0.0.1:{ports[key]}", "--admin-listen", "none",
                                                "--worker-threads", str(threads)], work / f"router-{threads}.log")
            router.wait_until(lambda p=ports[key]: tcp_open(p), 30, "gRPC listener")
            procs.append(router)
            routers[threads] = (router, ports[key])
        variants = []  # (label, threads or None, envoy proc, listener port, admin port)
        for label, text in configs.items():
            for threads in ([None] if label == "envoy alone" else [1, 2]):
                p = dict(zip(["listener", "admin"], free_ports(2)))
                p.update({k: ports[k] for k in SIMULATORS})
                p["router"] = routers[threads][1] if threads else ports["router"]
                name = f"envoy-{len(variants)}"
                envoy = start_envoy(args.envoy, name, text, p, work, concurrency=1)
                procs.append(envoy)
                variants.append((label, threads, envoy, p["listener"], p["admin"]))

        results: dict[tuple[str, int | None, bool], list[dict]] = {}
        for _ in range(args.rounds):
            for label, threads, envoy, listener, admin in variants:
                for stream in (False, True):
                    model = "story-model" if label == "envoy alone" else "auto"
                    body = work / "body.json"
                    body.write_text(json.dumps({"model": model, "input": TEXT, "stream": stream}))
                    router = routers[threads][0] if threads else None
                    before = (cpu_seconds(envoy.popen.pid), router and cpu_seconds(router.popen.pid),
                              ext_proc_stats(admin))
                    out = subprocess.run(
                        [args.oha, "-z", f"{args.seconds}s", "-c", str(args.connections), "--no-tui",
                         "--output-format", "json", "-m", "POST", "-H", "content-type: application/json",
                         "-D", str(body), f"http://127.0.0.1:{listener}/v1/responses"],
                        capture_output=True, text=True, check=True).stdout
                    summary = json.loads(out)["summary"]
                    n = summary["requestsPerSec"] * args.seconds
                    stats = ext_proc_stats(admin)
                    row = {
                        "rps": summary["requestsPerSec"], "success": summary["successRate"],
                        "envoy_us": (cpu_seconds(envoy.popen.pid) - before[0]) / n * 1e6,
                        "router_us": (cpu_seconds(router.popen.pid) - before[1]) / n * 1e6 if router else 0.0,
                        "msgs": sum(v - before[2].get(k, 0) for k, v in stats.items() if k.endswith("stream_msgs_sent")) / n,
                        "streams": sum(v - before[2].get(k, 0) for k, v in stats.items() if k.endswith("streams_started")) / n,
                    }
                    results.setdefault((label, threads, stream), []).append(row)

        print(f"| Envoy config | router threads | request | req/s (c={args.connections}) | Envoy CPU µs/req | "
              "router CPU µs/req | ext_proc streams/req | messages/req |")
        print("|---|---|---|---|---|---|---|---|")
        for (label, threads, stream), rows in results.items():
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            if min(r["success"] for r in rows) < 1.0:
                raise SystemExit(f"{label}: failed requests")
            print(f"| {label} | {threads or '–'} | {'stream' if stream else 'JSON'} | {med['rps']:,.0f} | "
                  f"{med['envoy_us']:.0f} | {med['router_us']:.0f} | {med['streams']:.2f} | {med['msgs']:.2f} |")
        print(f"\n(medians of {args.rounds} rounds of {args.seconds} s; logs in {work})")
    finally:
        for proc in reversed(procs):
            proc.stop()


if __name__ == "__main__":
    main()
