"""A self-contained stack that fault tests and the soak script may kill pieces of, plus a load
generator of multi-turn conversations.

The session-scoped `stack` fixture (conftest.py) is shared by every other test, so nothing there
may be killed. A `Fleet` is private to its user: 4 simulators (as conftest starts them), one or
more router + Envoy pairs (the shipped deploy/envoy.yaml and deploy/routing.yaml, ports rewritten),
and optionally a Redis the routers share: one redis-server (with an append-only file when asked,
so a restart keeps its data), or a 6-node Redis Cluster made by tests/support/redis/cluster.sh.
Every process can be SIGKILLed and restarted on the same port, as a crash and a supervisor restart
would do.

`Load` runs conversations from several client threads, mixing JSON and streamed turns and moving
between prompt categories, and records every turn's outcome with timestamps, so a test can say
exactly which turns failed, when, how, and on which backend their state lived.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai

from helpers import CONVERSATION_PROMPTS as PROMPTS, SIMULATOR_OUTPUT as OUTPUT
from procs import (
    ROUTING_YAML, SIMULATORS, STARTUP_TIMEOUT, Proc, ensure_models, free_ports, gateway_env, http_status,
    render_gateway, simulator_argv, simulator_binary, tcp_open,
)

CLUSTER_SH = Path(__file__).resolve().parents[1] / "support" / "redis" / "cluster.sh"



class Fleet:
    """Simulators, `replicas` router+Envoy pairs and an optional shared Redis, on free ports. In the
    `module` form each replica is one Envoy with the router inside (no router process).

    `redis`: False, True (one redis-server; `redis_persist`: with an append-only file, so a
    restart keeps its data) or "cluster" (3 masters + 3 replicas). `redis_latency` (one
    redis-server): replica -> seconds every command of that replica takes to reach Redis (through
    a `LatencyProxy`), a slow network path from one gateway.
    """

    def __init__(self, workdir: Path, router_bin: str, envoy_bin: str, *, replicas: int = 1,
                 redis: bool | str = False, redis_persist: bool = False,
                 redis_latency: dict[int, float] | None = None,
                 router_env: dict[str, str] | None = None, routing_yaml: Path = ROUTING_YAML,
                 form: str = "ext_proc"):
        if form == "module" and routing_yaml != ROUTING_YAML:
            raise ValueError("the module form reads the shipped routing YAML (deploy/envoy-module.yaml)")
        self.form = form
        ensure_models()  # the routing YAML names an embedding model
        self.workdir = workdir
        self.router_bin = router_bin
        self.envoy_bin = envoy_bin
        self.routing_yaml = routing_yaml
        self.procs: dict[str, Proc] = {}
        self.all_procs: list[Proc] = []  # every process ever started, for logs and cleanup
        self.sim_ports = dict(zip(SIMULATORS, free_ports(len(SIMULATORS))))
        self.cluster = redis == "cluster"
        self.redis_port = free_ports(1)[0] if redis and not self.cluster else None
        self.redis_persist = redis_persist
        self.redis_dir = workdir / "redis-data"
        self.cluster_ports: list[int] = []
        self.env = {**os.environ, "RUST_BACKTRACE": "1", **(router_env or {})}
        if self.redis_port:
            self.env["RESPONSES_ROUTER__AFFINITY__REDIS_URL"] = f"redis://127.0.0.1:{self.redis_port}/"
        self.redis_latency = redis_latency or {}
        if self.redis_latency and not self.redis_port:
            raise ValueError("redis_latency needs one redis-server (redis=True)")
        self.proxies: list[LatencyProxy] = []
        self.replica_env: dict[int, dict[str, str]] = {}
        self.replica_ports: list[dict[str, int]] = []
        for _ in range(replicas):
            listener, admin, router, router_admin = free_ports(4)
            self.replica_ports.append({"listener": listener, "admin": admin, "router": router,
                                       "router_admin": router_admin})

    # -- processes ------------------------------------------------------------------------------

    def _start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        generation = sum(1 for p in self.all_procs if p.name.split("#")[0] == name)
        log = self.workdir / (f"{name}.log" if not generation else f"{name}.{generation}.log")
        proc = Proc(name if not generation else f"{name}#{generation}", argv, log, env=env)
        self.all_procs.append(proc)
        self.procs[name] = proc
        return proc

    def start_sim(self, name: str) -> Proc:
        port = self.sim_ports[name]
        proc = self._start(name, simulator_argv(simulator_binary(self.router_bin), name, port,
                                                SIMULATORS[name][1]))
        proc.wait_until(lambda: http_status(port, "/v1/models") > 0, STARTUP_TIMEOUT, "HTTP answer")
        return proc

    def router_argv(self, i: int) -> list[str]:
        p = self.replica_ports[i]
        return [self.router_bin, "serve", "--config", str(self.routing_yaml),
                "--listen", f"127.0.0.1:{p['router']}", "--admin-listen", f"127.0.0.1:{p['router_admin']}"]

    def start_router(self, i: int = 0) -> Proc:
        """Starts router i and returns once its gRPC port accepts connections (ext_proc form)."""
        assert self.form == "ext_proc", "the module form has no router process"
        proc = self._start(f"router-{i}", self.router_argv(i), self.env_of(i))
        proc.wait_until(lambda: tcp_open(self.replica_ports[i]["router"]), STARTUP_TIMEOUT, "gRPC listener")
        return proc

    def env_of(self, i: int) -> dict[str, str]:
        """The environment of replica i's router."""
        return {**self.env, **self.replica_env.get(i, {})}

    def start_envoy(self, i: int = 0) -> Proc:
        p = self.replica_ports[i]
        ports = {"listener": p["listener"], "admin": p["admin"], "router": p["router"],
                 **{key: self.sim_ports[name] for name, (key, _) in SIMULATORS.items()}}
        config = self.workdir / f"envoy-{i}.yaml"
        config.write_text(render_gateway(self.form, ports))
        # In the module form the router is in Envoy: Envoy's environment is the router's.
        proc = self._start(f"envoy-{i}", [self.envoy_bin, "-c", str(config), "--disable-hot-restart",
                                          "--log-level", "warning"],
                           gateway_env(self.form, self.router_bin, self.env_of(i)))
        proc.wait_until(lambda: http_status(p["admin"], "/ready") == 200, STARTUP_TIMEOUT, "/ready == 200")
        proc.wait_until(lambda: tcp_open(p["listener"]), STARTUP_TIMEOUT, "listener")
        return proc

    def start_redis(self, fresh: bool = False) -> Proc:
        """Starts (or restarts) the redis-server; `fresh`: without the data a previous one kept."""
        assert self.redis_port
        if fresh:
            shutil.rmtree(self.redis_dir, ignore_errors=True)
        self.redis_dir.mkdir(exist_ok=True)
        # everysec, as the production overlay runs it: a SIGKILL loses at most the last second
        # of writes (`always` would fsync on the request path's 50 ms budget).
        persist = ["--appendonly", "yes", "--appendfsync", "everysec"] if self.redis_persist else ["--appendonly", "no"]
        proc = self._start("redis", ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                                     "--save", "", "--dir", str(self.redis_dir), *persist])
        proc.wait_until(lambda: tcp_open(self.redis_port), STARTUP_TIMEOUT, "redis port")
        return proc

    def cluster_script(self, *args: str) -> str:
        """Runs tests/support/redis/cluster.sh COMMAND DIR ARGS and returns its output."""
        command, *rest = args
        out = subprocess.run([str(CLUSTER_SH), command, str(self.workdir / "redis-cluster"), *rest],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"cluster.sh {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout.strip()

    def start_cluster(self) -> None:
        """A 6-node Redis Cluster (node-timeout 2 s); the routers get two of its nodes as seeds."""
        self.cluster_ports = [int(p) for p in self.cluster_script("up", "--node-timeout", "2000").split()]
        self.env.pop("RESPONSES_ROUTER__AFFINITY__REDIS_URL", None)
        self.env["RESPONSES_ROUTER__AFFINITY__REDIS__CLUSTER"] = "true"
        self.env["RESPONSES_ROUTER__AFFINITY__REDIS__NODES"] = ",".join(
            f"redis://127.0.0.1:{p}" for p in self.cluster_ports[:2])

    def start(self) -> "Fleet":
        if self.redis_port:
            self.start_redis()
        for i, delay in self.redis_latency.items():
            proxy = LatencyProxy(self.redis_port, delay)
            self.proxies.append(proxy)
            self.replica_env[i] = {"RESPONSES_ROUTER__AFFINITY__REDIS_URL": f"redis://127.0.0.1:{proxy.port}/"}
        if self.cluster:
            self.start_cluster()
        for name in SIMULATORS:
            self.start_sim(name)
        for i in range(len(self.replica_ports)):
            if self.form == "ext_proc":
                self.start_router(i)
            self.start_envoy(i)
        return self

    def kill(self, name: str) -> float:
        """SIGKILLs a process (no shutdown path runs, as in a crash); returns the time of the kill."""
        proc = self.procs[name]
        at = time.monotonic()
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait(timeout=10)
        return at

    def stop(self) -> None:
        for proc in reversed(self.all_procs):
            proc.stop()
        for proxy in self.proxies:
            proxy.close()
        if self.cluster_ports:
            self.cluster_script("down")
            self.cluster_ports = []

    def logs(self, lines: int = 60) -> str:
        return "\n".join(f"--- {p.name} ({p.log_path}) ---\n{p.tail(lines)}" for p in self.all_procs)

    # -- observation ----------------------------------------------------------------------------

    def base_url(self, i: int = 0) -> str:
        return f"http://127.0.0.1:{self.replica_ports[i]['listener']}/v1"

    def envoy_stats(self, i: int = 0) -> dict[str, int]:
        """Envoy's counters and gauges (admin /stats) as name -> value."""
        text = httpx.get(f"http://127.0.0.1:{self.replica_ports[i]['admin']}/stats", timeout=5).text
        stats = {}
        for line in text.splitlines():
            name, _, value = line.partition(": ")
            if value.strip().isdigit():
                stats[name] = int(value)
        return stats

    def upstream_requests(self, i: int = 0) -> dict[str, int]:
        """Requests Envoy i has sent to each model-server cluster so far."""
        stats = self.envoy_stats(i)
        return {c: stats.get(f"cluster.{c}.upstream_rq_total", 0) for c in ("general", "code", "stories")}

    def router_metrics(self, i: int = 0) -> dict[str, float]:
        """Router i's metrics as series -> value: its /metrics (classic text format), or in the
        module form Envoy i's /stats/prometheus, where the same series carry an `envoy_` prefix
        (removed here, as is the `{}` of a series without labels)."""
        if self.form == "ext_proc":
            url = f"http://127.0.0.1:{self.replica_ports[i]['router_admin']}/metrics"
        else:
            url = f"http://127.0.0.1:{self.replica_ports[i]['admin']}/stats/prometheus"
        text = httpx.get(url, timeout=5).text
        series = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                if self.form == "module":
                    if not name.startswith("envoy_responses_router_"):
                        continue
                    name = name.removeprefix("envoy_").removesuffix("{}")
                try:
                    series[name] = float(value)
                except ValueError:
                    pass
        return series


class LatencyProxy:
    """A TCP proxy to 127.0.0.1:`target` that hands on every byte sent toward the target `delay`
    seconds after it arrived (answers come back at once): the slow path from one gateway to a
    shared Redis, where a command takes `delay` to apply."""

    def __init__(self, target: int, delay: float):
        self.target, self.delay = target, delay
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            self._pipe(client, upstream, self.delay)
            self._pipe(upstream, client, 0.0)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, delay: float) -> None:
        """Hands on what `src` sends to `dst`, each piece `delay` seconds after it arrived."""
        late: queue.Queue[tuple[float, bytes]] = queue.Queue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                late.put((time.monotonic() + delay, data))
                if not data:
                    return

        def send() -> None:
            while True:
                at, data = late.get()
                time.sleep(max(0.0, at - time.monotonic()))
                try:
                    if not data:
                        dst.shutdown(socket.SHUT_WR)
                        return
                    dst.sendall(data)
                except OSError:
                    return

        for work in (read, send):
            threading.Thread(target=work, daemon=True).start()

    def close(self) -> None:
        try:
            self._server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread
        except OSError:
            pass
        self._server.close()
        for sock in self._sockets:
            sock.close()


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ---------------------------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------------------------


