"""The pure parts of the library: IDs, HLC, LWW and conflicts, routing, sessions, peers, health."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meridian.conflicts import concurrent, conflict_between, merge
from meridian.health import HealthView
from meridian.hlc import HLC, ClockDriftError, Timestamp, Version
from meridian.ids import IdError, new_id, parse_id
from meridian.keys import KeyRing
from meridian.peers import MAX_FUTURE_SECONDS, PeerAuthError, sign_request, verify_request
from meridian.routing import decide
from meridian.sessions import SessionToken, TokenError, satisfied, sign, verify

REGIONS = ["us-east-1", "eu-west-1", "eu-central-1", "ap-southeast-1"]


class TestIds:
    def test_parse_back(self) -> None:
        """An id parses back to its time and origin region."""
        i = new_id("ord", "eu-central-1", now_ms=1_700_000_000_123)
        p = parse_id(i)
        assert (p.prefix, p.timestamp_ms, p.region) == ("ord", 1_700_000_000_123, "eu-central-1")

    def test_unique_and_ordered_under_threads(self) -> None:
        """8 threads x 2000 ids: all unique; each thread's ids strictly increase."""
        def batch(_: int) -> list[str]:
            return [new_id("usr", "us-east-1") for _ in range(2000)]

        with ThreadPoolExecutor(8) as pool:
            batches = list(pool.map(batch, range(8)))
        everything = [i for b in batches for i in b]
        assert len(set(everything)) == len(everything)
        assert all(b == sorted(b) for b in batches)

    def test_time_order_across_regions(self) -> None:
        a = new_id("ord", "us-east-1", now_ms=1000)
        b = new_id("ord", "ap-southeast-1", now_ms=2000)
        assert a < b

    def test_derived_id_is_a_function_of_its_parts(self) -> None:
        """Same (user, key) -> same id in every process; any other part -> another id; it keeps the region."""
        from meridian.ids import derived_id

        a = derived_id("ord", "eu-west-1", "usr_1", "key")
        assert a == derived_id("ord", "eu-west-1", "usr_1", "key")
        others = {derived_id("ord", "eu-west-1", "usr_1", "key2"), derived_id("ord", "eu-west-1", "usr_2", "key"),
                  derived_id("ord", "eu-central-1", "usr_1", "key"), derived_id("ord", "eu-west-1", "usr_1k", "ey")}
        assert a not in others and len(others) == 4
        parsed = parse_id(a)
        assert (parsed.prefix, parsed.region, parsed.derived, parsed.timestamp_ms) == ("ord", "eu-west-1", True, None)
        assert not parse_id(new_id("ord", "eu-west-1")).derived

    @settings(max_examples=100)
    @given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
    def test_derived_ids_of_different_parts_differ(self, a: str, b: str, c: str, d: str) -> None:
        from meridian.ids import derived_id

        assert (derived_id("ord", "us-east-1", a, b) == derived_id("ord", "us-east-1", c, d)) == ((a, b) == (c, d))

    @pytest.mark.parametrize("bad", ["", "ord_123_us-east-1", "ORD_0000000000000000000000000_us-east-1", "usr_01HX"])
    def test_rejects_non_ids(self, bad: str) -> None:
        with pytest.raises(IdError):
            parse_id(bad)


class TestHlc:
    @settings(max_examples=200)
    @given(st.lists(st.tuples(st.sampled_from(["tick", "now", "recv"]), st.integers(0, 50), st.integers(0, 5)), max_size=60))
    def test_monotonic_under_any_interleaving(self, ops: list[tuple[str, int, int]]) -> None:
        """Whatever the wall clock and the remote timestamps do, the HLC never goes backwards."""
        wall = [1000]
        clock = HLC(wall_clock=lambda: wall[0], max_drift_ms=10_000)
        last = Timestamp(0, 0)
        for op, delta, logical in ops:
            if op == "tick":
                wall[0] += delta - 10  # the wall clock may step back too
                continue
            ts = clock.now() if op == "now" else clock.update(Timestamp(wall[0] + delta, logical))
            assert ts > last
            last = ts

    def test_receive_is_after_remote(self) -> None:
        clock = HLC(wall_clock=lambda: 1000)
        assert clock.update(Timestamp(1500, 7)) > Timestamp(1500, 7)

    def test_drift_refused(self) -> None:
        clock = HLC(wall_clock=lambda: 1000, max_drift_ms=100)
        with pytest.raises(ClockDriftError, match="ahead"):
            clock.update(Timestamp(5000, 0))
        assert clock.now().wall == 1000, "the refused timestamp was not adopted"

    def test_version_order_and_encoding(self) -> None:
        a, b = Version(Timestamp(5, 1), "eu-west-1"), Version(Timestamp(5, 1), "us-east-1")
        assert a < b and (a.encode() < b.encode())
        assert Version.decode(b.encode()) == b


