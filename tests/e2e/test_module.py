"""What only the module form has, through a real Envoy: the routing YAML is checked when Envoy loads
the filter config (so `envoy --mode validate` refuses a broken one with the router's own message),
and a changed file is picked up by the running Envoy without a restart."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Iterator

import openai
import pytest

from conftest import SHIPPED_PORTS, Stack, envoy_argv, start_proc, wait_envoy_ready
from helpers import CODING_PROMPT, eventually
from procs import ROOT, ROUTING_YAML, free_ports, gateway_env, render_gateway

pytestmark = pytest.mark.forms("module")

# How often the module looks at the routing YAML in these tests (the shipped config: 5 s).
POLL_SECONDS = 1


def routing_copy(directory: Path, edit=lambda text: text) -> Path:
    """deploy/routing.yaml, edited, in `directory`; its embedding model still found (the shipped
    file names it relative to itself)."""
    text = ROUTING_YAML.read_text()
    relative = "model_dir: ../.cache/"
    assert text.count(relative) == 1, f"{ROUTING_YAML}: expected one {relative!r}"
    text = text.replace(relative, f"model_dir: {ROOT}/.cache/")
    path = directory / "routing.yaml"
    path.write_text(edit(text))
    return path


def module_config(directory: Path, ports: dict[str, int], routing: Path) -> Path:
    """deploy/envoy-module.yaml on `ports`, naming `routing` as its routing YAML."""
    text = render_gateway("module", ports)
    shipped = f"routing_yaml: {ROUTING_YAML}"
    assert text.count(shipped) == 1, "the rendered module config names the shipped routing YAML once"
    text = text.replace(shipped, f"routing_yaml: {routing}")
    text, polls = re.subn(r"config_poll_seconds: \d+", f"config_poll_seconds: {POLL_SECONDS}", text)
    assert polls == 1, "the module config sets config_poll_seconds once"
    path = directory / "envoy-module.yaml"
    path.write_text(text)
    return path


def unknown_model_for_coding(text: str) -> str:
    assert text.count("model: code-model") == 1, "the coding category names code-model once"
    return text.replace("model: code-model", "model: no-such-model")


def coding_to_general(text: str) -> str:
    assert text.count("model: code-model") == 1, "the coding category names code-model once"
    return text.replace("model: code-model", "model: general-model")


def test_envoy_validate_refuses_a_broken_routing_yaml_with_the_routers_message(stack, envoy_bin, tmp_path):
    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
    env = gateway_env("module", stack.router_bin)

    def validate(routing: Path) -> subprocess.CompletedProcess:
        config = module_config(routing.parent, ports, routing)
        return subprocess.run([envoy_bin, "--mode", "validate", "-c", str(config)], env=env,
                              capture_output=True, text=True, timeout=120)

    (tmp_path / "good").mkdir()
    good = validate(routing_copy(tmp_path / "good"))
    assert good.returncode == 0, good.stdout + good.stderr

    (tmp_path / "broken").mkdir()
    broken = validate(routing_copy(tmp_path / "broken", unknown_model_for_coding))
    output = broken.stdout + broken.stderr
    assert broken.returncode != 0, output
    # The same words `responses-router validate` prints for this file.
    assert "categories[0].model: unknown model `no-such-model` (not listed under models)" in output, output


@pytest.fixture
def reloading_gateway(stack: Stack, envoy_bin: str, tmp_path: Path) -> Iterator[tuple[Path, Stack]]:
    """An Envoy with the module reading its own copy of the routing YAML, checked every second, in
    front of the stack's simulators."""
    routing = routing_copy(tmp_path)
    ports = {**stack.ports, **dict(zip(("listener", "admin"), free_ports(2)))}
    config = module_config(tmp_path, ports, routing)
    proc = start_proc("envoy-reloading", envoy_argv(envoy_bin, config), tmp_path,
                      gateway_env("module", stack.router_bin))
    try:
        wait_envoy_ready(proc, ports)
        yield routing, Stack(
            base_url=f"http://127.0.0.1:{ports['listener']}/v1",
            envoy_url=f"http://127.0.0.1:{ports['listener']}",
            admin_url=f"http://127.0.0.1:{ports['admin']}",
            sim_urls=stack.sim_urls, ports=ports, procs={"envoy": proc}, form="module")
    finally:
        proc.stop()


def stat(gateway: Stack, series: str) -> float:
    """The value of `series` in Envoy's Prometheus stats."""
    for sample in gateway.router_metrics().splitlines():
        name, _, value = sample.rpartition(" ")
        if name == series:
            return float(value)
    raise AssertionError(f"no {series!r} in Envoy's stats")


def wait_for_stat(gateway: Stack, series: str, value: float) -> None:
    def check() -> None:
        assert stat(gateway, series) == value
    eventually(check, timeout=15)


def test_a_changed_routing_yaml_takes_effect_without_a_restart_and_a_broken_one_is_refused(reloading_gateway):
    routing, gateway = reloading_gateway
    generation = "envoy_responses_router_config_generation{}"
    accepted = 'envoy_responses_router_config_reloads_total{result="ok"}'
    rejected = 'envoy_responses_router_config_reloads_total{result="rejected"}'
    with openai.OpenAI(base_url=gateway.base_url, api_key="e2e-unused", max_retries=0, timeout=30) as client:
        def served_by() -> str:
            raw = client.responses.with_raw_response.create(model="auto", input=CODING_PROMPT)
            return raw.headers["x-simulator-instance"]

        assert served_by() == "sim-code"
        # The load at start counts as an accepted load, as in the service.
        wait_for_stat(gateway, generation, 1)
        wait_for_stat(gateway, accepted, 1)

        routing.write_text(coding_to_general(routing.read_text()))
        wait_for_stat(gateway, generation, 2)
        assert served_by() == "sim-general"
        wait_for_stat(gateway, accepted, 2)

        # A broken file is refused: the table in force stays, and the refusal is counted.
        routing_copy(routing.parent, unknown_model_for_coding)
        wait_for_stat(gateway, rejected, 1)
        assert stat(gateway, generation) == 2
        assert served_by() == "sim-general"
    assert gateway.procs["envoy"].alive()
