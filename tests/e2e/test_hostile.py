"""Hostile input through the real Envoy: a client must not crash the router, slip past it, or pick
a backend it should not reach.

Every case asserts three things: the status, the OpenAI error shape when it is an error, and what
reached a backend. "Nothing reached a backend" is read from Envoy's own per-cluster upstream request
counters (every model-server cluster, before and after); "this reached a backend" from the
simulator's `x-simulator-instance` header and its log of the exact bytes it received. README.md
("Hostile input") has the table; keep the two in step.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import socket
import subprocess
import zlib

import httpx
import pytest

from helpers import CODING_PROMPT, GENERAL_PROMPT, assert_openai_error
from test_body import received_body, spliced
from test_envoy import needs_curl

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024
BACKEND_CLUSTERS = ("general", "code", "stories")


def upstream_requests(stack) -> dict[str, int]:
    """Envoy's count of requests sent to each model-server cluster so far."""
    r = httpx.get(f"{stack.admin_url}/stats", params={"filter": r"^cluster\.[a-z]+\.upstream_rq_total$"},
                  timeout=10)
    r.raise_for_status()
    counts = {}
    for line in r.text.splitlines():
        name, _, value = line.partition(": ")
        cluster = name.split(".")[1]
        if cluster in BACKEND_CLUSTERS:
            counts[cluster] = int(value)
    assert set(counts) == set(BACKEND_CLUSTERS), r.text
    return counts


class Backends:
    """What reached the model servers between construction and `reached()`."""

    def __init__(self, stack):
        self.stack = stack
        self.before = upstream_requests(stack)

    def reached(self) -> dict[str, int]:
        after = upstream_requests(self.stack)
        return {c: after[c] - self.before[c] for c in BACKEND_CLUSTERS if after[c] != self.before[c]}


def assert_router_healthy(stack, raw) -> None:
    """The router is alive (its process and its /healthz; in the module form, the Envoy it runs
    in), and still routes a plain request."""
    assert stack.router_alive(), "the router (or the Envoy it runs in) died"
    if stack.form == "ext_proc":
        assert httpx.get(f"http://127.0.0.1:{stack.router_admin_port}/healthz", timeout=10).status_code == 200
    r = raw.post("/v1/responses", json={"model": "auto", "input": CODING_PROMPT})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-simulator-instance"] == "sim-code"


