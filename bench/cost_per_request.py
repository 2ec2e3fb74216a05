"""Cost per request: the service's CPU and DynamoDB calls per operation, against one bare boto3 call.

Starts a 2-region local run (latency injection off) the way the tests do, then, for each operation
(read a profile, update a profile, increment a counter, create an order, reserve stock), in the same run:

- **service CPU ms per request**: the region process's own CPU time (``/proc/<pid>/stat``, every thread)
  before and after N sequential requests sent straight to it (keep-alive, home region: nothing is
  forwarded), less its idle CPU over the same wall time (peer health probes), measured first;
- **bare calls**: the CPU ms of the operation's DynamoDB calls made by this process with a plain boto3
  client (the service's retry and timeout settings): the service's own calls, their parameters as the
  service sent them, replayed against the same moto server on items of their own, with a fresh version
  or id each time; one call for every operation but a reservation, which makes two (the units, then the
  record). Also with the service's own client (``own``: no client-side parameter validation), so the
  share of the ratio that comes from the client's configuration is visible. Measured in chunks
  interleaved with the service's requests;
- **DynamoDB calls and request units per request**: counted by a botocore hook on an in-process copy of
  the region's service, built from the region process's own environment (so the same settings,
  topology and keys), sending the same requests after one warm-up request. ``ReturnConsumedCapacity`` is
  added to every item call; moto answers a fixed figure per call (1 per write, 0.5 per read), so the
  table also gives the units by DynamoDB's rules for the item sizes seen (reads: 4 KB units, half for
  an eventually consistent read; writes: 1 KB units of the larger of the item before and after).

This machine is noisy (2 cores, other work): every figure is a ratio against a baseline measured in the
same round, and the table shows the median over rounds. Then the capacity this implies for 50,000
requests per second at the request mix of ``meridian cost`` (75% reads, 10% updates, 10% increments,
5% orders): vCPU busy, and vCPU provisioned at a 60% CPU target with one of four regions lost.
Writes the figures to ``bench/results/cost_per_request.json``, which ``meridian capacity`` reads.

Run: .venv/bin/python bench/cost_per_request.py [--n 400] [--rounds 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import httpx
from botocore.config import Config

from meridian.api.app import Service, create_app, dynamodb_client
from meridian.hlc import HLC, Version
from meridian.settings import Settings
from meridian.store import Store, order_id_for, to_item
from meridian.strong import owner_region, reservation_id_for
from meridian_cli.cost import CPU_TARGET, DEFAULT_MIX
from meridian_cli.local_cmds import start_local, stop_local

STACK = "config:\n  meridian:regions: [us-east-1, eu-west-1]\n"
HERE = "us-east-1"
RPS = 50_000
REGIONS = 4  # the prod stack's regions: capacity is sized for one of them lost
OUT = Path(__file__).parent / "results" / "cost_per_request.json"
OPERATIONS = ("read", "update", "increment", "order", "reserve")
LABELS = {"read": "read a profile", "update": "update a profile", "increment": "increment a counter",
          "order": "create an order", "reserve": "reserve stock"}
#: What the service's calls of each operation are, which the bare calls replay with the service's own parameters.
BARE = {"read": "consistent read of the profile", "update": "conditional SET, ALL_NEW", "increment": "conditional ADD to the shard",
        "order": "conditional put, ALL_OLD on failure", "reserve": "conditional take of the units, then the reservation's record"}
TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def process_env(pid: int) -> dict[str, str]:
    """The environment the supervisor gave the region process (what its ECS task definition declares)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


# -- DynamoDB item sizes by DynamoDB's rules (for request units) ----------------------------------------------
def _value_bytes(value: dict[str, Any]) -> int:
    (kind, v), = value.items()
    if kind in ("S", "B"):
        return len(v.encode() if isinstance(v, str) else v)
    if kind == "N":
        return len(str(v).lstrip("-").replace(".", "").lstrip("0")) // 2 + 2
    if kind in ("BOOL", "NULL"):
        return 1
    if kind in ("SS", "NS", "BS"):
        return sum(_value_bytes({kind[0]: x}) for x in v)
    if kind == "L":
        return 3 + sum(_value_bytes(x) + 1 for x in v)
    if kind == "M":
        return 3 + sum(len(k) + _value_bytes(x) + 1 for k, x in v.items())
    return 0


def item_bytes(item: dict[str, Any] | None) -> int:
    return sum(len(k) + _value_bytes(v) for k, v in (item or {}).items())


