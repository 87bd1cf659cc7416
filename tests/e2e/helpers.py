"""Shared prompts and assertions for the end-to-end tests."""

from __future__ import annotations

import json
import re
import time
from typing import Any, Callable, TypeVar

T = TypeVar("T")

# sim-code streams slowly (5 chunks, 200 ms apart) so the streaming tests can tell a pass-through
# stream from a buffered one; sim-general streams at full speed (see conftest.py).
CODE_STREAM_CHUNKS = 5
CODE_CHUNK_DELAY_MS = 200

# Contains the coding category's keywords (python, function, bug) from deploy/routing.yaml.
CODING_PROMPT = "Write a Python function that parses a CSV file, and fix the bug in it."
# Contains none of the coding keywords or patterns.
GENERAL_PROMPT = "What is the capital of France? Answer in one short sentence."

# Multi-turn conversations: turn prompts move between the categories (story, coding, none), so the
# classifier alone would move most conversations between clusters mid-way: only learned affinity
# keeps them where their state is.
CONVERSATION_PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "Now write a python function that counts its words.",
    "What is the capital of Peru?",
    "Turn it into a haiku.",
    "Summarise everything so far.",
]
# The simulator's answer names the instance that served it and how many turns its chain holds.
SIMULATOR_OUTPUT = re.compile(r"^\[(?P<instance>[\w-]+)/(?P<model>[\w-]+)\] turn (?P<turn>\d+):")


def input_shapes(text: str) -> dict[str, Any]:
    """The same user text in each shape the Responses API accepts for `input`."""
    return {
        "string": text,
        "message_list": [{"role": "user", "content": text}],
        "part_list": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}],
    }


def assert_openai_error(response, status: int, *, error_type: str | None = None, code: str | None = None) -> dict:
    """Asserts status, JSON content-type and the `{"error":{message,type,param,code}}` shape."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text[:500]}"
    content_type = response.headers.get("content-type", "")
    assert content_type.startswith("application/json"), f"content-type {content_type!r}: {response.text[:500]}"
    body = json.loads(response.content)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"message", "type", "param", "code"} <= set(error), error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if error_type is not None:
        assert error["type"] == error_type, error
    if code is not None:
        assert error["code"] == code, error
    return error


def eventually(check: Callable[[], T], timeout: float = 5.0) -> T:
    """`check()`'s result once it stops failing an assertion, or its last failure after `timeout`
    seconds. For the module form's stats, which Envoy's main thread publishes about ten times a
    second rather than on every increment."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
