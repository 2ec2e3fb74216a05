"""Overhead of the emulated edge, and throughput of the whole local system on this machine.

Starts a 2-region local run (latency injection off), then in one run measures p50/p99 of GET
/health/live (a) through the edge and (b) straight to the region's service, and the ratio; then
requests per second of the whole system (edge -> service -> moto) for a read-heavy mix from a few
concurrent clients. Goal: the edge adds under 1 ms at p99.
Run: .venv/bin/python bench/edge.py
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from meridian_cli.local_cmds import start_local, stop_local

N = 1000
STACK = "config:\n  meridian:regions: [us-east-1, eu-west-1]\n"


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1000


async def timed(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[float]:
    out = []
    for _ in range(N):
        start = time.perf_counter()
        r = await client.get(url, headers=headers)
        out.append(time.perf_counter() - start)
        assert r.status_code == 200
    return out


async def throughput(edge: str, seconds: float = 8.0, clients: int = 8) -> tuple[int, float]:
    async with httpx.AsyncClient(base_url=edge, timeout=10) as c:
        r = await c.post("/v1/users", json={"email": f"b{time.time_ns()}@example.com", "name": "bench", "residency": "global"},
                         headers={"X-Meridian-Client-Region": "us-east-1"})
        user = r.json()["user_id"]
        c.headers["Authorization"] = f"Bearer {r.json()['token']}"
        done = 0
        stop = time.perf_counter() + seconds

        async def worker(i: int) -> None:
            nonlocal done
            place = ["us-east-1", "eu-west-1"][i % 2]
            while time.perf_counter() < stop:
                if i % 4 == 0:
                    await c.post("/v1/counters/bench/increment", json={"by": 1}, headers={"X-Meridian-Client-Region": place})
                else:
                    await c.get(f"/v1/users/{user}", headers={"X-Meridian-Client-Region": place})
                done += 1

        start = time.perf_counter()
        await asyncio.gather(*(worker(i) for i in range(clients)))
        return done, time.perf_counter() - start


def main() -> None:
    root = Path(tempfile.mkdtemp())
    (root / "Pulumi.bench.yaml").write_text(STACK)
    state = start_local(str(root / "Pulumi.bench.yaml"), root / "state", time_scale=1.0, latency_scale=0, lag=0.5)
    try:
        region_url = state["regions"]["us-east-1"]["url"]

        async def latency() -> tuple[list[float], list[float]]:
            async with httpx.AsyncClient(timeout=10) as c:
                await timed(c, region_url + "/health/live", {})  # warm both paths
                direct = await timed(c, region_url + "/health/live", {})
                edge = await timed(c, state["edge"] + "/health/live", {"X-Meridian-Client-Region": "us-east-1"})
                return direct, edge

        direct, edge = asyncio.run(latency())
        print(f"{N} sequential GET /health/live each, latency injection off")
        print(f"direct to region  p50 {pct(direct, .5):6.2f} ms  p99 {pct(direct, .99):6.2f} ms")
        print(f"through the edge  p50 {pct(edge, .5):6.2f} ms  p99 {pct(edge, .99):6.2f} ms")
        print(f"edge adds         p50 {pct(edge, .5) - pct(direct, .5):6.2f} ms  p99 {pct(edge, .99) - pct(direct, .99):6.2f} ms"
              f"  (ratio p50 {pct(edge, .5) / pct(direct, .5):.2f})")
        done, elapsed = asyncio.run(throughput(state["edge"]))
        print(f"whole system: {done / elapsed:.0f} requests/s (75% reads, 25% counter increments, 8 clients, 2 regions, 2 cores)")
    finally:
        stop_local(root / "state")


if __name__ == "__main__":
    main()