class CallCounter:
    """Counts a client's DynamoDB calls, asks each item call for ReturnConsumedCapacity, and sums the units
    moto answers and the units DynamoDB's rules give for the item sizes seen."""

    ITEM_CALLS = {"GetItem", "PutItem", "UpdateItem", "DeleteItem", "Query", "Scan", "TransactWriteItems", "BatchGetItem"}

    def __init__(self, client: Any) -> None:
        self.calls: list[str] = []
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (operation, parameters) of every call, as sent
        self.moto_units = 0.0
        self.aws_units = 0.0
        self._params: dict[str, Any] = {}
        client.meta.events.register("provide-client-params.dynamodb.*", self._ask)
        client.meta.events.register("after-call.dynamodb.*", self._count)

    def _ask(self, params: dict[str, Any], model: Any, **_: Any) -> dict[str, Any]:
        self.requests.append((model.name, copy.deepcopy(params)))
        if model.name in self.ITEM_CALLS:
            params.setdefault("ReturnConsumedCapacity", "TOTAL")
        self._params = params
        return params

    def _count(self, http_response: Any, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append(model.name)
        consumed = parsed.get("ConsumedCapacity")
        for c in consumed if isinstance(consumed, list) else [consumed] if consumed else []:
            self.moto_units += float(c.get("CapacityUnits", 0))
        self.aws_units += self._rule_units(model.name, self._params, parsed)

    @staticmethod
    def _rule_units(op: str, params: dict[str, Any], parsed: dict[str, Any]) -> float:
        strong = 1.0 if params.get("ConsistentRead") else 0.5
        if op == "GetItem":
            return math.ceil(max(1, item_bytes(parsed.get("Item"))) / 4096) * strong
        if op == "Query":
            return math.ceil(max(1, sum(item_bytes(i) for i in parsed.get("Items", []))) / 4096) * strong
        if op == "PutItem":
            return math.ceil(max(item_bytes(params.get("Item")), item_bytes(parsed.get("Attributes"))) / 1024)
        if op == "UpdateItem":
            # Billed on the larger of the item before and after; the answer holds the item (ALL_NEW) or the
            # updated attributes only, so this is a floor for the latter: at least one unit.
            return max(1, math.ceil(item_bytes(parsed.get("Attributes")) / 1024))
        if op == "TransactWriteItems":
            return 2.0 * sum(math.ceil(max(1, item_bytes(i.get("Put", {}).get("Item"))) / 1024) for i in params.get("TransactItems", []))
        return 0.0


# -- the run ---------------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, state: dict[str, Any], n: int) -> None:
        self.n = n
        self.pid = int(state["regions"][HERE]["pid"])
        self.url = state["regions"][HERE]["url"]
        env = process_env(self.pid)
        self.settings = Settings.from_env(env)
        self.endpoint = env.get("AWS_ENDPOINT_URL") or state["aws_endpoint"]
        self.creds = creds = {"aws_access_key_id": env.get("AWS_ACCESS_KEY_ID", "bench"), "aws_secret_access_key": env.get("AWS_SECRET_ACCESS_KEY", "bench")}
        # The baseline: a plain boto3 client, the service's retry and timeout settings, nothing else.
        self.bare = boto3.client("dynamodb", region_name=HERE, endpoint_url=self.endpoint, **creds,
                                 config=Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5))
        self.http = httpx.Client(base_url=self.url, timeout=20)
        topology = self.settings.topology
        self.tables = {t: topology.table_name(t, "global") for t in ("users", "counters", "orders", "stock", "reservations")}
        self.seq = 0
        r = self.http.post("/v1/users", json={"email": f"bench{time.time_ns()}@example.com", "name": "bench", "residency": "global"})
        assert r.status_code == 201, r.text
        self.user, token = r.json()["user_id"], r.json()["token"]
        self.http.headers["Authorization"] = f"Bearer {token}"
        self.operator = {"Authorization": f"Bearer {self.settings.operator_key.signing_key.decode()}"}
        self.sku = self.owned_sku()
        self.counter = f"bench-{time.time_ns()}"

    def owned_sku(self) -> str:
        """A sku this region owns (rendezvous hashing): its reservations execute here, never forwarded."""
        regions = self.settings.topology.global_zone.regions
        i = 0
        while owner_region(f"sku-{time.time_ns()}-{i}", regions) != HERE:
            i += 1
        sku = f"sku-{time.time_ns()}-{i}"
        while owner_region(sku, regions) != HERE:
            i += 1
            sku = f"sku-{time.time_ns()}-{i}"
        return sku

    def next_key(self) -> str:
        self.seq += 1
        return f"k{self.seq}-{time.time_ns()}"

    # -- one request of each operation, through HTTP ----------------------------------------------------------
    def spec(self, op: str) -> tuple[str, str, dict[str, Any]]:
        """(method, path, httpx keyword arguments) of one request of ``op``."""
        if op == "read":
            return "GET", f"/v1/users/{self.user}", {}
        if op == "update":
            return "PUT", f"/v1/users/{self.user}", {"json": {"name": f"n{self.next_key()}"}}
        if op == "increment":
            return "POST", f"/v1/counters/{self.counter}/increment", {"json": {"by": 1}}
        if op == "order":
            return "POST", f"/v1/users/{self.user}/orders", {"json": {"item": "widget", "qty": 1}, "headers": {"Idempotency-Key": self.next_key()}}
        return "POST", f"/v1/users/{self.user}/reservations", {"json": {"sku": self.sku, "quantity": 1},
                                                               "headers": {"Idempotency-Key": self.next_key()}}

    def request(self, op: str) -> httpx.Response:
        method, path, kw = self.spec(op)
        return self.http.request(method, path, **kw)

    def fresh_stock(self) -> None:
        """A new sku with ample stock: the stock item holds the ids of its active reservations, so it grows
        with every reservation; each round starts from a fresh one."""
        self.sku = self.owned_sku()
        r = self.http.put(f"/v1/stock/{self.sku}", json={"available": 1_000_000_000}, headers=self.operator)
        assert r.status_code == 200, r.text

    # -- one bare call of the same kind: the service's own first call of the operation, replayed -----------------
    def bare_call(self, op: str, operation: str, params: dict[str, Any], client: Any = None) -> Callable[[], Any]:
        """A call the service made for ``op`` (its parameters as sent), made again with a plain client (or
        ``client``) on an item of its own: a fresh version, order id or reservation id each time, so every
        conditional write succeeds as the service's did, and the service's items are never touched."""
        c, clock = client or self.bare, HLC()
        method = getattr(c, "_".join(w.lower() for w in re.findall(r"[A-Z][a-z]*", operation)))
        base = copy.deepcopy(params)
        if op == "update":
            item = c.get_item(TableName=base["TableName"], Key=base["Key"], ConsistentRead=True)["Item"]
            base["Key"] = to_item({"user_id": f"{self.user}-bare"})
            c.put_item(TableName=base["TableName"], Item={**item, **base["Key"]})
        elif op == "increment":
            base["Key"] = {**base["Key"], "name": {"S": f"{self.counter}-bare"}}
        elif op == "reserve" and operation == "UpdateItem":
            base["Key"] = to_item({"sku": f"{self.sku}-bare"})
            c.put_item(TableName=base["TableName"], Item={**base["Key"], "available": {"N": "1000000000"}, "reserved": {"N": "0"}})
        elif op == "reserve" and operation == "TransactWriteItems":  # the owner mechanism: check, stock update, record
            for action in base["TransactItems"]:
                if "Update" in action:
                    action["Update"]["Key"] = to_item({"sku": f"{self.sku}-bare"})
                    c.put_item(TableName=action["Update"]["TableName"],
                               Item={**action["Update"]["Key"], "available": {"N": "1000000000"}, "reserved": {"N": "0"}})

        def fresh() -> dict[str, Any]:
            request = dict(base)
            version = {"S": Version(clock.now(), HERE).encode()}
            values = dict(request.get("ExpressionAttributeValues") or {})
            for name in (":v", ":ver"):
                if name in values:
                    values[name] = version
            if op == "reserve" and operation == "UpdateItem":
                rid = reservation_id_for(self.user, self.next_key(), HERE)
                values |= {":id": {"S": rid}, ":ids": {"SS": [rid]}}
            if values:
                request["ExpressionAttributeValues"] = values
            if op == "order":
                request["Item"] = {**request["Item"], "order_id": {"S": order_id_for(self.user, self.next_key())}, "version": version}
            if op == "reserve" and operation == "TransactWriteItems":
                rid = reservation_id_for(self.user, self.next_key(), HERE)
                actions = []
                for action in base["TransactItems"]:
                    (kind, spec), = action.items()
                    if kind == "Update":
                        spec = {**spec, "ExpressionAttributeValues": {**spec["ExpressionAttributeValues"], ":id": {"S": rid},
                                                                      ":ids": {"SS": [rid]}, ":v": version}}
                    elif kind == "Put":
                        spec = {**spec, "Item": {**spec["Item"], "reservation_id": {"S": rid}, "version": version}}
                    actions.append({kind: spec})
                request["TransactItems"] = actions
            if op == "reserve" and operation == "PutItem":  # the reservation's record
                rid = reservation_id_for(self.user, self.next_key(), HERE)
                request["Item"] = {**request["Item"], "reservation_id": {"S": rid}, "version": version}
            return request

        return lambda: method(**fresh())

    # -- measurements -------------------------------------------------------------------------------------------
    def idle_rate(self) -> float:
        """CPU seconds per wall second the region process spends with no request: the health probes it sends
        and answers, which come once per probe interval, so the window spans one whole interval."""
        seconds = max(3.0, self.settings.probe_interval + 0.5)
        c0, w0 = process_cpu(self.pid), time.monotonic()
        time.sleep(seconds)
        return (process_cpu(self.pid) - c0) / (time.monotonic() - w0)

    def measure(self, op: str, bares: list[Callable[[], Any]], idle: float, chunk: int = 50) -> tuple[float, ...]:
        """(service CPU ms per request, then the CPU ms of each of ``bares``: the operation's calls made bare one
        way or another) over ``n`` of each, interleaved in chunks so that all meet the same moments of this
        machine's load."""
        for _ in range(5):  # warm: connections, caches
            self.request(op)
            for bare in bares:
                bare()
        service_cpu, bare_cpu = 0.0, [0.0] * len(bares)
        done = 0
        while done < self.n:
            k = min(chunk, self.n - done)
            for i, bare in enumerate(bares):
                c0 = time.process_time()
                for _ in range(k):
                    bare()
                bare_cpu[i] += time.process_time() - c0
            c0, w0 = process_cpu(self.pid), time.monotonic()
            for _ in range(k):
                r = self.request(op)
                assert r.status_code in (200, 201), r.text
            service_cpu += max(0.0, process_cpu(self.pid) - c0 - idle * (time.monotonic() - w0))
            done += k
        return (service_cpu / self.n * 1000, *(b / self.n * 1000 for b in bare_cpu))

    def bare_request(self, op: str, made: list[tuple[str, dict[str, Any]]], client: Any = None) -> Callable[[], Any]:
        """Every DynamoDB call of one request of ``op``, made bare in a row."""
        calls = [self.bare_call(op, operation, params, client) for operation, params in made]
        return lambda: [call() for call in calls]

    def count_calls(self, op: str, requests: int = 20) -> dict[str, Any]:
        """Calls and units per request, from an in-process copy of the region's service (same environment)."""
        if op == "reserve":
            self.fresh_stock()
        client = dynamodb_client(self.settings, endpoint_url=self.endpoint, **self.creds)
        counter = CallCounter(client)
        service = Service(self.settings, Store(client=client, topology=self.settings.topology, region=HERE))
        app = create_app(service)

        async def send() -> None:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", headers=self.http.headers) as c:
                for i in range(requests + 1):
                    method, path, kw = self.spec(op)
                    r = await c.request(method, path, **kw)
                    assert r.status_code in (200, 201), r.text
                    if i == 0:  # the warm-up request: the directory entry is cached after it
                        counter.calls.clear()
                        counter.requests.clear()
                        counter.moto_units = counter.aws_units = 0.0
            await service.http.aclose()

        asyncio.run(send())
        kinds = sorted(set(counter.calls))
        per_request = max(1, round(len(counter.calls) / requests))
        made = counter.requests[-per_request:]  # every call of the last request, as the service sent them
        for _, params in made:
            params.pop("ReturnConsumedCapacity", None)
        return {"calls": len(counter.calls) / requests, "kinds": kinds, "moto_units": counter.moto_units / requests,
                "aws_units": counter.aws_units / requests, "made": made}


