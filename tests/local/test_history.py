"""The history checker (meridian_local.history) on hand-made histories and replica snapshots: each check
passes on a faithful store and fails on the specific lie it exists to catch. No processes."""

from __future__ import annotations

from typing import Any

import pytest

from meridian_local.history import History, Op

W, C, US = "eu-west-1", "eu-central-1", "us-east-1"
TABLES = {"m-t-eu-users": [W, C], "m-t-eu-orders": [W, C], "m-t-directory": [US, W, C], "m-t-global-counters": [US, W, C]}
ZONES = {"eu": [W, C], "global": [US, W, C]}


def v(wall: int, region: str = W) -> str:
    return f"{wall}.000000@{region}"


class Store:
    """A snapshot: (table, region) -> items; ``put`` writes the same item into every replica by default."""

    def __init__(self) -> None:
        self.items: dict[tuple[str, str], list[dict[str, Any]]] = {(t, r): [] for t, rs in TABLES.items() for r in rs}

    def put(self, table: str, item: dict[str, Any], regions: list[str] | None = None) -> None:
        for region in regions or TABLES[table]:
            self.items[(table, region)].append(dict(item))


def acked(h: History, kind: str, key: tuple[str, ...], value: str | None, *, status: int = 200, region: str = W, at: float = 100.0,
          body: Any = None, floor: str | None = None) -> Op:
    op = h.invoke("c1", kind, key, body, place=W, floor=floor)
    op.invoked = at
    History.complete(op, status, value, region)
    op.completed = at + 0.01
    return op


def user_history(store: Store, h: History, user: str = "u1") -> None:
    h.zones[user] = "eu"
    acked(h, "create", (user,), v(1000), status=201)
    store.put("m-t-eu-users", {"user_id": user, "version": v(1000), "zone": "eu"})
    store.put("m-t-directory", {"user_id": user, "zone": "eu"})


def order_item(user: str, key: str, order_id: str) -> dict[str, Any]:
    return {"user_id": user, "order_id": order_id, "idempotency_key": key, "version": v(2000)}


class TestLostWrites:
    def test_every_acknowledged_write_present_passes(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "update", ("u1",), v(1500))
        store.items[("m-t-eu-users", W)][0]["version"] = store.items[("m-t-eu-users", C)][0]["version"] = v(1600)  # newer is fine
        acked(h, "order", ("u1", "k1"), "o1", status=201)
        store.put("m-t-eu-orders", order_item("u1", "k1", "o1"))
        result = h.check(store.items, TABLES, ZONES)["acknowledged_writes_lost"]
        assert result["pass"] and result["checked"] == 2 + 3 + 2

    def test_an_acknowledged_order_missing_in_one_replica_fails(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "order", ("u1", "k1"), "o1", status=201)
        store.put("m-t-eu-orders", order_item("u1", "k1", "o1"), regions=[W])
        result = h.check(store.items, TABLES, ZONES)["acknowledged_writes_lost"]
        assert not result["pass"] and result["lost_by_bug"] == 1
        assert "eu-central-1" in result["examples"][0]

    def test_an_older_version_than_acknowledged_fails(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "update", ("u1",), v(1500))
        result = h.check(store.items, TABLES, ZONES)["acknowledged_writes_lost"]
        assert result["lost_by_bug"] == 2  # both replicas still hold version 1000

    def test_unknown_outcomes_are_never_counted_lost(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "order", ("u1", "k1"), None, status=504)
        acked(h, "update", ("u1",), None, status=None)  # type: ignore[arg-type]
        assert h.check(store.items, TABLES, ZONES)["acknowledged_writes_lost"]["pass"]
        assert h.counts()["order"]["unknown"] == 1 and h.counts()["update"]["unknown"] == 1


class TestHardLossClassification:
    def loss(self, destroyed: list[dict[str, Any]], at: float = 200.0, region: str = W) -> list[dict[str, Any]]:
        return [{"region": region, "at": at, "destroyed": destroyed}]

    def test_destroyed_unreplicated_writes_are_the_rpo_not_a_bug(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "update", ("u1",), v(1900), at=199.0)  # acknowledged 1 s before the loss, never replicated
        acked(h, "order", ("u1", "k9"), "o9", status=201, at=199.5)
        destroyed = [{"table": "m-t-eu-users", "key": {"user_id": "u1"}, "version": v(1900), "survivor_version": v(1000)},
                     {"table": "m-t-eu-orders", "key": {"user_id": "u1", "order_id": "o9"}, "version": v(1950), "survivor_version": None}]
        result = h.check(store.items, TABLES, ZONES, losses=self.loss(destroyed))["acknowledged_writes_lost"]
        assert result["pass"] and result["lost_by_bug"] == 0
        assert result["lost_unreplicated"] == 2
        assert result["rpo_seconds"] == pytest.approx(1.0 - 0.01)

    def test_a_write_the_survivors_already_had_is_a_bug_if_missing(self) -> None:
        """The survivors held this version already (it had replicated): losing it is not the disaster's doing."""
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "update", ("u1",), v(1500), at=150.0)
        destroyed = [{"table": "m-t-eu-users", "key": {"user_id": "u1"}, "version": v(1900), "survivor_version": v(1500)}]
        result = h.check(store.items, TABLES, ZONES, losses=self.loss(destroyed))["acknowledged_writes_lost"]
        assert result["lost_by_bug"] == 2 and result["lost_unreplicated"] == 0

    def test_writes_after_the_loss_or_in_another_region_are_not_excused(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "order", ("u1", "k1"), "o1", status=201, region=C, at=150.0)
        acked(h, "order", ("u1", "k2"), "o2", status=201, region=W, at=250.0)
        destroyed = [{"table": "m-t-eu-orders", "key": {"user_id": "u1", "order_id": o}, "version": v(1), "survivor_version": None}
                     for o in ("o1", "o2")]
        result = h.check(store.items, TABLES, ZONES, losses=self.loss(destroyed))["acknowledged_writes_lost"]
        assert result["lost_by_bug"] == 4 and result["lost_unreplicated"] == 0

    def test_a_read_older_than_a_destroyed_write_is_the_disaster(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "update", ("u1",), v(1900), at=199.0)
        acked(h, "update", ("u1",), v(3000), region=C, at=300.0)
        store.items[("m-t-eu-users", W)][0]["version"] = store.items[("m-t-eu-users", C)][0]["version"] = v(3000, C)
        acked(h, "read", ("u1",), v(1000), at=250.0, floor=v(1900))
        destroyed = [{"table": "m-t-eu-users", "key": {"user_id": "u1"}, "version": v(1900), "survivor_version": v(1000)}]
        checks = h.check(store.items, TABLES, ZONES, losses=self.loss(destroyed))
        assert checks["read_your_writes"]["pass"] and checks["read_your_writes"]["after_hard_loss"] == 1
        assert checks["acknowledged_writes_lost"]["lost_unreplicated"] == 1  # superseded later, still counted: it was lost


