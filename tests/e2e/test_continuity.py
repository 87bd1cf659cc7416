"""Conversations stay where their state is: multi-turn Responses conversations through Envoy.

Each simulator keeps its responses in its own memory (as vLLM does), and the `stories` cluster has
two such hosts. A turn only succeeds if it reaches the instance that served the previous turn; the
simulator's output names the instance and the turn number it reached along the chain, so every
turn's text proves where the state was. The same conversations through a router with learning
switched off must fail some turns, or this test could not tell the difference.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import openai
import pytest

from helpers import CONVERSATION_PROMPTS as PROMPTS, SIMULATOR_OUTPUT as OUTPUT, eventually

CONVERSATIONS = 200
TURNS = 5
WORKERS = 8



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


@dataclass
class Outcome:
    instance: str | None = None  # the simulator instance that holds the conversation
    failure: str | None = None  # what went wrong, if anything
    last: object = None  # the latest Response, to continue from


def _conversation(clients: list[openai.OpenAI], c: int, turns: range = range(TURNS),
                  previous=None) -> Outcome:
    """Runs turns of conversation c, continuing from `previous`; turn t goes through
    clients[t % len(clients)] (one client per router replica). After the last turn the
    conversation's final response is deleted."""
    out = Outcome(last=previous)
    try:
        for t in turns:
            client = clients[t % len(clients)]
            prompt = PROMPTS[(c + t) % len(PROMPTS)]
            kwargs = {"model": "auto", "input": prompt}
            if out.last is not None:
                kwargs["previous_response_id"] = out.last.id
            response = _create(client, (c + t) % 3, **kwargs)
            match = OUTPUT.match(response.output_text)
            assert match, response.output_text
            assert int(match["turn"]) == t + 1, f"turn {t + 1} saw state of turn {match['turn']}"
            out.instance = out.instance or match["instance"]
            assert match["instance"] == out.instance, f"turn {t + 1} on {match['instance']}, state on {out.instance}"
            if c % 4 == 0:
                items = client.responses.input_items.list(response.id)
                assert items.data, "input_items of a stored response are never empty"
            out.last = response
        if turns.stop == TURNS:
            client = clients[0]
            client.responses.delete(out.last.id)
            with pytest.raises(openai.NotFoundError):
                client.responses.retrieve(out.last.id)
    except (AssertionError, openai.APIError) as e:
        out.failure = f"conversation {c}: {type(e).__name__}: {e}"
    return out


def _run(base_url: str, conversations: int) -> tuple[list[str], dict[str, int]]:
    """Runs the conversations concurrently; returns the failures and conversations per instance."""
    with openai.OpenAI(base_url=base_url, api_key="e2e-unused", max_retries=0, timeout=30) as client:
        with ThreadPoolExecutor(WORKERS) as pool:
            results = list(pool.map(lambda c: _conversation([client], c), range(conversations)))
    per_instance: dict[str, int] = {}
    for r in results:
        per_instance[r.instance] = per_instance.get(r.instance, 0) + 1
    return [r.failure for r in results if r.failure], per_instance


def test_every_turn_reaches_its_state(stack):
    failures, per_instance = _run(stack.base_url, CONVERSATIONS)
    print(f"with learning: {len(failures)} of {CONVERSATIONS} conversations broke; held by {per_instance}")
    assert not failures, f"{len(failures)} of {CONVERSATIONS} conversations broke:\n" + "\n".join(failures[:10])
    # Every instance held conversations, including both hosts of the `stories` cluster, so
    # cluster pinning and host pinning were both needed.
    for instance in ("sim-general", "sim-code", "sim-story-a", "sim-story-b"):
        assert per_instance.get(instance, 0) >= 10, per_instance


