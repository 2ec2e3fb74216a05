"""The fenced ownership handover (meridian.ownership) through the regions' real apps.

Three regions (us-east-1, eu-west-1, eu-central-1) are not an MRSC set: each strong key has one owner. The
tests copy the strong tables between regions where global-table replication would (``replicate``), so that
the barrier can be shown waiting for it."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from test_api import REGIONS, Cluster, new_user
from test_strong import many, reserve_kw, stock

from meridian.ownership import RESERVED_PREFIX, HandoverError, OwnershipMap, handover, home_owner, owner_region, read_map
from meridian.strong import NotOwner, OutOfStock

STRONG = ("stock", "reservations", "claims")


def client(region: str) -> Any:
    return boto3.client("dynamodb", region_name=region)


def replicate(cluster: Cluster, source: str, targets: list[str] | None = None) -> None:
    """Every strong item of ``source`` into the others, as replication would (the map excepted: the
    handover writes it where it goes)."""
    zone = cluster.topology.global_zone.name
    for logical in STRONG:
        name = cluster.topology.table_name(logical, zone)
        for item in client(source).scan(TableName=name)["Items"]:
            if item.get("sku", {}).get("S", "").startswith(RESERVED_PREFIX):
                continue
            for target in targets or [r for r in REGIONS if r != source]:
                client(target).put_item(TableName=name, Item=item)


def stored(cluster: Cluster, region: str, sku: str) -> dict[str, Any]:
    """The stock item as ``region``'s replica holds it (no routing, no fence)."""
    name = cluster.topology.table_name("stock", cluster.topology.global_zone.name)
    item = client(region).get_item(TableName=name, Key={"sku": {"S": sku}}, ConsistentRead=True)["Item"]
    return {"available": int(item["available"]["N"]), "reserved": int(item["reserved"]["N"])}


def sku_owned_by(region: str, prefix: str = "sku") -> str:
    return next(s for s in (f"{prefix}-{i}" for i in range(1000)) if home_owner(s, REGIONS) == region)


def users(cluster: Cluster) -> list[str]:
    return [new_user(cluster, r, residency="global")["user_id"] for r in REGIONS]


@pytest.fixture
def fresh(cluster: Cluster) -> Cluster:
    """Every region reads its map on every request (the fence itself never depends on it: see
    test_fence_holds_against_a_stale_map)."""
    for service in cluster.services.values():
        service.strong.map_ttl = 0.0
    return cluster


def reserve_everywhere(c: Cluster, people: list[str], sku: str, keys: list[str]) -> Counter[int]:
    calls = [(REGIONS[i % 3], "POST", f"/v1/users/{people[i % 3]}/reservations", reserve_kw(c, people[i % 3], sku, k))
             for i, k in enumerate(keys)]
    return Counter(a.status_code for a in asyncio.run(many(c, calls)))


OLD = "us-east-1"


