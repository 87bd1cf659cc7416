"""Routing through the real Envoy: auto classification, explicit models, spoofed headers, pass-through."""

from __future__ import annotations

import pytest

from helpers import CODING_PROMPT, GENERAL_PROMPT, input_shapes

SHAPES = list(input_shapes("x"))


@pytest.mark.parametrize("shape", SHAPES)
def test_auto_coding_prompt_reaches_code_model(client, shape):
    raw = client.responses.with_raw_response.create(model="auto", input=input_shapes(CODING_PROMPT)[shape])
    response = raw.parse()
    assert raw.headers["x-simulator-instance"] == "sim-code"
    assert response.model == "code-model"
    assert "sim-code" in response.output_text and "code-model" in response.output_text, response.output_text
    assert response.status == "completed"


@pytest.mark.parametrize("shape", SHAPES)
def test_auto_general_prompt_reaches_general_model(client, shape):
    raw = client.responses.with_raw_response.create(model="auto", input=input_shapes(GENERAL_PROMPT)[shape])
    response = raw.parse()
    assert raw.headers["x-simulator-instance"] == "sim-general"
    assert response.model == "general-model"
    assert "sim-general" in response.output_text and "general-model" in response.output_text, response.output_text


@pytest.mark.parametrize(
    ("model", "prompt", "instance"),
    [
        # An explicit model wins over what the text would be classified as.
        ("code-model", GENERAL_PROMPT, "sim-code"),
        ("general-model", CODING_PROMPT, "sim-general"),
    ],
)
def test_explicit_model_passes_through_unchanged(client, model, prompt, instance):
    raw = client.responses.with_raw_response.create(model=model, input=prompt)
    response = raw.parse()
    assert raw.headers["x-simulator-instance"] == instance
    assert response.model == model
    assert instance in response.output_text and model in response.output_text


SPOOFED = {
    "x-router-cluster": "code",
    "x-selected-model": "code-model",
    "x-router-reason": "explicit",
    "x-router-category": "coding",
}


def test_client_routing_headers_cannot_pick_the_upstream(client, stack):
    headers = {**SPOOFED, "x-gateway-destination-endpoint": f"127.0.0.1:{stack.ports['code']}"}
    raw = client.responses.with_raw_response.create(model="general-model", input=GENERAL_PROMPT,
                                                     extra_headers=headers)
    assert raw.headers["x-simulator-instance"] == "sim-general"
    assert raw.parse().model == "general-model"


def test_client_routing_headers_cannot_override_auto(client, stack):
    headers = {**SPOOFED, "x-gateway-destination-endpoint": f"127.0.0.1:{stack.ports['code']}"}
    raw = client.responses.with_raw_response.create(model="auto", input=GENERAL_PROMPT, extra_headers=headers)
    assert raw.headers["x-simulator-instance"] == "sim-general"
    assert raw.parse().model == "general-model"


def test_models_list_is_answered_by_the_router(client):
    raw = client.models.with_raw_response.list()
    models = raw.parse()
    # The router answers GET /v1/models from the routing config: no model server sees it.
    assert "x-simulator-instance" not in raw.headers
    assert "general-model" in [m.id for m in models.data]


def test_models_list_ignores_spoofed_cluster(client):
    raw = client.models.with_raw_response.list(extra_headers=SPOOFED)
    assert "x-simulator-instance" not in raw.headers
    assert "code-model" in [m.id for m in raw.parse().data]
