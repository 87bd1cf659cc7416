"""Envoy and the router over the transports deployments use instead of the local stack's loopback TCP.

- The Kubernetes sidecar layout: the router serves ext_proc only on a Unix socket (`--listen none
  --uds`, gRPC health alone on `--health-listen`), and Envoy's router cluster is moved onto it by
  the very function that renders the pod's Envoy config (deploy/kubernetes/render.py).
- mTLS, for a router that runs apart from Envoy: deploy/envoy-mtls.yaml as shipped (only its ports,
  the router's address and its certificate directory rewritten), the router with `--tls-cert
  --tls-key --tls-client-ca`, certificates made at test time by tests/support/pki.sh. An Envoy
  whose client certificate comes from another CA gets no decision: it fails closed.

The module starts its own four simulators (as the session stack does) and, for each layout, its
own router and Envoy: it needs no other fixture.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import httpx
import openai
import pytest

from conftest import _envoy_binary, _router_binary, envoy_argv, start_proc, wait_envoy_ready
from helpers import CODING_PROMPT, SIMULATOR_OUTPUT, assert_openai_error
from procs import (
    ENVOY_YAML, ROOT, ROUTING_YAML, SHIPPED_PORTS, SIMULATORS, STARTUP_TIMEOUT, free_ports, http_status, render_ports,
    simulator_argv, simulator_binary, tcp_open,
)

sys.path.insert(0, str(ROOT / "deploy" / "kubernetes"))
import render  # noqa: E402  (deploy/kubernetes/render.py)

MTLS_YAML = ROOT / "deploy" / "envoy-mtls.yaml"
SDS_FILES = ROOT / "deploy" / "router-tls"
PKI_SCRIPT = ROOT / "tests" / "support" / "pki.sh"
STORY_PROMPT = "Tell me a short story about a lighthouse keeper."


@dataclass
class Gateway:
    """An Envoy in front of the simulators, and the router it asks."""

    base_url: str
    envoy_url: str
    router_admin: int


def uds_open(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(str(path))
        return True


def metric(port: int, series: str) -> float:
    """One series of a router's /metrics (0 when absent)."""
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


@pytest.fixture(scope="module")
def backends(tmp_path_factory) -> Iterator[dict[str, int]]:
    """The four simulators of the local stack on free ports: port key -> port."""
    workdir = tmp_path_factory.mktemp("transport-sims")
    simulator = simulator_binary(_router_binary())
    ports = {key: port for (key, _), port in zip(SIMULATORS.values(), free_ports(len(SIMULATORS)))}
    procs = [start_proc(name, simulator_argv(simulator, name, ports[key], model), workdir)
             for name, (key, model) in SIMULATORS.items()]
    try:
        for proc, (key, _) in zip(procs, SIMULATORS.values()):
            proc.wait_until(lambda p=ports[key]: http_status(p, "/v1/models") > 0, STARTUP_TIMEOUT, "HTTP answer")
        yield ports
    finally:
        for proc in procs:
            proc.stop()


def gateway_ports(backends: dict[str, int]) -> dict[str, int]:
    """The simulators' ports; a new listener, admin and router port."""
    return {**backends, **dict(zip(("listener", "admin", "router"), free_ports(3)))}


def converse(base_url: str) -> None:
    """What the gateway is for, through the transport under test: a coding question is routed to
    code-model, a streamed story is learned by the observer filter and its continuation goes back
    to the instance that holds it."""
    client = openai.OpenAI(base_url=base_url, api_key="unused", timeout=30, max_retries=0)
    coded = client.responses.create(model="auto", input=CODING_PROMPT)
    assert coded.model == "code-model", coded.model
    first_id, instance = None, None
    for event in client.responses.create(model="auto", input=STORY_PROMPT, stream=True):
        if event.type == "response.created":
            first_id = event.response.id
        if event.type == "response.completed":
            instance = SIMULATOR_OUTPUT.match(event.response.output_text)["instance"]
    assert first_id and instance and instance.startswith("sim-story"), (first_id, instance)
    for _ in range(3):
        follow = client.responses.create(model="auto", input="And then?", previous_response_id=first_id)
        assert SIMULATOR_OUTPUT.match(follow.output_text)["instance"] == instance, follow.output_text
        first_id = follow.id


