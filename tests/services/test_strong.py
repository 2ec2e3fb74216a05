"""Strong keys through the API: stock never oversold, one account per email, refused rather than weakened.

Three regions (us-east-1, eu-west-1, eu-central-1) are not an MRSC set, so every strong key has one owner
region; the concurrency tests send from every region at once through the regions' real apps."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import boto3
import httpx
import pytest
from test_api import KEYS, REGIONS, Cluster, claim_owner, new_user

from meridian.store import Store, StoreError
from meridian.strong import ConsistencyUnavailable, StrongStore, claim_key, normalize_email, owner_region
from meridian.topology import load_topology

OPERATOR = {"Authorization": f"Bearer {KEYS['operator'].signing_key.decode()}"}


def stock(c: Cluster, sku: str, n: int, region: str = "us-east-1") -> None:
    r = c.call(region, "PUT", f"/v1/stock/{sku}", json={"available": n}, headers=OPERATOR)
    assert r.status_code == 200, r.text


async def many(c: Cluster, calls: list[tuple[str, str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """All at once: (region, method, path, kwargs) each through that region's app."""
    clients = {r: httpx.AsyncClient(transport=httpx.ASGITransport(app=c.apps[r]), base_url=f"http://{r}.test") for r in REGIONS}
    try:
        return await asyncio.gather(*(clients[r].request(m, p, **kw) for r, m, p, kw in calls))
    finally:
        for client in clients.values():
            await client.aclose()


def reserve_kw(c: Cluster, user: str, sku: str, key: str, quantity: int = 1) -> dict[str, Any]:
    return {"json": {"sku": sku, "quantity": quantity},
            "headers": {"Idempotency-Key": key, "Authorization": f"Bearer {c.tokens[user]}"}}


