"""The local multi-region run: one supervisor process that owns everything it starts.

1. a real moto server (the embedded AWS);
2. the Pulumi program rendered under mocks and applied to it (meridian_local.applier);
3. one uvicorn process per region running the service with exactly the environment its ECS task
   definition declares (secrets resolved from the embedded Secrets Manager), plus the AWS endpoint,
   the emulated network's URLs for peers, and the scaled probe interval;
4. the replication emulator and the edge, in this process; for strong tables whose zone forms an MRSC set,
   the MRSC emulator too (meridian_local.mrsc), which those regions' strong keys reach through
   ``MERIDIAN_STRONG_ENDPOINT_URL``; the edge's port also serves the control
   API (``/_meridian/...``) used by ``meridian local ...``, ``meridian down`` and game days, which needs
   the run's control secret (``state.json``, mode 0600); the region processes reach each other through
   ``/_link/<link secret>/...``, a secret only their environment holds.

Supervision: a region service that dies unasked is a *crash*: it is restarted after a backoff (0.5 s
doubling to 10 s, back to 0.5 s once it has served for 10 s) and counted (``restarts`` per region in the
status). A region failed on purpose (``fail``, a game day's region loss) is *failed*, never restarted
until healed. A normal stop is neither. If the embedded AWS dies, the run stays up and says so
(``aws.state`` in the status); the services answer 503 ``storage_unavailable``.

Run by ``meridian up --local``; stops everything it started on SIGTERM/SIGINT or ``POST /_meridian/shutdown``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from infra.render import Plan
from meridian.strong import STRONG_TABLES
from meridian_local import backend as backends
from meridian_local import moto_server
from meridian_local.applier import Applied, apply
from meridian_local.edge import Edge
from meridian_local.mrsc import MrscEmulator, mrsc_tables
from meridian_local.replicator import Replicator
from meridian_local.rollout import INITIAL, alarm_rules, release_problem
from meridian_local.state import write_state

#: Seconds a region's service (and the edge) keep an idle keep-alive connection: as services/Dockerfile, longer
#: than whoever reuses it keeps it (the edge's pool 30 s, as the ALB's idle timeout; clients' pools 5 s), so a
#: reused connection is never one the server is closing at that moment (a reset, a 502).
SERVICE_KEEP_ALIVE = 65

#: Restart backoff of a crashed region service: first wait, cap, and how long it must serve to reset.
BACKOFF_FIRST, BACKOFF_MAX, BACKOFF_RESET_AFTER = 0.5, 10.0, 10.0


class RegionProcess:
    """One region's service process. ``state``: starting | serving | crashed (waiting for its restart) |
    failed (stopped on purpose: a fault, never restarted until healed)."""

    def __init__(self, region: str, port: int, env: dict[str, str], log: Path) -> None:
        self.region, self.port, self.env, self.log = region, port, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"
        self.restarts = 0
        self.backoff = BACKOFF_FIRST
        self.restart_at: float | None = None  # monotonic time of the next restart of a crashed service
        self.serving_since: float | None = None
        self.last_exit: int | None = None
        self.crashes: list[dict[str, Any]] = []  # {at, exit}: every crash, never hidden

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "meridian.api.app:app_from_env", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning", "--timeout-keep-alive", str(SERVICE_KEEP_ALIVE)],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.state = "starting"

    def kill(self) -> None:
        """SIGKILL, as a region dies in a disaster."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """A normal stop: SIGTERM, then SIGKILL after 5 s."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "state": self.state, "pid": self.proc.pid if self.proc else None, "restarts": self.restarts,
                "last_exit": self.last_exit, "crashes": self.crashes[-5:],
                "restart_in": round(max(0.0, self.restart_at - time.monotonic()), 2) if self.state == "crashed" and self.restart_at else None}


