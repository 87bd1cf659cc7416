"""What an SDK client sees of the gateway itself: the model list the router answers from its config,
and the decision exposed on every response (`expose_decision: true` in the shipped routing.yaml)."""

from __future__ import annotations

import openai
import pytest
import yaml

from helpers import CODING_PROMPT, GENERAL_PROMPT, assert_openai_error
from procs import ROUTING_YAML
from test_hostile import Backends


def shipped_models() -> list[str]:
    config = yaml.safe_load(ROUTING_YAML.read_text())
    return config["auto_models"] + [m["name"] for m in config["models"]]


def test_models_list_shows_auto_and_every_model_without_asking_a_backend(stack, client):
    backends = Backends(stack)
    models = client.models.list()
    assert [m.id for m in models.data] == shipped_models()
    assert all(m.object == "model" and m.owned_by == "responses-router" for m in models.data)
    assert backends.reached() == {}, "the router answers, no model server is asked"


def test_models_retrieve_one_and_an_unknown_one_is_model_not_found(stack, client, raw):
    assert client.models.retrieve("code-model").id == "code-model"
    assert client.models.retrieve("auto").id == "auto"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-9")
    assert_openai_error(raw.get("/v1/models/gpt-9"), 404, code="model_not_found")


@pytest.mark.parametrize(
    ("prompt", "model", "reason", "category"),
    [(CODING_PROMPT, "code-model", "category", "coding"), (GENERAL_PROMPT, "general-model", "default", None)],
)
def test_every_response_tells_the_client_the_decision_and_no_host(client, prompt, model, reason, category):
    raw = client.responses.with_raw_response.create(model="auto", input=prompt)
    assert raw.headers["x-router-model"] == model
    assert raw.headers["x-router-reason"] == reason
    assert raw.headers.get("x-router-category") == category
    shown = " ".join(v for k, v in raw.headers.items() if k.startswith("x-router"))
    assert "127.0.0.1" not in shown and "x-router-session-host" not in raw.headers
    assert raw.parse().model == model


def test_the_decision_is_exposed_on_streams_and_chat_too(client):
    with client.responses.with_streaming_response.create(model="auto", input=CODING_PROMPT, stream=True) as r:
        assert r.headers["x-router-model"] == "code-model"
        assert [line for line in r.iter_lines() if line]
    chat = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "Write a haiku about autumn."}])
    assert (chat.headers["x-router-model"], chat.headers["x-router-category"]) == ("story-model", "creative")
