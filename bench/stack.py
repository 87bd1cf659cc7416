"""Shared pieces of the benchmarks: the shipped Envoy config rendered onto free ports, a "bare" Envoy
config without the router, and starting simulators, the router and Envoy as child processes.

The shipped deploy/envoy.yaml stays the single source of truth: the benchmarks only change its
ports (tests/e2e/procs.py `render_ports`) and, for the bare floor, cut out the router's filters.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
from procs import (  # noqa: E402,F401
    CARGO_PACKAGES, ENVOY_YAML, ROUTING_YAML, SHIPPED_PORTS, STARTUP_TIMEOUT, Proc, ensure_models, free_ports,
    gateway_env, http_status, render_gateway, render_ports, simulator_argv, simulator_binary, tcp_open,
)


def bare_config(text: str, cluster: str) -> str:
    """The shipped config without the router: filters (2)..(4) (ext_proc, the observer and
    stateful_session) removed and the route pointed at `cluster` directly: Envoy alone, the floor."""
    text, n = re.subn(r"          # \(2\).*?(?=          # \(5\))", "", text, flags=re.S)
    if n != 1:
        raise RuntimeError("filter markers (2)..(5) not found in deploy/envoy.yaml")
    if "cluster_header: x-router-cluster" not in text:
        raise RuntimeError("`cluster_header: x-router-cluster` not found in deploy/envoy.yaml")
    return text.replace("cluster_header: x-router-cluster", f"cluster: {cluster}")


def render_envoy(text: str, ports: dict[str, int], source: str = str(ENVOY_YAML)) -> str:
    """`text` (deploy/envoy.yaml or its bare variant) with every shipped port replaced by `ports[key]`."""
    return render_ports(text, {SHIPPED_PORTS[k]: ports[k] for k in SHIPPED_PORTS}, source)


def start_simulator(router_bin: str, name: str, port: int, models: str, work: Path,
                    extra: list[str] | None = None) -> Proc:
    """The simulator built beside `router_bin`, serving `models` as instance `name`."""
    argv = simulator_argv(simulator_binary(router_bin), name, port, models, *(extra or []))
    return Proc(name, argv, work / f"{name}.log")


def wait_http(proc: Proc, port: int, path: str, what: str) -> None:
    proc.wait_until(lambda: http_status(port, path) > 0, STARTUP_TIMEOUT, what)


def start_router(binary: str, port: int, admin_port: int, work: Path, name: str = "router",
                 env: dict[str, str] | None = None) -> Proc:
    ensure_models()  # the routing YAML names an embedding model
    admin = f"127.0.0.1:{admin_port}" if admin_port else "none"
    proc = Proc(name, [binary, "serve", "--config", str(ROUTING_YAML), "--listen", f"127.0.0.1:{port}",
                       "--admin-listen", admin], work / f"{name}.log", env=env)
    proc.wait_until(lambda: tcp_open(port), STARTUP_TIMEOUT, "gRPC listener")
    return proc


def start_envoy(envoy: str, name: str, text: str, ports: dict[str, int], work: Path,
                concurrency: int | None = None, rendered: bool = False,
                env: dict[str, str] | None = None) -> Proc:
    """Writes the config (with `ports`, unless `rendered` says it has them) to work/NAME.yaml, starts
    Envoy on it and waits for /ready."""
    config = work / f"{name}.yaml"
    config.write_text(text if rendered else render_envoy(text, ports))
    argv = [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "error"]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    proc = Proc(name, argv, work / f"{name}.log", env=env)
    proc.wait_until(lambda: http_status(ports["admin"], "/ready") == 200, STARTUP_TIMEOUT, "/ready")
    proc.wait_until(lambda: tcp_open(ports["listener"]), STARTUP_TIMEOUT, "listener")
    return proc


def rss_bytes(pid: int) -> int:
    """Resident memory of `pid` and all its descendants (LiteLLM's workers are child processes)."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its descendants, in seconds."""
    import os
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in [pid, *descendants(pid)]:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
        except (OSError, IndexError, ValueError):
            pass
    return total
