"""Bad requests get an OpenAI-style error with the right status, from the router or from Envoy."""

from __future__ import annotations

import json
import socket
import threading

import openai
import pytest

from helpers import CODING_PROMPT, GENERAL_PROMPT, assert_openai_error

JSON = {"content-type": "application/json"}
MIB = 1024 * 1024


def test_malformed_json_is_400(raw):
    r = raw.post("/v1/responses", content=b'{"model": "auto", "input": "hi"', headers=JSON)
    assert_openai_error(r, 400, error_type="invalid_request_error")


def test_malformed_json_raises_bad_request_in_sdk(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.post("/responses", cast_to=object, content=b'{"model": "auto", "input": ', options={"headers": JSON})
    assert_openai_error(info.value.response, 400, error_type="invalid_request_error")


def test_malformed_chat_json_is_400(raw):
    r = raw.post("/v1/chat/completions", content=b'{"model": "auto", "messages": [}', headers=JSON)
    assert_openai_error(r, 400, error_type="invalid_request_error")


def test_unknown_explicit_model_is_404(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model="no-such-model", input=GENERAL_PROMPT)
    error = assert_openai_error(info.value.response, 404, code="model_not_found")
    assert "no-such-model" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        b'{"model":"general-model","input":"' + CODING_PROMPT.encode() + b'","model":"auto"}',
        b'{"model":"auto","input":"hello","model":"code-model"}',
    ],
    ids=["explicit-then-auto", "auto-then-explicit"],
)
def test_duplicate_model_key_is_400(raw, body):
    r = raw.post("/v1/responses", content=body, headers=JSON)
    assert_openai_error(r, 400, error_type="invalid_request_error")


def test_non_string_model_raises_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.responses.create(model=123, input=GENERAL_PROMPT)  # type: ignore[arg-type]
    assert_openai_error(info.value.response, 400, error_type="invalid_request_error")


@pytest.mark.parametrize("size", [10 * MIB + 512 * 1024, 12 * MIB - 4096], ids=["10.5MiB", "just-under-12MiB"])
def test_body_over_router_limit_is_413_from_router(raw, size):
    # Between the router's 10 MiB max_body_bytes and Envoy's 12 MiB body_size_limit: Envoy hands the
    # whole body to the router, which must answer 413 itself.
    body = json.dumps({"model": "auto", "input": "x" * size}).encode()
    assert 10 * MIB < len(body) <= 12 * MIB
    r = raw.post("/v1/responses", content=body, headers=JSON)
    assert_openai_error(r, 413, error_type="invalid_request_error", code="request_too_large")


def _post_concurrently(port: int, path: str, body: bytes, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    """POSTs `body` while reading the answer on the same connection.

    Envoy may answer (and close) before the whole body was sent; a client that writes everything
    before reading (httpx) would see a broken pipe instead of the response.
    """
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode()

    def send() -> None:
        try:
            sock.sendall(head + body)
        except OSError:
            pass  # Envoy closed early: expected

    writer = threading.Thread(target=send, daemon=True)
    writer.start()
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            header_end = data.find(b"\r\n\r\n")
            if header_end >= 0:
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.decode().partition(":") for line in data[:header_end].split(b"\r\n")[1:])
                }
                length = int(headers.get("content-length", "-1"))
                if length >= 0 and len(data) >= header_end + 4 + length:
                    break
    except ConnectionResetError:
        pass
    finally:
        sock.close()
        writer.join(timeout=timeout)
    header_end = data.find(b"\r\n\r\n")
    assert header_end >= 0, f"no HTTP response: {data[:200]!r}"
    status = int(data.split(b" ", 2)[1])
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.decode().partition(":") for line in data[:header_end].split(b"\r\n")[1:])
    }
    return status, headers, data[header_end + 4:]


class _Resp:
    """Just enough of an HTTP response for assert_openai_error."""

    def __init__(self, status: int, headers: dict, content: bytes):
        self.status_code, self.headers, self.content = status, headers, content
        self.text = content.decode(errors="replace")


def test_body_over_envoy_limit_is_413_json_from_envoy(stack):
    body = json.dumps({"model": "auto", "input": "x" * (13 * MIB)}).encode()
    status, headers, content = _post_concurrently(stack.ports["listener"], "/v1/responses", body)
    assert_openai_error(_Resp(status, headers, content), 413, error_type="invalid_request_error",
                        code="request_too_large")
