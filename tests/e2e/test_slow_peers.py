"""Slow peers: a client that dribbles its body, and a backend that streams for minutes.

Neither may be cut by a timeout while it is making progress, and neither may make the router (or
Envoy) hold memory that grows with the stream's length.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import STARTUP_TIMEOUT, Stack, _router_binary, start_gateway, start_proc
from helpers import CODING_PROMPT
from procs import free_ports, http_status, simulator_argv, simulator_binary
from test_body import received_body, spliced
from test_hostile import parse_response

# The long stream: 100 text chunks, 1.5 s apart = 150 s, longer than Envoy's default 15 s route
# timeout and the 60 s / 120 s read timeouts common in proxies, with a chunk well inside any idle
# timeout. The only multi-minute test of the suite.
LONG_STREAM_CHUNKS = 100
LONG_STREAM_DELAY_MS = 1500
MIB = 1024 * 1024


def vm_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def envoy_allocated_bytes(admin_url: str) -> int:
    r = httpx.get(f"{admin_url}/stats", params={"filter": r"^server\.memory_allocated$"}, timeout=10)
    r.raise_for_status()
    return int(r.text.split(": ")[1])


@pytest.fixture(scope="module")
def slow_stack(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Its own Envoy and router (of the stack's form) whose `code` cluster is a simulator streaming
    for minutes (the other clusters are the shared simulators), so the long stream slows no other
    test."""
    workdir = tmp_path_factory.mktemp(f"slow-{stack.form}")
    binary = _router_binary()
    ports = {**stack.ports, **dict(zip(("listener", "admin", "router", "code"), free_ports(4)))}
    env = {**os.environ, "RUST_BACKTRACE": "1"}
    sim = start_proc("sim-code-slow", simulator_argv(simulator_binary(binary), "sim-code-slow", ports["code"],
                                                     "code-model", "--chunk-delay-ms", str(LONG_STREAM_DELAY_MS),
                                                     "--stream-chunks", str(LONG_STREAM_CHUNKS)), workdir, env)
    procs: dict = {"sim-code-slow": sim}
    try:
        sim.wait_until(lambda: http_status(ports["code"], "/v1/models") > 0, STARTUP_TIMEOUT, "HTTP answer")
        procs.update(start_gateway(stack.form, "slow", ports, workdir, env))
        yield Stack(
            base_url=f"http://127.0.0.1:{ports['listener']}/v1",
            envoy_url=f"http://127.0.0.1:{ports['listener']}",
            admin_url=f"http://127.0.0.1:{ports['admin']}",
            sim_urls={**stack.sim_urls, "sim-code-slow": f"http://127.0.0.1:{ports['code']}"},
            ports=ports,
            procs=procs,
            form=stack.form,
        )
    finally:
        for proc in procs.values():
            proc.stop()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_client_dribbling_its_body_is_routed_with_the_whole_body(stack, sims, framing):
    # ~14 s to send a 1.4 KB body in 35 pieces: longer than the router's 5 s ext_proc message
    # timeout, which must only start once Envoy has the whole body.
    body = json.dumps({"model": "auto", "input": CODING_PROMPT + " " + "padding " * 160}).encode()
    pieces = [body[i:i + 40] for i in range(0, len(body), 40)]
    assert len(pieces) >= 30
    head = (f"POST /v1/responses HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"connection: close\r\n").encode()
    head += b"transfer-encoding: chunked\r\n\r\n" if framing == "chunked" else b"content-length: %d\r\n\r\n" % len(body)
    with socket.create_connection(("127.0.0.1", stack.ports["listener"]), timeout=60) as sock:
        sock.sendall(head)
        for piece in pieces:
            time.sleep(0.4)
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if framing == "chunked" else piece)
        if framing == "chunked":
            sock.sendall(b"0\r\n\r\n")
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    answer = parse_response(received)
    assert answer is not None, received[:300]
    status, headers, content = answer
    assert status == 200, content[:300]
    assert headers["x-simulator-instance"] == "sim-code"
    assert json.loads(content)["model"] == "code-model"
    expected = spliced(body, b'"model": "auto"', b'"model": "code-model"')
    assert received_body(sims, "sim-code", headers["x-received-body-sha256"]) == expected


def test_backend_streaming_for_minutes_is_not_cut_and_holds_no_growing_memory(slow_stack):
    # pytest.ini's faulthandler_timeout (120 s) would dump every thread's stack mid-stream: give
    # this one test a longer leash instead (pytest cancels it again after the test).
    faulthandler.cancel_dump_traceback_later()
    faulthandler.dump_traceback_later(LONG_STREAM_CHUNKS * LONG_STREAM_DELAY_MS / 1000 + 120, exit=False)

    # The router's own process, or in the module form the Envoy it runs in.
    router_pid = slow_stack.procs["router" if slow_stack.form == "ext_proc" else "envoy"].popen.pid
    body = {"model": "auto", "input": CODING_PROMPT, "stream": True}
    events: list[dict] = []
    rss: list[int] = []
    envoy_mem: list[int] = []
    started = time.monotonic()
    # A read timeout of 30 s: each chunk comes within 1.5 s, so only a stalled stream trips it.
    timeout = httpx.Timeout(30.0)
    with httpx.Client(base_url=slow_stack.envoy_url, timeout=timeout) as c, \
            c.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200
        assert r.headers["x-simulator-instance"] == "sim-code-slow"
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line.startswith("data:"):
                continue
            events.append(json.loads(line[5:]))
            if events[-1]["type"] == "response.output_text.delta" and len(events) % 10 == 0:
                rss.append(vm_rss_bytes(router_pid))
                envoy_mem.append(envoy_allocated_bytes(slow_stack.admin_url))
    elapsed = time.monotonic() - started

    types = [e["type"] for e in events]
    assert types[0] == "response.created"
    assert types[-1] == "response.completed", types[-5:]
    assert types.count("response.output_text.delta") == LONG_STREAM_CHUNKS
    assert [e["sequence_number"] for e in events] == list(range(len(events))), "an event was lost or reordered"
    assert events[-1]["response"]["status"] == "completed"
    assert events[-1]["response"]["model"] == "code-model"
    # The simulator paces the chunks, so the stream outlived the 120 s timeouts (a lower bound set by
    # the test's own pacing, not a performance claim).
    assert elapsed >= LONG_STREAM_CHUNKS * LONG_STREAM_DELAY_MS / 1000 * 0.9
    print(f"{len(events)} events in {elapsed:.0f} s; router VmRSS MiB {[round(r / MIB, 1) for r in rss]}; "
          f"Envoy allocated MiB {[round(m / MIB, 1) for m in envoy_mem]}")
    # Memory: the router stopped observing after `response.created` and Envoy streams through. Over
    # ~140 s of streaming neither may grow by more than a few MiB (sampled every 10 events).
    assert len(rss) >= 8
    assert max(rss) - rss[0] < 8 * MIB, [r // 1024 for r in rss]
    assert max(envoy_mem) - envoy_mem[0] < 8 * MIB, envoy_mem
    assert slow_stack.router_alive()
