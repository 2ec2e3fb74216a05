"""The local multi-region run: one supervisor process that owns everything it starts.

1. a real moto server (the embedded AWS);
2. the Pulumi program rendered under mocks and applied to it (meridian_local.applier);
3. one uvicorn process per region running the service with exactly the environment its ECS task
   definition declares (secrets resolved from the embedded Secrets Manager), plus the AWS endpoint,
   the emulated network's URLs for peers, and the scaled probe interval;
4. the replication emulator and the edge, in this process; the edge's port also serves the control
   API (``/_meridian/...``) used by ``meridian local ...``, ``meridian down`` and game days.

Run by ``meridian up --local``; stops everything it started on SIGTERM/SIGINT or ``POST /_meridian/shutdown``.
"""

from __future__ import annotations

import argparse
import json
import os
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
from meridian_local import moto_server
from meridian_local.applier import Applied, apply
from meridian_local.edge import Edge
from meridian_local.replicator import Replicator
from meridian_local.state import state_file


class RegionProcess:
    def __init__(self, region: str, port: int, env: dict[str, str], log: Path) -> None:
        self.region, self.port, self.env, self.log = region, port, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.state = "starting"  # serving | failed | crashed

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "meridian.api.app:app_from_env", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log", "--log-level", "warning"],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
        self.state = "starting"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Supervisor:
    def __init__(self, plan: Plan, state_dir: Path, *, time_scale: float, latency_scale: float, lag: float, edge_port: int) -> None:
        self.plan = plan
        self.topology, self.state_dir = plan.topology, state_dir
        self.time_scale, self.latency_scale, self.lag = time_scale, latency_scale, lag
        self.edge_port = edge_port
        self.edge_url = f"http://127.0.0.1:{edge_port}"
        self.regions: dict[str, RegionProcess] = {}
        self.moto: subprocess.Popen[bytes] | None = None
        self.applied: Applied | None = None
        self.started = time.time()
        self.server: uvicorn.Server | None = None

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    # -- bring-up --------------------------------------------------------------------------------------
    def bring_up(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.moto, endpoint = moto_server.start(self.state_dir / "moto.log")
        self.log(f"embedded AWS (moto server) at {endpoint}")
        self.applied = apply(self.plan, endpoint)
        created = sum(self.applied.created.values())
        self.log(f"applied the Pulumi program: {created} resources created, {sum(self.applied.skipped.values())} with no local meaning")
        for unsupported in self.applied.unsupported:
            self.log(f"embedded AWS lacks: {unsupported}")
        interval = self.topology.routing.health_check_interval * self.time_scale
        for region, runtime in self.applied.regions.items():
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MERIDIAN_"))}
            env |= runtime.environment
            env |= {
                "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "meridian-local", "AWS_SECRET_ACCESS_KEY": "meridian-local",
                "MERIDIAN_PEERS": json.dumps({r: f"{self.edge_url}/_link/{region}/{r}" for r in self.topology.regions}),
                "MERIDIAN_PROBE_INTERVAL": f"{interval:.3f}",
                # Replication here is emulated and asynchronous: MRSC cannot be kept truthfully, so strong
                # tables use one owner region per key in every zone (meridian.strong; docs/consistency.md).
                "MERIDIAN_MRSC": "0",
            }
            self.regions[region] = RegionProcess(region, moto_server.free_port(), env, self.state_dir / f"service-{region}.log")
            self.regions[region].start()
        self.replicator = Replicator(self.applied, self.topology, lag=self.lag)
        self.replicator.start()
        self.edge = Edge({r: p.url for r, p in self.regions.items()}, dials=self.applied.dials, health=self.applied.health,
                         time_scale=self.time_scale, latency_scale=self.latency_scale, default_client=self.topology.regions[0])

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        pending = set(self.regions)
        while pending and time.monotonic() < deadline:
            for region in list(pending):
                proc = self.regions[region]
                if proc.proc and proc.proc.poll() is not None:
                    raise RuntimeError(f"{region} service exited at start; see {proc.log}")
                try:
                    if httpx.get(proc.url + "/health/ready", timeout=1).status_code == 200:
                        proc.state = "serving"
                        pending.discard(region)
                except httpx.HTTPError:
                    pass
            time.sleep(0.1)
        if pending:
            raise RuntimeError(f"services not ready after {timeout:.0f} s: {sorted(pending)}")

    def watch(self) -> None:
        """A child that dies unasked is reported as crashed, never hidden; so is every gap the replication
        emulator finds in a stream (also in the status: ``replication.gaps`` and ``gap_events``)."""
        gaps_logged = 0
        while True:
            for gap in self.replicator.gaps[gaps_logged:]:
                self.log(f"replication GAP in {gap.table}@{gap.region} ({gap.kind}): {gap.detail}; resyncing the table from its replicas")
            gaps_logged = len(self.replicator.gaps)
            for region, proc in self.regions.items():
                if proc.state == "serving" and proc.proc and proc.proc.poll() is not None:
                    proc.state = "crashed"
                    self.log(f"{region} service CRASHED (exit {proc.proc.returncode}); see {proc.log}")
            if self.moto and self.moto.poll() is not None:
                self.log("embedded AWS (moto server) CRASHED; stopping")
                if self.server:
                    self.server.should_exit = True
                return
            time.sleep(0.5)

    # -- control API ---------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        edge = self.edge.status()
        assert self.applied is not None
        return {
            "pid": os.getpid(), "stack": self.topology.stack, "aws_endpoint": self.applied.endpoint, "edge": self.edge_url,
            "started": self.started, "time_scale": self.time_scale, "latency_scale": self.latency_scale,
            "health_check": {"interval": self.edge.interval, "threshold": self.edge.threshold, "path": self.edge.path},
            "regions": {r: {"url": p.url, "state": p.state, "pid": p.proc.pid if p.proc else None, **{k: edge[r][k] for k in ("dial", "healthy", "since", "requests", "errors")}}
                        for r, p in self.regions.items()},
            "edge_events": self.edge.events[-50:],
            "replication": self.replicator.status(),
            "apply": {"created": self.applied.created, "skipped": self.applied.skipped, "unsupported": self.applied.unsupported},
            "zones": {z.name: list(z.regions) for z in self.topology.zones},
            "tables": self.applied.tables,
        }

    def _region(self, name: str) -> RegionProcess:
        if name not in self.regions:
            raise KeyError(f"{name!r} is not a region of this run: {', '.join(self.regions)}")
        return self.regions[name]

    def fail(self, region: str) -> None:
        proc = self._region(region)
        proc.state = "failed"
        proc.kill()
        self.replicator.failed.add(region)
        self.edge.failed.add(region)
        self.log(f"{region} FAILED (service killed; replication to and from it held)")

    def heal(self, region: str | None) -> None:
        targets = [region] if region else list(self.regions)
        for name in targets:
            proc = self._region(name)
            if proc.state in ("failed", "crashed"):
                proc.start()
                proc.state = "serving"
            self.replicator.failed.discard(name)
            self.edge.failed.discard(name)
        if region is None:
            self.replicator.partitions.clear()
            self.edge.partitions.clear()
        else:
            self.replicator.partitions = {p for p in self.replicator.partitions if region not in p}
            self.edge.partitions = {p for p in self.edge.partitions if region not in p}
        self.log(f"healed {region or 'everything'}")

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
                body = await request.json() if (await request.body()) else {}
                try:
                    result = fn(request, body)
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

        def shutdown(_: Request, __: dict[str, Any]) -> None:
            if self.server:
                self.server.should_exit = True

        return [
            Route("/_meridian/status", status, methods=["GET"]),
            Route("/_meridian/fail/{region}", guarded(lambda r, b: self.fail(r.path_params["region"])), methods=["POST"]),
            Route("/_meridian/heal", guarded(lambda r, b: self.heal(b.get("region"))), methods=["POST"]),
            Route("/_meridian/partition", guarded(lambda r, b: self.partition(str(b.get("a")), str(b.get("b")))), methods=["POST"]),
            Route("/_meridian/dial/{region}", guarded(dial), methods=["POST"]),
            Route("/_meridian/shutdown", guarded(shutdown), methods=["POST"]),
        ]

    # -- run -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self.bring_up()
            app = self.edge.app(self.routes())
            self.wait_ready()
            threading.Thread(target=self.watch, daemon=True).start()
            config = uvicorn.Config(app, host="127.0.0.1", port=self.edge_port, log_level="warning", access_log=False, lifespan="on")
            self.server = uvicorn.Server(config)
            threading.Thread(target=self._write_state_when_up, daemon=True).start()
            self.server.run()
        finally:
            self.tear_down()

    def _write_state_when_up(self) -> None:
        while self.server and not self.server.started:
            time.sleep(0.05)
        state = {**{k: v for k, v in self.status().items() if k in ("pid", "stack", "aws_endpoint", "edge")},
                 "regions": {r: {"url": p.url, "pid": p.proc.pid if p.proc else None} for r, p in self.regions.items()},
                 "moto_pid": self.moto.pid if self.moto else None}
        state_file(self.state_dir).write_text(json.dumps(state, indent=2))
        self.log(f"ready: edge {self.edge_url}")

    def tear_down(self) -> None:
        if hasattr(self, "replicator"):
            self.replicator.stop()
        for proc in self.regions.values():
            proc.kill()
        if self.moto and self.moto.poll() is None:
            self.moto.terminate()
            try:
                self.moto.wait(5)
            except subprocess.TimeoutExpired:
                self.moto.kill()
        state_file(self.state_dir).unlink(missing_ok=True)
        self.log("stopped; no process left")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meridian-local-supervisor")
    parser.add_argument("--config", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--edge-port", type=int, required=True)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument("--lag", type=float, default=0.5)
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
                            latency_scale=args.latency_scale, lag=args.lag, edge_port=args.edge_port)
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
