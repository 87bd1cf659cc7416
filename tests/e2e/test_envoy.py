"""Properties of the shipped Envoy config itself: fail closed without the router, h2c, local replies."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from conftest import SHIPPED_PORTS, envoy_argv, render_envoy_yaml, start_proc, wait_envoy_ready
from helpers import CODING_PROMPT, assert_openai_error, eventually
from procs import free_ports


@pytest.fixture(scope="module")
def envoy_without_router(envoy_bin, tmp_path_factory, stack) -> Iterator[str]:
    """A second Envoy from the same config whose router port has nothing listening."""
    workdir = tmp_path_factory.mktemp("no-router")
    ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
    # The simulators are the real ones: only the router is missing.
    ports["general"], ports["code"] = stack.ports["general"], stack.ports["code"]
    proc = start_proc("envoy-no-router", envoy_argv(envoy_bin, render_envoy_yaml(workdir / "envoy.yaml", ports)),
                      workdir)
    try:
        wait_envoy_ready(proc, ports)
        yield f"http://127.0.0.1:{ports['listener']}"
    finally:
        proc.stop()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("POST", "/v1/responses", {"model": "general-model", "input": "hi"}), ("GET", "/v1/models", None)],
)
def test_router_down_fails_closed_with_openai_500(envoy_without_router, method, path, body):
    with httpx.Client(base_url=envoy_without_router, timeout=30) as c:
        r = c.request(method, path, json=body)
    # failure_mode_allow: false -> no request reaches a model server unrouted.
    assert "x-simulator-instance" not in r.headers
    assert_openai_error(r, 500, error_type="server_error", code="router_unavailable")


def router_requests(form: str, stats: dict[str, int]) -> int:
    """Requests the router handled, from Envoy's stats: ext_proc streams, or in the module form the
    module's own counters (every request it handles is decided, refused or answered)."""
    if form == "ext_proc":
        return stats.get("http.openai.ext_proc.streams_started", 0)
    prefixes = ("responses_router.decisions_total.", "responses_router.refusals_total.",
                "responses_router.answered_total.")
    return sum(v for k, v in stats.items() if k.startswith(prefixes))


def envoy_stats(stack) -> dict[str, int]:
    """Envoy's counters and gauges from the admin interface."""
    r = httpx.get(f"{stack.admin_url}/stats", timeout=10)
    r.raise_for_status()
    stats = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(": ")
        if value.isdigit():
            stats[name] = int(value)
    return stats


def h2c_post(url: str, body_file: Path) -> subprocess.CompletedProcess:
    """POST with curl over cleartext HTTP/2 (prior knowledge); stdout ends in 'VERSION STATUS'."""
    return subprocess.run(
        ["curl", "-sS", "--http2-prior-knowledge", "--max-time", "30", "-o", "-",
         "-w", "\\n%{http_version} %{response_code}", "-H", "content-type: application/json",
         "--data-binary", f"@{body_file}", url],
        capture_output=True, timeout=60,
    )


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl as the h2c client")


@needs_curl
def test_h2c_prior_knowledge_is_accepted(stack, tmp_path):
    # codec_type AUTO: cleartext HTTP/2 clients work on the same listener as HTTP/1.1 ones.
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps({"model": "auto", "input": CODING_PROMPT}))
    result = h2c_post(f"{stack.envoy_url}/v1/responses", body_file)
    assert result.returncode == 0, result.stderr.decode()
    body, _, trailer = result.stdout.rpartition(b"\n")
    assert trailer == b"2 200", body[:300]
    assert json.loads(body)["model"] == "code-model"


@needs_curl
def test_h2c_body_over_envoy_limit_never_reaches_router(stack, tmp_path):
    # Over HTTP/2, Envoy's per-stream buffer limit is the (256 MiB) stream window, not the listener's
    # per_connection_buffer_limit_bytes: the body_size_limit filter is what keeps the 12 MiB cap.
    # (curl 7.88 reports Envoy's early 413 + stream reset as "(92) Stream error", so the outcome is
    # read from Envoy's counters.)
    body_file = tmp_path / "body.json"
    body_file.write_text(json.dumps({"model": "auto", "input": "x" * (13 * 1024 * 1024)}))
    before = envoy_stats(stack)
    result = h2c_post(f"{stack.envoy_url}/v1/responses", body_file)
    assert result.stdout.endswith(b"2 413") or result.returncode == 92, (result.returncode, result.stdout[-300:])
    # One request the router does see: once it shows in the stats, so would the one above have
    # (the module publishes its counters in batches, in order).
    assert httpx.get(f"{stack.base_url}/models", timeout=10).status_code == 200

    def settled():
        after = envoy_stats(stack)
        assert router_requests(stack.form, after) > router_requests(stack.form, before)
        return after

    after = eventually(settled)
    assert after["http.openai.downstream_rq_4xx"] - before["http.openai.downstream_rq_4xx"] == 1
    assert router_requests(stack.form, after) == router_requests(stack.form, before) + 1


@pytest.mark.forms("ext_proc")
def test_ext_proc_protocol_health(stack, client, raw):
    """Mixed traffic leaves no sign of a protocol problem between Envoy and the router."""
    before = envoy_stats(stack)
    client.responses.create(model="auto", input=CODING_PROMPT)
    with client.responses.create(model="auto", input="Tell me a story.", stream=True) as stream:
        for _ in stream:
            pass
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": CODING_PROMPT}])
    client.models.list()
    raw.post("/v1/responses", content=b"{", headers={"content-type": "application/json"})
    after = envoy_stats(stack)

    def delta(name: str) -> int:
        key = f"http.openai.ext_proc.{name}"
        return after.get(key, 0) - before.get(key, 0)

    assert delta("streams_started") == 5
    assert delta("immediate_responses_sent") == 2  # the model list (answered by the router), the malformed body
    for problem in ("spurious_msgs_received", "rejected_header_mutations", "message_timeouts",
                    "failure_mode_allowed", "clear_route_cache_ignored", "streams_failed", "server_half_closed"):
        assert delta(problem) == 0, problem


@pytest.mark.forms("ext_proc")
def test_only_streams_that_create_state_reach_the_observer(stack, client):
    """The observer filter (a second gRPC stream per request) runs for `stream: true` Responses
    requests only; JSON answers, chat streams and pass-through requests skip it. (GET /v1/models,
    which the router answers itself, is not a pass-through request any more.)"""
    before = envoy_stats(stack)
    client.responses.create(model="auto", input=CODING_PROMPT)
    # A pass-through request. (The model list is the router's own answer, and Envoy runs every
    # local reply through the observer, which closes such a stream at once.)
    httpx.get(f"{stack.envoy_url}/v1/files", timeout=30)
    for _ in client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "hi"}], stream=True):
        pass
    assert envoy_stats(stack).get("http.openai.ext_proc.observer.streams_started", 0) == \
        before.get("http.openai.ext_proc.observer.streams_started", 0)
    with client.responses.create(model="auto", input="Tell me a story.", stream=True) as stream:
        for _ in stream:
            pass
    after = envoy_stats(stack)
    assert after["http.openai.ext_proc.observer.streams_started"] == \
        before.get("http.openai.ext_proc.observer.streams_started", 0) + 1
