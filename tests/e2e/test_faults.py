"""A failed part must not lose conversations: real processes SIGKILLed under load.

Each test builds its own `Fleet` (fleet.py: 4 simulators, router(s), Envoy(s), maybe Redis, on free
ports, from the shipped deploy/envoy.yaml and deploy/routing.yaml), because it kills pieces of it;
the session `stack` other tests share is never touched. Load is several client threads running
multi-turn conversations (JSON and SSE turns, prompts moving between categories) while a part is
killed and restarted; every turn is recorded with its time, outcome and the backend holding its
conversation, so the assertions say exactly which requests may fail, and how. Measured recovery
times are printed (`pytest -s`) and written to bench/results/faults.json; RELIABILITY.md explains
each case.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from conftest import _envoy_binary, _router_binary
from fleet import PROMPTS, Fleet, Load

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults.json"
CODING = PROMPTS.index("Now write a python function that counts its words.")
# Generous bound on "restart -> first success" so a loaded machine cannot fail the test; the
# measured value is reported, not asserted.
RECOVERY_BOUND = 20.0


def _record(case: str, values: dict) -> None:
    """Adds one case's measurements to bench/results/faults.json and prints them."""
    print(f"\n[{case}] " + ", ".join(f"{k}={v}" for k, v in values.items()))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    data[case] = values
    RESULTS.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


@pytest.fixture
def fleet_factory(tmp_path, form):
    """Fleets of the router form under test (`form` is parametrized by conftest.py)."""
    fleets: list[Fleet] = []

    def make(**kwargs) -> Fleet:
        fleet = Fleet(tmp_path, str(_router_binary()), _envoy_binary(), form=form, **kwargs)
        fleets.append(fleet)
        print(f"fleet logs in {tmp_path}")  # shown with the captured output of a failed test
        return fleet.start()

    yield make
    for fleet in fleets:
        fleet.stop()


def _failures(turns):
    return [t for t in turns if not t.ok]


def _describe(turns, limit=8) -> str:
    return "\n".join(f"conv {t.conversation} turn {t.turn} stream={t.stream} home={t.home} "
                     f"[{t.start:.2f}-{t.end:.2f}]: {t.error} ({t.content_type})" for t in turns[:limit])


def _successes_after(load: Load, since: float, n: int):
    return lambda turns: sum(1 for t in turns if t.ok and t.start >= since) >= n


def _stream_at_kill(t, turns, t_kill: float) -> bool:
    """Whether turn t continues a streamed turn that was in flight when the router was killed
    (with 0.2 s for the observer's asynchronous write)."""
    previous = [u for u in turns if u.conversation == t.conversation and u.ok and u.turn == t.turn - 1]
    return bool(previous) and previous[-1].stream and previous[-1].start <= t_kill <= previous[-1].end + 0.2


