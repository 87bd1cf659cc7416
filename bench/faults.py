#!/usr/bin/env python3
"""A sustained mixed-fault run: router replicas, Redis and one model-server host are killed and
restarted on a schedule while conversations run, and every lost turn is put down to its cause.

    scripts/faults                         10 minutes, one fault every 15 s (release build)
    scripts/faults --duration 120          a quick run
    bench/faults.py --router-bin B --envoy-bin E [--duration S] [--cycle S] [--rate R] ...

Starts its own stack (tests/e2e/fleet.py): the 4 simulators, 2 router + Envoy pairs from the
shipped configs, and a Redis the routers share, with an append-only file (fsync every second,
as the production overlay runs it). Client threads run conversations of --turns turns at --rate
turns per second in total (JSON and SSE turns, `model: "auto"`, prompts that change category),
each conversation through its own gateway (replica) as a session-affine load balancer would
send it; a turn that finds its router unavailable (Envoy's 500 `router_unavailable`, or no
answer) is retried on the other gateway, and any failed turn is retried from the same previous
response for up to --retry seconds, as a client with retries would. Every --cycle seconds, in
turn (SIGKILL, down for a few seconds, restarted on the same port):

    +5 s   router-0 (its Envoy answers 500 meanwhile)
    +20 s  Redis, restarted empty in even cycles (data lost: the re-seed case) and from its
           append-only file in odd ones (the write-behind case)
    +35 s  router-1
    +50 s  sim-story-a, one of the two hosts of cluster `stories` (its responses die with it)

Lost turns (a continuation that reached a backend without its state: the simulator's 404) are
counted by cause:
  - model_server: the conversation's state was on the killed simulator, created before it died
    (allowed: nothing can bring it back);
  - router_stream: the previous turn was a stream in flight on a router when it was killed, so its
    id was never learned (the documented exception of RELIABILITY.md);
  - redis: placed while Redis was down or being replayed;
  - other: anything else.
The run passes (exit 0) only if every lost turn is model_server and no turn was given up (failed
on every retry). Results: bench/results/fault_run.json (measurements) and fault_run.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from fleet import Fleet, Load  # noqa: E402

RESULTS = ROOT / "bench" / "results"
VICTIM = "sim-story-a"


@dataclass
class Fault:
    kind: str  # router | redis | simulator
    target: str  # process name
    killed: float
    restarted: float = 0.0
    variant: str = ""  # redis: empty | with_data
    replayed: float = 0.0  # redis: both routers shared again and had written their queues


@dataclass
class Schedule:
    fleet: Fleet
    cycle: float
    down: dict[str, float]
    t0: float = 0.0
    faults: list[Fault] = field(default_factory=list)
    # Each router's shared-store counters, summed over its lives (a restart starts them at 0).
    totals: list[dict[str, float]] = field(default_factory=lambda: [{}, {}])
    stop: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def run(self, t0: float, duration: float) -> None:
        try:
            n = 0
            while not self.stop.is_set():
                start = t0 + n * self.cycle
                for offset, kind, target in ((5, "router", "router-0"), (20, "redis", "redis"),
                                             (35, "router", "router-1"), (50, "simulator", VICTIM)):
                    at = start + offset * self.cycle / 60
                    if at - t0 > duration - 10 or not self._sleep_until(at):
                        return
                    self._fault(kind, target, n)
                n += 1
        except Exception as e:  # noqa: BLE001 - reported by the main thread
            self.error = f"{type(e).__name__}: {e}"

    def _sleep_until(self, at: float) -> bool:
        while time.monotonic() < at:
            if self.stop.wait(min(0.2, at - time.monotonic())):
                return False
        return True

    def add_counters(self, i: int) -> None:
        for k, v in _store(self.fleet, i).items():
            if k.endswith("_total"):
                self.totals[i][k] = self.totals[i].get(k, 0) + v

    def _fault(self, kind: str, target: str, cycle: int) -> None:
        if kind == "router":
            self.add_counters(int(target.split("-")[1]))
        fault = Fault(kind, target, self.fleet.kill(target))
        self.faults.append(fault)
        self._sleep_until(fault.killed + self.down[kind])
        fault.restarted = time.monotonic()
        if kind == "router":
            self.fleet.start_router(int(target.split("-")[1]))
        elif kind == "simulator":
            self.fleet.start_sim(target)
        else:
            fault.variant = "empty" if cycle % 2 == 0 else "with_data"
            self.fleet.start_redis(fresh=fault.variant == "empty")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(_replayed(self.fleet, i) for i in range(2)):
                time.sleep(0.1)
            fault.replayed = time.monotonic()
        print(f"  t={fault.killed - self.t0:7.1f}s {kind} {target} {fault.variant} down "
              f"{fault.restarted - fault.killed:.1f}s", flush=True)


def _store(fleet: Fleet, i: int) -> dict[str, float]:
    prefix = "responses_router_affinity_"
    try:
        return {k[len(prefix):]: v for k, v in fleet.router_metrics(i).items() if k.startswith(prefix)}
    except Exception:  # noqa: BLE001 - a router being restarted answers nothing
        return {}


def _replayed(fleet: Fleet, i: int) -> bool:
    m = _store(fleet, i)
    return m.get("store_up") == 1 and m.get("write_behind_length") == 0 and m.get("reseeding") == 0


def cause(turn, turns_by_conv, faults: list[Fault]) -> str:
    """Why a lost turn lost its state (see the module documentation)."""
    previous = [u for u in turns_by_conv[turn.conversation] if u.ok and u.turn == turn.turn - 1]
    prev = previous[-1] if previous else None
    for f in faults:
        if f.kind == "simulator" and turn.home == f.target and prev is not None and prev.end <= f.killed + 0.2 \
                and turn.start >= f.killed:
            return "model_server"
    for f in faults:
        if f.kind == "router" and prev is not None and prev.stream and prev.replica == int(f.target[-1]) \
                and prev.start <= f.killed <= prev.end + 0.2:
            return "router_stream"
    for f in faults:
        if f.kind == "redis" and f.killed <= turn.start <= (f.replayed or f.restarted) + 1.0:
            return "redis"
    return "other"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--envoy-bin", required=True)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--cycle", type=float, default=60.0, help="seconds per cycle of four faults (default 60)")
    ap.add_argument("--rate", type=float, default=20.0, help="turns per second in total (default 20)")
    ap.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--turns", type=int, default=6, help="turns per conversation (default 6)")
    ap.add_argument("--retry", type=float, default=30.0, help="seconds a client retries a failed turn (default 30)")
    ap.add_argument("--out", default=str(RESULTS / "fault_run"), help="output path without extension")
    args = ap.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="faults-"))
    fleet = Fleet(workdir, args.router_bin, args.envoy_bin, replicas=2, redis=True, redis_persist=True,
                  router_env={"RESPONSES_ROUTER_LOG": "info"})
    schedule = Schedule(fleet, args.cycle, {"router": 3.0, "redis": 5.0, "simulator": 3.0})
    try:
        fleet.start()
        print(f"faults: {args.duration:.0f}s at {args.rate}/s, {args.threads} threads, a fault every "
              f"{args.cycle / 4:.0f}s; logs in {workdir}", flush=True)
        t0 = time.monotonic()
        schedule.t0 = t0
        urls = [fleet.base_url(0), fleet.base_url(1)]
        with Load(urls, threads=args.threads, turns=args.turns, rate=args.rate, retry=args.retry,
                  sticky=True, failover=True) as load:
            runner = threading.Thread(target=schedule.run, args=(t0, args.duration), daemon=True)
            runner.start()
            while time.monotonic() - t0 < args.duration and schedule.error is None:
                time.sleep(1)
            schedule.stop.set()
            runner.join(timeout=60)
            t_stop = time.monotonic()
        turns = load.snapshot()
        for i in range(2):
            schedule.add_counters(i)
        stores = schedule.totals
    finally:
        schedule.stop.set()
        fleet.stop()
    if schedule.error:
        print(f"faults: the schedule failed: {schedule.error}\n{fleet.logs()}", file=sys.stderr)
        return 1

    by_conv: dict[int, list] = {}
    for t in turns:
        by_conv.setdefault(t.conversation, []).append(t)
    lost = [t for t in turns if t.lost]
    causes: dict[str, int] = {"model_server": 0, "router_stream": 0, "redis": 0, "other": 0}
    examples: dict[str, list[str]] = {}
    for t in lost:
        c = cause(t, by_conv, schedule.faults)
        causes[c] += 1
        examples.setdefault(c, []).append(f"conv {t.conversation} turn {t.turn} home={t.home} "
                                          f"replica={t.replica} at {t.start - t0:.2f}s: {t.error}")
    # A conversation whose last attempt failed (not lost) while the load still ran: given up.
    given_up = [ts[-1] for ts in by_conv.values()
                if not ts[-1].ok and not ts[-1].lost and ts[-1].end < t_stop - args.retry - 1]
    failed_attempts: dict[str, int] = {}
    for t in turns:
        if not t.ok and not t.lost:
            key = f"{t.status} {t.code}" if t.status else "no answer"
            failed_attempts[key] = failed_attempts.get(key, 0) + 1
    ok_turns = [t for t in turns if t.ok]
    checks = {
        "only_model_server_losses": causes["router_stream"] + causes["redis"] + causes["other"] == 0,
        "no_turn_given_up": not given_up,
        "every_fault_happened": {f.kind for f in schedule.faults} == {"router", "redis", "simulator"},
    }
    result = {
        "settings": {"duration_s": args.duration, "cycle_s": args.cycle, "rate_per_s": args.rate,
                     "threads": args.threads, "turns_per_conversation": args.turns, "retry_s": args.retry,
                     "router_bin": args.router_bin, "victim": VICTIM},
        "faults": [{"kind": f.kind, "target": f.target, "at_s": round(f.killed - t0, 1),
                    "down_s": round(f.restarted - f.killed, 1), "variant": f.variant,
                    **({"restart_to_replayed_s": round(f.replayed - f.restarted, 2)} if f.replayed else {})}
                   for f in schedule.faults],
        "turn_attempts": len(turns),
        "successful_turns": len(ok_turns),
        "conversations": len(by_conv),
        "completed_conversations": sum(1 for ts in by_conv.values()
                                       if any(t.ok and t.turn == args.turns for t in ts)),
        "lost_turns": len(lost),
        "lost_turns_by_cause": causes,
        "lost_examples": {k: v[:5] for k, v in examples.items()},
        "failed_attempts_retried": failed_attempts,
        "turns_given_up": len(given_up),
        "given_up_examples": [f"conv {t.conversation} turn {t.turn}: {t.error}" for t in given_up[:5]],
        "stores": [{k: stores[i].get(k, 0) for k in ("write_behind_queued_total", "write_behind_flushed_total",
                                                  "write_behind_dropped_total", "reseeds_total",
                                                  "reseeded_ids_total", "redis_errors_total")}
                   for i in range(2)],
        "checks": checks,
        "passed": all(checks.values()),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if result["passed"] else 1


def _markdown(r: dict) -> str:
    s = r["settings"]
    lines = [
        f"# Mixed faults: {s['duration_s']:.0f} s at {s['rate_per_s']} turns/s, a fault every "
        f"{s['cycle_s'] / 4:.0f} s",
        "",
        f"{s['threads']} client threads, {s['turns_per_conversation']} turns per conversation, clients retry a "
        f"failed turn for up to {s['retry_s']:.0f} s (on the other gateway when their router is down); "
        f"2 routers + 2 Envoys, Redis with an append-only file; killed in turn: router-0, Redis, "
        f"router-1, {s['victim']}.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| faults | {len(r['faults'])} ({', '.join(sorted({f['kind'] for f in r['faults']}))}) |",
        f"| turn attempts / successful turns | {r['turn_attempts']} / {r['successful_turns']} |",
        f"| conversations (completed) | {r['conversations']} ({r['completed_conversations']}) |",
        f"| lost turns | {r['lost_turns']}: " + ", ".join(f"{k} {v}" for k, v in r["lost_turns_by_cause"].items()) + " |",
        f"| failed attempts, retried | " + (", ".join(f"{k}: {v}" for k, v in r["failed_attempts_retried"].items()) or "0") + " |",
        f"| turns given up | {r['turns_given_up']} |",
        f"| checks | " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in r["checks"].items()) + " |",
        "",
        "| t (s) | fault | down (s) | note |",
        "|---|---|---|---|",
    ]
    for f in r["faults"]:
        note = f["variant"]
        if "restart_to_replayed_s" in f:
            note += f", replayed {f['restart_to_replayed_s']} s after the restart"
        lines.append(f"| {f['at_s']} | {f['kind']} {f['target']} | {f['down_s']} | {note} |")
    lines += ["", "Shared store, per router (summed over its restarts): " + "; ".join(
        ", ".join(f"{k.replace('_total', '')} {int(v or 0)}" for k, v in st.items()) for st in r["stores"]), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