class TestEvacuatedOwner:
    def test_keys_move_only_after_fence_and_barrier_and_are_never_sold_twice(self, fresh: Cluster) -> None:
        cluster, sku = fresh, sku_owned_by(OLD)
        people = users(cluster)
        stock(cluster, sku, 10, region="eu-west-1")
        assert reserve_everywhere(cluster, people, sku, ["k0", "k1", "k2"]) == {201: 3}
        first = cluster.call("eu-west-1", "POST", f"/v1/users/{people[1]}/reservations", **reserve_kw(cluster, people[1], sku, "k1"))
        assert first.status_code == 201

        # Fenced, but the old owner's writes have not reached the new owner: nothing moves yet.
        with pytest.raises(HandoverError, match="have not reached their new owner"):
            handover(cluster.topology, client, exclude=[OLD], timeout=0.3)
        fenced = read_map(client(OLD), "meridian-api-stock", OLD)
        assert (fenced.epoch, fenced.excluded, fenced.state, fenced.previous) == (1, (OLD,), "fencing", ())
        # The old owner refuses its keys now, from anywhere; its replica is what it was.
        assert reserve_everywhere(cluster, people, sku, ["f0", "f1", "f2"]) == {503: 3}
        assert stored(cluster, OLD, sku) == {"available": 7, "reserved": 3}

        replicate(cluster, OLD)
        report = handover(cluster.topology, client, exclude=[OLD], timeout=5)
        new = report.after.owner(sku, REGIONS)
        assert report.fenced == (OLD,) and report.items_checked >= 4 and new != OLD
        assert all(read_map(client(r), "meridian-api-stock", r).state == "active" for r in REGIONS)

        # The new owner sells what is left, and only that, to every region at once.
        assert reserve_everywhere(cluster, people, sku, [f"n{i}" for i in range(20)]) == {201: 7, 409: 13}
        for region in REGIONS:
            assert cluster.call(region, "GET", f"/v1/stock/{sku}").json() == {"sku": sku, "available": 0, "reserved": 10}
        assert stored(cluster, OLD, sku) == {"available": 7, "reserved": 3}  # the old owner wrote nothing more

        # A key used before the handover answers the same reservation after it.
        again = cluster.call("eu-central-1", "POST", f"/v1/users/{people[1]}/reservations", **reserve_kw(cluster, people[1], sku, "k1"))
        assert again.status_code == 201 and again.json() == first.json() and again.headers["Idempotent-Replayed"] == "true"
        # And it is released where the sku is owned now: the unit goes back once.
        rid = first.json()["reservation_id"]
        for region in ("eu-central-1", "eu-west-1"):  # twice: the second finds it released
            released = cluster.call(region, "DELETE", f"/v1/users/{people[1]}/reservations/{rid}")
            assert released.status_code == 200 and released.json()["status"] == "released"
        assert cluster.call("us-east-1", "GET", f"/v1/stock/{sku}").json() == {"sku": sku, "available": 1, "reserved": 9}

    def test_fence_holds_against_a_stale_map(self, cluster: Cluster) -> None:
        """The old owner's tasks believe the old epoch for an hour: the fence in its replica still refuses them."""
        sku = sku_owned_by(OLD)
        stock(cluster, sku, 5, region=OLD)
        old = cluster.services[OLD].strong
        old.map_ttl = 3600.0
        assert old.ownership().epoch == 0
        replicate(cluster, OLD)
        handover(cluster.topology, client, exclude=[OLD], timeout=5)
        assert old.ownership().epoch == 0  # still the stale copy
        with pytest.raises(NotOwner):
            old.reserve("u1", sku, 1, "rsv_x")
        with pytest.raises(NotOwner):
            old.claim("c" * 64, "u1")
        with pytest.raises(NotOwner):
            old.get_stock(sku)
        assert stored(cluster, OLD, sku) == {"available": 5, "reserved": 0}

    def test_an_unreachable_loser_moves_nothing(self, cluster: Cluster) -> None:
        class Down:
            def __getattr__(self, _name: str) -> Any:
                raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")

        with pytest.raises(HandoverError, match="cannot be fenced"):
            handover(cluster.topology, lambda r: Down() if r == OLD else client(r), exclude=[OLD])
        assert all(read_map(client(r), "meridian-api-stock", r).epoch == 0 for r in REGIONS if r != OLD)
        with pytest.raises(HandoverError, match="not regions of the stack"):
            handover(cluster.topology, client, exclude=["mars-north-1"])
        with pytest.raises(HandoverError, match="at least one region"):
            handover(cluster.topology, client, exclude=REGIONS)

    def test_restore_gives_the_keys_back_once_the_new_owners_writes_reach_it(self, fresh: Cluster) -> None:
        cluster, sku = fresh, sku_owned_by(OLD)
        people = users(cluster)
        stock(cluster, sku, 6, region=OLD)
        replicate(cluster, OLD)
        handover(cluster.topology, client, exclude=[OLD], timeout=5)
        assert reserve_everywhere(cluster, people, sku, ["a", "b"]) == {201: 2}
        with pytest.raises(HandoverError, match="have not reached"):
            handover(cluster.topology, client, exclude=[], timeout=0.3)
        assert reserve_everywhere(cluster, people, sku, ["c"]) == {503: 1}  # every loser fenced meanwhile
        for region in REGIONS:
            if region != OLD:
                replicate(cluster, region, [OLD])
        report = handover(cluster.topology, client, exclude=[], timeout=5)
        assert report.after.epoch == 2 and report.after.excluded == () and set(report.fenced) == set(REGIONS) - {OLD}
        assert report.after.owner(sku, REGIONS) == OLD
        assert reserve_everywhere(cluster, people, sku, [f"r{i}" for i in range(9)]) == {201: 4, 409: 5}
        assert stored(cluster, OLD, sku) == {"available": 0, "reserved": 6}

    def test_a_write_under_an_older_epoch_than_the_item_is_refused_not_out_of_stock(self, cluster: Cluster) -> None:
        sku = sku_owned_by(OLD)
        stock(cluster, sku, 5, region=OLD)
        name = cluster.topology.table_name("stock", cluster.topology.global_zone.name)
        client(OLD).update_item(TableName=name, Key={"sku": {"S": sku}}, UpdateExpression="SET epoch = :e",
                                ExpressionAttributeValues={":e": {"N": "7"}})
        with pytest.raises(NotOwner, match="epoch 7"):
            cluster.services[OLD].strong.reserve("u1", sku, 1, "rsv_y")
        with pytest.raises(OutOfStock):
            cluster.services[OLD].strong.reserve("u1", sku_owned_by(OLD, "none"), 1, "rsv_z")


