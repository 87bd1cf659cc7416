"""Streams (SSE) go through Envoy and the router event by event, never buffered."""

from __future__ import annotations

import time

from helpers import CODE_CHUNK_DELAY_MS, CODE_STREAM_CHUNKS, CODING_PROMPT, GENERAL_PROMPT, input_shapes

# The typical text stream of the Responses API, in order (deltas collapsed).
EXPECTED_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

# sim-code waits CODE_CHUNK_DELAY_MS before each chunk; a pass-through stream shows the deltas at
# least (chunks - 1) * delay apart. Half of that leaves room for scheduling noise, while a buffered
# stream would deliver them all within a few milliseconds.
MIN_SPREAD_S = (CODE_STREAM_CHUNKS - 1) * CODE_CHUNK_DELAY_MS / 1000 / 2


def collapse(types: list[str]) -> list[str]:
    out: list[str] = []
    for t in types:
        if not (out and out[-1] == t == "response.output_text.delta"):
            out.append(t)
    return out


def collect(stream):
    events, times = [], []
    with stream:
        for event in stream:
            times.append(time.monotonic())
            events.append(event)
    return events, times


def test_responses_stream_full_event_sequence_and_not_buffered(client):
    events, times = collect(client.responses.create(model="auto", input=CODING_PROMPT, stream=True))
    types = [e.type for e in events]
    assert collapse(types) == EXPECTED_EVENTS, types
    assert [e.sequence_number for e in events] == list(range(len(events)))

    deltas = [(t, e) for t, e in zip(times, events) if e.type == "response.output_text.delta"]
    assert len(deltas) == CODE_STREAM_CHUNKS
    completed = events[-1].response
    assert completed.model == "code-model"
    assert events[0].response.model == "code-model"
    text = "".join(e.delta for _, e in deltas)
    assert text == completed.output_text
    assert "sim-code" in text

    spread = deltas[-1][0] - deltas[0][0]
    assert spread >= MIN_SPREAD_S, f"deltas arrived {spread:.3f}s apart: the stream was buffered"


def test_responses_stream_general_input_list(client):
    events, _ = collect(
        client.responses.create(model="auto", input=input_shapes(GENERAL_PROMPT)["part_list"], stream=True)
    )
    assert collapse([e.type for e in events]) == EXPECTED_EVENTS
    assert events[-1].response.model == "general-model"
    assert "sim-general" in events[-1].response.output_text


def test_responses_stream_raw_headers(client):
    with client.responses.with_streaming_response.create(model="auto", input=CODING_PROMPT, stream=True) as r:
        assert r.headers["x-simulator-instance"] == "sim-code"
        assert r.headers["content-type"].startswith("text/event-stream")
        body = b"".join(r.iter_bytes())
    assert b"event: response.completed" in body


def test_chat_completion_auto_routed(client):
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": CODING_PROMPT}]
    )
    completion = raw.parse()
    assert raw.headers["x-simulator-instance"] == "sim-code"
    assert completion.model == "code-model"
    assert "sim-code" in completion.choices[0].message.content

    completion = client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": GENERAL_PROMPT}]
    )
    assert completion.model == "general-model"
    assert "sim-general" in completion.choices[0].message.content


def test_chat_completion_stream_auto_routed_and_not_buffered(client):
    chunks, times = collect(
        client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": CODING_PROMPT}], stream=True
        )
    )
    assert chunks, "no chunks"
    assert {c.model for c in chunks} == {"code-model"}
    content_times = [t for t, c in zip(times, chunks) if c.choices and c.choices[0].delta.content]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "sim-code" in text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert len(content_times) >= 2
    spread = content_times[-1] - content_times[0]
    assert spread >= MIN_SPREAD_S, f"chunks arrived {spread:.3f}s apart: the stream was buffered"