@pytest.fixture(scope="module")
def sidecar(backends, tmp_path_factory) -> Iterator[Gateway]:
    """The pod's layout: ext_proc on a Unix socket only, health alone on TCP."""
    workdir = tmp_path_factory.mktemp("uds")
    router_socket = workdir / "router.sock"
    ports = gateway_ports(backends)
    health, admin = free_ports(2)
    config = workdir / "envoy.yaml"
    shipped = {k: v for k, v in SHIPPED_PORTS.items() if k != "router"}
    config.write_text(render_ports(render.router_on_socket(ENVOY_YAML.read_text(), str(router_socket)),
                                   {shipped[k]: ports[k] for k in shipped}, str(ENVOY_YAML)))
    router = start_proc("router-uds", [str(_router_binary()), "serve", "--config", str(ROUTING_YAML),
                                       "--listen", "none", "--uds", str(router_socket),
                                       "--health-listen", f"127.0.0.1:{health}",
                                       "--admin-listen", f"127.0.0.1:{admin}"], workdir)
    envoy = start_proc("envoy-uds", envoy_argv(_envoy_binary(), config), workdir)
    try:
        router.wait_until(lambda: uds_open(router_socket), STARTUP_TIMEOUT, "ext_proc socket")
        router.wait_until(lambda: tcp_open(health), STARTUP_TIMEOUT, "health port")
        wait_envoy_ready(envoy, ports)
        yield Gateway(f"http://127.0.0.1:{ports['listener']}/v1", f"http://127.0.0.1:{ports['listener']}", admin)
    finally:
        envoy.stop()
        router.stop()


def test_the_sidecar_layout_routes_and_learns_over_the_unix_socket(sidecar):
    converse(sidecar.base_url)
    assert metric(sidecar.router_admin, 'responses_router_learned_ids_total{source="sse"}') >= 1


def make_pki(workdir: Path) -> Path:
    pki = workdir / "pki"
    subprocess.run([str(PKI_SCRIPT), str(pki)], check=True, timeout=60)
    return pki


def publish(d: Path, pki: Path, cert: str, ca: str) -> None:
    """Puts client certificate `cert` (and its key) and the CA `ca` for the router into `d` as
    kubelet updates a Secret volume: a new directory of files, then `..data` swapped to it by a
    rename (the move Envoy's `watched_directory` reacts to)."""
    version = d / f"..{cert}"
    version.mkdir()
    shutil.copy(pki / f"{cert}.crt", version / "tls.crt")
    shutil.copy(pki / f"{cert}.key", version / "tls.key")
    shutil.copy(pki / f"{ca}.crt", version / "ca.crt")
    (d / "..data_tmp").symlink_to(version.name)
    (d / "..data_tmp").rename(d / "..data")


def secret_dir(workdir: Path, name: str, pki: Path, cert: str, ca: str) -> Path:
    """Envoy's /etc/envoy/router-tls, laid out as a Secret volume: its client certificate `cert`
    (and key), the CA it trusts for the router, and the shipped SDS files pointing at them."""
    d = workdir / name
    d.mkdir()
    publish(d, pki, cert, ca)
    for file in ("tls.crt", "tls.key", "ca.crt"):
        (d / file).symlink_to(f"..data/{file}")
    for sds in SDS_FILES.glob("*.yaml"):
        (d / sds.name).write_text(sds.read_text().replace(render.MTLS_DIR, str(d)))
    return d


def mtls_config(path: Path, ports: dict[str, int], tls_dir: Path) -> Path:
    """deploy/envoy-mtls.yaml with its ports, the router's address and the certificate directory
    rewritten; the SNI name and the name checked in the router's certificate stay as shipped."""
    text = render_ports(MTLS_YAML.read_text(), {SHIPPED_PORTS[k]: ports[k] for k in SHIPPED_PORTS}, str(MTLS_YAML))
    address = f"address: {render.MTLS_ROUTER_NAME},"
    assert text.count(address) == 1, f"{MTLS_YAML}: expected one `{address}`"
    text = text.replace(address, "address: 127.0.0.1,").replace(render.MTLS_DIR, str(tls_dir))
    path.write_text(text)
    return path


@dataclass
class Mtls:
    gateway: Gateway
    intruder_url: str  # an Envoy whose client certificate another CA signed
    router_log: Path
    pki: Path
    tls_dir: Path  # the gateway Envoy's /etc/envoy/router-tls
    envoy_admin: int