class TestStock:
    def test_never_oversold_under_concurrency_from_every_region(self, cluster: Cluster) -> None:
        stock(cluster, "widget", 10)
        users = [new_user(cluster, r, residency="global")["user_id"] for r in REGIONS]
        calls = [(REGIONS[i % 3], "POST", f"/v1/users/{users[i % 3]}/reservations", reserve_kw(cluster, users[i % 3], "widget", f"k{i}"))
                 for i in range(30)]
        answers = asyncio.run(many(cluster, calls))
        codes = Counter(a.status_code for a in answers)
        assert set(codes) <= {201, 409} and codes[201] == 10, codes
        assert all(a.json()["error"] == "out_of_stock" for a in answers if a.status_code == 409)
        for region in REGIONS:  # strongly consistent from any region
            assert cluster.call(region, "GET", "/v1/stock/widget").json() == {"sku": "widget", "available": 0, "reserved": 10}

    def test_same_key_is_one_reservation_from_any_region(self, cluster: Cluster) -> None:
        stock(cluster, "lamp", 5)
        user = new_user(cluster, "eu-west-1", residency="global")["user_id"]
        answers = [cluster.call(r, "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "lamp", "same", 2)) for r in REGIONS]
        assert [a.status_code for a in answers] == [201, 201, 201]
        assert len({a.json()["reservation_id"] for a in answers}) == 1
        assert [a.headers.get("Idempotent-Replayed") for a in answers] == [None, "true", "true"]
        assert cluster.call("eu-central-1", "GET", "/v1/stock/lamp").json()["available"] == 3
        other = cluster.call("us-east-1", "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "lamp", "same", 1))
        assert other.status_code == 409 and other.json()["error"] == "idempotency_mismatch"

    def test_release_gives_units_back_once(self, cluster: Cluster) -> None:
        stock(cluster, "desk", 3)
        alice, mallory = (new_user(cluster, "us-east-1", residency="global")["user_id"] for _ in range(2))
        r = cluster.call("us-east-1", "POST", f"/v1/users/{alice}/reservations", **reserve_kw(cluster, alice, "desk", "a", 3))
        rid = r.json()["reservation_id"]
        assert cluster.call("eu-west-1", "DELETE", f"/v1/users/{mallory}/reservations/{rid}").status_code == 404
        for region in ("eu-west-1", "eu-central-1"):
            gone = cluster.call(region, "DELETE", f"/v1/users/{alice}/reservations/{rid}")
            assert gone.status_code == 200 and gone.json()["status"] == "released"
        assert cluster.call("us-east-1", "GET", "/v1/stock/desk").json() == {"sku": "desk", "available": 3, "reserved": 0}

    def test_owner_unreachable_is_refused_and_changes_nothing(self, cluster: Cluster) -> None:
        owner = owner_region("bike", REGIONS)
        stock(cluster, "bike", 4, region=owner)
        other = next(r for r in REGIONS if r != owner)
        user = new_user(cluster, other, residency="global")["user_id"]
        cluster.down[owner] = True
        r = cluster.call(other, "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "bike", "x"))
        assert r.status_code == 503 and r.json()["error"] == "consistency_unavailable" and r.headers["Retry-After"]
        assert cluster.call(other, "GET", "/v1/stock/bike").status_code == 503
        cluster.down[owner] = False
        assert cluster.call(other, "GET", "/v1/stock/bike").json()["available"] == 4

    def test_owner_that_executed_but_did_not_answer_is_outcome_unknown_not_refused(self, cluster: Cluster) -> None:
        """The owner reserved the units and its answer was lost: a 503 would tell the client nothing was
        written (the game day's oversell check caught exactly that). It is 504 outcome_unknown, and the same
        Idempotency-Key again answers the one reservation made."""
        owner = owner_region("kite", REGIONS)
        stock(cluster, "kite", 4, region=owner)
        other = next(r for r in REGIONS if r != owner)
        user = new_user(cluster, other, residency="global")["user_id"]
        cluster.late[owner] = True
        try:
            r = cluster.call(other, "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "kite", "late-1"))
        finally:
            cluster.late[owner] = False
        assert r.status_code == 504 and r.json()["error"] == "outcome_unknown", r.text
        assert cluster.call(owner, "GET", "/v1/stock/kite").json()["reserved"] == 1  # it did execute
        again = cluster.call(other, "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "kite", "late-1"))
        assert again.status_code == 201 and cluster.call(owner, "GET", "/v1/stock/kite").json()["reserved"] == 1

    def test_operator_only(self, cluster: Cluster) -> None:
        user = new_user(cluster, "us-east-1", residency="global")
        assert cluster.call("us-east-1", "PUT", "/v1/stock/x", json={"available": 1}).status_code == 401
        as_user = cluster.call("us-east-1", "PUT", "/v1/stock/x", json={"available": 1}, headers={"Authorization": f"Bearer {user['token']}"})
        assert as_user.status_code == 403
        assert cluster.call("us-east-1", "GET", "/v1/stock/x").status_code == 404

    def test_out_of_stock_unknown_sku(self, cluster: Cluster) -> None:
        user = new_user(cluster, "us-east-1", residency="global")["user_id"]
        r = cluster.call("us-east-1", "POST", f"/v1/users/{user}/reservations", **reserve_kw(cluster, user, "nothing", "k"))
        assert r.status_code == 409 and r.json()["error"] == "out_of_stock"


class TestUniqueEmail:
    def test_two_regions_at_once_make_one_account(self, cluster: Cluster) -> None:
        body = {"name": "Twin", "residency": "global"}
        variants = ["twin@example.com", "TWIN@example.com", "Twin@Example.COM", "ｔwin@example.com"]  # NFKC folds the last
        calls = [(REGIONS[i % 3], "POST", "/v1/users", {"json": {**body, "email": variants[i % 4]}}) for i in range(12)]
        answers = asyncio.run(many(cluster, calls))
        codes = Counter(a.status_code for a in answers)
        assert codes == {201: 1, 409: 11}, codes
        assert {a.json()["error"] for a in answers if a.status_code == 409} == {"email_taken"}
        users = sum(len(boto3.client("dynamodb", region_name=r).scan(TableName="meridian-api-global-users")["Items"]) for r in REGIONS)
        assert users == 1

    def test_across_zones_too(self, cluster: Cluster) -> None:
        first = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "z@example.com", "name": "Z", "residency": "eu"})
        second = cluster.call("us-east-1", "POST", "/v1/users", json={"email": "z@example.com", "name": "Z", "residency": "global"})
        assert first.status_code == 201 and second.status_code == 409

    def test_claim_owner_cut_off_refuses_and_creates_nothing(self, cluster: Cluster) -> None:
        email = next(e for e in (f"p{i}@example.com" for i in range(100)) if claim_owner(e) == "eu-central-1")
        cluster.down["eu-central-1"] = True
        r = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": email, "name": "P", "residency": "eu"})
        assert r.status_code == 503 and r.json()["error"] == "consistency_unavailable"
        assert boto3.client("dynamodb", region_name="eu-west-1").scan(TableName="meridian-api-eu-users")["Items"] == []

    def test_changing_to_a_taken_email_is_refused(self, cluster: Cluster) -> None:
        a, b = new_user(cluster, "eu-west-1"), new_user(cluster, "eu-west-1")
        taken = cluster.call("eu-west-1", "GET", f"/v1/users/{b['user_id']}").json()["email"]
        r = cluster.call("eu-west-1", "PUT", f"/v1/users/{a['user_id']}", json={"email": taken.upper()})
        assert r.status_code == 409 and r.json()["error"] == "email_taken"
        assert cluster.call("eu-west-1", "PUT", f"/v1/users/{a['user_id']}", json={"email": "fresh@example.com"}).status_code == 200

    def test_claims_hold_no_address(self, cluster: Cluster) -> None:
        user = new_user(cluster, "eu-west-1")
        email = cluster.call("eu-west-1", "GET", f"/v1/users/{user['user_id']}").json()["email"]
        items = [i for r in REGIONS for i in boto3.client("dynamodb", region_name=r).scan(TableName="meridian-api-claims")["Items"]]
        assert items and not any(email.split("@")[0] in str(i) or "example.com" in str(i) for i in items)
        assert normalize_email(" A@Example.COM ") == "a@example.com"
        assert claim_key("a@example.com", b"k" * 32) != claim_key("a@example.com", b"j" * 32)


class TestMrsc:
    def test_mrsc_set_executes_in_every_region(self) -> None:
        """Three US regions form an MRSC set: no owner, every region executes (AWS linearizes)."""
        from meridian.api.app import Service
        from meridian.settings import Settings

        topology = load_topology({"regions": ["us-east-1", "us-east-2", "us-west-2"]}, stack="us")
        rings = {f"{n}_key": KEYS[n] for n in ("session", "peer", "user", "operator")}
        settings = Settings(region="us-west-2", topology=topology, claim_key=b"c" * 32, **rings)
        service = Service(settings, Store(client=object(), topology=topology, region="us-west-2"))
        assert service.strong_owner("any") is None and not service.strong.fenced
        local = Service(Settings(region="us-west-2", topology=topology, claim_key=b"c" * 32, mrsc=False, **rings),
                        Store(client=object(), topology=topology, region="us-west-2"))
        assert local.strong.fenced  # no MRSC emulation running: the owner mechanism, fenced

    def test_replicated_write_conflict_is_retried_then_refused(self) -> None:
        topology = load_topology({"regions": ["us-east-1", "us-east-2", "us-west-2"]}, stack="us")

        class Conflicting:
            def __init__(self, failures: int) -> None:
                self.failures, self.calls = failures, 0

            def update_item(self, **_: Any) -> dict[str, Any]:
                from botocore.exceptions import ClientError

                self.calls += 1
                if self.calls <= self.failures:
                    raise ClientError({"Error": {"Code": "ReplicatedWriteConflictException", "Message": "x"}}, "UpdateItem")
                return {}

            def get_item(self, **_: Any) -> dict[str, Any]:
                return {"Item": {"sku": {"S": "s"}, "available": {"N": "3"}, "reserved": {"N": "0"}}}

        client = Conflicting(2)
        assert StrongStore(Store(client=client, topology=topology, region="us-east-1"), fenced=False).set_stock("s", 3)["available"] == 3
        assert client.calls == 3
        with pytest.raises(ConsistencyUnavailable):
            StrongStore(Store(client=Conflicting(99), topology=topology, region="us-east-1"), fenced=False).set_stock("s", 3)
        assert issubclass(ConsistencyUnavailable, RuntimeError) and not issubclass(ConsistencyUnavailable, StoreError)
