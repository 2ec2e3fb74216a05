"""History checks (Jepsen-style) of exactly-once orders on a local run, under the interleavings that broke it.

Every operation is recorded with its invocation and its outcome — ok (acknowledged, with the order id),
failed (refused: nothing written) or unknown (timeout, 5xx: it may or may not have executed) — and the
checker (meridian_local.gameday.History, the game day's own) reads every replica after replication
drains: no acknowledged order lost, at most one order per (user, Idempotency-Key) in every replica, one
order id per key in every answer. Scenarios:

- 40 keys x 2 concurrent posts to eu-west-1 beside a background writer (the attack that erased orders);
- the same keys sent to both regions of the eu zone during a partition, then healed;
- a forward whose answer is slower than the forward timeout (the home region commits, the caller times
  out and executes it as a failover), and a non-idempotent request in the same situation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from stacks import THREE_REGIONS

from meridian_cli.local_cmds import start_local, stop_local
from meridian_local.gameday import History
from meridian_local.state import control

pytestmark = pytest.mark.slow

STACK = THREE_REGIONS
WEST, CENTRAL, US = "eu-west-1", "eu-central-1", "us-east-1"


class Run:
    def __init__(self, state_dir: Path, state: dict[str, Any]) -> None:
        self.state_dir, self.state = state_dir, state

    def status(self) -> dict[str, Any]:
        return control(self.state_dir, "GET", "status")

    def drained(self, timeout: float = 30.0) -> None:
        result = control(self.state_dir, "POST", "drain", {"timeout": timeout}, timeout=timeout + 10)
        assert result["drained"], result

    def client(self, region: str) -> Any:
        return boto3.client("dynamodb", region_name=region, endpoint_url=self.state["aws_endpoint"],
                            aws_access_key_id="t", aws_secret_access_key="t")

    def scan(self, table: str, region: str) -> list[dict[str, Any]]:
        from meridian.store import from_item

        items, kw = [], {"TableName": table}
        while True:
            resp = self.client(region).scan(**kw)
            items += [from_item(i) for i in resp["Items"]]
            if "LastEvaluatedKey" not in resp:
                return items
            kw["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def orders(self, user: str) -> dict[str, list[dict[str, Any]]]:
        return {r: [i for i in self.scan("meridian-e2e-eu-orders", r) if i["user_id"] == user] for r in (WEST, CENTRAL)}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("once")
    stack = root / "Pulumi.e2e.yaml"
    stack.write_text(STACK)
    state = start_local(str(stack), root / "state", time_scale=0.1, latency_scale=0, lag=0.2)
    yield Run(root / "state", state)
    assert stop_local(root / "state") == []


#: user id -> the bearer token its creation answered (clients of every scenario share them)
TOKENS: dict[str, str] = {}


class Client:
    """An async client through the edge that records every order in a history."""

    def __init__(self, run: Run, history: History) -> None:
        self.http = httpx.AsyncClient(base_url=run.state["edge"], timeout=20, limits=httpx.Limits(max_connections=100))
        self.history = history

    async def user(self, place: str, email: str | None = None) -> str:
        email = email or f"h{time.time_ns()}@example.com"  # one account per email
        r = await self.http.post("/v1/users", json={"email": email, "name": "H", "residency": "eu"},
                                 headers={"X-Meridian-Client-Region": place})
        assert r.status_code == 201, r.text
        TOKENS[r.json()["user_id"]] = r.json()["token"]
        return str(r.json()["user_id"])

    async def order(self, place: str, user: str, key: str, body: dict[str, Any] | None = None) -> httpx.Response | None:
        body = body or {"item": "widget", "qty": 1}
        op = self.history.invoke(place, "order", (user, key), body)
        try:
            r = await self.http.post(f"/v1/users/{user}/orders", json=body,
                                     headers={"X-Meridian-Client-Region": place, "Idempotency-Key": key,
                                              "Authorization": f"Bearer {TOKENS[user]}"})
        except httpx.HTTPError:
            History.complete(op, None)
            return None
        History.complete(op, r.status_code, r.json().get("order_id") if r.status_code == 201 else None, r.headers.get("X-Meridian-Region"))
        return r


def check(run: Run, history: History, user: str) -> dict[str, Any]:
    result = history.check_orders(run.orders(user))
    assert result["pass"], result
    return result


class TestExactlyOnceHistories:
    def test_concurrent_duplicates_beside_a_background_writer(self, run: Run) -> None:
        """The attack: 40 keys x 2 identical concurrent posts to eu-west-1 beside a writer of other keys. Every
        acknowledged order is stored in both replicas, one order per key, both answers of a pair the same id."""
        history = History()

        async def scenario() -> int:
            client = Client(run, history)
            user = await client.user(WEST)
            stop, background = asyncio.Event(), []

            async def writer() -> None:
                while not stop.is_set() or len(background) < 30:  # writes before, during and after the duplicates
                    r = await client.order(WEST, user, f"bg-{len(background)}", {"item": "bg", "qty": 1})
                    background.append(r is not None and r.status_code == 201)

            task = asyncio.create_task(writer())
            await asyncio.sleep(0.3)
            await asyncio.gather(*(client.order(WEST, user, f"dup-{i}") for i in range(40) for _ in range(2)))
            stop.set()
            await task
            await client.http.aclose()
            self.user = user
            return len(background)

        background = asyncio.run(scenario())
        run.drained()
        result = check(run, history, self.user)
        assert result["ok"] == 80 + background and result["unknown"] == result["failed"] == 0
        assert {len(items) for items in run.orders(self.user).values()} == {40 + background}
        assert run.status()["replication"]["gaps"] == 0

    def test_same_keys_in_both_regions_during_a_partition(self, run: Run) -> None:
        """eu-west-1 | eu-central-1 cut: each side executes the same 20 keys (central as a failover). The replicas
        diverge during the partition (the fault took effect), and converge after heal to one order per key, with
        the id both sides answered; the double executions are merged, not recorded as conflicts."""
        history = History()
        before = run.status()["replication"]["duplicates_merged"]

        async def setup() -> str:
            client = Client(run, history)
            user = await client.user(WEST)
            await client.http.aclose()
            return user

        user = asyncio.run(setup())
        run.drained()
        control(run.state_dir, "POST", "partition", {"a": WEST, "b": CENTRAL})
        try:
            async def scenario() -> list[httpx.Response | None]:
                client = Client(run, history)
                answers = await asyncio.gather(*(client.order(place, user, f"split-{i}") for i in range(20) for place in (WEST, CENTRAL)))
                await client.http.aclose()
                return answers

            answers = asyncio.run(scenario())
            assert all(a is not None and a.status_code == 201 for a in answers)
            assert {a.headers["X-Meridian-Region"] for a in answers if a is not None} == {WEST, CENTRAL}
            during = run.orders(user)
            assert {o["created_region"] for o in during[WEST]} == {WEST} and {o["created_region"] for o in during[CENTRAL]} == {CENTRAL}
        finally:
            control(run.state_dir, "POST", "heal", {})
        run.drained()
        result = check(run, history, user)
        assert result["ok"] == 40 and result["keys"] == 20
        after = run.orders(user)
        assert sorted(after[WEST], key=lambda o: o["order_id"]) == sorted(after[CENTRAL], key=lambda o: o["order_id"])
        assert run.status()["replication"]["duplicates_merged"] - before >= 20

        async def reuse() -> httpx.Response | None:
            client = Client(run, History())
            r = await client.order(CENTRAL, user, "split-0", {"item": "other", "qty": 9})
            await client.http.aclose()
            return r

        r = asyncio.run(reuse())
        assert r is not None and r.status_code == 409 and r.json()["error"] == "idempotency_mismatch"

    def test_slow_forward_that_times_out(self, run: Run) -> None:
        """The home region's answer takes 3 s (> the 2 s forward timeout) after it committed. An order is idempotent
        by key: executed again in eu-central-1 with the same id, one order in every replica. A user creation is not:
        504 outcome_unknown, and exactly one user exists."""
        history = History()

        async def setup() -> str:
            client = Client(run, history)
            user = await client.user(WEST)
            await client.http.aclose()
            return user

        user = asyncio.run(setup())
        run.drained()
        email = f"slow-{time.time_ns()}@example.com"
        control(run.state_dir, "POST", "slow", {"a": CENTRAL, "b": WEST, "seconds": 3})
        control(run.state_dir, "POST", "slow", {"a": US, "b": WEST, "seconds": 3})
        try:
            async def scenario() -> tuple[httpx.Response | None, httpx.Response]:
                client = Client(run, history)
                order = await client.order(CENTRAL, user, "slow-1")
                created = await client.http.post("/v1/users", json={"email": email, "name": "S", "residency": "eu"},
                                                 headers={"X-Meridian-Client-Region": US})
                await client.http.aclose()
                return order, created

            order, created = asyncio.run(scenario())
        finally:
            control(run.state_dir, "POST", "slow", {"a": CENTRAL, "b": WEST, "seconds": 0})
            control(run.state_dir, "POST", "slow", {"a": US, "b": WEST, "seconds": 0})
        assert order is not None and order.status_code == 201 and order.headers["X-Meridian-Region"] == CENTRAL
        assert created.status_code == 504 and created.json()["error"] == "outcome_unknown"
        # The home region executes the creation whatever the caller was told; on a busy machine it may
        # commit a few seconds after the caller gave up, so wait for it rather than for a fixed time.
        deadline = time.monotonic() + 20
        while not [u for u in run.scan("meridian-e2e-eu-users", WEST) if u["email"] == email] and time.monotonic() < deadline:
            time.sleep(0.2)
        run.drained()
        check(run, history, user)
        orders = run.orders(user)
        assert [o["order_id"] for o in orders[WEST]] == [o["order_id"] for o in orders[CENTRAL]] == [order.json()["order_id"]]
        for region in (WEST, CENTRAL):
            assert len([u for u in run.scan("meridian-e2e-eu-users", region) if u["email"] == email]) == 1