def item(wall: int, region: str, base: str | None = None, value: str = "") -> dict[str, Any]:
    return {"version": Version(Timestamp(wall), region).encode(), "base": base, "value": value or f"{wall}{region}"}


items = st.builds(item, st.integers(1, 20), st.sampled_from(REGIONS))


class TestLww:
    @given(items, items)
    def test_commutative(self, a: dict[str, Any], b: dict[str, Any]) -> None:
        assert merge(a, b)["version"] == merge(b, a)["version"]

    @given(items, items, items)
    def test_associative(self, a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
        assert merge(merge(a, b), c)["version"] == merge(a, merge(b, c))["version"]

    @given(items)
    def test_idempotent(self, a: dict[str, Any]) -> None:
        assert merge(a, a) == a

    @settings(max_examples=100)
    @given(st.lists(items, min_size=1, max_size=6), st.data())
    def test_replicas_converge_for_any_delivery_order(self, writes: list[dict[str, Any]], data: st.DataObject) -> None:
        """Three replicas receiving the same writes in different orders end with the same item."""
        finals = []
        for _ in range(3):
            order = data.draw(st.permutations(writes))
            state = None
            for w in order:
                state = merge(state, w)
            finals.append(state["version"] if state else None)
        assert len(set(finals)) == 1

    def test_conflict_only_when_concurrent(self) -> None:
        old = item(1, "eu-west-1")
        seen = item(2, "eu-central-1", base=old["version"])
        assert conflict_between("users", "u1", old, seen, region="eu-west-1") is None
        blind = item(2, "eu-central-1", base=None)
        record = conflict_between("users", "u1", old, blind, region="eu-west-1")
        assert record is not None and record.winner is blind and record.loser is old
        again = conflict_between("users", "u1", old, blind, region="eu-central-1")
        assert again is not None and again.conflict_id == record.conflict_id, "the same conflict has one id"
        assert not concurrent(old, old)
        later_same_region = item(3, "eu-west-1", base=item(2, "eu-west-1")["version"])
        assert not concurrent(old, later_same_region), "one region's replica serializes its own writes"


class TestRouting:
    EU = ["eu-west-1", "eu-central-1"]

    @pytest.mark.parametrize("here", REGIONS)
    @pytest.mark.parametrize("home", ["eu-west-1", "eu-central-1"])
    @pytest.mark.parametrize("health", list(itertools.product([True, False], repeat=2)))
    @pytest.mark.parametrize("kind", ["read", "write"])
    @pytest.mark.parametrize("token_ok", [True, False])
    def test_every_combination_stays_in_zone(self, here: str, home: str, health: tuple[bool, bool], kind: str, token_ok: bool) -> None:
        """Whatever the combination, execution never leaves the zone, and a healthy home takes writes."""
        healthy = dict(zip(self.EU, health, strict=True))
        d = decide(kind=kind, here=here, home=home, zone_regions=self.EU, healthy=healthy,  # type: ignore[arg-type]
                   token_region=home, token_satisfied=token_ok)
        assert d.reason
        if d.action == "unavailable":
            session_unreachable = kind == "read" and not token_ok and not (healthy[home] or home == here)
            assert session_unreachable or not any(ok or r == here for r, ok in healthy.items())
            return
        if kind == "read" and not token_ok:
            assert d.region == home, "a read the local replica cannot satisfy goes where the session wrote"
        assert d.region in self.EU
        home_ok = healthy[home] or home == here
        if kind == "write":
            assert d.region == home if home_ok else d.action == "failover"
        if kind == "read" and here in self.EU and token_ok:
            assert d.action == "local" and d.region == here

    def test_read_never_stale_when_session_region_unreachable(self) -> None:
        """Read-your-writes over availability: no stale local answer, a clear 503 instead."""
        d = decide(kind="read", here="eu-central-1", home="eu-west-1", zone_regions=self.EU, healthy={"eu-west-1": False},
                   token_region="eu-west-1", token_satisfied=False)
        assert d.action == "unavailable" and "eu-west-1" in d.reason

    def test_stale_read_goes_to_token_region(self) -> None:
        d = decide(kind="read", here="eu-central-1", home="eu-west-1", zone_regions=self.EU, healthy={}, token_region="eu-west-1", token_satisfied=False)
        assert (d.action, d.region) == ("forward", "eu-west-1")

    def test_outside_zone_never_local(self) -> None:
        d = decide(kind="read", here="us-east-1", home="eu-west-1", zone_regions=self.EU, healthy={})
        assert (d.action, d.region) == ("forward", "eu-west-1")

    def test_decision_cost(self) -> None:
        """Sanity bound only; bench/service.py measures it."""
        import time

        start = time.perf_counter()
        for _ in range(2000):
            decide(kind="write", here="us-east-1", home="eu-west-1", zone_regions=self.EU, healthy={"eu-west-1": False})
        assert (time.perf_counter() - start) / 2000 < 0.005


class TestSessions:
    KEY = b"k" * 32

    def test_round_trip_and_watermarks(self) -> None:
        t = SessionToken(region="eu-west-1", hlc=Timestamp(5), scope="u1").after_write(region="eu-west-1", hlc=Timestamp(7), scope="u1", table="users")
        back = verify(sign(t, self.KEY), self.KEY)
        assert back.watermark("users") == Version(Timestamp(7), "eu-west-1") and back.region == "eu-west-1"
        assert satisfied(back, here="eu-central-1", scope="u1", table="users", local=Timestamp(7))
        assert not satisfied(back, here="eu-central-1", scope="u1", table="users", local=Timestamp(6))
        assert satisfied(back, here="eu-central-1", scope="u2", table="users", local=None), "other scope: no constraint"

    def test_last_write_elsewhere_does_not_excuse_a_stale_table(self) -> None:
        """Users written in eu-west-1, then an order in eu-central-1: eu-central-1 still needs the users write."""
        t = SessionToken(region="eu-west-1", hlc=Timestamp(5), scope="u1")
        t = t.after_write(region="eu-west-1", hlc=Timestamp(7), scope="u1", table="users")
        t = t.after_write(region="eu-central-1", hlc=Timestamp(9), scope="u1", table="orders")
        assert t.region == "eu-central-1" and t.watermark("users") == Version(Timestamp(7), "eu-west-1")
        assert not satisfied(t, here="eu-central-1", scope="u1", table="users", local=Timestamp(6))
        assert satisfied(t, here="eu-central-1", scope="u1", table="orders", local=Timestamp(9))

    def test_forged_expired_malformed(self) -> None:
        t = SessionToken(region="eu-west-1", hlc=Timestamp(5), scope="u1")
        with pytest.raises(TokenError, match="signature"):  # same key id, another secret
            verify(sign(t, KeyRing.single(b"o" * 32, kid=KeyRing.single(self.KEY).current)), self.KEY)
        with pytest.raises(TokenError, match="no longer accepted"):  # a key id the ring does not hold
            verify(sign(t, b"o" * 32), self.KEY)
        with pytest.raises(TokenError, match="expired"):
            verify(sign(t, self.KEY, now=0), self.KEY)
        with pytest.raises(TokenError, match="malformed"):
            verify("not-a-token", self.KEY)
        good = sign(t, self.KEY)
        body, mac = good.split(".")
        with pytest.raises(TokenError):
            verify(body[:-2] + "AA." + mac, self.KEY)


class TestPeersAndHealth:
    def test_signature(self) -> None:
        ring = KeyRing.single(b"k" * 32)
        h = sign_request(ring, "POST", "/v1/users", b"{}", "us-east-1", now=100)
        assert verify_request(ring, "POST", "/v1/users", b"{}", h, now=110)[0] == "us-east-1"
        with pytest.raises(PeerAuthError):
            verify_request(ring, "POST", "/v1/users", b"{ }", h, now=110)  # body changed
        with pytest.raises(PeerAuthError, match="old"):
            verify_request(ring, "POST", "/v1/users", b"{}", h, now=1000)
        with pytest.raises(PeerAuthError, match="ahead"):
            verify_request(ring, "POST", "/v1/users", b"{}", h, now=100 - MAX_FUTURE_SECONDS - 0.5)

    def test_threshold(self) -> None:
        view = HealthView(["a"], failure_threshold=3)
        assert view.record("a", False) and view.record("a", False)
        assert not view.record("a", False)
        assert not view.record("a", True) and not view.record("a", True)
        assert view.record("a", True)


class TestCounterShards:
    def test_concurrent_increments_sum(self) -> None:
        """Per-region shards never lose an increment, unlike one shared item under LWW."""
        from meridian.counters import ShardedCounter

        counter = ShardedCounter()
        threads = [threading.Thread(target=lambda r=r: [counter.add(r, 1) for _ in range(500)]) for r in REGIONS]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        merged = ShardedCounter.merge(counter.shards, {"eu-west-1": 10})
        assert counter.value() == 2000 and merged["eu-west-1"] == 500
        assert ShardedCounter.merge(merged, counter.shards) == merged, "merge is idempotent"
