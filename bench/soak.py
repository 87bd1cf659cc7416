#!/usr/bin/env python3
"""Soak: multi-turn conversations at a steady rate through Envoy and the router, for a long time.

    scripts/soak                        10 minutes at 20 turns/s (release build)
    scripts/soak --duration 60          a quick run
    bench/soak.py --router-bin B --envoy-bin E [--duration S] [--rate R] [--capacity N] [--redis]

Starts its own stack (tests/e2e/fleet.py: 4 simulators, the router, Envoy with the shipped
deploy/envoy.yaml and deploy/routing.yaml on free ports, optionally a Redis), runs conversations
of --turns turns from --threads client threads at --rate turns per second in total (JSON and SSE
turns, `model: "auto"`, prompts moving between categories so only learned affinity keeps a
conversation in place), and samples every 10 s the router's and Envoy's resident memory (/proc)
and the router's affinity store size (/metrics). Writes bench/results/soak.json and soak.md.

Exits 1 if any request failed, any continuation lost its state (the simulators answer 404 for a
previous_response_id they do not hold, so a misrouted turn cannot pass), the router's memory grew
beyond the bound below, or the affinity store ever held more than its capacity; also if the store
never reached its capacity (then eviction was not exercised and "bounded" was not tested).

The affinity capacity is set small (RESPONSES_ROUTER__AFFINITY__CAPACITY, default 1024) so the
store fills and evicts during the run. Each turn creates one id, so an id is evicted after about
capacity / rate seconds (1024 / 20 = 51 s), while a conversation's next turn comes about
threads / rate seconds later (8 / 20 = 0.4 s, plus latency): two orders of magnitude apart, so
eviction never drops the id a live conversation still needs. The memory store is 16 shards of
ceil(capacity / 16) entries each, evicting per shard, so its true bound is 16 * ceil(capacity / 16):
the capacity must be a multiple of 16 here for "at most capacity" to be the exact check.

Memory bound: the router's RSS at the end may exceed its RSS at the end of the warm-up (the first
minute: by then the store is full and every pool and buffer is in use) by at most 5 % or 2 MiB,
whichever is larger. Allocator noise stays well inside that; a leak of 200 bytes per turn would
pass it within 10 minutes at 20 turns/s (9 min * 1200 turns/min * 200 B = 2.2 MB).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from fleet import Fleet, Load, rss_bytes  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SAMPLE_EVERY = 10.0
MIB = 1024 * 1024
# crates/core/src/affinity/memory.rs: SHARDS.
STORE_SHARDS = 16


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--envoy-bin", required=True)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    ap.add_argument("--rate", type=float, default=20.0, help="turns per second in total (default 20)")
    ap.add_argument("--threads", type=int, default=8, help="client threads (default 8)")
    ap.add_argument("--turns", type=int, default=6, help="turns per conversation (default 6)")
    ap.add_argument("--capacity", type=int, default=1024,
                    help="affinity store capacity, a multiple of 16 (default 1024)")
    ap.add_argument("--warmup", type=float, default=None,
                    help="seconds before the memory baseline (default 60, or a third of a shorter run)")
    ap.add_argument("--redis", action="store_true", help="share affinity through a local redis-server")
    ap.add_argument("--out", default=str(RESULTS / "soak"), help="output path without extension")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(60.0, args.duration / 3)
    if args.capacity % STORE_SHARDS:
        ap.error(f"--capacity must be a multiple of {STORE_SHARDS} (the memory store's shard count)")
    lifetime = args.capacity / args.rate
    gap = args.threads / args.rate
    if lifetime < 20 * gap + 30:
        ap.error(f"capacity {args.capacity} keeps an id only {lifetime:.0f}s at {args.rate}/s; a "
                 f"conversation's turns are ~{gap:.1f}s apart: raise --capacity")

    workdir = Path(tempfile.mkdtemp(prefix="soak-"))
    fleet = Fleet(workdir, args.router_bin, args.envoy_bin, redis=args.redis,
                  router_env={"RESPONSES_ROUTER__AFFINITY__CAPACITY": str(args.capacity),
                              "RESPONSES_ROUTER_LOG": "warn"})
    samples: list[dict] = []
    try:
        fleet.start()
        router, envoy = fleet.procs["router-0"], fleet.procs["envoy-0"]
        print(f"soak: {args.duration:.0f}s at {args.rate}/s, {args.threads} threads, {args.turns} turns "
              f"per conversation, capacity {args.capacity}{', redis' if args.redis else ''}; logs in {workdir}",
              flush=True)
        t0 = time.monotonic()
        with Load([fleet.base_url()], threads=args.threads, turns=args.turns, rate=args.rate) as load:
            next_sample = t0
            while True:
                now = time.monotonic()
                if now >= next_sample:
                    metrics = fleet.router_metrics()
                    turns = load.snapshot()
                    sample = {
                        "t": round(now - t0, 1),
                        "router_rss": rss_bytes(router.popen.pid),
                        "envoy_rss": rss_bytes(envoy.popen.pid),
                        "store_entries": int(metrics.get("responses_router_affinity_store_entries", -1)),
                        "learned": int(sum(v for k, v in metrics.items()
                                           if k.startswith("responses_router_learned_ids_total"))),
                        "turns": len(turns),
                        "errors": sum(1 for t in turns if not t.ok),
                    }
                    samples.append(sample)
                    print(f"  t={sample['t']:6.1f}s turns={sample['turns']:6d} errors={sample['errors']} "
                          f"router_rss={sample['router_rss'] / MIB:6.1f}MiB envoy_rss={sample['envoy_rss'] / MIB:6.1f}MiB "
                          f"store={sample['store_entries']}", flush=True)
                    if now - t0 >= args.duration:
                        break
                    next_sample += SAMPLE_EVERY
                if not (router.alive() and envoy.alive()):
                    raise SystemExit(f"soak: a process died\n{fleet.logs()}")
                time.sleep(min(0.5, max(0.0, next_sample - time.monotonic())))
        elapsed = time.monotonic() - t0
        turns = load.snapshot()
    finally:
        fleet.stop()

    errors = [t for t in turns if not t.ok]
    lost = [t for t in errors if t.lost]
    latencies = sorted(t.end - t.start for t in turns if t.ok)
    baseline = next(s for s in samples if s["t"] >= warmup)
    end = samples[-1]
    allowed = max(baseline["router_rss"] * 0.05, 2 * MIB)
    growth = end["router_rss"] - baseline["router_rss"]
    max_store = max(s["store_entries"] for s in samples)
    after = [s for s in samples if s["t"] >= warmup]
    slope = _slope([(s["t"], s["router_rss"]) for s in after]) if len(after) >= 3 else 0.0
    checks = {
        "no_errors": not errors,
        "no_lost_continuations": not lost,
        "router_rss_flat": growth <= allowed,
        "store_within_capacity": max_store <= args.capacity,
        "store_reached_capacity": max_store == args.capacity,
    }
    result = {
        "settings": {"duration_s": args.duration, "rate_per_s": args.rate, "threads": args.threads,
                     "turns_per_conversation": args.turns, "affinity_capacity": args.capacity,
                     "redis": args.redis, "warmup_s": warmup, "router_bin": args.router_bin},
        "requests": len(turns),
        "achieved_rate_per_s": round(len(turns) / elapsed, 2),
        "streamed_requests": sum(1 for t in turns if t.stream),
        "conversations": len({t.conversation for t in turns}),
        "errors": len(errors),
        "lost_continuations": len(lost),
        "error_examples": [t.error for t in errors[:5]],
        "latency_ms": {"p50": _ms(latencies, 0.5), "p99": _ms(latencies, 0.99), "max": _ms(latencies, 1.0)},
        "router_rss_mib": {"baseline": round(baseline["router_rss"] / MIB, 2), "end": round(end["router_rss"] / MIB, 2),
                           "growth": round(growth / MIB, 2), "allowed_growth": round(allowed / MIB, 2),
                           "slope_kib_per_min": round(slope * 60 / 1024, 1),
                           "max": round(max(s["router_rss"] for s in samples) / MIB, 2)},
        "envoy_rss_mib": {"baseline": round(baseline["envoy_rss"] / MIB, 2), "end": round(end["envoy_rss"] / MIB, 2),
                          "max": round(max(s["envoy_rss"] for s in samples) / MIB, 2)},
        "affinity_store": {"capacity": args.capacity, "max_entries": max_store, "end_entries": end["store_entries"],
                           "ids_learned": end["learned"], "evicted_at_least": max(0, end["learned"] - end["store_entries"])},
        "checks": checks,
        "passed": all(checks.values()),
        "samples": samples,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(_markdown(result))
    print(_markdown(result))
    return 0 if result["passed"] else 1


def _ms(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return round(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] * 1000, 1)


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (bytes per second) of RSS over time."""
    mx = statistics.fmean(x for x, _ in points)
    my = statistics.fmean(y for _, y in points)
    den = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def _markdown(r: dict) -> str:
    s, rr, er, st = r["settings"], r["router_rss_mib"], r["envoy_rss_mib"], r["affinity_store"]
    lines = [
        f"# Soak: {s['duration_s']:.0f} s at {s['rate_per_s']} turns/s",
        "",
        f"{s['threads']} client threads, {s['turns_per_conversation']} turns per conversation (JSON and SSE, "
        f"`model: \"auto\"`, category-switching prompts), affinity capacity {s['affinity_capacity']}"
        f"{', Redis' if s['redis'] else ', memory store'}; memory baseline after {s['warmup_s']:.0f} s.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| requests (turns) | {r['requests']} ({r['streamed_requests']} streamed), {r['conversations']} conversations |",
        f"| achieved rate | {r['achieved_rate_per_s']} /s |",
        f"| errors | {r['errors']} |",
        f"| lost continuations | {r['lost_continuations']} |",
        f"| latency p50 / p99 / max | {r['latency_ms']['p50']} / {r['latency_ms']['p99']} / {r['latency_ms']['max']} ms |",
        f"| router RSS baseline -> end | {rr['baseline']} -> {rr['end']} MiB (growth {rr['growth']}, "
        f"allowed {rr['allowed_growth']}; trend {rr['slope_kib_per_min']} KiB/min; max {rr['max']}) |",
        f"| Envoy RSS baseline -> end | {er['baseline']} -> {er['end']} MiB (max {er['max']}) |",
        f"| affinity store max / capacity | {st['max_entries']} / {st['capacity']} (end {st['end_entries']}; "
        f"{st['ids_learned']} ids learned, at least {st['evicted_at_least']} evicted) |",
        "| checks | " + ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in r["checks"].items()) + " |",
        "",
        "| t (s) | turns | errors | router RSS (MiB) | Envoy RSS (MiB) | store entries |",
        "|---|---|---|---|---|---|",
    ]
    for x in r["samples"]:
        lines.append(f"| {x['t']:.0f} | {x['turns']} | {x['errors']} | {x['router_rss'] / MIB:.1f} | "
                     f"{x['envoy_rss'] / MIB:.1f} | {x['store_entries']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