@pytest.fixture(scope="module")
def mtls(backends, tmp_path_factory) -> Iterator[Mtls]:
    workdir = tmp_path_factory.mktemp("mtls")
    pki = make_pki(workdir)
    ports = gateway_ports(backends)
    admin, = free_ports(1)
    router = start_proc("router-mtls", [str(_router_binary()), "serve", "--config", str(ROUTING_YAML),
                                        "--listen", f"127.0.0.1:{ports['router']}",
                                        "--tls-cert", str(pki / "server.crt"), "--tls-key", str(pki / "server.key"),
                                        "--tls-client-ca", str(pki / "ca.crt"),
                                        "--admin-listen", f"127.0.0.1:{admin}"], workdir)
    tls_dir = secret_dir(workdir, "router-tls", pki, "client", "ca")
    envoy = start_proc("envoy-mtls", envoy_argv(_envoy_binary(), mtls_config(workdir / "envoy.yaml", ports, tls_dir)),
                       workdir)
    intruder_ports = {**ports, **dict(zip(("listener", "admin"), free_ports(2)))}
    intruder = start_proc("envoy-mtls-intruder", envoy_argv(_envoy_binary(), mtls_config(
        workdir / "envoy-intruder.yaml", intruder_ports,
        secret_dir(workdir, "intruder-tls", pki, "other-client", "ca"))), workdir)
    try:
        router.wait_until(lambda: tcp_open(ports["router"]), STARTUP_TIMEOUT, "TLS listener")
        wait_envoy_ready(envoy, ports)
        wait_envoy_ready(intruder, intruder_ports)
        yield Mtls(Gateway(f"http://127.0.0.1:{ports['listener']}/v1", f"http://127.0.0.1:{ports['listener']}",
                           admin),
                   f"http://127.0.0.1:{intruder_ports['listener']}", router.log_path, pki, tls_dir, ports["admin"])
    finally:
        intruder.stop()
        envoy.stop()
        router.stop()


def test_the_shipped_mtls_config_routes_and_learns_through_envoy(mtls):
    converse(mtls.gateway.base_url)
    assert metric(mtls.gateway.router_admin, 'responses_router_tls_handshakes_total{result="ok"}') >= 1
    assert metric(mtls.gateway.router_admin, 'responses_router_learned_ids_total{source="sse"}') >= 1


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/v1/responses", {"model": "auto", "input": CODING_PROMPT}),
    ("GET", "/v1/models", None),
])
def test_an_envoy_without_a_valid_client_certificate_gets_no_decision(mtls, method, path, body):
    with httpx.Client(base_url=mtls.intruder_url, timeout=30) as c:
        r = c.request(method, path, json=body)
    # Fail closed: no decision, so nothing reaches a model server.
    assert "x-simulator-instance" not in r.headers
    assert_openai_error(r, 500, error_type="server_error", code="router_unavailable")
    assert metric(mtls.gateway.router_admin, 'responses_router_tls_handshakes_total{result="failed"}') >= 1
    # Refused for its certificate (rustls: "invalid peer certificate: UnknownIssuer"), not for
    # anything else about the handshake.
    refusals = [line for line in mtls.router_log.read_text().splitlines() if "TLS handshake refused" in line]
    assert refusals and all("invalid peer certificate: UnknownIssuer" in line for line in refusals), refusals


def client_serials(envoy_admin: int) -> set[int]:
    """Serial numbers of the client certificates Envoy holds (admin /certs)."""
    certs = httpx.get(f"http://127.0.0.1:{envoy_admin}/certs", timeout=5).json()["certificates"]
    return {int(c["serial_number"], 16) for entry in certs for c in entry.get("cert_chain", [])}


def serial(cert: Path) -> int:
    out = subprocess.run(["openssl", "x509", "-noout", "-serial", "-in", str(cert)],
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().split("=", 1)[1], 16)


def test_envoy_takes_a_renewed_client_certificate_without_a_restart(mtls):
    """The shipped SDS wiring (watched_directory): a Secret-style update of Envoy's certificate
    directory is loaded at once, and requests keep flowing."""
    assert serial(mtls.pki / "client.crt") in client_serials(mtls.envoy_admin)
    publish(mtls.tls_dir, mtls.pki, "client-renewed", "ca")
    renewed = serial(mtls.pki / "client-renewed.crt")
    deadline = time.monotonic() + 10
    while renewed not in client_serials(mtls.envoy_admin):
        assert time.monotonic() < deadline, "Envoy did not load the renewed certificate"
        time.sleep(0.05)
    assert serial(mtls.pki / "client.crt") not in client_serials(mtls.envoy_admin)
    client = openai.OpenAI(base_url=mtls.gateway.base_url, api_key="unused", timeout=30, max_retries=0)
    assert client.responses.create(model="auto", input=CODING_PROMPT).model == "code-model"