class TestCommand:
    def test_meridian_ownership_show_move_and_return(self, cluster: Cluster, tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
        """The operator's path: `meridian ownership` against the stack's regional endpoints (moto here)."""
        import json

        from meridian_cli.main import main

        stack = tmp_path / "Pulumi.api.yaml"
        stack.write_text("config:\n  meridian:regions: [us-east-1, eu-west-1, eu-central-1]\n"
                         "  meridian:residencyZones: {eu: [eu-west-1, eu-central-1]}\n")
        args = ["--config", str(stack)]
        assert main(["ownership", "show", *args]) == 0
        assert capsys.readouterr().out.count("epoch 0 (active), excluded: none") == 3
        assert main(["ownership", "move-from", "mars-north-1", *args]) == 2
        assert "mars-north-1 is not a region of stack api" in capsys.readouterr().err
        stock(cluster, sku_owned_by(OLD), 3, region=OLD)
        assert main(["ownership", "move-from", OLD, "--timeout", "0.3", *args]) == 2  # not replicated yet
        assert "handover stopped:" in capsys.readouterr().err
        replicate(cluster, OLD)
        assert main(["ownership", "move-from", OLD, "--json", *args]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["epoch"] == 1 and report["excluded"] == [OLD] and report["fenced"] == [OLD] and report["items_checked"] >= 1
        assert main(["ownership", "return", OLD, *args]) == 0
        out = capsys.readouterr().out
        assert "now: epoch 2 (active), excluded: none" in out and "fenced eu-west-1, eu-central-1 at epoch 2" in out


class TestBarrier:
    def test_a_key_received_in_an_earlier_handover_is_handed_on_with_its_last_write(self, fresh: Cluster) -> None:
        """A key moves O -> L (L never writes it) -> X: L's replica holds O's last write, and X must have it
        before it owns the key, or X would sell units O already sold."""
        cluster, sku = fresh, sku_owned_by(OLD)
        people = users(cluster)
        heir = OwnershipMap(excluded=(OLD,)).owner(sku, REGIONS)
        last = next(r for r in REGIONS if r not in (OLD, heir))
        stock(cluster, sku, 10, region=OLD)
        replicate(cluster, OLD)  # everyone has 10 available
        assert reserve_everywhere(cluster, people, sku, ["a", "b", "c"]) == {201: 3}
        replicate(cluster, OLD, [heir])  # the 3 reservations reach the heir only
        handover(cluster.topology, client, exclude=[OLD], timeout=5)
        assert stored(cluster, last, sku) == {"available": 10, "reserved": 0}
        with pytest.raises(HandoverError, match="have not reached"):
            handover(cluster.topology, client, exclude=[OLD, heir], timeout=0.3)
        replicate(cluster, heir, [last])
        handover(cluster.topology, client, exclude=[OLD, heir], timeout=5)
        assert reserve_everywhere(cluster, people, sku, [f"x{i}" for i in range(12)]) == {201: 7, 409: 5}


class TestAdversarial:
    """Interleavings found by an adversarial review; each broke a promise (or availability) before its fix."""

    def test_two_handovers_at_once_never_make_two_owners(self, cluster: Cluster) -> None:
        """Two operators, different targets, both read epoch 0: one claims the handover, the other is refused."""
        import threading

        a, b, c = REGIONS
        sku = next(s for s in (f"sku-{i}" for i in range(1000)) if home_owner(s, REGIONS) == b and owner_region(s, [a, c]) == c)
        cluster.services[b].strong.set_stock(sku, 1)
        replicate(cluster, b)
        both_read = threading.Barrier(2, timeout=10)

        def wrapped(region: str) -> Any:
            real = client(region)

            class Racing:
                def __getattr__(self, name: str) -> Any:
                    return getattr(real, name)

                def put_item(self, **kw: Any) -> Any:
                    if kw["Item"].get("state", {}).get("S") == "running":
                        both_read.wait()  # both have read the maps; both claim now
                    return real.put_item(**kw)
            return Racing()

        out: dict[str, Any] = {}

        def run(who: str, exclude: list[str]) -> None:
            try:
                out[who] = handover(cluster.topology, wrapped, exclude=exclude, timeout=5)
            except HandoverError as exc:
                out[who] = exc

        threads = [threading.Thread(target=run, args=("one", [a])), threading.Thread(target=run, args=("two", [b]))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        refused = [w for w, o in out.items() if isinstance(o, HandoverError)]
        assert len(refused) == 1 and "another handover" in str(out[refused[0]]), out
        maps = {read_map(client(r), "meridian-api-stock", r) for r in REGIONS}
        assert len({(m.epoch, m.excluded, m.state) for m in maps}) == 1, maps
        sold = []
        for region in (b, c):
            try:
                sold.append(cluster.services[region].strong.reserve("u", sku, 1, f"rsv_{region}")[1])
            except (NotOwner, OutOfStock):
                sold.append(False)
        assert sold.count(True) <= 1, sold

    def test_a_gainer_that_cannot_be_reached_fences_nobody(self, cluster: Cluster) -> None:
        replicate(cluster, OLD)
        handover(cluster.topology, client, exclude=[OLD], timeout=5)

        class Down:
            def __getattr__(self, _name: str) -> Any:
                raise EndpointConnectionError(endpoint_url="https://dynamodb.us-east-1.amazonaws.com")

        with pytest.raises(HandoverError, match="cannot be reached"):
            handover(cluster.topology, lambda r: Down() if r == OLD else client(r), exclude=[])
        assert all(read_map(client(r), "meridian-api-stock", r).state == "active" for r in REGIONS if r != OLD)

    def test_a_strong_read_is_judged_by_the_map_read_with_it(self, cluster: Cluster) -> None:
        """A gainer still on the old map reads a key it does not own yet: refused, never its pre-barrier copy,
        even if the handover completes between its read and its next look at the map."""
        a, b, c = REGIONS
        sku = next(s for s in (f"sku-{i}" for i in range(1000)) if home_owner(s, REGIONS) == a and owner_region(s, [b, c]) == b)
        old, heir = cluster.services[a].strong, cluster.services[b].strong
        old.set_stock(sku, 5)
        replicate(cluster, a)
        old.reserve("u", sku, 2, "rsv_1")  # not at the heir yet
        with pytest.raises(HandoverError):
            handover(cluster.topology, client, exclude=[a], timeout=0.3)
        heir.map_ttl = 3600.0
        assert heir.ownership(fresh=True).epoch == 0
        real = heir.ownership

        def ownership(*, fresh: bool = False) -> Any:
            if fresh:  # the replication arrives and the handover completes right after the heir's read
                replicate(cluster, a)
                handover(cluster.topology, client, exclude=[a], timeout=5)
            return real(fresh=fresh)

        heir.ownership = ownership  # type: ignore[method-assign]
        with pytest.raises(NotOwner):
            heir.get_stock(sku)
        heir.ownership = real  # type: ignore[method-assign]
        assert heir.get_stock(sku) == {"sku": sku, "available": 3, "reserved": 2}

    def test_mrsc_a_released_reservations_key_answers_the_released_one(self, cluster: Cluster) -> None:
        from meridian.strong import StrongStore

        store = StrongStore(cluster.services["us-east-1"].store, fenced=False)
        store.set_stock("w", 1)
        reservation, created = store.reserve("u", "w", 1, "rsv_k")
        store.release(reservation)
        again, created_again = store.reserve("u", "w", 1, "rsv_k")
        assert created and not created_again and again.status == "released"
        assert store.get_stock("w") == {"sku": "w", "available": 1, "reserved": 0}