@pytest.mark.forms("ext_proc")  # the module form has no router process of its own
@pytest.mark.parametrize("store", ["redis", "memory"])
def test_router_killed_and_restarted(fleet_factory, store):
    """SIGKILL the router under load, keep it down, restart it.

    While it is down Envoy fails closed (`failure_mode_allow: false`): every request gets a 500
    OpenAI-style JSON error `router_unavailable` and none reaches any model server. After the
    restart requests succeed again. Conversations begun before the kill and continued after it
    (the client retries a failed turn from the same previous response) keep their state with the
    Redis store; with the memory store the new process has forgotten every id, so a continuation
    is placed by the hash and either reaches its state or gets the backend's clear 404, never
    another backend's answer.
    """
    fleet = fleet_factory(redis=store == "redis")
    with Load([fleet.base_url()], threads=8, turns=8, retry=30.0, pause=0.01) as load:
        load.wait_for(lambda turns: sum(t.ok for t in turns) >= 150, 30, "warm-up successes")
        t_kill = fleet.kill("router-0")
        load.wait_for(lambda turns: sum(1 for t in turns if not t.ok and t.start > t_kill) >= 20, 15,
                      "failures while the router is down")
        # Anything admitted before the kill has reached its upstream by now.
        time.sleep(0.5)
        upstream_down = fleet.upstream_requests()
        time.sleep(1.5)
        upstream_before_restart = fleet.upstream_requests()
        t_restart = time.monotonic()
        fleet.start_router(0)
        t_listening = time.monotonic()
        load.wait_for(_successes_after(load, t_restart, 1), RECOVERY_BOUND, "success after the restart")
        load.wait_for(_successes_after(load, t_restart, 200), 30, "steady load after the restart")
    turns = load.snapshot()

    # (1) No request reached a model server while the router was down.
    assert upstream_before_restart == upstream_down, (upstream_down, upstream_before_restart)

    # (2) Every failure is the configured failure-mode result, and only around the outage.
    first_ok = min(t.end for t in turns if t.ok and t.start >= t_restart)
    outage = [t for t in _failures(turns) if not t.lost]
    for t in outage:
        assert t.status == 500 and t.code == "router_unavailable", _describe([t])
        assert t.content_type.startswith("application/json"), _describe([t])
        assert t.end >= t_kill and t.start <= first_ok, f"failure outside the outage:\n{_describe([t])}"
    during = [t for t in turns if t_kill + 0.5 <= t.start and t.end <= t_restart]
    assert during and all(not t.ok for t in during), _describe([t for t in during if t.ok])

    # (3) Conversations that began before the kill and went on after the restart.
    spanning = {t.conversation for t in turns if t.ok and t.start > t_restart and t.home is not None
                and any(u.conversation == t.conversation and u.ok and u.end < t_kill for u in turns)}
    lost = [t for t in turns if t.lost]
    # A lost turn is the backend's own 404 JSON error, never another backend's answer.
    assert all(t.status == 404 and t.content_type.startswith("application/json") for t in lost), _describe(lost)
    if store == "redis":
        # The shared store outlives the process: nothing it held is forgotten. The one exception:
        # a stream in flight at the kill whose first event reached the observer filter only after
        # the kill was never learned (the observer fails open by design, and the client got its
        # whole answer), so its continuation is placed by the hash and may get the backend's 404.
        unexplained = [t for t in lost if not _stream_at_kill(t, turns, t_kill)]
        assert not unexplained, f"{len(unexplained)} continuations lost their state:\n{_describe(unexplained)}"
        assert len(spanning) >= 3, spanning
    else:
        # The new process starts empty: continuations after the restart fall back to the hash.
        # The 404s are the backend's own clear error; the rest happened to hash to their state.
        assert all(t.start >= t_restart for t in lost), _describe(lost)
    recovery = first_ok - t_restart
    _record(f"router_kill_{store}", {
        "turns": len(turns), "failed_during_outage": len(outage), "lost_continuations": len(lost),
        "conversations_spanning_outage": len(spanning) + len({t.conversation for t in lost}),
        "restart_to_listening_s": round(t_listening - t_restart, 3),
        "restart_to_first_success_s": round(recovery, 3),
        "upstream_requests_while_down": sum(upstream_before_restart.values()) - sum(upstream_down.values()),
    })


