"""Conversations stay where their state is: multi-turn Responses conversations through Envoy.

Each simulator keeps its responses in its own memory (as vLLM does), and the `stories` cluster has
two such hosts. A turn only succeeds if it reaches the instance that served the previous turn; the
simulator's output names the instance and the turn number it reached along the chain, so every
turn's text proves where the state was. The same conversations through a router with learning
switched off must fail some turns, or this test could not tell the difference.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

CONVERSATIONS = 200
TURNS = 5
WORKERS = 8

# Turn prompts cycle through the categories, so the classifier alone would move most
# conversations between clusters mid-way: only learned affinity keeps them in place.
PROMPTS = [
    "Tell me a short story about a lighthouse keeper.",
    "Now write a python function that counts its words.",
    "What is the capital of Peru?",
    "Turn it into a haiku.",
    "Summarise everything so far.",
]
OUTPUT = re.compile(r"^\[(?P<instance>[\w-]+)/(?P<model>[\w-]+)\] turn (?P<turn>\d+):")


def _create(client: openai.OpenAI, mode: int, **kwargs):
    """One turn as JSON (0), SSE (1) or background + polling (2); returns the final Response."""
    if mode == 1:
        final = None
        for event in client.responses.create(stream=True, **kwargs):
            if event.type == "response.completed":
                final = event.response
        assert final is not None, "stream ended without response.completed"
        return final
    if mode == 2:
        response = client.responses.create(background=True, **kwargs)
        deadline = time.monotonic() + 10
        while response.status in ("queued", "in_progress"):
            assert time.monotonic() < deadline, f"{response.id} still {response.status}"
            time.sleep(0.02)
            response = client.responses.retrieve(response.id)
        return response
    return client.responses.create(**kwargs)


def _conversation(client: openai.OpenAI, c: int) -> tuple[str | None, str | None]:
    """Runs one conversation; returns (instance that holds it, what went wrong or None)."""
    previous = None
    instance = None
    try:
        for t in range(TURNS):
            prompt = PROMPTS[(c + t) % len(PROMPTS)]
            kwargs = {"model": "auto", "input": prompt}
            if previous is not None:
                kwargs["previous_response_id"] = previous.id
            response = _create(client, (c + t) % 3, **kwargs)
            match = OUTPUT.match(response.output_text)
            assert match, response.output_text
            assert int(match["turn"]) == t + 1, f"turn {t + 1} saw state of turn {match['turn']}"
            if instance is None:
                instance = match["instance"]
            assert match["instance"] == instance, f"turn {t + 1} on {match['instance']}, state on {instance}"
            if c % 4 == 0:
                items = client.responses.input_items.list(response.id)
                assert items.data, "input_items of a stored response are never empty"
            previous = response
        deleted = client.responses.delete(previous.id)
        assert deleted is None or getattr(deleted, "deleted", True)
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(previous.id)
    except (AssertionError, openai.APIError) as e:
        return instance, f"conversation {c}: {type(e).__name__}: {e}"
    return instance, None


def _run(base_url: str, conversations: int) -> tuple[list[str], dict[str, int]]:
    """Runs the conversations concurrently; returns the failures and conversations per instance."""
    with openai.OpenAI(base_url=base_url, api_key="e2e-unused", max_retries=0, timeout=30) as client:
        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(lambda c: _conversation(client, c), range(conversations)))
    per_instance: dict[str, int] = {}
    for instance, _ in results:
        per_instance[instance] = per_instance.get(instance, 0) + 1
    return [f for _, f in results if f], per_instance


def test_every_turn_reaches_its_state(stack):
    failures, per_instance = _run(stack.base_url, CONVERSATIONS)
    print(f"with learning: {len(failures)} of {CONVERSATIONS} conversations broke; held by {per_instance}")
    assert not failures, f"{len(failures)} of {CONVERSATIONS} conversations broke:\n" + "\n".join(failures[:10])
    # Every instance held conversations, including both hosts of the `stories` cluster, so
    # cluster pinning and host pinning were both needed.
    for instance in ("sim-general", "sim-code", "sim-story-a", "sim-story-b"):
        assert per_instance.get(instance, 0) >= 10, per_instance


def test_without_learning_continuations_get_lost(stack_without_learning):
    # The control group: the same workload with learning off must lose state, or the test above
    # would pass whether or not the router learns anything.
    failures, _ = _run(stack_without_learning.base_url, 40)
    print(f"without learning: {len(failures)} of 40 conversations broke")
    assert len(failures) >= 20, f"only {len(failures)} of 40 conversations broke without learning"
