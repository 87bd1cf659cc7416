"""The router changes only the `model` value: every other byte reaches the model server as sent."""

from __future__ import annotations

import hashlib
import json

import pytest

from helpers import CODING_PROMPT, GENERAL_PROMPT

# Values a re-serializing router would change: an integer above 2^53, a float spelled with an
# exponent, non-ASCII text sent as raw UTF-8, escapes, and a key order that is not sorted.
AWKWARD_EXTRA = {
    "metadata": {"zeta": "last-key-first", "alpha": "héllo ✓ — \u00e9", "escaped": "tab\tquote\"slash\\"},
    "x_big_int": 123456789012345678901234567890,
    "x_float": 1e-07,
}


def received_body(sims, instance: str, sha: str) -> bytes:
    """The exact body the simulator received, from its request log."""
    r = sims[instance].get(f"/_simulator/requests/{sha}")
    assert r.status_code == 200, f"{instance} has no request {sha}: {r.status_code} {r.text[:300]}"
    return r.content


def spliced(body: bytes, old: bytes, new: bytes) -> bytes:
    assert body.count(old) == 1, f"expected exactly one {old!r} in {body[:300]!r}"
    return body.replace(old, new)


def test_sdk_body_is_byte_identical_except_model(recording_client, recorder, sims):
    raw = recording_client.responses.with_raw_response.create(
        model="auto", input=CODING_PROMPT, extra_body=AWKWARD_EXTRA
    )
    sent = recorder.last_body
    assert int(recorder.last_headers["content-length"]) == len(sent)
    expected = spliced(sent, b'"model":"auto"', b'"model":"code-model"')

    assert raw.headers["x-simulator-instance"] == "sim-code"
    sha = raw.headers["x-received-body-sha256"]
    assert sha == hashlib.sha256(expected).hexdigest(), "the simulator received other bytes than expected"
    got = received_body(sims, "sim-code", sha)
    assert got == expected
    assert len(got) == len(expected)


def test_hand_written_body_keeps_whitespace_and_key_order(raw, sims):
    # Spacing, key order and number spelling the SDK would never produce; model not first.
    sent = (
        b'{\n  "input" : "debug this rust code",\n  "temperature": 0.50,\n'
        b'  "model" :   "auto" ,\n  "metadata": {"b": "1", "a": "2"}, "max_output_tokens": 1000\n}\n'
    )
    r = raw.post("/v1/responses", content=sent, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.headers["x-simulator-instance"] == "sim-code"
    expected = spliced(sent, b'"auto"', b'"code-model"')
    sha = r.headers["x-received-body-sha256"]
    assert sha == hashlib.sha256(expected).hexdigest()
    assert received_body(sims, "sim-code", sha) == expected


def test_explicit_model_body_is_untouched(recording_client, recorder):
    raw = recording_client.responses.with_raw_response.create(
        model="general-model", input=GENERAL_PROMPT, extra_body=AWKWARD_EXTRA
    )
    assert raw.headers["x-simulator-instance"] == "sim-general"
    assert raw.headers["x-received-body-sha256"] == hashlib.sha256(recorder.last_body).hexdigest()


def test_chat_body_is_byte_identical_except_model(recording_client, recorder, sims):
    raw = recording_client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CODING_PROMPT}], extra_body=AWKWARD_EXTRA
    )
    expected = spliced(recorder.last_body, b'"model":"auto"', b'"model":"code-model"')
    assert raw.headers["x-simulator-instance"] == "sim-code"
    sha = raw.headers["x-received-body-sha256"]
    assert sha == hashlib.sha256(expected).hexdigest()
    assert received_body(sims, "sim-code", sha) == expected


@pytest.mark.parametrize("size_mib", [6])
def test_large_body_below_limit_is_routed_intact(raw, sims, size_mib):
    # Above gRPC's customary 4 MiB message size in both directions (Envoy -> router with the body,
    # router -> Envoy with the spliced body), below the router's 10 MiB limit.
    filler = "x" * (size_mib * 1024 * 1024)
    sent = json.dumps({"model": "auto", "input": f"{CODING_PROMPT} {filler}"}, separators=(",", ":")).encode()
    r = raw.post("/v1/responses", content=sent, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text[:500]
    assert r.headers["x-simulator-instance"] == "sim-code"
    expected = spliced(sent, b'"model":"auto"', b'"model":"code-model"')
    assert r.headers["x-received-body-sha256"] == hashlib.sha256(expected).hexdigest()
    assert len(received_body(sims, "sim-code", r.headers["x-received-body-sha256"])) == len(expected)