@pytest.mark.parametrize("victim", ["sim-code", "sim-story-a"])
def test_simulator_killed_and_restarted(fleet_factory, victim):
    """SIGKILL one simulator under load, then restart it on the same port.

    sim-code is the only host of cluster `code`: requests that must go there (continuations of its
    conversations, new coding conversations) get Envoy's 503, reshaped by local_reply_config into
    an OpenAI JSON error `no_upstream_available`. sim-story-a is one of two hosts of `stories`: new
    story conversations go to sim-story-b without an error (Envoy retries a refused connection on
    the other host and outlier detection ejects the dead one), and continuations pinned to the dead
    host get a clear error, the 503 or sim-story-b's 404 for a response it does not hold; never an
    answer without their state. A request in flight at the kill may see its connection cut.
    Every other conversation sees no error at all. After the restart the victim serves new
    conversations again; its old conversations died with the process, and a continuation of one
    gets the victim's own clear 404.
    """
    fleet = fleet_factory()
    with Load([fleet.base_url()], threads=6, turns=6, pause=0.01) as load:
        load.wait_for(lambda turns: sum(t.ok and t.instance == victim for t in turns) >= 20, 30,
                      f"warm-up on {victim}")
        load.wait_for(lambda _: sum(1 for c in list(load.conversations) if c.home == victim) >= 5, 30,
                      f"conversations on {victim}")
        held = [c.last_id for c in list(load.conversations) if c.home == victim and c.last_id][:5]
        t_kill = fleet.kill(victim)
        load.wait_for(_successes_after(load, t_kill, 150), 30, "other conversations during the outage")
        # Continuations of conversations held by the dead simulator, whatever the load was doing.
        with openai.OpenAI(base_url=fleet.base_url(), api_key="x", max_retries=0, timeout=15) as client:
            probes = []
            for previous in held[:4]:
                with pytest.raises(openai.APIStatusError) as e:
                    client.responses.create(model="auto", input="go on", previous_response_id=previous)
                probes.append(e.value)
        t_restart = time.monotonic()
        fleet.start_sim(victim)
        # For sim-story-a this includes the rest of its outlier ejection (base_ejection_time 5s).
        load.wait_for(lambda turns: any(t.ok and t.start > t_restart and t.instance == victim
                                        for t in turns), RECOVERY_BOUND, f"{victim} serving again")
        first_ok = min(t.end for t in load.snapshot() if t.ok and t.start > t_restart and t.instance == victim)
        load.wait_for(_successes_after(load, t_restart, 100), 30, "load after the restart")
    turns = load.snapshot()

    def bound_for_victim(t) -> bool:
        if victim == "sim-code":
            return t.home == victim or (t.home is None and t.prompt == CODING)
        return t.home == victim

    failures = _failures(turns)
    others = [t for t in failures if not bound_for_victim(t)]
    assert not others, f"conversations elsewhere failed:\n{_describe(others)}"
    for t in failures:
        assert t.end >= t_kill and t.start <= first_ok, f"failure outside the outage:\n{_describe([t])}"
        if t.start <= t_kill:
            continue  # in flight at the kill: the connection may simply be cut
        assert t.content_type.startswith("application/json"), _describe([t])
        if t.status == 404:
            # The other host of the cluster, which does not hold the state, says so.
            assert victim == "sim-story-a" and t.backend == "sim-story-b", _describe([t])
        else:
            assert t.status == 503 and t.code == "no_upstream_available", _describe([t])
    for e in probes:
        assert e.response.headers["content-type"].startswith("application/json"), e.response.text
        if e.status_code == 404:
            assert victim == "sim-story-a" and e.response.headers["x-simulator-instance"] == "sim-story-b"
        else:
            assert e.status_code == 503 and e.code == "no_upstream_available", e.response.text
    during = [t for t in turns if t.start > t_kill and t.end < t_restart]
    assert sum(t.ok for t in during) >= 100, "too little load elsewhere to show it was unaffected"
    assert not [t for t in during if t.ok and t.instance == victim]
    assert not [t for t in turns if "wrong state" in (t.error or "")]
    if victim == "sim-story-a":
        new_stories = [t for t in during if t.home is None and t.instance == "sim-story-b"]
        assert len(new_stories) >= 3, "new story conversations should have gone to sim-story-b"

    # The restarted simulator has an empty store: the old conversation's state is gone, and the
    # router still sends it there (no silent re-pin), where it gets a clear 404.
    with openai.OpenAI(base_url=fleet.base_url(), api_key="x", max_retries=0, timeout=15) as client:
        with pytest.raises(openai.NotFoundError) as e:
            client.responses.create(model="auto", input="go on", previous_response_id=held[4])
        assert e.value.response.headers["x-simulator-instance"] == victim
    _record(f"simulator_kill_{victim}", {
        "turns": len(turns), "failed": len(failures), "probes_by_status": sorted(e.status_code for e in probes),
        "failed_conversations": len({t.conversation for t in failures}),
        "failed_by_status": {str(k): sum(1 for t in failures if t.status == k)
                             for k in sorted({t.status for t in failures}, key=str)},
        "other_turns_during_outage": sum(t.ok for t in during),
        "restart_to_first_success_s": round(first_ok - t_restart, 3),
    })


