#!/usr/bin/env python3
"""End-to-end cost of the router per request, side by side with what users would otherwise run.

Run through `bench/e2e` (which builds and installs everything first). Everything listens on
127.0.0.1, on free ports, in one run:

  sims    two simulators serving `story-model` (the shipped `stories` cluster: story-a, story-b),
          plus the shipped `general` and `code` ones, all with zero artificial latency;
  (a)     Envoy alone: deploy/envoy.yaml without the router's filters, routed straight to the
          `stories` cluster (the same two simulators) -- the floor; explicit `model: story-model`;
  (b)     the shipped deploy/envoy.yaml + deploy/routing.yaml with the release router:
          `model: "auto"` Responses requests (classified to story-model -> `stories`) and
          continuations (`previous_response_id` of a response created through (b) first);
  (c)     the LiteLLM proxy with two deployments over the same two simulators and its
          `responses_api_deployment_check` (continuations stay on their deployment);
  (d)     the router inside Envoy (deploy/envoy-module.yaml with the release module): the same
          `model: "auto"` requests and continuations as (b).

The routers run the shipped routing.yaml with production's one difference (the production overlay's
`RESPONSES_ROUTER__EXPOSE_DECISION=false`): clients are not told the decision.

Per target: maximum throughput (oha at fixed concurrency), p50/p99 at fixed rates (oha -q with
latency correction), a latency-vs-offered-load sweep, and streaming time to first byte (httpx,
interleaved over the targets). Runs of a/b/c/d alternate so machine noise hits all alike. Writes
bench/results/e2e.{json,md} and bench/results/latency_vs_load.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack import (  # noqa: E402
    ENVOY_YAML, ROOT, SHIPPED_PORTS, Proc, bare_config, cpu_seconds, free_ports, gateway_env, http_status,
    render_gateway, rss_bytes, start_envoy, start_router, start_simulator, wait_http,
)

RESULTS = ROOT / "bench" / "results"
DOCS_PNG = ROOT / "docs" / "latency_vs_load.png"

# A text the shipped routing.yaml classifies as `creative` -> story-model -> cluster `stories`.
NEW_TEXT = "Write a short story about a lighthouse keeper and a storm."
CONT_TEXT = "Continue the story: what does the keeper find on the beach the next morning?"
MODEL = "story-model"

# Both routers, as the production overlay runs them: warnings only, no decision headers for clients.
ROUTER_ENV = {**os.environ, "RESPONSES_ROUTER_LOG": "warn", "RESPONSES_ROUTER__EXPOSE_DECISION": "false"}

# Offered loads of the latency sweep (req/s); a target stops once it cannot keep up.
SWEEP_FAST = [25, 100, 200, 500, 1000, 2000, 4000, 8000]
SWEEP_SLOW = [5, 10, 25, 50, 100, 200]

TARGETS = {
    "a": "Envoy -> simulator (no router)",
    "b-new": "Envoy + router, model auto, new",
    "b-cont": "Envoy + router, model auto, continuation",
    "c-new": "LiteLLM, new",
    "c-cont": "LiteLLM, continuation",
    "d-new": "Envoy + router module, model auto, new",
    "d-cont": "Envoy + router module, model auto, continuation",
}

# Targets (issues 7 and 13): ratios measured in one run.
TARGET_THROUGHPUT_VS_ENVOY = 0.80
TARGET_ADDED_P50_MS = 0.3
TARGET_ADDED_P99_MS = 1.5
TARGET_VS_LITELLM = 10.0
# The in-process form (d): near Envoy's own figures.
TARGET_MODULE_THROUGHPUT_VS_ENVOY = 0.85
TARGET_MODULE_ADDED_P50_MS = 0.1
TARGET_MODULE_ADDED_P99_MS = 0.3
TARGET_MODULE_ADDED_TTFB_MS = 0.1


@dataclass
class Profile:
    throughput_s: float
    throughput_rounds: int
    fixed_s: float
    fixed_rounds: int
    sweep_s: float
    sweep_fast: list[int]
    sweep_slow: list[int]
    ttfb_requests: int
    warmup_s: float


FULL = Profile(throughput_s=8, throughput_rounds=2, fixed_s=12, fixed_rounds=2, sweep_s=6,
               sweep_fast=SWEEP_FAST, sweep_slow=SWEEP_SLOW, ttfb_requests=100, warmup_s=2)
QUICK = Profile(throughput_s=2, throughput_rounds=1, fixed_s=2, fixed_rounds=1, sweep_s=1.5,
                sweep_fast=[25, 200, 1000, 4000], sweep_slow=[10, 50, 200], ttfb_requests=10, warmup_s=0.5)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, work: Path):
        self.args = args
        self.work = work
        self.oha = args.oha
        self.procs: list[Proc] = []
        self.urls: dict[str, str] = {}  # target -> /v1/responses URL
        self.bodies: dict[str, Path] = {}  # target -> request body file for oha
        self.proxies: dict[str, list[tuple[str, Proc]]] = {}  # target family -> its proxy processes
        self.runs: list[dict] = []
        self.memory: list[dict] = []

    # ---- processes ---------------------------------------------------------------------------

    def start(self) -> None:
        a, binary, work = self.args, self.args.router_bin, self.work
        ports = dict(zip(SHIPPED_PORTS, free_ports(len(SHIPPED_PORTS))))
        sims = {"general": "general-model", "code": "code-model", "story-a": MODEL, "story-b": MODEL}
        # Room for every response the run creates, so a continuation's anchor is never evicted.
        store = ["--max-stored", "2000000", "--max-store-mib", "2048"]
        for key, model in sims.items():
            proc = start_simulator(binary, f"sim-{key}", ports[key], model, work, store)
            self.procs.append(proc)
        for key in sims:
            wait_http(self.procs[list(sims).index(key)], ports[key], "/v1/models", "HTTP answer")
        self.sim_ports = [ports["story-a"], ports["story-b"]]

        # (b) the shipped stack; (a) the bare Envoy on the same simulators (its own listener/admin).
        router_admin, = free_ports(1)
        self.router_admin = router_admin
        router = start_router(binary, ports["router"], router_admin, work, env=ROUTER_ENV)
        self.procs.append(router)
        shipped = ENVOY_YAML.read_text()
        env_b = start_envoy(a.envoy, "envoy-b", shipped, ports, work, a.envoy_concurrency)
        self.procs.append(env_b)
        ports_a = {**ports, **dict(zip(("listener", "admin", "router"), free_ports(3)))}
        env_a = start_envoy(a.envoy, "envoy-a", bare_config(shipped, "stories"), ports_a, work,
                            a.envoy_concurrency)
        self.procs.append(env_a)
        self.urls["a"] = f"http://127.0.0.1:{ports_a['listener']}/v1/responses"
        self.urls["b-new"] = self.urls["b-cont"] = f"http://127.0.0.1:{ports['listener']}/v1/responses"
        self.proxies["a"] = [("envoy-a", env_a)]
        self.proxies["b"] = [("envoy-b", env_b), ("router", router)]

        # (d) the module inside Envoy, on the same simulators (its own listener/admin).
        ports_d = {**ports, **dict(zip(("listener", "admin"), free_ports(2)))}
        env_d = start_envoy(a.envoy, "envoy-d", render_gateway("module", ports_d), ports_d, work,
                            a.envoy_concurrency, rendered=True, env=gateway_env("module", binary, ROUTER_ENV))
        self.procs.append(env_d)
        self.urls["d-new"] = self.urls["d-cont"] = f"http://127.0.0.1:{ports_d['listener']}/v1/responses"
        self.proxies["d"] = [("envoy-d", env_d)]

        if not a.no_litellm:
            self.start_litellm()

    def start_litellm(self) -> None:
        port, = free_ports(1)
        cfg = self.work / "litellm.yaml"
        deployments = "".join(
            f"  - model_name: {MODEL}\n"
            f"    litellm_params: {{model: openai/{MODEL}, api_base: 'http://127.0.0.1:{p}/v1', api_key: sk-x}}\n"
            for p in self.sim_ports)
        cfg.write_text("model_list:\n" + deployments +
                       "router_settings:\n  optional_pre_call_checks: [responses_api_deployment_check]\n")
        # No remote cost map; no master key (the lightest request path LiteLLM has, loopback only).
        env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True",
               "LITELLM_DANGEROUSLY_PERMIT_WEAK_OR_UNSET_MASTER_KEY": "true"}
        log(f"starting LiteLLM ({self.args.litellm_workers} worker(s)); it takes ~10-20 s")
        proc = Proc("litellm", [self.args.litellm, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port),
                                "--num_workers", str(self.args.litellm_workers)], self.work / "litellm.log", env=env)
        self.procs.append(proc)
        proc.wait_until(lambda: http_status(port, "/health/liveliness") == 200, 180, "/health/liveliness")
        self.urls["c-new"] = self.urls["c-cont"] = f"http://127.0.0.1:{port}/v1/responses"
        self.proxies["c"] = [("litellm", proc)]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    # ---- request bodies -------------------------------------------------------------------------

    def prepare_bodies(self) -> None:
        """Writes one body file per target; a continuation continues a response created through
        that same target (so the id is one the router or LiteLLM has seen and learned)."""
        new = {"a": MODEL, "b-new": "auto", "c-new": MODEL, "d-new": "auto"}
        for target, model in new.items():
            if target in self.urls:
                self.write_body(target, {"model": model, "input": NEW_TEXT})
        for target, model in (("b-cont", "auto"), ("c-cont", MODEL), ("d-cont", "auto")):
            if target in self.urls:
                self.refresh_continuation(target, model)

    def write_body(self, target: str, body: dict) -> None:
        path = self.work / f"body-{target}.json"
        path.write_text(json.dumps(body))
        self.bodies[target] = path

    def refresh_continuation(self, target: str, model: str) -> None:
        """A fresh anchor response for each continuation run, created through the target itself."""
        r = httpx.post(self.urls[target], json={"model": model, "input": NEW_TEXT}, timeout=30)
        r.raise_for_status()
        rid = r.json()["id"]
        body = {"model": model, "input": CONT_TEXT, "previous_response_id": rid}
        check = httpx.post(self.urls[target], json=body, timeout=30)
        if check.status_code != 200:
            raise RuntimeError(f"{target}: continuation of {rid} answered {check.status_code}: {check.text[:300]}")
        self.write_body(target, body)

    # ---- measurements ---------------------------------------------------------------------------

    def proxy_cpu(self, target: str) -> dict[str, float]:
        return {name: cpu_seconds(p.popen.pid) for name, p in self.proxies[target[0]]}

    def settle(self, target: str, limit_s: float = 10.0) -> None:
        """Waits until `target`'s proxies are idle (under 10% of a core over 0.2 s), so that work a
        proxy still does after its run (LiteLLM's background tasks after a burst) is not charged
        to the target measured next on the same cores."""
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = sum(self.proxy_cpu(target).values())
            time.sleep(0.2)
            if sum(self.proxy_cpu(target).values()) - before < 0.02:
                return

    def oha_run(self, target: str, kind: str, duration: float, concurrency: int, rate: float | None = None) -> dict:
        if target.endswith("-cont") and kind != "warmup":
            self.refresh_continuation(target, MODEL if target.startswith("c") else "auto")
        argv = [self.oha, "--no-tui", "--output-format", "json", "-z", f"{duration}s", "-c", str(concurrency),
                "-m", "POST", "-H", "content-type: application/json", "-D", str(self.bodies[target]),
                "--wait-ongoing-requests-after-deadline"]
        if rate:
            # Latency from the scheduled send time, so a stalled proxy cannot hide its queueing.
            argv += ["-q", str(rate), "--latency-correction"]
        argv.append(self.urls[target])
        cpu0 = self.proxy_cpu(target)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120)
        cpu1 = self.proxy_cpu(target)
        self.settle(target)
        if out.returncode != 0:
            raise RuntimeError(f"oha failed ({out.returncode}): {out.stderr[-2000:]}")
        data = json.loads(out.stdout)
        s, pct = data["summary"], data["latencyPercentiles"]
        codes = {str(k): v for k, v in (data.get("statusCodeDistribution") or {}).items()}
        ok = codes.get("200", 0)
        errors = sum(v for k, v in codes.items() if k != "200") + sum((data.get("errorDistribution") or {}).values())
        run = {
            "target": target, "kind": kind, "duration_s": duration, "concurrency": concurrency, "rate": rate,
            "requests_ok": ok, "errors": errors, "status_codes": codes,
            "error_kinds": data.get("errorDistribution") or {},
            # Successful requests over the whole run (oha's own figure counts failures too).
            "rps": ok / (s.get("total") or duration),
            "rps_oha": s.get("requestsPerSec"),
            "p50_ms": (pct.get("p50") or 0) * 1000, "p90_ms": (pct.get("p90") or 0) * 1000,
            "p99_ms": (pct.get("p99") or 0) * 1000,
            "proxy_cpu_us_per_req": {k: (cpu1[k] - cpu0[k]) / ok * 1e6 if ok else None for k in cpu0},
        }
        if kind != "warmup":
            self.runs.append(run)
        return run

    def sample_memory(self, when: str) -> None:
        sample = {"when": when}
        for fam in self.proxies.values():
            for name, proc in fam:
                sample[name + "_rss_mib"] = rss_bytes(proc.popen.pid) / 2**20
        sample["router_affinity_entries"] = self.router_entries()
        self.memory.append(sample)

    def router_entries(self) -> int | None:
        """The router's affinity store size (its /readyz check refreshes the gauge)."""
        try:
            httpx.get(f"http://127.0.0.1:{self.router_admin}/readyz", timeout=5)
            text = httpx.get(f"http://127.0.0.1:{self.router_admin}/metrics", timeout=5).text
        except httpx.HTTPError:
            return None
        for line in text.splitlines():
            if line.startswith("responses_router_affinity_store_entries"):
                return int(float(line.split()[-1]))
        return None

    def ttfb(self, n: int) -> dict[str, list[float]]:
        """Time to first byte of `stream: true` Responses, interleaved over Envoy's targets."""
        bodies = {"a": {"model": MODEL}, "b-new": {"model": "auto"}, "c-new": {"model": MODEL},
                  "d-new": {"model": "auto"}}
        bodies = {t: {**b, "input": NEW_TEXT, "stream": True} for t, b in bodies.items() if t in self.urls}
        out: dict[str, list[float]] = {t: [] for t in bodies}
        # Envoy's targets interleaved; LiteLLM's after them, as its work after each answer would
        # otherwise land on whichever target comes next.
        groups = [[t for t in bodies if not t.startswith("c")], [t for t in bodies if t.startswith("c")]]
        with httpx.Client(timeout=60) as client:
            for i, group in ((i, g) for g in groups for i in range(n + 3)):  # three warm-ups each
                for t in group:
                    body = bodies[t]
                    start = time.perf_counter()
                    first = None
                    with client.stream("POST", self.urls[t], json=body) as r:
                        r.raise_for_status()
                        seen = b""
                        for chunk in r.iter_raw():
                            first = first if first is not None else (time.perf_counter() - start) * 1000
                            seen += chunk
                    if b"response.completed" not in seen:
                        raise RuntimeError(f"{t}: stream ended without response.completed")
                    if i >= 3:
                        out[t].append(first or 0.0)
        return out


def median_of(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run_all(b: Bench, prof: Profile) -> dict:
    targets = [t for t in TARGETS if t in b.urls]
    fast = [t for t in targets if not t.startswith("c")]

    log("warm-up")
    for t in targets:
        b.oha_run(t, "warmup", prof.warmup_s, 8)
    b.sample_memory("after warm-up")

    log("maximum throughput (fixed concurrency)")
    for rnd in range(prof.throughput_rounds):
        for c in (32, 8):
            for t in targets:
                r = b.oha_run(t, "throughput", prof.throughput_s, c)
                log(f"  round {rnd + 1} c={c:<3} {t:7} {r['rps']:9.1f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")
    b.sample_memory("after throughput")

    log("fixed rates")
    fixed_plan = [(200, fast), (b.args.slow_rate, targets)]
    for rnd in range(prof.fixed_rounds):
        for rate, ts in fixed_plan:
            for t in ts:
                r = b.oha_run(t, "fixed", prof.fixed_s, 32, rate)
                log(f"  round {rnd + 1} {rate:4} req/s {t:7} achieved {r['rps']:8.1f}  p50 {r['p50_ms']:7.2f} ms  "
                    f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")

    log("latency vs offered load")
    sweep_targets = [t for t in ("a", "b-new", "d-new", "c-new") if t in b.urls]
    saturated: set[str] = set()
    rates = sorted(set(prof.sweep_fast) | set(prof.sweep_slow))
    for rate in rates:
        for t in sweep_targets:
            plan = prof.sweep_slow if t.startswith("c") else prof.sweep_fast
            if t in saturated or rate not in plan:
                continue
            r = b.oha_run(t, "sweep", prof.sweep_s, 64 if rate >= 1000 else 32, rate)
            log(f"  {rate:5} req/s {t:7} achieved {r['rps']:8.1f}  p50 {r['p50_ms']:8.2f} ms  "
                f"p99 {r['p99_ms']:8.2f} ms  errors {r['errors']}")
            if r["rps"] < 0.9 * rate:  # it cannot keep up: higher rates only queue
                saturated.add(t)
    b.sample_memory("after sweep")

    log(f"streaming time to first byte ({prof.ttfb_requests} streams each, interleaved)")
    ttfb = b.ttfb(prof.ttfb_requests)
    b.sample_memory("end")
    return {"ttfb_ms": ttfb}


def summarize(b: Bench, extra: dict, args: argparse.Namespace) -> dict:
    runs = b.runs
    summary: dict[str, dict] = {}
    for t in TARGETS:
        tr = [r for r in runs if r["target"] == t]
        if not tr:
            continue
        s: dict = {"label": TARGETS[t]}
        for c in (32, 8):
            rr = [r for r in tr if r["kind"] == "throughput" and r["concurrency"] == c]
            if rr:
                cpu = {k: statistics.median(r["proxy_cpu_us_per_req"][k] for r in rr
                                            if r["proxy_cpu_us_per_req"][k] is not None)
                       for k in rr[0]["proxy_cpu_us_per_req"]}
                s[f"c{c}"] = {"rps": median_of(rr, "rps"), "p50_ms": median_of(rr, "p50_ms"),
                              "p99_ms": median_of(rr, "p99_ms"), "proxy_cpu_us_per_req": cpu}
        for rate in sorted({r["rate"] for r in tr if r["kind"] == "fixed"}):
            rr = [r for r in tr if r["kind"] == "fixed" and r["rate"] == rate]
            s[f"at_{rate}"] = {"achieved_rps": median_of(rr, "rps"), "p50_ms": median_of(rr, "p50_ms"),
                               "p99_ms": median_of(rr, "p99_ms")}
        s["errors"] = sum(r["errors"] for r in tr)
        if t in extra["ttfb_ms"]:
            v = extra["ttfb_ms"][t]
            s["ttfb_ms"] = {"p50": statistics.median(v), "p90": percentile(v, 90), "p99": percentile(v, 99), "n": len(v)}
        summary[t] = s

    def get(t: str, *keys: str):
        v = summary.get(t)
        for k in keys:
            if not isinstance(v, dict) or k not in v:
                return None
            v = v[k]
        return v

    ratios: dict = {}
    targets: list[dict] = []
    for bt in ("b-new", "b-cont", "d-new", "d-cont"):
        for c in (32, 8):
            ra, rb = get("a", f"c{c}", "rps"), get(bt, f"c{c}", "rps")
            if ra and rb:
                ratios[f"{bt}/a throughput c={c}"] = rb / ra
        for q in ("p50", "p99"):
            va, vb = get("a", "at_200", f"{q}_ms"), get(bt, "at_200", f"{q}_ms")
            if va is not None and vb is not None:
                ratios[f"{bt} - a added {q} ms at 200 req/s"] = vb - va
        cfam = "c-" + bt.split("-")[1]
        for c in (32, 8):
            rc, rb = get(cfam, f"c{c}", "rps"), get(bt, f"c{c}", "rps")
            if rc and rb:
                ratios[f"{bt}/{cfam} throughput c={c}"] = rb / rc
        va, vb = get("a", "ttfb_ms", "p50"), get(bt, "ttfb_ms", "p50")
        if va is not None and vb is not None:
            ratios[f"{bt} - a added TTFB p50 ms"] = vb - va

    def check(name: str, value, goal: str, ok) -> None:
        targets.append({"target": name, "value": value, "goal": goal,
                        "status": "n/a" if value is None else ("met" if ok(value) else "missed")})

    for dt in ("d-new", "d-cont"):
        check(f"{dt} throughput >= 85% of (a), c=32", ratios.get(f"{dt}/a throughput c=32"),
              ">= 0.85", lambda v: v >= TARGET_MODULE_THROUGHPUT_VS_ENVOY)
        check(f"{dt} added p50 at 200 req/s", ratios.get(f"{dt} - a added p50 ms at 200 req/s"),
              "<= 0.1 ms", lambda v: v <= TARGET_MODULE_ADDED_P50_MS)
        check(f"{dt} added p99 at 200 req/s", ratios.get(f"{dt} - a added p99 ms at 200 req/s"),
              "<= 0.3 ms", lambda v: v <= TARGET_MODULE_ADDED_P99_MS)
    check("d-new added TTFB p50", ratios.get("d-new - a added TTFB p50 ms"), "<= 0.1 ms",
          lambda v: v <= TARGET_MODULE_ADDED_TTFB_MS)
    for bt in ("b-new", "b-cont"):
        check(f"{bt} throughput >= 80% of (a), c=32", ratios.get(f"{bt}/a throughput c=32"),
              ">= 0.80", lambda v: v >= TARGET_THROUGHPUT_VS_ENVOY)
        check(f"{bt} added p50 at 200 req/s", ratios.get(f"{bt} - a added p50 ms at 200 req/s"),
              "<= 0.3 ms", lambda v: v <= TARGET_ADDED_P50_MS)
        check(f"{bt} added p99 at 200 req/s", ratios.get(f"{bt} - a added p99 ms at 200 req/s"),
              "<= 1.5 ms", lambda v: v <= TARGET_ADDED_P99_MS)
        cfam = "c-" + bt.split("-")[1]
        check(f"{bt} throughput >= 10x ({cfam}), c=32", ratios.get(f"{bt}/{cfam} throughput c=32"),
              ">= 10x", lambda v: v >= TARGET_VS_LITELLM)
    mem = memory_check(b.memory)
    targets.append(mem)
    return {"summary": summary, "ratios": ratios, "targets": targets}


def memory_check(samples: list[dict]) -> dict:
    """Router memory is 'flat' when its RSS grows by no more than the affinity ids it learned
    explain: the store is bounded (routing.yaml `affinity.capacity`), so growth per learned id
    is what multiplies into the worst case. Allowed: 8 MiB of allocator slack plus 1 KiB per id.
    (A leak hiding under that allowance would need a run with the store at capacity to show.)"""
    first, last = samples[0], samples[-1]
    r0, r1 = first.get("router_rss_mib"), last.get("router_rss_mib")
    e0, e1 = first.get("router_affinity_entries") or 0, last.get("router_affinity_entries") or 0
    if r0 is None or r1 is None:
        return {"target": "router memory flat", "value": None, "goal": "", "status": "n/a"}
    growth = (r1 - r0) * 2**20
    learned = max(0, e1 - e0)
    allowed = 8 * 2**20 + 1024 * learned
    per_id = growth / learned if learned else None
    return {"target": "router memory flat (RSS growth beyond learned affinity ids)",
            "value": {"rss_start_mib": r0, "rss_end_mib": r1, "ids_learned": learned,
                      "bytes_per_learned_id": per_id},
            "goal": "growth <= 8 MiB + 1 KiB per learned id (store bounded by affinity.capacity)",
            "status": "met" if growth <= allowed else "missed"}


def fmt(v, spec: str = ".2f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(report: dict) -> str:
    s, m, p = report["summary"], report["machine"], report["params"]
    lines = [
        f"# End-to-end benchmark ({report['mode']} run, {report['finished_utc']})", "",
        f"Machine: {m['cpu']}, {m['nproc']} cores, {m['mem_gib']:.0f} GiB; {m['os']}. "
        f"Envoy {m['envoy']} (--concurrency {p['envoy_concurrency']}), oha {m['oha']}, LiteLLM {m['litellm']} "
        f"({p['litellm_workers']} worker), {m['rustc']}. Load generator, simulators and proxies share the cores; "
        f"1-minute load average {m['loadavg_start'][0]:.1f} at the start, {m['loadavg_end'][0]:.1f} at the end.",
        "",
        "Max throughput: oha at fixed concurrency (median of rounds). Fixed rates: oha -q with latency "
        "correction. TTFB: `stream: true`, first body byte, httpx, interleaved.",
        "",
        "| target | req/s c=32 (p50/p99 ms) | req/s c=8 (p50/p99 ms) | at 200 req/s p50 / p99 ms "
        f"| at {p['slow_rate']} req/s p50 / p99 ms | TTFB p50 / p90 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, v in s.items():
        def tp(c):
            x = v.get(f"c{c}")
            return "–" if not x else f"{x['rps']:,.0f} ({x['p50_ms']:.2f} / {x['p99_ms']:.2f})"

        def fx(rate):
            x = v.get(f"at_{rate}")
            if not x:
                return "–"
            note = "" if x["achieved_rps"] >= 0.95 * rate else f" (only {x['achieved_rps']:.0f} req/s)"
            return f"{x['p50_ms']:.2f} / {x['p99_ms']:.2f}{note}"
        tt = v.get("ttfb_ms")
        ttfb = "–" if not tt else f"{tt['p50']:.2f} / {tt['p90']:.2f}"
        lines.append(f"| ({t}) {v['label']} | {tp(32)} | {tp(8)} | {fx(200)} | {fx(p['slow_rate'])} | "
                     f"{ttfb} | {v['errors']} |")
    lines += ["", "Proxy CPU per request at c=32 (µs, from /proc):", ""]
    for t, v in s.items():
        if v.get("c32"):
            cpu = ", ".join(f"{k} {fmt(x, '.0f')}" for k, x in v["c32"]["proxy_cpu_us_per_req"].items())
            lines.append(f"- ({t}): {cpu}")
    lines += ["", "Ratios:", ""]
    for k, v in report["ratios"].items():
        lines.append(f"- {k}: {v:.3f}" if "ms" in k else f"- {k}: {v:.2f}")
    lines += ["", "| target | value | goal | status |", "|---|---|---|---|"]
    for t in report["targets"]:
        val = t["value"]
        if isinstance(val, dict):
            val = (f"RSS {val['rss_start_mib']:.1f} -> {val['rss_end_mib']:.1f} MiB, {val['ids_learned']:,} ids learned"
                   + ("" if val["bytes_per_learned_id"] is None else f", {val['bytes_per_learned_id']:.0f} B/id"))
        elif isinstance(val, float):
            val = f"{val:.3f}"
        lines.append(f"| {t['target']} | {val if val is not None else '–'} | {t['goal']} | **{t['status']}** |")
    lines += ["", "Memory (RSS MiB) through the run:", "",
              "| when | " + " | ".join(k for k in report["memory"][0] if k != "when") + " |",
              "|---" * len(report["memory"][0]) + "|"]
    for sm in report["memory"]:
        lines.append(f"| {sm['when']} | " + " | ".join(
            fmt(v, ".1f") if isinstance(v, float) else str(v) for k, v in sm.items() if k != "when") + " |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in report["runs"] if r["kind"] == "sweep"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    style = {"a": ("(a) Envoy alone", "tab:gray", "o"), "b-new": ("(b) Envoy + router (model auto)", "tab:blue", "s"),
             "d-new": ("(d) Envoy + router module (model auto)", "tab:green", "D"),
             "c-new": ("(c) LiteLLM", "tab:red", "^")}
    for ax, q in zip(axes, ("p50", "p99")):
        for t, (label, color, marker) in style.items():
            rr = sorted((r for r in runs if r["target"] == t), key=lambda r: r["rate"])
            if not rr:
                continue
            ax.plot([r["rate"] for r in rr], [max(r[f"{q}_ms"], 1e-3) for r in rr], marker=marker, color=color,
                    label=label)
            for r in rr:
                if r["rps"] < 0.9 * r["rate"]:
                    ax.annotate(f"saturated\n({r['rps']:.0f} req/s)", (r["rate"], r[f"{q}_ms"]), fontsize=8,
                                color=color, textcoords="offset points", xytext=(-10, -4), ha="right", va="top")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered load (req/s, log)")
        ax.set_title(f"{q} latency vs offered load")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("latency (ms, log)")
    axes[1].legend(loc="lower right", fontsize=9)
    m = report["machine"]
    fig.suptitle(f"Responses POST, all on loopback, {m['nproc']} cores shared ({report['finished_utc']})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine(args: argparse.Namespace) -> dict:
    def cmd(*argv: str) -> str:
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return "?"
    cpu = next((ln.split(":", 1)[1].strip() for ln in cmd("lscpu").splitlines() if ln.startswith("Model name")), "?")
    mem = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), 0)
    envoy = cmd(args.envoy, "--version")
    envoy = envoy.split("version:")[-1].strip().split("/")[1] if "/" in envoy else envoy
    litellm = "not run"
    if not args.no_litellm:
        litellm = cmd(str(Path(args.litellm).parent / "python"), "-c",
                      "from importlib.metadata import version; print(version('litellm'))")
    return {"cpu": cpu, "nproc": os.cpu_count(), "mem_gib": mem / 2**20, "os": platform.platform(),
            "kernel": platform.release(), "envoy": envoy, "oha": cmd(args.oha, "--version").removeprefix("oha "), "litellm": litellm,
            "rustc": cmd("rustc", "--version"), "router_bin": args.router_bin,
            "loadavg_start": os.getloadavg()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (development / smoke test)")
    ap.add_argument("--router-bin", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--oha", required=True)
    ap.add_argument("--litellm", help="the litellm executable")
    ap.add_argument("--no-litellm", action="store_true", help="skip target (c)")
    ap.add_argument("--envoy-concurrency", type=int, default=1, help="Envoy worker threads for (a), (b) and (d)")
    ap.add_argument("--litellm-workers", type=int, default=1)
    ap.add_argument("--slow-rate", type=int, default=25, help="the fixed rate all targets (LiteLLM too) can hold")
    ap.add_argument("--update-docs", action="store_true", help=f"also copy the plot to {DOCS_PNG.relative_to(ROOT)}")
    args = ap.parse_args()
    if not args.no_litellm and not args.litellm:
        ap.error("--litellm is required unless --no-litellm")
    prof = QUICK if args.quick else FULL

    work = Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    log(f"logs and configs in {work}")
    b = Bench(args, work)
    started = time.time()
    info = machine(args)
    try:
        b.start()
        log("all processes up: " + ", ".join(f"{t} {u}" for t, u in b.urls.items()))
        b.prepare_bodies()
        extra = run_all(b, prof)
    except Exception:
        for proc in b.procs:
            if not proc.alive():
                print(f"--- {proc.name} exited ({proc.popen.returncode}) ---\n{proc.tail(40)}", file=sys.stderr)
        raise
    finally:
        b.stop()
    report = {
        "mode": "quick" if args.quick else "full",
        "finished_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "wall_s": time.time() - started,
        "machine": {**info, "loadavg_end": os.getloadavg()},
        "params": {"envoy_concurrency": args.envoy_concurrency, "litellm_workers": args.litellm_workers,
                   "slow_rate": args.slow_rate, "profile": prof.__dict__,
                   "bodies": {t: json.loads(p.read_text()) for t, p in b.bodies.items()}},
        **summarize(b, extra, args),
        "memory": b.memory,
        "ttfb_ms_raw": extra["ttfb_ms"],
        "runs": b.runs,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e.json").write_text(json.dumps(report, indent=2) + "\n")
    md = markdown(report)
    (RESULTS / "e2e.md").write_text(md)
    plot(report, RESULTS / "latency_vs_load.png")
    if args.update_docs:
        DOCS_PNG.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(RESULTS / "latency_vs_load.png", DOCS_PNG)
    print()
    print(md)
    log(f"done in {report['wall_s']:.0f} s: bench/results/e2e.md, e2e.json, latency_vs_load.png")
    errors = sum(r["errors"] for r in b.runs)
    if errors:
        print(f"e2e: {errors} failed requests in total (see status_codes / error_kinds in e2e.json)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
