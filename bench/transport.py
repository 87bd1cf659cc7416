#!/usr/bin/env python3
"""What the transport between Envoy and the router costs: loopback TCP, a Unix socket, mTLS.

Starts, on free loopback ports, one simulator (code-model) and three router + Envoy pairs:
  tcp   - the local stack: deploy/envoy.yaml, the router on --listen 127.0.0.1:PORT;
  uds   - the Kubernetes sidecar layout: Envoy's router cluster moved onto a Unix socket by
          deploy/kubernetes/render.py, the router on --listen none --uds PATH;
  mtls  - deploy/envoy-mtls.yaml, the router with --tls-cert/--tls-key/--tls-client-ca
          (certificates from tests/support/pki.sh).
Then sends the same `model: "auto"` Responses request (classified, spliced, routed, its JSON answer
learned: four ext_proc messages) through each, one at a time, interleaved so machine noise hits
all three alike, and reports latency percentiles. It also times new mTLS connections to the
router (TCP connect + TLS 1.3 handshake with a client certificate, as a client sees it). Results
go to bench/results/transport.{md,json}.

    .venv/bin/python bench/transport.py [--requests 2000] [--handshakes 200]

RESPONSES_ROUTER_BIN=path uses a prebuilt router instead of `cargo build --release`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import (  # noqa: E402
    CARGO_PACKAGES, ENVOY_YAML, ROOT, SHIPPED_PORTS, Proc, free_ports, http_status, render_ports, start_simulator,
    tcp_open,
)

sys.path.insert(0, str(ROOT / "deploy" / "kubernetes"))
import render  # noqa: E402  (deploy/kubernetes/render.py)

ROUTING_YAML = ROOT / "deploy" / "routing.yaml"
MTLS_YAML = ROOT / "deploy" / "envoy-mtls.yaml"
BODY = json.dumps({"model": "auto", "input": "Write a Python function that reverses a list."}).encode()


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def uds_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        return True


def tls_dir(work: Path, pki: Path) -> Path:
    """Envoy's /etc/envoy/router-tls: its client certificate, the router's CA, the SDS files."""
    d = work / "router-tls"
    d.mkdir()
    shutil.copy(pki / "client.crt", d / "tls.crt")
    shutil.copy(pki / "client.key", d / "tls.key")
    shutil.copy(pki / "ca.crt", d / "ca.crt")
    for sds in (ROOT / "deploy" / "router-tls").glob("*.yaml"):
        (d / sds.name).write_text(sds.read_text().replace(render.MTLS_DIR, str(d)))
    return d


def handshakes(port: int, pki: Path, n: int) -> list[float]:
    """Milliseconds per new connection: TCP connect plus the TLS handshake, client certificate
    included, until the client has finished its side."""
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    ctx.load_cert_chain(str(pki / "client.crt"), str(pki / "client.key"))
    ctx.set_alpn_protocols(["h2"])
    times = []
    for _ in range(n):
        start = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port)) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost"):
                times.append((time.perf_counter() - start) * 1000)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--handshakes", type=int, default=200)
    args = ap.parse_args()

    binary = os.environ.get("RESPONSES_ROUTER_BIN")
    if not binary:
        subprocess.run(["cargo", "build", "--release", "--quiet", *CARGO_PACKAGES], cwd=ROOT, check=True)
        binary = str(ROOT / "target" / "release" / "responses-router")
    envoy = os.environ.get("ENVOY_BIN") or str(ROOT / ".venv" / "bin" / "envoy")
    work = Path(tempfile.mkdtemp(prefix="transport-"))
    pki = work / "pki"
    subprocess.run([str(ROOT / "tests" / "support" / "pki.sh"), str(pki)], check=True)

    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
    procs: list[Proc] = []
    urls: dict[str, str] = {}
    env = {**os.environ, "RESPONSES_ROUTER_LOG": "warn"}
    try:
        sim = start_simulator(binary, "sim-code", ports["code"], "code-model", work)
        procs.append(sim)
        sim.wait_until(lambda: http_status(ports["code"], "/v1/models") == 200, 30, "simulator")
        shipped = ENVOY_YAML.read_text()
        for name in ("tcp", "uds", "mtls"):
            p = {**ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
            sock = work / f"router-{name}.sock"
            serve = [binary, "serve", "--config", str(ROUTING_YAML), "--admin-listen", "none"]
            if name == "tcp":
                serve += ["--listen", f"127.0.0.1:{p['router']}"]
                text = render_ports(shipped, {SHIPPED_PORTS[k]: p[k] for k in SHIPPED_PORTS}, name)
            elif name == "uds":
                serve += ["--listen", "none", "--uds", str(sock)]
                shipped_ports = {k: v for k, v in SHIPPED_PORTS.items() if k != "router"}
                text = render_ports(render.router_on_socket(shipped, str(sock)),
                                    {shipped_ports[k]: p[k] for k in shipped_ports}, name)
            else:
                serve += ["--listen", f"127.0.0.1:{p['router']}", "--tls-cert", str(pki / "server.crt"),
                          "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.crt")]
                text = render_ports(MTLS_YAML.read_text(), {SHIPPED_PORTS[k]: p[k] for k in SHIPPED_PORTS}, name)
                text = text.replace(f"address: {render.MTLS_ROUTER_NAME},", "address: 127.0.0.1,")
                text = text.replace(render.MTLS_DIR, str(tls_dir(work, pki)))
                ports["mtls_router"] = p["router"]
            router = Proc(f"router-{name}", serve, work / f"router-{name}.log", env=env)
            procs.append(router)
            if name == "uds":
                router.wait_until(lambda s=sock: uds_open(s), 30, "socket")
            else:
                router.wait_until(lambda r=p["router"]: tcp_open(r), 30, "listener")
            config = work / f"envoy-{name}.yaml"
            config.write_text(text)
            proxy = Proc(f"envoy-{name}", [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "error",
                                           "--concurrency", "1"], work / f"envoy-{name}.log")
            procs.append(proxy)
            proxy.wait_until(lambda a=p["admin"]: http_status(a, "/ready") == 200, 30, "/ready")
            urls[name] = f"http://127.0.0.1:{p['listener']}/v1/responses"

        latency: dict[str, list[float]] = {name: [] for name in urls}
        clients = {name: httpx.Client(timeout=30) for name in urls}
        headers = {"content-type": "application/json"}
        for name, url in urls.items():  # warm-up: connections open, code paths hot
            for _ in range(50):
                clients[name].post(url, content=BODY, headers=headers).raise_for_status()
        for _ in range(args.requests):
            for name, url in urls.items():
                start = time.perf_counter()
                r = clients[name].post(url, content=BODY, headers=headers)
                latency[name].append((time.perf_counter() - start) * 1000)
                assert r.status_code == 200 and r.json()["model"] == "code-model", (name, r.status_code, r.text)
        hs = handshakes(ports["mtls_router"], pki, args.handshakes)
    finally:
        for proc in reversed(procs):
            proc.stop()

    summary = {name: {"p50_ms": statistics.median(v), "p90_ms": percentile(v, 90), "p99_ms": percentile(v, 99)}
               for name, v in latency.items()}
    summary["mtls_new_connection"] = {"p50_ms": statistics.median(hs), "p90_ms": percentile(hs, 90),
                                      "p99_ms": percentile(hs, 99)}
    lines = [
        f"`model: auto` Responses requests through Envoy (one worker) and the router, one at a time, "
        f"{args.requests} per transport, interleaved; client's latency.",
        "",
        "| transport | p50 ms | p90 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for name in urls:
        s = summary[name]
        lines.append(f"| {name} | {s['p50_ms']:.3f} | {s['p90_ms']:.3f} | {s['p99_ms']:.3f} |")
    s = summary["mtls_new_connection"]
    lines += ["", f"New mTLS connection to the router (TCP connect + TLS 1.3 handshake with a client certificate, "
                  f"{args.handshakes} times): p50 {s['p50_ms']:.2f} ms, p90 {s['p90_ms']:.2f} ms, "
                  f"p99 {s['p99_ms']:.2f} ms."]
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "transport.md").write_text("\n".join(lines) + "\n")
    (out / "transport.json").write_text(json.dumps({"params": vars(args), "summary": summary}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
