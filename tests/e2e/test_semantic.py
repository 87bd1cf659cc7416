"""Classification by meaning, end to end: the OpenAI SDK -> the real Envoy -> the router with the
shipped deploy/routing.yaml, whose categories list example utterances and name a static-embedding
model (the wordllama wheel's files, fetched by scripts/models). An `auto` request with no keyword or
pattern of any category reaches the model of the category its text means; the router's `explain`
shows that the rules gave it nothing and the similarity carried it."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from helpers import GENERAL_PROMPT, SIMULATOR_OUTPUT
from procs import ROUTING_YAML

# Texts with none of the shipped keywords or patterns.
BY_MEANING = [
    ("Why is my recursive descent parser so slow on long inputs?", "code-model", "coding", "sim-code"),
    ("Compose a ballad about a lighthouse keeper.", "story-model", "creative", "sim-story"),
]


def explain(stack, text: str) -> dict:
    out = subprocess.run(
        [stack.router_bin, "explain", "--config", str(ROUTING_YAML), "--path", "/v1/responses"],
        input=json.dumps({"model": "auto", "input": text}), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_the_shipped_config_has_example_categories_and_a_model():
    config = yaml.safe_load(ROUTING_YAML.read_text())
    assert config["classification"]["embedding"]["model_dir"]
    assert all(len(c.get("examples", [])) >= 5 for c in config["categories"])


@pytest.mark.parametrize(("text", "model", "category", "instance"), BY_MEANING, ids=[c for *_, c, _ in BY_MEANING])
def test_an_auto_request_without_keywords_is_routed_by_meaning(stack, client, text, model, category, instance):
    decision = explain(stack, text)
    assert [s["score"] for s in decision["scores"]] == [0, 0], "no rule matches this text"
    winner = next(s for s in decision["scores"] if s["category"] == category)
    assert winner["similarity"] >= winner["min_similarity"], winner

    raw = client.responses.with_raw_response.create(model="auto", input=text)
    assert (raw.headers["x-router-model"], raw.headers["x-router-reason"]) == (model, "category")
    assert raw.headers["x-router-category"] == category
    response = raw.parse()
    assert response.model == model
    # The simulator that answered serves that model: the request really went there.
    served_by = SIMULATOR_OUTPUT.match(response.output_text)
    assert served_by and served_by["instance"].startswith(instance), response.output_text


def test_a_text_far_from_every_category_goes_to_the_default_model(stack, client):
    decision = explain(stack, GENERAL_PROMPT)
    assert all(s["similarity"] < s["min_similarity"] and s["score"] == 0 for s in decision["scores"]), decision
    raw = client.responses.with_raw_response.create(model="auto", input=GENERAL_PROMPT)
    assert (raw.headers["x-router-model"], raw.headers["x-router-reason"]) == ("general-model", "default")
    assert "x-router-category" not in raw.headers


def test_meaning_also_routes_chat_completions_and_streams(client):
    text, model, category, _ = BY_MEANING[0]
    chat = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": text}])
    assert (chat.headers["x-router-model"], chat.headers["x-router-category"]) == (model, category)
    with client.responses.with_streaming_response.create(model="auto", input=text, stream=True) as r:
        assert r.headers["x-router-model"] == model
        assert [line for line in r.iter_lines() if line]