class Supervisor:
    def __init__(self, plan: Plan, state_dir: Path, *, time_scale: float, latency_scale: float, lag: float, edge_port: int,
                 backend: str = "moto") -> None:
        self.plan = plan
        self.backend_name = backend
        self.backend: backends.Backend | None = None
        self.topology, self.state_dir = plan.topology, state_dir
        self.time_scale, self.latency_scale, self.lag = time_scale, latency_scale, lag
        self.edge_port = edge_port
        self.edge_url = f"http://127.0.0.1:{edge_port}"
        self.regions: dict[str, RegionProcess] = {}
        self.moto: subprocess.Popen[bytes] | None = None
        self.applied: Applied | None = None
        self.started = time.time()
        self.server: uvicorn.Server | None = None
        #: The control API's secret (state.json, mode 0600) and the inter-region link's (the regions' env only).
        self.control_secret, self.link_secret = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
        self.stopping = threading.Event()  # a normal stop: children exiting now are not crashes
        self.lock = threading.RLock()  # region process states: the watcher and the control API
        self.aws: dict[str, Any] = {"state": "starting"}
        self.hard_losses: list[dict[str, Any]] = []
        self.mrsc: MrscEmulator | None = None  # strong tables of an MRSC set, on a backend with a table per replica
        self.config_path: str | None = None  # the stack file, for commands that act on the running stack
        self.services_started, self.probe_interval = time.monotonic(), 0.0
        #: Releases (meridian_local.rollout): name -> the env it adds to the task definition's; each region's
        #: env without a release's, its current release and every release it ran (never empty).
        self.releases: dict[str, dict[str, str]] = {INITIAL: {}}
        self.base_env: dict[str, dict[str, str]] = {}
        self.release_of: dict[str, str] = {}
        self.release_history: dict[str, list[dict[str, Any]]] = {}
        self.release_lock = threading.Lock()  # one release swap at a time
        try:  # the rule of each region's 5xx-rate alarm, which a local rollout judges a wave by
            self.release_alarms = {r: rule.to_json() for r, rule in alarm_rules(
                plan.of_type("aws:cloudwatch/metricAlarm:MetricAlarm"), time_scale=time_scale).items()}
        except ValueError as exc:
            self.release_alarms = {}
            self.log(f"local rollouts unavailable: {exc}")

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def backend_client(self, service: str, region: str) -> Any:
        from meridian_local.applier import NO_RETRIES

        assert self.backend is not None
        return self.backend.client(service, region, NO_RETRIES)

    # -- bring-up --------------------------------------------------------------------------------------
    def bring_up(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.backend = backends.start(self.backend_name, self.state_dir)
        self.moto, endpoint = self.backend.proc, self.backend.endpoint
        self.log(f"AWS: {self.backend.describe()}")
        self.applied = apply(self.plan, endpoint, make_client=lambda service, region: self.backend_client(service, region))
        self.backend.replicas = backends.probe_replicas(self.backend, list(self.topology.regions), prefix=self.topology.stack)
        self.log(f"replication: {self.backend.replicas.replication} ({self.backend.replicas.detail})")
        created = sum(self.applied.created.values())
        self.log(f"applied the Pulumi program: {created} resources created, {sum(self.applied.skipped.values())} with no local meaning")
        for unsupported in self.applied.unsupported:
            self.log(f"{self.backend.describe() if self.backend else 'the AWS endpoint'} lacks: {unsupported}")
        interval = self.topology.routing.health_check_interval * self.time_scale
        self.mrsc = self._start_mrsc(endpoint)
        for region, runtime in self.applied.regions.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MERIDIAN_"))}
            env |= runtime.environment
            env |= self.backend.environment()
            env |= {
                "MERIDIAN_PEERS": json.dumps({r: f"{self.edge_url}/_link/{self.link_secret}/{region}/{r}" for r in self.topology.regions}),
                "MERIDIAN_PROBE_INTERVAL": f"{interval:.3f}",
                **self._strong_env(region),
            }
            self.base_env[region], self.release_of[region] = dict(env), INITIAL
            self.release_history[region] = [{"release": INITIAL, "at": time.time()}]
            self.regions[region] = RegionProcess(region, moto_server.free_port(), env, self.state_dir / f"service-{region}.log")
            self.regions[region].start()
        self.services_started = time.monotonic()
        self.probe_interval = interval
        # The MRSC tables are written to every reachable replica by the MRSC emulator, never asynchronously.
        self.replicator = Replicator(self.applied, self.topology, lag=self.lag,
                                     exclude=frozenset(self.mrsc.tables) if self.mrsc else frozenset())
        if not self.backend.replicas.shared:  # shared replicas: nothing to carry, the emulator stays off
            self.replicator.start()
        self.edge = Edge({r: p.url for r, p in self.regions.items()}, dials=self.applied.dials, health=self.applied.health,
                         time_scale=self.time_scale, latency_scale=self.latency_scale, default_client=self.topology.regions[0])
        self.edge.control_secret, self.edge.link_secret = self.control_secret, self.link_secret
        self.aws = {"state": "serving", "since": time.time()}

    def _start_mrsc(self, endpoint: str) -> MrscEmulator | None:
        """The MRSC emulator, if a strong table's zone forms an MRSC set and the backend keeps a table per
        replica (a backend that shares one table is linearizable by itself: nothing to emulate)."""
        tables = mrsc_tables(self.topology)
        replicas = self.backend.replicas if self.backend else None
        if not tables or replicas is None or replicas.shared:
            return None
        # self.edge exists before any region serves, hence before the first call reaches the emulator.
        emulator = MrscEmulator(tables, endpoint=endpoint, client=lambda region: self.backend_client("dynamodb", region),
                                linked=lambda a, b: self.edge.linked(a, b))
        emulator.start()
        self.log(f"MRSC (emulated) at {emulator.url}: {', '.join(sorted(tables))}")
        return emulator

    def _strong_env(self, region: str) -> dict[str, str]:
        """The strong keys' mechanism in ``region``: MRSC through the emulator where one of its zones' strong
        tables is an MRSC set, else one owner region per key (meridian.strong; docs/consistency.md)."""
        if self.mrsc is None or not any(region in t.replicas for t in self.mrsc.tables.values()):
            return {"MERIDIAN_MRSC": "0"}
        return {"MERIDIAN_MRSC": "1", "MERIDIAN_STRONG_ENDPOINT_URL": self.mrsc.url}

    def strong_tables(self) -> dict[str, str]:
        """Logical strong table -> how the run keeps it strong: ``mrsc`` (emulated) or ``owner`` (region per key)."""
        emulated = set(self.mrsc.tables) if self.mrsc else set()
        return {name: "mrsc" if any(self.topology.table_name(name, z.name) in emulated
                                    for z in self.topology.table_zones(self.topology.table(name))) else "owner"
                for name in STRONG_TABLES}

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.regions)
        while pending and time.monotonic() < deadline:
            for region in list(pending):
                proc = self.regions[region]
                if proc.proc and proc.proc.poll() is not None:
                    raise RuntimeError(f"{region} service exited at start; see {proc.log}")
                if self._ready(proc, timeout=1.0):
                    proc.state, proc.serving_since = "serving", time.monotonic()
                    pending.discard(region)
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"services not ready after {timeout:.0f} s: {sorted(pending)}")

    @staticmethod
    def _ready(proc: RegionProcess, timeout: float = 0.5) -> bool:
        try:
            return httpx.get(proc.url + "/health/ready", timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def watch(self, step: float = 0.25) -> None:
        """A child that dies unasked is reported as crashed and restarted with backoff, never hidden; so
        is every gap the replication emulator finds in a stream (``replication.gaps`` and ``gap_events``)."""
        gaps_logged = 0
        while not self.stopping.wait(step):
            for gap in self.replicator.gaps[gaps_logged:]:
                self.log(f"replication GAP in {gap.table}@{gap.region} ({gap.kind}): {gap.detail}; resyncing the table from its replicas")
            gaps_logged = len(self.replicator.gaps)
            for region in self.regions:
                self.supervise(region)
            self.watch_aws()

    def watch_aws(self) -> None:
        """The embedded moto server exiting is final (its data is gone); a user's LocalStack that stops
        answering is ``unreachable`` until it answers again."""
        if self.backend is None or self.aws["state"] not in ("serving", "unreachable"):
            return
        alive = self.backend.alive()
        if self.aws["state"] == "unreachable" and alive:
            self.aws = {"state": "serving", "since": time.time()}
            self.log(f"AWS ({self.backend.describe()}) answers again")
        elif self.aws["state"] == "serving" and not alive and self.backend.proc is None:
            self.aws = {"state": "unreachable", "since": time.time(),
                        "detail": f"{self.backend.describe()} does not answer; services answer 503 storage_unavailable until it does"}
            self.log(f"AWS ({self.backend.describe()}) UNREACHABLE; services answer 503 storage_unavailable until it answers")
        elif self.aws["state"] == "serving" and not alive:
            code = self.backend.proc.poll() if self.backend.proc else None
            self.aws = {"state": "dead", "since": time.time(), "exit": code,
                        "detail": "the embedded AWS exited: its data is gone; services answer 503 storage_unavailable; "
                                  "`meridian down` and `meridian up --local` start afresh"}
            self.log(f"AWS ({self.backend.describe()}) DIED (exit {code}); the run stays up for inspection, "
                     "services answer 503 storage_unavailable")

    def supervise(self, region: str) -> None:
        """One step of one region's supervision: detect a crash, restart after the backoff, see it serve."""
        proc, now = self.regions[region], time.monotonic()
        restarted = False
        with self.lock:
            if self.stopping.is_set():
                return
            if proc.state in ("serving", "starting") and proc.proc and proc.proc.poll() is not None:
                proc.last_exit = proc.proc.returncode
                if proc.serving_since is not None and now - proc.serving_since >= BACKOFF_RESET_AFTER:
                    proc.backoff = BACKOFF_FIRST
                proc.state, proc.restart_at, proc.serving_since = "crashed", now + proc.backoff, None
                proc.crashes.append({"at": time.time(), "exit": proc.last_exit})
                self.log(f"{region} service CRASHED (exit {proc.last_exit}); restarting in {proc.backoff:.1f} s; see {proc.log}")
                proc.backoff = min(BACKOFF_MAX, proc.backoff * 2)
            elif proc.state == "crashed" and proc.restart_at is not None and now >= proc.restart_at:
                proc.start()
                proc.restarts += 1
                restarted = True
                self.log(f"{region} service restarted (restart {proc.restarts}, pid {proc.proc.pid if proc.proc else '?'})")
            elif proc.state == "starting" and proc.proc and proc.proc.poll() is None:
                pass
            else:
                return
        if restarted:
            self._write_state()
        elif proc.state == "starting" and self._ready(proc):
            with self.lock:
                if proc.state == "starting":
                    proc.state, proc.serving_since = "serving", time.monotonic()
                    self.log(f"{region} service serving (pid {proc.proc.pid if proc.proc else '?'})")

    # -- control API ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        edge = self.edge.status()
        assert self.applied is not None
        return {
            "pid": os.getpid(), "stack": self.topology.stack, "aws_endpoint": self.applied.endpoint, "edge": self.edge_url,
            "started": self.started, "time_scale": self.time_scale, "latency_scale": self.latency_scale,
            "health_check": {"interval": self.edge.interval, "threshold": self.edge.threshold, "path": self.edge.path},
            "regions": {r: {**p.to_json(), **{k: edge[r][k] for k in ("dial", "healthy", "since", "requests", "errors", "answers",
                                                                        "answers_5xx", "inflight")},
                            "release": self.release_of[r], "release_history": self.release_history[r][-20:]}
                        for r, p in self.regions.items()},
            "releases": {name: {"env": env} for name, env in self.releases.items()},
            "release_alarms": self.release_alarms,
            "aws": self.aws,
            "hard_losses": self.hard_losses,
            "lag": self.lag_stats(),
            "routing": {"health_check_interval": self.topology.routing.health_check_interval,
                        "failure_threshold": self.topology.routing.failure_threshold, "dns_ttl": self.topology.routing.dns_ttl,
                        "global_accelerator": self.topology.routing.global_accelerator},
            "edge_events": self.edge.events[-50:],
            "replication": self.replicator.status(),
            "strong_tables": self.strong_tables(),
            "mrsc": self.mrsc.status() if self.mrsc else None,
            "apply": {"created": self.applied.created, "skipped": self.applied.skipped, "unsupported": self.applied.unsupported},
            "zones": {z.name: list(z.regions) for z in self.topology.zones},
            "tables": self.applied.tables,
            "backend": self.backend.status() if self.backend else None,
        }

    def lag_stats(self) -> dict[str, dict[str, float | int]]:
        """Replication lag per region pair over its last deliveries (ms): p50, p99, max and how many."""
        import numpy as np

        out: dict[str, dict[str, float | int]] = {}
        for (a, b), stats in sorted(self.replicator.stats.items()):
            samples = np.array(list(stats.lag_samples)) * 1000
            if samples.size:
                out[f"{a}->{b}"] = {"p50": round(float(np.percentile(samples, 50)), 1), "p99": round(float(np.percentile(samples, 99)), 1),
                                    "max": round(float(samples.max()), 1), "n": int(samples.size), "delivered": stats.delivered}
        return out

    def _region(self, name: str) -> RegionProcess:
        if name not in self.regions:
            raise KeyError(f"{name!r} is not a region of this run: {', '.join(self.regions)}")
        return self.regions[name]

    def fail(self, region: str, *, hard: bool = False) -> None:
        """The region is lost: its service is killed (and stays down: a fault, not a crash) and replication to
        and from it is held. ``hard``: a disaster that also destroys what the region had not replicated yet —
        held deliveries from it are dropped now, and its replicas are rebuilt from the survivors at heal."""
        proc = self._region(region)
        with self.lock:
            proc.state, proc.restart_at = "failed", None
            proc.kill()
        self.replicator.failed.add(region)
        self.edge.failed.add(region)
        if hard:
            dropped, oldest = self._drop_deliveries_from(region)
            self.hard_losses.append({"region": region, "at": time.time(), "healed_at": None,
                                     "unreplicated_deliveries_at_failure": dropped,
                                     "oldest_unreplicated_age_seconds": oldest, "destroyed": []})
            self.log(f"{region} HARD LOSS (service killed; {dropped} deliveries from it not yet replicated are destroyed)")
        else:
            self.log(f"{region} FAILED (service killed; replication to and from it held)")

    def _drop_deliveries_from(self, region: str) -> tuple[int, float | None]:
        """Forget every queued delivery from ``region``: what a destroyed region had not replicated is gone."""
        now = time.monotonic()
        with self.replicator._lock:  # noqa: SLF001 - the emulator's own queue, in this process
            gone = [d for d in self.replicator.queue if d.source == region and not d.resync]
            self.replicator.queue = type(self.replicator.queue)(d for d in self.replicator.queue if d.source != region or d.resync)
        oldest = max((now - d.detected for d in gone), default=None)
        return len(gone), oldest

    def _rebuild_from_survivors(self, region: str, loss: dict[str, Any]) -> None:
        """A hard-lost region comes back as AWS re-creates a replica: each of its replicas holds what the
        surviving replicas hold. Items only it held, or held in a newer version, are destroyed (recorded)."""
        from meridian.hlc import Version
        from meridian.store import from_item, to_item

        self.replicator.read_through({region}, timeout=20)  # the victim's streams are read to their end
        self._drop_deliveries_from(region)
        destroyed: list[dict[str, Any]] = []
        for table, replicas in self.applied.tables.items() if self.applied else ():
            survivors = [r for r in replicas if r != region]
            if region not in replicas or not survivors or (self.mrsc and table in self.mrsc.tables):
                continue  # an MRSC table's replica holds only what a majority acknowledged (RPO 0): the emulator catches it up
            key_names = [k for k in self.applied.keys[table] if k] if self.applied else []
            raws: dict[tuple[str, str], Any] = {}

            def scan(where: str, table: str = table, key_names: list[str] = key_names,
                     raws: dict[tuple[str, str], Any] = raws) -> dict[str, dict[str, Any]]:
                client, out, kwargs = self.backend_client("dynamodb", where), {}, {"TableName": table, "ConsistentRead": True}
                while True:
                    resp = client.scan(**kwargs)
                    for raw in resp.get("Items", []):
                        item = from_item(raw)
                        key = json.dumps([item.get(k) for k in key_names], default=str)
                        out[key] = item
                        raws[(where, key)] = raw  # what the rebuild writes: the item with its types
                    if "LastEvaluatedKey" not in resp:
                        return out
                    kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

            mine = scan(region)
            theirs: dict[str, dict[str, Any]] = {}
            holder: dict[str, str] = {}
            for survivor in survivors:
                for key, item in scan(survivor).items():
                    have = theirs.get(key)
                    if have is None or ("version" in item and "version" in have and Version.decode(str(item["version"])) > Version.decode(str(have["version"]))):
                        theirs[key], holder[key] = item, survivor
            client = self.backend_client("dynamodb", region)
            for key, item in mine.items():
                survivor_item = theirs.get(key)
                if survivor_item is not None and survivor_item.get("version") == item.get("version"):
                    continue
                if survivor_item is not None and "version" in item and "version" in survivor_item \
                        and Version.decode(str(survivor_item["version"])) > Version.decode(str(item["version"])):
                    continue  # the survivors are ahead: replication brings it
                keys = {k: item[k] for k in key_names}
                destroyed.append({"table": table, "key": keys, "version": item.get("version"),
                                  "survivor_version": survivor_item.get("version") if survivor_item else None,
                                  "value": item.get("value"), "survivor_value": survivor_item.get("value") if survivor_item else None})
                if survivor_item is None:
                    client.delete_item(TableName=table, Key=to_item(keys))
                else:
                    client.put_item(TableName=table, Item=raws.get((holder[key], key)) or to_item(survivor_item))
        self.replicator.read_through({region}, timeout=20)  # the rebuild's own stream records, read and dropped
        self._drop_deliveries_from(region)
        loss["destroyed"] = destroyed[:5000]
        loss["destroyed_count"] = len(destroyed)
        self.log(f"{region} rebuilt from its surviving replicas: {len(destroyed)} items it alone held destroyed")

    def heal(self, region: str | None) -> None:
        targets = [region] if region else list(self.regions)
        for name in targets:
            proc = self._region(name)
            loss = next((h for h in reversed(self.hard_losses) if h["region"] == name and h["healed_at"] is None), None)
            if loss is not None:
                self._rebuild_from_survivors(name, loss)
                loss["healed_at"] = time.time()
            with self.lock:
                if proc.state in ("failed", "crashed"):
                    proc.start()
                    proc.state, proc.restart_at = "starting", None
            self.replicator.failed.discard(name)
            self.edge.failed.discard(name)
        if region is None:
            self.replicator.partitions.clear()
            self.edge.partitions.clear()
        else:
            self.replicator.partitions = {p for p in self.replicator.partitions if region not in p}
            self.edge.partitions = {p for p in self.edge.partitions if region not in p}
        self._write_state()
        self.log(f"healed {region or 'everything'}")

    def deploy_release(self, region: str, name: Any, env: Any = None) -> dict[str, Any]:
        """Swap ``region``'s service for release ``name`` without dropping a request: start the new process on
        a new port, wait until it is ready, point the edge at it, wait until the old one has answered every
        request the edge sent it, stop it. A failure to start leaves the old process serving."""
        if (problem := release_problem(name)) is not None:
            raise KeyError(problem)
        if env is not None and (not isinstance(env, dict) or not all(
                isinstance(k, str) and k.startswith("MERIDIAN_") and isinstance(v, str) for k, v in env.items())):
            raise KeyError("env: an object of MERIDIAN_* names to strings")
        with self.release_lock:
            old = self._region(region)
            if env is None and name not in self.releases:
                raise KeyError(f"no release {name!r} on this run; define it with env (the settings it adds)")
            if env is not None and name in self.releases and self.releases[name] != env:
                raise KeyError(f"release {name!r} exists with other settings {self.releases[name]}; name the new one differently")
            if old.state != "serving":
                raise KeyError(f"{region} is {old.state}, not serving: heal it before changing its release")
            release_env = self.releases.get(name, env or {})
            started = time.monotonic()
            new = RegionProcess(region, moto_server.free_port(), {**self.base_env[region], **release_env}, old.log)
            new.restarts, new.crashes = old.restarts, old.crashes
            new.start()
            while not self._ready(new, timeout=1.0):
                if (new.proc and new.proc.poll() is not None) or time.monotonic() - started > 30:
                    new.kill()
                    raise KeyError(f"release {name!r} did not become ready in {region} (see {old.log}); {self.release_of[region]} "
                                   "keeps serving")
                time.sleep(0.05)
            self.releases.setdefault(name, dict(release_env))
            with self.lock:
                new.state, new.serving_since = "serving", time.monotonic()
                self.regions[region] = new
                self.edge.regions[region].url = new.url
                shifted_at = time.time()
                previous, self.release_of[region] = self.release_of[region], name
                self.release_history[region].append({"release": name, "at": shifted_at})
            deadline = time.monotonic() + 15
            while self.edge.inflight.get(old.url, 0) > 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            left = self.edge.inflight.get(old.url, 0)
            old.stop()
            self._write_state()
        self.log(f"{region}: release {previous} -> {name} (pid {new.proc.pid if new.proc else '?'}, port {new.port})"
                 + (f"; {left} requests still open on the old process when it was stopped" if left else ""))
        return {"region": region, "release": name, "previous": previous, "url": new.url, "shifted_at": shifted_at,
                "seconds": round(time.monotonic() - started, 3), "undrained": left}

    def partition(self, a: str, b: str) -> None:
        self._region(a), self._region(b)
        if a == b:
            raise KeyError("a partition needs two different regions")
        self.replicator.partitions.add(frozenset((a, b)))
        self.edge.partitions.add(frozenset((a, b)))
        self.log(f"PARTITIONED {a} <-> {b}")

    def routes(self) -> list[Route]:
        async def status(_: Request) -> JSONResponse:
            return JSONResponse(self.status())

        def guarded(fn: Any) -> Any:
            async def handler(request: Request) -> JSONResponse:
                try:
                    body = json.loads(await request.body() or b"{}")
                    if not isinstance(body, dict):
                        raise ValueError("a JSON object")
                except ValueError as exc:
                    return JSONResponse({"error": "bad_request", "message": f"send a JSON object ({exc})"}, status_code=400)
                try:
                    # Off the event loop: a fault or a rebuild must not stall the edge's traffic.
                    result = await asyncio.to_thread(fn, request, body)
                except KeyError as exc:
                    return JSONResponse({"error": "bad_request", "message": str(exc.args[0])}, status_code=400)
                return JSONResponse(result or {"ok": True})
            return handler

        def dial(request: Request, body: dict[str, Any]) -> dict[str, Any]:
            region, value = request.path_params["region"], body.get("value")
            if not isinstance(value, int) or not 0 <= value <= 100:
                raise KeyError("dial value must be a whole number 0..100")
            self._region(region)
            self.edge.regions[region].dial = value
            self.log(f"dial {region} = {value}")
            return {"region": region, "dial": value}

        def drain(_: Request, body: dict[str, Any]) -> dict[str, Any]:
            timeout = body.get("timeout", 30)
            if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout <= 300:
                raise KeyError("timeout must be a number of seconds in (0, 300]")
            return self.replicator.drain(float(timeout))

        def shutdown(_: Request, __: dict[str, Any]) -> None:
            if self.server:
                self.server.should_exit = True

        return [
            Route("/_meridian/status", status, methods=["GET"]),
            Route("/_meridian/fail/{region}", guarded(lambda r, b: self.fail(r.path_params["region"], hard=b.get("hard") is True)), methods=["POST"]),
            Route("/_meridian/heal", guarded(lambda r, b: self.heal(b.get("region"))), methods=["POST"]),
            Route("/_meridian/partition", guarded(lambda r, b: self.partition(str(b.get("a")), str(b.get("b")))), methods=["POST"]),
            Route("/_meridian/dial/{region}", guarded(dial), methods=["POST"]),
            Route("/_meridian/drain", guarded(drain), methods=["POST"]),
            Route("/_meridian/release", guarded(lambda r, b: self.deploy_release(str(b.get("region")), b.get("release"), b.get("env"))),
                  methods=["POST"]),
            Route("/_meridian/shutdown", guarded(shutdown), methods=["POST"]),
        ]

    # -- run -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.bring_up()
            app = self.edge.app(self.routes())
            self.wait_ready()
            threading.Thread(target=self.watch, daemon=True).start()
            config = uvicorn.Config(app, host="127.0.0.1", port=self.edge_port, log_level="warning", access_log=False, lifespan="on",
                                    timeout_keep_alive=SERVICE_KEEP_ALIVE)
            self.server = uvicorn.Server(config)
            threading.Thread(target=self._write_state_when_up, daemon=True).start()
            self.server.run()
        finally:
            self.tear_down()

    def _write_state_when_up(self) -> None:
        while self.server and not self.server.started:
            time.sleep(0.05)
        # The services probe each other through the edge's /_link from their start; until the edge serves,
        # every probe fails. Where that lasted long enough for `threshold` failures (small time scales), a
        # service believes its peers down (a US client's EU user: 503 zone_unavailable) until `threshold`
        # probes succeed: the run is declared ready once they have had the time to.
        threshold = self.topology.routing.failure_threshold
        if time.monotonic() - self.services_started >= (threshold - 1) * self.probe_interval:
            time.sleep((threshold + 1) * self.probe_interval)
        self._write_state()
        self.log(f"ready: edge {self.edge_url}")

    def _write_state(self) -> None:
        """state.json: how clients find the run (edge, secret) and which pids ``meridian down`` waits for."""
        if self.stopping.is_set() or not (self.server and self.server.started):
            return
        with self.lock:
            state = {**{k: v for k, v in self.status().items() if k in ("pid", "stack", "aws_endpoint", "edge", "backend")},
                     "regions": {r: {"url": p.url, "pid": p.proc.pid if p.proc else None} for r, p in self.regions.items()},
                     "moto_pid": self.moto.pid if self.moto else None, "control_secret": self.control_secret,
                     "time_scale": self.time_scale, "latency_scale": self.latency_scale, "lag": self.lag, "config": self.config_path}
            write_state(self.state_dir, state)

    def tear_down(self) -> None:
        self.stopping.set()  # from here, a child that exits is being stopped, not crashing
        if hasattr(self, "replicator"):
            self.replicator.stop()
        if self.mrsc is not None:
            self.mrsc.stop()
        with self.lock:
            for proc in self.regions.values():  # SIGTERM to all, then wait for each (SIGKILL after 5 s)
                if proc.proc and proc.proc.poll() is None:
                    proc.proc.terminate()
            for proc in self.regions.values():
                proc.stop()
        if self.backend:
            self.backend.stop()  # only what this run started: a user's LocalStack and its data stay
        (self.state_dir / "state.json").unlink(missing_ok=True)
        self.log("stopped; no process left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meridian-local-supervisor")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--edge-port", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument("--lag", type=float, default=0.5)
    parser.add_argument("--backend", choices=backends.BACKENDS, default="moto")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        # The program itself (infra/__main__.py), with the stack's config as the Pulumi CLI hands it.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from infra.render import RenderError, render_stack

            plan = render_stack(args.config)
    except RenderError as exc:
        print(f"supervisor failed: {exc}", flush=True)
        return 1
    supervisor = Supervisor(plan, Path(args.state), time_scale=args.time_scale,
                            latency_scale=args.latency_scale, lag=args.lag, edge_port=args.edge_port, backend=args.backend)
    supervisor.config_path = str(Path(args.config).resolve())
    try:
        supervisor.run()
    except KeyboardInterrupt:
        pass
    except Exception as exc:  # noqa: BLE001 - reported to the log the CLI shows
        print(f"supervisor failed: {exc}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