@dataclass
class Turn:
    """One request of a conversation and what came of it."""

    conversation: int
    turn: int  # 1-based position in the conversation
    start: float  # time.monotonic() when sent
    end: float
    stream: bool
    replica: int  # which router+Envoy pair it went through
    home: str | None  # instance holding the conversation's state before this turn (None: new)
    prompt: int  # index into PROMPTS
    instance: str | None = None  # instance that answered (success only)
    status: int | None = None  # HTTP status of a failure; None for a transport error
    code: object = None  # `error.code` of an OpenAI-style failure
    content_type: str = ""
    backend: str | None = None  # the simulator that sent a failure (x-simulator-instance), if any
    error: str | None = None  # None: success

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def lost(self) -> bool:
        """A continuation that reached a backend without its state: the simulator's 404 for an
        unknown previous_response_id, or (never expected) an answer from another instance or with
        a broken turn count."""
        return self.status == 404 or (self.error or "").startswith("wrong state")


@dataclass
class Conversation:
    index: int
    first_prompt: int
    home: str | None = None
    last_id: str | None = None
    turns_done: int = 0
    last_replica: int | None = None  # the replica that served the last successful turn


class Load:
    """`threads` client threads, each running conversations of `turns` turns back to back.

    Turns mix JSON and SSE (offset per conversation) and, with several base URLs, alternate
    between router replicas (or, `sticky`, each conversation keeps to one replica). `retry` (seconds): a failed turn is sent again, from the same
    previous response, until it succeeds or `retry` seconds have passed, as a client with retries
    would; with 0 the conversation is abandoned at its first failure. `rate`: total turns per
    second across threads (None: as fast as they go). `failover` (with `sticky`): a retry after
    the router was unavailable (Envoy's 500 `router_unavailable`, or no answer at all) goes to the
    next replica, as a load balancer in front of several gateways would send it; every turn first
    tries the conversation's own replica again.

    With `threads=0` nothing runs by itself: `new()` and `send()` drive conversations turn by turn
    on chosen replicas, and record the turns the same way.
    """

    def __init__(self, base_urls: list[str], *, threads: int = 6, turns: int = 6, retry: float = 0.0,
                 rate: float | None = None, pause: float = 0.0, timeout: float = 15.0,
                 sticky: bool = False, failover: bool = False, first_conversation: int = 0):
        self.base_urls = base_urls
        self.sticky = sticky
        self.failover = failover
        self.threads = threads
        self.turns = turns
        self.retry = retry
        self.rate = rate
        self.pause = pause
        self.timeout = timeout
        self.results: list[Turn] = []
        self.conversations: list[Conversation] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next = first_conversation
        self._workers: list[threading.Thread] = []
        self._clients = [openai.OpenAI(base_url=u, api_key="fault-unused", max_retries=0, timeout=timeout)
                         for u in base_urls]
        self._tick = time.monotonic()

    def __enter__(self) -> "Load":
        for w in range(self.threads):
            t = threading.Thread(target=self._worker, name=f"load-{w}", daemon=True)
            t.start()
            self._workers.append(t)
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=self.timeout + 5)
        for c in self._clients:
            c.close()

    def snapshot(self) -> list[Turn]:
        with self._lock:
            return list(self.results)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"load: no {what} within {timeout:.0f}s")
            time.sleep(0.05)

    def _pace(self) -> None:
        """Spaces turns 1/rate apart across all threads (a shared schedule, no bursts)."""
        if self.rate is None:
            if self.pause:
                time.sleep(self.pause)
            return
        with self._lock:
            self._tick = max(self._tick + 1.0 / self.rate, time.monotonic() - 1.0)
            due = self._tick
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def _worker(self) -> None:
        while not self._stop.is_set():
            with self._lock:
                conv = Conversation(self._next, self._next % len(PROMPTS))
                self._next += 1
                self.conversations.append(conv)
            while conv.turns_done < self.turns and not self._stop.is_set():
                first_try = time.monotonic()
                attempt = 0
                while True:
                    self._pace()
                    if self._stop.is_set():
                        return
                    replica = None
                    if self.failover:
                        replica = (conv.index + attempt) % len(self._clients)
                    turn = self._send(conv, replica)
                    with self._lock:
                        self.results.append(turn)
                    if turn.status is None or turn.code == "router_unavailable":
                        attempt += 1
                    # A lost continuation is final: its state is not where the request went.
                    if turn.ok or turn.lost or self._stop.is_set() or time.monotonic() - first_try > self.retry:
                        break
                    time.sleep(0.05)
                if not turn.ok:
                    break

    def new(self) -> Conversation:
        """A new conversation, for `send()`."""
        with self._lock:
            conv = Conversation(self._next, self._next % len(PROMPTS))
            self._next += 1
            self.conversations.append(conv)
        return conv

    def send(self, conv: Conversation, replica: int) -> Turn:
        """Sends `conv`'s next turn through router replica `replica` and records it."""
        turn = self._send(conv, replica)
        with self._lock:
            self.results.append(turn)
        return turn

    def _send(self, conv: Conversation, replica: int | None = None) -> Turn:
        t = conv.turns_done
        if replica is None:
            replica = (conv.index if self.sticky else conv.index + t) % len(self._clients)
        # JSON, SSE, SSE, JSON, ...: with two replicas each one sees both kinds of turns.
        stream = (conv.index + t) % 4 in (1, 2)
        prompt = (conv.first_prompt + t) % len(PROMPTS)
        turn = Turn(conv.index, t + 1, time.monotonic(), 0.0, stream, replica, conv.home, prompt)
        kwargs = {"model": "auto", "input": PROMPTS[prompt]}
        if conv.last_id:
            kwargs["previous_response_id"] = conv.last_id
        client = self._clients[replica]
        try:
            if stream:
                final = None
                for event in client.responses.create(stream=True, **kwargs):
                    if event.type == "response.completed":
                        final = event.response
                if final is None:
                    raise ValueError("stream ended without response.completed")
                response = final
            else:
                response = client.responses.create(**kwargs)
            match = OUTPUT.match(response.output_text)
            if not match:
                raise ValueError(f"unexpected output {response.output_text[:80]!r}")
            turn.instance = match["instance"]
            if int(match["turn"]) != t + 1 or (conv.home and match["instance"] != conv.home):
                turn.error = (f"wrong state: turn {t + 1} answered by {match['instance']} as turn "
                              f"{match['turn']}, state on {conv.home}")
            else:
                conv.home = conv.home or match["instance"]
                conv.last_id = response.id
                conv.turns_done += 1
                conv.last_replica = replica
        except openai.APIStatusError as e:
            turn.status = e.status_code
            turn.content_type = e.response.headers.get("content-type", "")
            turn.backend = e.response.headers.get("x-simulator-instance")
            turn.code = e.code
            turn.error = f"{e.status_code} {e.code}: {e.message[:200]}"
            try:
                body = json.loads(e.response.content)
                turn.code = body["error"]["code"]
            except (ValueError, KeyError, TypeError):
                pass
        except (openai.APIError, httpx.HTTPError, ValueError) as e:
            turn.error = f"{type(e).__name__}: {e}"[:300]
        turn.end = time.monotonic()
        return turn
