"""Service overhead over the storage call it makes, against one real moto server process.

(a) a home-region profile write through the app (ASGI, routing, HLC, token; one conditional
UpdateItem) vs a direct put_item and a direct update_item with boto3; (b) reads (one get_item; the
directory entry is cached after the first request) vs a direct get_item. Also the cost of the routing
decision alone. Prints p50/p99 and the ratios measured in the same run.
Run: .venv/bin/python bench/service.py
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import subprocess
import sys
import time

import boto3
import httpx

from meridian.api.app import Service, create_app
from meridian.keys import KeyRing
from meridian.routing import decide
from meridian.settings import Settings
from meridian.store import Store, to_item
from meridian.topology import load_topology

N = 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


def main() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        topology = load_topology({"regions": ["eu-west-1", "eu-central-1"]}, stack="bench")
        client = boto3.client("dynamodb", region_name="eu-west-1")
        for logical in ("users", "directory"):
            spec = topology.table(logical)
            client.create_table(
                TableName=topology.table_name(logical, "global"), BillingMode="PAY_PER_REQUEST",
                KeySchema=[{"AttributeName": spec.hash_key.name, "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": spec.hash_key.name, "AttributeType": "S"}],
            )
        rings = {name: KeyRing.single(name[0].encode() * 32) for name in ("session_key", "peer_key", "user_key", "operator_key")}
        settings = Settings(region="eu-west-1", topology=topology, **rings, claim_key=b"c" * 32, peers={}, probe_interval=0)
        service = Service(settings, Store(client=client, topology=topology, region="eu-west-1"))
        app = create_app(service)
        user, _ = service.store.create_user(email="a@b.c", name="bench", zone="global")
        table = topology.table_name("users", "global")

        async def through_app() -> tuple[list[float], list[float]]:
            writes, reads = [], []
            auth = {"Authorization": f"Bearer {service.users.issue(user.user_id)}"}
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench", headers=auth) as c:
                for i in range(N):
                    t = time.perf_counter()
                    r = await c.put(f"/v1/users/{user.user_id}", json={"name": f"n{i}"})
                    writes.append(time.perf_counter() - t)
                    assert r.status_code == 200, r.text
                    t = time.perf_counter()
                    r = await c.get(f"/v1/users/{user.user_id}")
                    reads.append(time.perf_counter() - t)
                    assert r.status_code == 200
            return writes, reads

        direct_w, direct_u, direct_r = [], [], []
        item = service.store.get_user("global", user.user_id)
        for i in range(N):
            t = time.perf_counter()
            client.put_item(TableName=table, Item=to_item({**item, "name": f"d{i}"}))
            direct_w.append(time.perf_counter() - t)
            t = time.perf_counter()
            _, request = service.store.user_update_request("global", user.user_id, {"name": f"u{i}"})
            client.update_item(**request)  # exactly the request the app sends
            direct_u.append(time.perf_counter() - t)
            t = time.perf_counter()
            client.get_item(TableName=table, Key=to_item({"user_id": user.user_id}), ConsistentRead=True)
            direct_r.append(time.perf_counter() - t)
        app_w, app_r = asyncio.run(through_app())

        t = time.perf_counter()
        for _ in range(20000):
            decide(kind="write", here="eu-west-1", home="eu-central-1", zone_regions=["eu-west-1", "eu-central-1"], healthy={"eu-central-1": False})
        decision_us = (time.perf_counter() - t) / 20000 * 1e6

        print(f"moto server on :{port}, {N} requests each")
        print(f"direct put_item   p50 {pct(direct_w, .5):6.2f} ms  p99 {pct(direct_w, .99):6.2f} ms")
        print(f"same update_item p50 {pct(direct_u, .5):5.2f} ms  p99 {pct(direct_u, .99):6.2f} ms")
        print(f"app PUT           p50 {pct(app_w, .5):6.2f} ms  p99 {pct(app_w, .99):6.2f} ms")
        print(f"direct get_item   p50 {pct(direct_r, .5):6.2f} ms  p99 {pct(direct_r, .99):6.2f} ms")
        print(f"app GET           p50 {pct(app_r, .5):6.2f} ms  p99 {pct(app_r, .99):6.2f} ms")
        print(f"ratio write app/direct put_item p50: {statistics.median(app_w) / statistics.median(direct_w):.2f}")
        print(f"ratio write app/direct update_item (the call the app makes) p50: {statistics.median(app_w) / statistics.median(direct_u):.2f}")
        print(f"ratio read  app/direct p50: {statistics.median(app_r) / statistics.median(direct_r):.2f}")
        print(f"routing decision: {decision_us:.1f} us (goal < 50 us)")
    finally:
        server.terminate()
        server.wait(5)


if __name__ == "__main__":
    main()