def test_router_metrics_show_what_was_learned_and_used(stack):
    """The router's metrics after the conversations above: ids learned from JSON answers and from
    streams, and continuations placed by learned affinity. The ext_proc form serves them on its
    admin port (OpenMetrics, as a Prometheus server asks); the module form exports them as Envoy's
    own stats (the same series names, prefixed `envoy_`, at Envoy's /stats/prometheus)."""
    def check():
        if stack.form == "ext_proc":
            text = httpx.get(f"http://127.0.0.1:{stack.router_admin_port}/metrics", timeout=5,
                             headers={"accept": "application/openmetrics-text; version=1.0.0"}).text
            assert text.endswith("# EOF\n")
            name = "responses_router_{}_total{{{}}}".format
        else:
            text = stack.router_metrics()
            name = "envoy_responses_router_{}_total{{{}}}".format
        counters = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                counters[key] = float(value)
        assert counters.get(name("learned_ids", 'source="json"'), 0) >= CONVERSATIONS, counters
        assert counters.get(name("learned_ids", 'source="sse"'), 0) >= CONVERSATIONS, counters
        assert counters.get(name("affinity", 'outcome="hit"'), 0) >= CONVERSATIONS * (TURNS - 1), counters

    eventually(check)


def test_without_learning_continuations_get_lost(stack_without_learning):
    # The control group: the same workload with learning off must lose state, or the test above
    # would pass whether or not the router learns anything.
    failures, _ = _run(stack_without_learning.base_url, 40)
    print(f"without learning: {len(failures)} of 40 conversations broke")
    assert len(failures) >= 20, f"only {len(failures)} of 40 conversations broke without learning"


def test_replicas_share_affinity_through_redis_and_across_a_restart(replicas):
    """Turns alternate between two router replicas (each behind its own Envoy) that share what they
    learn through Redis; after turn 3, one router restarts with empty memory. No turn may lose its
    state."""
    conversations = 100
    clients = [openai.OpenAI(base_url=url, api_key="e2e-unused", max_retries=0, timeout=30)
               for url in replicas.base_urls]
    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            first = list(pool.map(lambda c: _conversation(clients, c, range(0, 3)), range(conversations)))
            replicas.restart_router(0)
            second = list(pool.map(lambda c: _conversation(clients, c, range(3, TURNS), first[c].last),
                                   range(conversations)))
    finally:
        for client in clients:
            client.close()
    failures = [a.failure or b.failure for a, b in zip(first, second) if a.failure or b.failure]
    print(f"two replicas + Redis + restart: {len(failures)} of {conversations} conversations broke")
    assert not failures, "\n".join(failures[:10])


def test_conversation_objects_stay_where_they_were_created(client):
    """`POST /v1/conversations` creates state on one backend: its id is learned like a response id,
    so responses with `conversation`, and every /v1/conversations/{id} path, go back there."""
    for c in range(12):
        conversation = client.conversations.create(metadata={"n": str(c)})
        instance = None
        for t in range(3):
            response = client.responses.create(model="auto", input=PROMPTS[(c + t) % len(PROMPTS)],
                                               conversation=conversation.id)
            match = OUTPUT.match(response.output_text)
            assert match, response.output_text
            instance = instance or match["instance"]
            assert match["instance"] == instance, f"turn {t + 1} on {match['instance']}, conversation on {instance}"
            assert int(match["turn"]) == t + 1, response.output_text
        items = client.conversations.items.list(conversation.id)
        assert len(items.data) >= 6, "each turn adds the user input and the reply"
        assert client.conversations.retrieve(conversation.id).id == conversation.id
        client.conversations.delete(conversation.id)
        with pytest.raises(openai.NotFoundError):
            client.conversations.retrieve(conversation.id)


def test_compaction_results_are_learned_too(client):
    """`/v1/responses/compact` creates a stored response of its own; a conversation continued from
    it must reach the instance that holds it."""
    for c in range(12):
        first = client.responses.create(model="auto", input=PROMPTS[c % len(PROMPTS)])
        instance = OUTPUT.match(first.output_text)["instance"]
        compacted = client.responses.compact(model=first.model, previous_response_id=first.id)
        follow = client.responses.create(model="auto", input=PROMPTS[(c + 1) % len(PROMPTS)],
                                         previous_response_id=compacted.id)
        match = OUTPUT.match(follow.output_text)
        assert match and match["instance"] == instance, (instance, follow.output_text)
        assert int(match["turn"]) == 2, follow.output_text