def exchange(port: int, data: bytes, timeout: float = 30.0) -> tuple[int, dict[str, str], bytes] | None:
    """Sends raw bytes on a fresh connection and reads until Envoy closes it (requests should say
    `connection: close`). None when the connection closed without any HTTP response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:
            pass  # Envoy may answer and close before everything was written
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass
    return parse_response(received)


def parse_response(data: bytes) -> tuple[int, dict[str, str], bytes] | None:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return None
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.decode().partition(":") for ln in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        decoded, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            size = int(size_line, 16)
            if size == 0:
                break
            decoded, rest = decoded + rest[:size], rest[size + 2:]
        body = decoded
    return status, headers, body


class Resp:
    """Just enough of an HTTP response for assert_openai_error."""

    def __init__(self, status: int, headers: dict, content: bytes):
        self.status_code, self.headers, self.content = status, headers, content
        self.text = content.decode(errors="replace")


def request_bytes(method: str, path: bytes, body: bytes | None, headers: dict[str, str] | None = None,
                  port: int = 0) -> bytes:
    head = [method.encode() + b" " + path + b" HTTP/1.1", f"host: 127.0.0.1:{port}".encode(),
            b"connection: close"]
    for k, v in (headers or {}).items():
        head.append(f"{k}: {v}".encode())
    if body is not None and "transfer-encoding" not in (headers or {}):
        head.append(f"content-length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + (body or b"")


# ---------------------------------------------------------------------------------------------
# Bodies the router refuses: an OpenAI 400 from the router, and no backend sees anything.
# ---------------------------------------------------------------------------------------------

DEEP = 100_000
REFUSED_BODIES = {
    # (body, code, param)
    "malformed-json": (b'{"model": "auto", "input": "hi",}', "invalid_json", None),
    "truncated-json": (b'{"model": "auto", "input": "Write a Python funct', "invalid_json", None),
    "not-an-object": (b'["model", "auto"]', "invalid_json", None),
    "invalid-utf8-in-input": (b'{"model": "auto", "input": "caf\xc3\x28 \xff python"}', "invalid_json", None),
    "invalid-utf8-in-other-field": (b'{"model": "auto", "input": "python bug", "metadata": {"k": "\xfe\xff"}}',
                                    "invalid_json", None),
    "invalid-utf8-in-key": (b'{"model": "auto", "input": "python bug", "\xff": 1}', "invalid_json", None),
    # Valid JSON (serde_json skips nesting without recursing), but no text to classify in it.
    "nested-100k-in-input": (b'{"model": "auto", "input": ' + b"[" * DEEP + b"]" * DEEP + b"}", "invalid_value",
                             "input"),
    "duplicate-model": (b'{"model": "general-model", "input": "hi", "model": "auto"}', "invalid_value", "model"),
    "duplicate-model-escaped-key": (b'{"model": "general-model", "input": "hi", "m\\u006fdel": "auto"}',
                                    "invalid_value", "model"),
    "duplicate-previous-response-id": (b'{"model": "auto", "input": "hi", "previous_response_id": "resp_a",'
                                       b' "previous_response_id": "resp_b"}', "invalid_value",
                                       "previous_response_id"),
    "model-number": (b'{"model": 7, "input": "hi"}', "invalid_value", "model"),
    "model-bool": (b'{"model": true, "input": "hi"}', "invalid_value", "model"),
    "model-array": (b'{"model": ["auto"], "input": "hi"}', "invalid_value", "model"),
    "model-object": (b'{"model": {"name": "auto"}, "input": "hi"}', "invalid_value", "model"),
    "model-missing": (b'{"input": "hi"}', "missing_required_parameter", "model"),
    # `model: null` is "no model", as the OpenAI API treats it.
    "model-null": (b'{"model": null, "input": "python", "x": 12345678901234567890123}',
                   "missing_required_parameter", "model"),
    "input-number": (b'{"model": "auto", "input": 42}', "invalid_value", "input"),
    "input-bool": (b'{"model": "auto", "input": false}', "invalid_value", "input"),
    "input-object": (b'{"model": "auto", "input": {"role": "user", "content": "hi"}}', "invalid_value", "input"),
    "input-list-of-numbers": (b'{"model": "auto", "input": [1, 2, 3]}', "invalid_value", "input"),
    "input-list-of-strings": (b'{"model": "auto", "input": ["hi"]}', "invalid_value", "input"),
    "input-content-number": (b'{"model": "auto", "input": [{"role": "user", "content": 5}]}', "invalid_value",
                             "input"),
}


@pytest.mark.parametrize("case", list(REFUSED_BODIES))
def test_refused_body_is_400_and_reaches_no_backend(stack, raw, case):
    body, code, param = REFUSED_BODIES[case]
    backends = Backends(stack)
    r = raw.post("/v1/responses", content=body, headers=JSON)
    error = assert_openai_error(r, 400, error_type="invalid_request_error", code=code)
    assert error["param"] == param, error
    assert "x-simulator-instance" not in r.headers
    assert backends.reached() == {}


def test_empty_body_is_400(stack, raw):
    backends = Backends(stack)
    r = raw.post("/v1/responses", content=b"", headers=JSON)
    assert_openai_error(r, 400, error_type="invalid_request_error", code="invalid_json")
    assert backends.reached() == {}


def test_body_cut_short_by_the_client_reaches_no_backend(stack, raw):
    # content-length promises more than is sent, then the client closes: Envoy never has the whole
    # body, so the router never decides and nothing is forwarded.
    backends = Backends(stack)
    body = json.dumps({"model": "auto", "input": CODING_PROMPT}).encode()
    with socket.create_connection(("127.0.0.1", stack.ports["listener"]), timeout=30) as sock:
        sock.sendall(request_bytes("POST", b"/v1/responses", None, {**JSON, "content-length": str(len(body) + 100)},
                                   stack.ports["listener"]) + body)
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        try:
            leftover = sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            leftover = b""
    # Envoy may answer 400 to the half-closed request or just close; either way no 2xx.
    assert not leftover.startswith(b"HTTP/1.1 2"), leftover[:200]
    assert backends.reached() == {}
    assert_router_healthy(stack, raw)


def test_nesting_100k_deep_leaves_the_router_healthy(stack, raw):
    # serde_json skips nested values with an explicit stack, not recursion, so a 100,000-deep body
    # can neither overflow the router's stack nor wedge it (test_routed_body_... has the outcomes).
    for body in (NESTED_INPUT, NESTED_METADATA, NESTED_METADATA.replace(b"general-model", b"auto")):
        r = raw.post("/v1/responses", content=body, headers=JSON)
        assert r.status_code == 400, r.text[:300]
    assert_router_healthy(stack, raw)


# ---------------------------------------------------------------------------------------------
# Size limits. 10.5 MiB and just-under-12 MiB (router 413) and 13 MiB with content-length (Envoy 413)
# are in test_errors.py; here: the exact edge, and a 50 MB string with and without content-length.
# ---------------------------------------------------------------------------------------------


def test_body_one_byte_over_router_limit_is_413(stack, raw):
    limit = 10 * MIB
    head = b'{"model": "auto", "input": "'
    body = head + b"x" * (limit + 1 - len(head) - 2) + b'"}'
    assert len(body) == limit + 1
    backends = Backends(stack)
    r = raw.post("/v1/responses", content=body, headers=JSON)
    assert_openai_error(r, 413, error_type="invalid_request_error", code="request_too_large")
    assert backends.reached() == {}
    # Exactly at the limit is routed.
    body = head + b"python " + b"x" * (limit - len(head) - 9) + b'"}'
    assert len(body) == limit
    r = raw.post("/v1/responses", content=body, headers=JSON)
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-simulator-instance"] == "sim-code"


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_50mb_string_is_413_from_envoy(stack, raw, framing):
    body = b'{"model": "auto", "input": "' + b"x" * (50 * 1000 * 1000) + b'"}'
    headers = {**JSON}
    if framing == "chunked":
        # No content-length: Envoy counts the streamed bytes and refuses at 12 MiB.
        headers["transfer-encoding"] = "chunked"
        step = 1 << 20
        payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + step]), body[i:i + step])
                           for i in range(0, len(body), step)) + b"0\r\n\r\n"
    else:
        payload = body
    backends = Backends(stack)
    answer = exchange(stack.ports["listener"], request_bytes("POST", b"/v1/responses", payload, headers,
                                                             stack.ports["listener"]))
    assert answer is not None, "no HTTP answer to a 50 MB body"
    assert_openai_error(Resp(*answer), 413, error_type="invalid_request_error", code="request_too_large")
    assert backends.reached() == {}
    assert_router_healthy(stack, raw)


# ---------------------------------------------------------------------------------------------
# Bodies the router routes: only the `model` value changes on the way to the backend.
# ---------------------------------------------------------------------------------------------

ODD_NUMBERS = (
    b'"x_big": 12345678901234567890123, "x_2p53": 9007199254740993, "x_neg_big": -98765432109876543210,'
    b' "x_tiny": 0.1e-999, "x_neg_zero": -0, "x_neg_zero_f": -0.0, "x_exp": 1E+2, "x_exp_lower": 1e2,'
    b' "x_exp2": 2.50e-3, "x_long_frac": 0.10000000000000000000000000000001, "temperature": 1.0'
)
NESTED_INPUT = REFUSED_BODIES["nested-100k-in-input"][0]
NESTED_METADATA = (b'{"model": "general-model", "input": "hi", "metadata": ' + b'{"a":' * DEEP + b"1"
                   + b"}" * DEEP + b"}")


@pytest.mark.parametrize(
    ("case", "body", "old", "new", "instance", "backend_status"),
    [
        ("odd-numbers", b'{"model": "auto", "input": "' + CODING_PROMPT.encode() + b'", ' + ODD_NUMBERS + b"}",
         b'"auto"', b'"code-model"', "sim-code", 200),
        # Numbers beyond f64 are valid JSON: the router forwards them untouched; whether they are
        # acceptable is the backend's call (the simulator's parser refuses them, 400).
        ("number-beyond-f64", b'{"model": "auto", "input": "' + CODING_PROMPT.encode() + b'", "x": 1e400}',
         b'"auto"', b'"code-model"', "sim-code", 400),
        ("escaped-model-key", b'{"m\\u006fdel": "auto", "input": "debug my python code"}',
         b'"auto"', b'"code-model"', "sim-code", 200),
        ("escaped-model-value", b'{"model": "\\u0061uto", "input": "debug my python code"}',
         b'"\\u0061uto"', b'"code-model"', "sim-code", 200),
        ("escaped-explicit-model", b'{"model": "code\\u002dmodel", "input": "' + GENERAL_PROMPT.encode() + b'"}',
         None, None, "sim-code", 200),
        ("escaped-input-key", b'{"model": "auto", "\\u0069nput": "fix this rust compiler bug"}',
         b'"auto"', b'"code-model"', "sim-code", 200),
        # 100,000-deep nesting outside the routing fields is valid JSON the router need not read: it
        # is routed on the model; the backend's own parser refuses the depth (400).
        ("nested-100k-in-other-field", NESTED_METADATA, None, None, "sim-general", 400),
    ],
)
def test_routed_body_is_byte_identical_except_model(stack, raw, sims, case, body, old, new, instance,
                                                    backend_status):
    r = raw.post("/v1/responses", content=body, headers=JSON)
    assert r.status_code == backend_status, r.text[:300]
    assert r.headers["x-simulator-instance"] == instance
    expected = spliced(body, old, new) if old else body
    sha = r.headers["x-received-body-sha256"]
    assert sha == hashlib.sha256(expected).hexdigest(), "the backend received other bytes than expected"
    assert received_body(sims, instance, sha) == expected


# ---------------------------------------------------------------------------------------------
# Encodings and framing
# ---------------------------------------------------------------------------------------------

CODING_BODY = json.dumps({"model": "auto", "input": CODING_PROMPT}).encode()


def _brotli_stub() -> bytes:
    # No brotli module is installed, and none is needed: the refusal depends on the header alone
    # (the router never decodes), so any bytes labelled `br` show it.
    return b"\x8b\x02\x80" + CODING_BODY + b"\x03"


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", gzip.compress(CODING_BODY)),
        ("deflate", zlib.compress(CODING_BODY)),
        ("br", _brotli_stub()),
        ("GZIP", gzip.compress(CODING_BODY)),
        ("gzip, identity", gzip.compress(CODING_BODY)),
    ],
)
def test_compressed_request_body_is_415(stack, raw, encoding, body):
    # The router routes on the body it reads; a compressed one would be parsed as garbage (400) or,
    # worse, forwarded with `model: "auto"` unrouted. It refuses instead (README: Hostile input).
    backends = Backends(stack)
    r = raw.post("/v1/responses", content=body, headers={**JSON, "content-encoding": encoding})
    assert_openai_error(r, 415, error_type="invalid_request_error", code="unsupported_content_encoding")
    assert backends.reached() == {}


def test_identity_content_encoding_is_routed(raw):
    r = raw.post("/v1/responses", content=CODING_BODY, headers={**JSON, "content-encoding": "identity"})
    assert r.status_code == 200, r.text[:300]
    assert r.headers["x-simulator-instance"] == "sim-code"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json; charset=latin-1"])
def test_content_type_does_not_change_routing(raw, sims, content_type):
    # The router judges the body, not the label: a JSON body is routed whatever content-type says,
    # and reaches the backend unchanged but for the model (the backend may then refuse the label).
    headers = {} if content_type is None else {"content-type": content_type}
    r = raw.post("/v1/responses", content=CODING_BODY, headers=headers)
    assert r.headers["x-simulator-instance"] == "sim-code", r.text[:300]
    expected = spliced(CODING_BODY, b'"auto"', b'"code-model"')
    assert r.headers["x-received-body-sha256"] == hashlib.sha256(expected).hexdigest()
    assert received_body(sims, "sim-code", r.headers["x-received-body-sha256"]) == expected


def test_chunked_body_is_routed_whole(stack, sims):
    chunks = [CODING_BODY[i:i + 7] for i in range(0, len(CODING_BODY), 7)]
    payload = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    answer = exchange(stack.ports["listener"], request_bytes(
        "POST", b"/v1/responses", payload, {**JSON, "transfer-encoding": "chunked"}, stack.ports["listener"]))
    assert answer is not None
    status, headers, _ = answer
    assert status == 200
    assert headers["x-simulator-instance"] == "sim-code"
    expected = spliced(CODING_BODY, b'"auto"', b'"code-model"')
    assert received_body(sims, "sim-code", headers["x-received-body-sha256"]) == expected


@pytest.mark.parametrize(
    "payload",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # not a hex size
        b"5\r\n{\"model\"\r\n0\r\n\r\n",  # chunk longer than its size
    ],
    ids=["bad-size", "size-mismatch"],
)
def test_invalid_chunking_is_400_from_envoy(stack, payload):
    backends = Backends(stack)
    answer = exchange(stack.ports["listener"], request_bytes(
        "POST", b"/v1/responses", payload, {**JSON, "transfer-encoding": "chunked"}, stack.ports["listener"]))
    assert answer is not None
    error = assert_openai_error(Resp(*answer), 400, error_type="invalid_request_error")
    # Envoy's codec refuses the framing; for a chunk longer than its size, Envoy may already have
    # handed the bytes it read to the router, whose JSON check then refuses the fragment first.
    assert error["code"] in ({"http1.codec_error"} if b"zz" in payload else {"http1.codec_error", "invalid_json"})
    assert backends.reached() == {}


def test_content_length_and_chunked_together_is_400(stack):
    # Request smuggling shape: Envoy refuses it rather than guessing which framing counts.
    backends = Backends(stack)
    payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(CODING_BODY), CODING_BODY)
    data = request_bytes("POST", b"/v1/responses", None, {**JSON, "transfer-encoding": "chunked",
                                                          "content-length": "3"}, stack.ports["listener"])
    answer = exchange(stack.ports["listener"], data + payload)
    assert answer is not None
    assert_openai_error(Resp(*answer), 400, error_type="invalid_request_error",
                        code="http1.content_length_and_chunked_not_allowed")
    assert backends.reached() == {}


# ---------------------------------------------------------------------------------------------
# Protocols: HTTP/1.1, cleartext HTTP/2, websocket upgrade
# ---------------------------------------------------------------------------------------------


@needs_curl
@pytest.mark.parametrize("version", ["--http1.1", "--http2-prior-knowledge"])
@pytest.mark.parametrize("body", ["good", "malformed"])
def test_http1_and_h2c_clients_get_the_same_outcome(stack, tmp_path, version, body):
    body_file = tmp_path / "body.json"
    body_file.write_bytes(CODING_BODY if body == "good" else b'{"model": "auto", "input": ')
    backends = Backends(stack)
    result = subprocess.run(
        ["curl", "-sS", version, "--max-time", "30", "-o", "-", "-D", str(tmp_path / "headers"),
         "-w", "\\n%{http_version} %{response_code}", "-H", "content-type: application/json",
         "--data-binary", f"@{body_file}", f"{stack.envoy_url}/v1/responses"],
        capture_output=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr.decode()
    content, _, trailer = result.stdout.rpartition(b"\n")
    expected_version = "2" if "http2" in version else "1.1"
    headers = (tmp_path / "headers").read_text().lower()
    if body == "good":
        assert trailer.decode() == f"{expected_version} 200", content[:300]
        assert "x-simulator-instance: sim-code" in headers
        assert json.loads(content)["model"] == "code-model"
        assert backends.reached() == {"code": 1}
    else:
        assert trailer.decode() == f"{expected_version} 400", content[:300]
        assert_openai_error(Resp(400, {"content-type": "application/json"}, content), 400, code="invalid_json")
        assert backends.reached() == {}


@pytest.mark.parametrize("path", ["/v1/responses", "/v1/responses/", "/v1/responses?x=1", "/v1/models"])
def test_websocket_upgrade_is_refused(stack, path):
    # The listener has no upgrade_configs: Envoy refuses every upgrade before the router sees it
    # (and the router would refuse websocket mode on /v1/responses itself, tests/extproc.rs).
    backends = Backends(stack)
    headers = {"upgrade": "websocket", "connection": "Upgrade", "sec-websocket-version": "13",
               "sec-websocket-key": base64.b64encode(b"0123456789abcdef").decode()}
    data = request_bytes("GET", path.encode(), None, headers, stack.ports["listener"]).replace(
        b"connection: close\r\n", b"")
    with socket.create_connection(("127.0.0.1", stack.ports["listener"]), timeout=30) as sock:
        sock.sendall(data)
        received = b""
        while b"\r\n\r\n" not in received or len(received) < received.find(b"\r\n\r\n") + 4 + int(
                parse_response(received)[1].get("content-length", "0")):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    answer = parse_response(received)
    assert answer is not None
    error = assert_openai_error(Resp(*answer), 400, error_type="invalid_request_error",
                                code="websocket_not_supported")
    assert "stream" in error["message"]
    assert backends.reached() == {}


# ---------------------------------------------------------------------------------------------
# State ids: long ones, and ids in paths that try to be something else
# ---------------------------------------------------------------------------------------------


def test_10kb_previous_response_id_is_routed_like_any_unknown_id(stack, raw, sims):
    long_id = "resp_" + "a" * 10_240
    body = json.dumps({"model": "auto", "input": CODING_PROMPT, "previous_response_id": long_id}).encode()
    r = raw.post("/v1/responses", content=body, headers=JSON)
    # Routed by the model as usual (an id nobody served has no affinity); the backend, which does not
    # know the id, answers its own 404 — the router neither crashes nor refuses a long id.
    assert r.headers["x-simulator-instance"] == "sim-code", r.text[:300]
    assert_openai_error(r, 404)
    expected = spliced(body, b'"auto"', b'"code-model"')
    assert received_body(sims, "sim-code", r.headers["x-received-body-sha256"]) == expected


def test_10kb_id_in_path_is_not_an_id(stack, raw):
    backends = Backends(stack)
    r = raw.get("/v1/responses/resp_" + "a" * 10_240)
    # Longer than any id a backend mints (256 bytes): not id-bearing, so it cannot steer a pin; it
    # passes to the default cluster, whose backend answers 404.
    assert_openai_error(r, 404)
    assert r.headers["x-simulator-instance"] == "sim-general"
    assert backends.reached() == {"general": 1}


@pytest.mark.parametrize(
    "path",
    [
        b"/v1/responses/resp_1%2F..%2F..%2Fmodels",
        b"/v1/responses/resp_1%2fcancel",
        b"/v1%2Fresponses",
        b"/v1/responses/%2E%2E%2Fmodels",
        b"/v1/responses/resp_1%5C..%5Cmodels",
        b"/v1/responses/resp_1%5cx",
    ],
)
def test_escaped_slash_in_path_is_400_from_envoy(stack, path):
    # A backend that decodes %2F before routing would see another endpoint than the router did
    # (`/v1%2Fresponses` -> an unrouted POST /v1/responses). Envoy refuses such paths outright.
    backends = Backends(stack)
    for method, body in (("GET", None), ("POST", CODING_BODY)):
        answer = exchange(stack.ports["listener"], request_bytes(method, path, body, JSON, stack.ports["listener"]))
        assert answer is not None
        assert_openai_error(Resp(*answer), 400, error_type="invalid_request_error", code="invalid_path")
    assert backends.reached() == {}


@pytest.mark.parametrize(
    ("path", "backend_path_status"),
    [
        # Envoy normalizes dot segments before anyone looks at the path: the router routes, and the
        # backend serves, the same normalized path (here GET /v1/files on the default cluster,
        # which the simulator does not serve).
        (b"/v1/responses/../files", 404),
        (b"/v1/responses/resp_1/../../files", 404),
        # An id with a slash is just a longer path: not id-bearing, default cluster, backend 404.
        (b"/v1/responses/resp_1/extra/segments", 404),
        # Percent-escapes other than / and \ are not an id any backend minted: default cluster, 404.
        (b"/v1/responses/resp_%0Ax", 404),
        (b"/v1/responses/resp_%22x", 404),
    ],
)
def test_odd_response_ids_never_pick_an_upstream(stack, path, backend_path_status):
    backends = Backends(stack)
    answer = exchange(stack.ports["listener"], request_bytes("GET", path, None, None, stack.ports["listener"]))
    assert answer is not None
    status, headers, _ = answer
    assert status == backend_path_status
    assert headers["x-simulator-instance"] == "sim-general"
    assert backends.reached() == {"general": 1}


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        (b"/v1/responses/resp_\x01x", 400, "http1.invalid_characters"),
        (b"/v1/responses/resp_\x7fx", 400, "http1.invalid_characters"),
        (b"/v1/responses/\xff\xfe", 400, "http1.codec_error"),
        (b"/v1/responses/resp_%00x", 400, "invalid_path"),  # Envoy cannot normalize it
        # A raw CR LF ends the request line early, leaving an HTTP/0.9-style request: 426.
        (b"/v1/responses/resp_1\r\nx-router-cluster: code", 426, "low_version"),
    ],
)
def test_control_characters_and_invalid_utf8_in_path_are_refused_by_envoy(stack, path, status, code):
    backends = Backends(stack)
    answer = exchange(stack.ports["listener"], request_bytes("GET", path, None, None, stack.ports["listener"]))
    assert answer is not None
    assert_openai_error(Resp(*answer), status, error_type="invalid_request_error", code=code)
    assert backends.reached() == {}


def test_escaped_unreserved_characters_in_an_id_are_the_id(stack, raw):
    # Envoy decodes escapes of unreserved characters while normalizing (`%41` -> `A`), so router
    # and backend both see `resp_Ab`: it goes where the plain spelling goes, nowhere else.
    plain = raw.get("/v1/responses/resp_Ab_unknown")
    backends = Backends(stack)
    escaped = exchange(stack.ports["listener"], request_bytes("GET", b"/v1/responses/resp_%41%62_unknown", None,
                                                              None, stack.ports["listener"]))
    assert escaped is not None
    status, headers, body = escaped
    assert (status, headers["x-simulator-instance"]) == (plain.status_code, plain.headers["x-simulator-instance"])
    assert b"resp_Ab_unknown" in body
    assert sum(backends.reached().values()) == 1


# ---------------------------------------------------------------------------------------------
# Client-supplied routing headers (more in test_routing.py): they never choose the upstream.
# ---------------------------------------------------------------------------------------------


def test_client_session_host_header_cannot_pin_a_story_host(stack, raw):
    # stories load-balances round robin between two hosts; a client-sent session header naming one of
    # them must not pin it (Envoy's stateful_session filter would honour it if it survived).
    story_b = base64.b64encode(f"127.0.0.1:{stack.ports['story-b']}".encode()).decode()
    seen = set()
    for _ in range(4):
        r = raw.post("/v1/responses", json={"model": "auto", "input": "Tell me a story about a fox."},
                     headers={"x-router-session-host": story_b})
        assert r.status_code == 200, r.text[:300]
        seen.add(r.headers["x-simulator-instance"])
    assert seen == {"sim-story-a", "sim-story-b"}


SIM_CLUSTER = {"sim-general": ("general", "general-model", "general"), "sim-code": ("code", "code-model", "code"),
               "sim-story-a": ("stories", "story-model", "story-a"),
               "sim-story-b": ("stories", "story-model", "story-b")}


@pytest.mark.parametrize("header", ["x-router-cluster", "X-Router-Cluster", "x-gateway-destination-endpoint",
                                    "x-selected-model", "x-router-session-host"])
@pytest.mark.parametrize("path", ["/v1/responses/resp_unknown_id", "/v1/files"])
def test_client_routing_header_on_bodyless_requests_is_ignored(stack, raw, header, path):
    # Where the request goes without the header (an unknown id is placed by hash; /v1/files goes
    # to the default cluster), then the same request with a header naming another backend.
    plain = raw.get(path)
    home = plain.headers["x-simulator-instance"]
    target = "sim-general" if SIM_CLUSTER[home][0] != "general" else "sim-code"
    cluster, model, port_key = SIM_CLUSTER[target]
    values = {
        "x-router-cluster": cluster,
        "x-gateway-destination-endpoint": f"127.0.0.1:{stack.ports[port_key]}",
        "x-selected-model": model,
        "x-router-session-host": base64.b64encode(f"127.0.0.1:{stack.ports[port_key]}".encode()).decode(),
    }
    backends = Backends(stack)
    r = raw.get(path, headers={header: values[header.lower()]})
    assert r.status_code == plain.status_code
    assert r.headers["x-simulator-instance"] == home
    assert backends.reached() == {SIM_CLUSTER[home][0]: 1}


# ---------------------------------------------------------------------------------------------
# Path spellings
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/responses?foo=bar&model=general-model", "/v1/responses/",
                                  "/v1//responses", "/v1/./responses", "/v1/responses/?x=1"])
def test_path_spellings_are_routed_like_the_canonical_path(stack, raw, sims, path):
    # Query strings and a trailing slash are ignored by the router (as by the model servers); Envoy
    # merges slashes and removes dot segments first. The body is routed on its text either way.
    r = raw.post(path, content=CODING_BODY, headers=JSON)
    assert r.headers["x-simulator-instance"] == "sim-code", (r.status_code, r.text[:300])
    expected = spliced(CODING_BODY, b'"auto"', b'"code-model"')
    assert received_body(sims, "sim-code", r.headers["x-received-body-sha256"]) == expected


@pytest.mark.parametrize("path", ["/V1/responses", "/v1/Responses", "/V1/RESPONSES", "/v1/CHAT/completions"])
def test_mixed_case_paths_are_not_the_api(stack, raw, sims, path):
    # Paths are case-sensitive (RFC 3986) and the model servers treat them so: a mixed-case spelling
    # is not /v1/responses. It is passed through unrouted to the default cluster, whose backend
    # answers 404, so it reaches no model.
    backends = Backends(stack)
    r = raw.post(path, content=CODING_BODY, headers=JSON)
    assert_openai_error(r, 404)
    assert r.headers["x-simulator-instance"] == "sim-general"
    assert backends.reached() == {"general": 1}
    assert received_body(sims, "sim-general", r.headers["x-received-body-sha256"]) == CODING_BODY


def test_internal_host_addresses_are_not_shown_to_clients(stack, client):
    # A continuation pinned to one of the two story hosts: Envoy's stateful_session filter would echo
    # the pinned `ip:port` back (base64) in the response; the shipped config removes it.
    first = client.responses.with_raw_response.create(model="auto", input="Tell me a story about a fox.")
    follow = client.responses.with_raw_response.create(model="auto", input="And then?",
                                                        previous_response_id=first.parse().id)
    assert follow.headers["x-simulator-instance"] == first.headers["x-simulator-instance"]
    for response in (first, follow):
        assert "x-router-session-host" not in response.headers