class TestExactlyOnce:
    def test_two_orders_for_one_key_fail(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "order", ("u1", "k1"), "o1", status=201)
        store.put("m-t-eu-orders", order_item("u1", "k1", "o1"))
        store.put("m-t-eu-orders", order_item("u1", "k1", "o2"), regions=[C])
        result = h.check(store.items, TABLES, ZONES)["exactly_once_orders"]
        assert not result["pass"] and len(result["duplicated"]) == 1 and "eu-central-1" in result["duplicated"][0]

    def test_two_answers_with_different_ids_fail(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        for order_id in ("o1", "o2"):
            acked(h, "order", ("u1", "k1"), order_id, status=201)
            store.put("m-t-eu-orders", order_item("u1", f"k-{order_id}", order_id))
        result = h.check(store.items, TABLES, ZONES)["exactly_once_orders"]
        assert not result["pass"] and result["answers_differ"]


class TestReadYourWrites:
    def test_a_read_older_than_the_sessions_write_fails(self) -> None:
        store, h = Store(), History()
        user_history(store, h)
        acked(h, "read", ("u1",), v(1000), floor=v(1500))
        acked(h, "read", ("u1",), v(1500), floor=v(1500))
        acked(h, "read", ("u1",), None, status=503, floor=v(1500))  # refused, not stale: allowed
        result = h.check(store.items, TABLES, ZONES)["read_your_writes"]
        assert not result["pass"] and result["value"] == 1 and result["reads_checked"] == 2


class TestCounters:
    @pytest.mark.parametrize(("stored", "ok"), [(5, True), (7, True), (4, False), (8, False)])
    def test_totals_within_acknowledged_and_unknown(self, stored: int, ok: bool) -> None:
        """5 acknowledged, 2 unknown: every replica's total must be within [5, 7]."""
        store, h = Store(), History()
        for status in (200,) * 5 + (502, None):
            acked(h, "increment", ("c",), None, status=status, body={"by": 1})  # type: ignore[arg-type]
        store.put("m-t-global-counters", {"name": "c", "shard": W, "value": stored - 1})
        store.put("m-t-global-counters", {"name": "c", "shard": C, "value": 1})
        result = h.check(store.items, TABLES, ZONES)["counter_bounds"]
        assert result["pass"] is ok
        assert result["counters"]["c"]["bounds"] == [5, 7]

    def test_increments_a_hard_loss_destroyed_lower_the_floor(self) -> None:
        store, h = Store(), History()
        for _ in range(5):
            acked(h, "increment", ("c",), None, status=200, body={"by": 1})
        store.put("m-t-global-counters", {"name": "c", "shard": W, "value": 3})
        losses = [{"region": W, "at": 1e12, "destroyed": [{"table": "m-t-global-counters", "key": {"name": "c", "shard": W},
                                                            "version": v(9), "value": 5, "survivor_value": 3}]}]
        assert not h.check(store.items, TABLES, ZONES)["counter_bounds"]["pass"]
        result = h.check(store.items, TABLES, ZONES, losses=losses)["counter_bounds"]
        assert result["pass"] and result["counters"]["c"]["destroyed_by_hard_loss"] == 2


def test_since_keeps_only_the_window() -> None:
    h = History()
    acked(h, "update", ("u1",), v(1), at=10.0)
    acked(h, "update", ("u1",), v(2), at=20.0)
    assert [op.value for op in h.since(15.0).ops] == [v(2)]


def test_an_order_a_hard_loss_destroyed_is_not_an_exactly_once_failure() -> None:
    store, h = Store(), History()
    user_history(store, h)
    acked(h, "order", ("u1", "k9"), "o9", status=201, at=199.5)
    losses = [{"region": W, "at": 200.0, "destroyed": [{"table": "m-t-eu-orders", "key": {"user_id": "u1", "order_id": "o9"},
                                                        "version": v(1950), "survivor_version": None}]}]
    assert not h.check(store.items, TABLES, ZONES)["exactly_once_orders"]["pass"]
    checks = History.check(h, store.items, TABLES, ZONES, losses=losses)
    assert checks["exactly_once_orders"]["pass"] and checks["acknowledged_writes_lost"]["lost_unreplicated"] == 1