def capacity(cpu_ms: float, rps: float = RPS, regions: int = REGIONS) -> dict[str, float]:
    """vCPU busy for ``rps`` at ``cpu_ms`` per request, and vCPU provisioned at the CPU target when each of
    the ``regions - 1`` surviving regions carries an equal share."""
    busy = rps * cpu_ms / 1000
    per_region = rps / (regions - 1) * cpu_ms / 1000 / CPU_TARGET
    return {"vcpu_busy": busy, "vcpu_per_region": per_region, "vcpu_provisioned": per_region * regions}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=400, help="requests (and bare calls) per operation per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the table shows the median")
    parser.add_argument("--out", type=Path, default=OUT, help=f"where to write the figures (default {OUT})")
    parser.add_argument("--only", nargs="*", choices=OPERATIONS, default=list(OPERATIONS))
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp())
    (root / "Pulumi.bench.yaml").write_text(STACK)
    state = start_local(str(root / "Pulumi.bench.yaml"), root / "state", time_scale=1.0, latency_scale=0, lag=0.5)
    try:
        bench = Bench(state, args.n)
        ops = [op for op in OPERATIONS if op in args.only]
        counted = {op: bench.count_calls(op) for op in ops}
        idle = bench.idle_rate()
        samples: dict[str, list[tuple[float, ...]]] = {op: [] for op in ops}
        service_client = dynamodb_client(bench.settings, endpoint_url=bench.endpoint, **bench.creds)
        for _ in range(args.rounds):
            for op in ops:
                if op == "reserve":
                    bench.fresh_stock()
                made = counted[op]["made"]
                samples[op].append(bench.measure(op, [bench.bare_request(op, made), bench.bare_request(op, made, service_client)], idle))
    finally:
        stop_local(root / "state")

    results: dict[str, dict[str, Any]] = {}
    for op in ops:
        service = statistics.median(s[0] for s in samples[op])
        bare = statistics.median(s[1] for s in samples[op])
        own = statistics.median(s[2] for s in samples[op])
        made = counted[op]["made"]
        results[op] = {"label": LABELS[op], "service_cpu_ms": round(service, 3),
                       "bare_calls": " + ".join(f"{operation}" for operation, _ in made) + f" ({BARE[op]})",
                       "bare_calls_cpu_ms": round(bare, 3), "ratio": round(statistics.median(s[0] / s[1] for s in samples[op]), 2),
                       "bare_calls_service_client_cpu_ms": round(own, 3),
                       "ratio_to_service_client": round(statistics.median(s[0] / s[2] for s in samples[op]), 2),
                       "dynamodb_calls": counted[op]["calls"], "calls": counted[op]["kinds"],
                       "request_units_moto": round(counted[op]["moto_units"], 2), "request_units_aws_rule": round(counted[op]["aws_units"], 2)}

    print(f"{args.rounds} rounds x {args.n} requests per operation, one region process of a local run (latency injection off); "
          f"idle CPU of the region subtracted ({idle * 1000:.1f} ms/s)")
    print(f"{'operation':20} {'service CPU':>11} {'bare':>9} {'ratio':>6} {'own':>9} {'ratio':>6} {'calls':>6} {'RU moto':>8} {'RU rule':>8}  calls made")
    for r in results.values():
        print(f"{r['label']:20} {r['service_cpu_ms']:8.2f} ms {r['bare_calls_cpu_ms']:6.2f} ms {r['ratio']:5.2f}x "
              f"{r['bare_calls_service_client_cpu_ms']:6.2f} ms {r['ratio_to_service_client']:5.2f}x {r['dynamodb_calls']:6.2f} "
              f"{r['request_units_moto']:8.2f} {r['request_units_aws_rule']:8.2f}  {', '.join(r['calls'])}")
    print("bare: the CPU of the operation's DynamoDB calls (its parameters as the service sent them) made with a plain boto3 client;\n"
          "own: the same calls with the service's client (no client-side parameter validation). ratio: service CPU per request / that,\n"
          "median of the rounds' ratios. Every operation makes one call but reserve, which makes two (the units, then the record).")
    for op, r in results.items():
        print(f"  {op}: {r['bare_calls']}")

    mix = {k: v for k, v in DEFAULT_MIX.items() if k in results}
    if len(mix) == len(DEFAULT_MIX):
        at_mix = sum(results[k]["service_cpu_ms"] * share for k, share in mix.items())
        cap = capacity(at_mix)
        print(f"\nat the mix {', '.join(f'{k} {v:.0%}' for k, v in mix.items())}: {at_mix:.2f} ms CPU per request")
        print(f"{RPS:,} rps: {cap['vcpu_busy']:.0f} vCPU busy; {cap['vcpu_per_region']:.1f} vCPU per region at {CPU_TARGET:.0%} CPU "
              f"with one of {REGIONS} regions lost, {cap['vcpu_provisioned']:.0f} vCPU provisioned in all")
        data = {
            "about": "Service CPU per request and DynamoDB calls per operation, measured by bench/cost_per_request.py in one local "
                     "run (one region process, latency injection off) on the machine named below. meridian capacity reads it.",
            "command": ".venv/bin/python bench/cost_per_request.py",
            "measured_at": time.strftime("%Y-%m-%d", time.gmtime()),
            "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
            "requests_per_operation": args.n, "rounds": args.rounds,
            "mix": mix, "cpu_ms_at_mix": round(at_mix, 3), "cpu_target": CPU_TARGET,
            "operations": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(data, indent=2) + "\n")
        print(f"figures written to {args.out}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


if __name__ == "__main__":
    sys.exit(main())