@pytest.mark.forms("ext_proc")
def test_redis_killed_and_restarted(fleet_factory):
    """SIGKILL the shared Redis of two router replicas under load, restart it (empty).

    No request fails or is refused: the store answers from memory first, gives Redis 50 ms and
    then skips it for 1 s at a time. Conversations that stay on one replica never notice.
    Conversations whose turns alternate between the replicas need Redis to find ids the other
    replica learned: during the outage such a continuation may be placed by the hash and get the
    backend's 404 (the documented limitation), and as soon as Redis is back ids learned from then
    on are shared again, so conversations begun after its return alternate without a single error.
    """
    fleet = fleet_factory(replicas=2, redis=True)
    urls = [fleet.base_url(0), fleet.base_url(1)]
    with Load(urls, threads=3, turns=6, sticky=True, pause=0.01) as sticky, \
            Load(urls, threads=3, turns=6, pause=0.01, first_conversation=1_000_000) as alternating:
        sticky.wait_for(lambda turns: sum(t.ok for t in turns) >= 80, 30, "warm-up")
        alternating.wait_for(lambda turns: sum(t.ok for t in turns) >= 80, 30, "warm-up")
        t_kill = fleet.kill("redis")
        sticky.wait_for(_successes_after(sticky, t_kill, 100), 30, "load while Redis is down")
        up_during = [fleet.router_metrics(i)["responses_router_affinity_store_up"] for i in range(2)]
        t_restart = time.monotonic()
        fleet.start_redis()
        # Each replica skips Redis for 1 s after an error; give it time to come back.
        deadline = time.monotonic() + RECOVERY_BOUND
        while not all(fleet.router_metrics(i)["responses_router_affinity_store_up"] == 1 for i in range(2)):
            assert time.monotonic() < deadline, "routers never saw Redis again"
            time.sleep(0.1)
        t_shared = time.monotonic()
        alternating.wait_for(lambda turns: len({t.conversation for t in turns if t.ok and t.turn == 6
                                                 and t.start > t_shared}) >= 10, 60,
                             "alternating conversations after Redis returned")
    both = sticky.snapshot() + alternating.snapshot()
    assert up_during == [0, 0], up_during

    # No request ever failed except the lost continuations of the known limitation.
    not_lost = [t for t in _failures(both) if not t.lost]
    assert not not_lost, _describe(not_lost)
    assert not _failures(sticky.snapshot()), _describe(_failures(sticky.snapshot()))
    lost = [t for t in alternating.snapshot() if t.lost]
    assert all(t.status == 404 and t.content_type.startswith("application/json") for t in lost), _describe(lost)
    # Only turns placed while Redis was away (or in flight at the kill) lose anything...
    assert all(t.end >= t_kill for t in lost), _describe([t for t in lost if t.end < t_kill])
    # ...and conversations begun once the routers were using Redis again lose nothing.
    fresh = {t.conversation for t in alternating.snapshot() if t.turn == 1 and t.start > t_shared}
    assert not [t for t in lost if t.conversation in fresh], _describe(lost)
    assert len(fresh) >= 10
    _record("redis_kill", {
        "turns": len(both), "failed_not_lost": len(not_lost),
        "lost_alternating_continuations_during_outage": len(lost),
        "redis_restart_to_routers_using_it_s": round(t_shared - t_restart, 3),
        "conversations_after_return": len(fresh),
    })
