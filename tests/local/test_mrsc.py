"""The MRSC emulation (meridian_local.mrsc) on a local run of three regions of one MRSC region set: every
region executes its own strong writes, a write is read at once everywhere, a region cut off from the
majority refuses (503) and is caught up after the heal; and the emulator itself, against moto, with a
witness and with a write in flight."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from meridian.topology import load_stack_file
from meridian_cli.local_cmds import start_local, stop_local
from meridian_cli.main import main
from meridian_local.applier import NO_RETRIES
from meridian_local.mrsc import MrscEmulator, MrscTable
from meridian_local.oversell import operator_token
from meridian_local.state import control

pytestmark = pytest.mark.slow

ONE_ATTEMPT = Config(retries={"total_max_attempts": 1, "mode": "standard"})

#: One MRSC region set (topology.MRSC_REGION_SETS["US"]): the strong tables' mechanism is ``mrsc``.
US = ["us-east-1", "us-east-2", "us-west-2"]
STACK = f"""config:
  meridian:regions: [{", ".join(US)}]
  meridian:healthCheckInterval: 10
  meridian:failureThreshold: 2
"""


class Run:
    def __init__(self, state_dir: Path, state: dict[str, Any], operator: str) -> None:
        self.state_dir, self.state = state_dir, state
        self.operator = {"Authorization": f"Bearer {operator}"}
        self.http = httpx.Client(base_url=state["edge"], timeout=20)
        self.tables = {logical: f"meridian-mrsc-{logical}" for logical in ("stock", "reservations", "claims")}

    def call(self, place: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Meridian-Client-Region": place, **kw.pop("headers", {})}
        return self.http.request(method, path, headers=headers, **kw)

    def user(self, place: str) -> tuple[str, str]:
        r = self.call(place, "POST", "/v1/users", json={"email": f"u{uuid.uuid4().hex}@example.com", "name": "U", "residency": "global"})
        assert r.status_code == 201, r.text
        return r.json()["user_id"], r.json()["token"]

    def stock(self, sku: str, units: int) -> None:
        r = self.call(US[0], "PUT", f"/v1/stock/{sku}", json={"available": units}, headers=self.operator)
        assert r.status_code == 200, r.text

    def replica(self, region: str, sku: str) -> dict[str, Any]:
        """The stock item as ``region``'s own replica holds it (moto, not through the emulator)."""
        client = boto3.client("dynamodb", region_name=region, endpoint_url=self.state["aws_endpoint"],
                              aws_access_key_id="t", aws_secret_access_key="t")
        item = client.get_item(TableName=self.tables["stock"], Key={"sku": {"S": sku}}, ConsistentRead=True)["Item"]
        return {"available": int(item["available"]["N"]), "reserved": int(item["reserved"]["N"])}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    root = tmp_path_factory.mktemp("mrsc")
    stack = root / "Pulumi.mrsc.yaml"
    stack.write_text(STACK)
    state_dir = root / "state"
    # A long replication lag: a strong write seen at once elsewhere was not carried by the asynchronous replicator.
    state = start_local(str(stack), state_dir, time_scale=0.1, latency_scale=0, lag=3.0)
    yield Run(state_dir, state, operator_token(state_dir, load_stack_file(stack)))
    assert stop_local(state_dir) == []


def reserve(run: Run, place: str, user: tuple[str, str], sku: str, key: str) -> httpx.Response:
    return run.call(place, "POST", f"/v1/users/{user[0]}/reservations", json={"sku": sku, "quantity": 1},
                    headers={"Idempotency-Key": key, "Authorization": f"Bearer {user[1]}"})


class TestLocalRun:
    def test_status_names_the_mechanism(self, run: Run, capsys: pytest.CaptureFixture[str]) -> None:
        """Every strong table is MRSC (emulated); the asynchronous replicator leaves those tables alone."""
        status = control(run.state_dir, "GET", "status")
        assert status["strong_tables"] == {"stock": "mrsc", "reservations": "mrsc", "claims": "mrsc"}
        assert status["replication"]["excluded"] == sorted(run.tables.values())
        assert main(["local", "status", "--state-dir", str(run.state_dir)]) == 0
        assert "strong tables: stock, reservations, claims MRSC (emulated)" in capsys.readouterr().out

    def test_concurrent_reservations_never_oversell_and_execute_where_asked(self, run: Run) -> None:
        """30 reservations for 10 units from the three regions at once: at most 10 acknowledged, the rest
        refused; each answered by the region asked (no owner to forward to); every replica agrees at once."""
        sku, units = f"sku-{uuid.uuid4().hex[:8]}", 10
        run.stock(sku, units)
        users = {place: run.user(place) for place in US}

        async def burst() -> list[tuple[str, httpx.Response]]:
            async with httpx.AsyncClient(base_url=run.state["edge"], timeout=30) as http:
                async def one(place: str, n: int) -> tuple[str, httpx.Response]:
                    user, token = users[place]
                    return place, await http.post(f"/v1/users/{user}/reservations", json={"sku": sku, "quantity": 1},
                                                  headers={"Idempotency-Key": f"k{n}", "Authorization": f"Bearer {token}",
                                                           "X-Meridian-Client-Region": place})
                return await asyncio.gather(*(one(place, n) for n in range(10) for place in US))

        answers = asyncio.run(burst())
        codes = Counter(r.status_code for _, r in answers)
        assert set(codes) <= {201, 409, 503}, codes
        acked = codes[201]
        assert 0 < acked <= units, codes
        assert all(r.headers["x-meridian-region"] == place for place, r in answers), [(p, r.headers["x-meridian-region"]) for p, r in answers]
        for place in US:
            assert run.call(place, "GET", f"/v1/stock/{sku}").json() == {"sku": sku, "available": units - acked, "reserved": acked}
            assert run.replica(place, sku) == {"available": units - acked, "reserved": acked}

    def test_a_write_is_read_at_once_in_another_region(self, run: Run) -> None:
        """No replication lag for strong keys: each reservation is seen by the next region's strong read."""
        sku = f"sku-{uuid.uuid4().hex[:8]}"
        run.stock(sku, 6)
        for n in range(6):
            writer, reader = US[n % 3], US[(n + 1) % 3]
            assert reserve(run, writer, run.user(writer), sku, f"k{n}").status_code == 201
            r = run.call(reader, "GET", f"/v1/stock/{sku}")
            assert (r.status_code, r.json()["available"]) == (200, 5 - n), r.text

    def test_a_region_cut_off_refuses_then_catches_up(self, run: Run) -> None:
        """Cut from both others, a region answers 503 consistency_unavailable to writes and strong reads;
        the majority keeps serving; after the heal the region serves again with what was written meanwhile."""
        sku = f"sku-{uuid.uuid4().hex[:8]}"
        run.stock(sku, 10)
        cut, majority = US[0], US[1:]
        users = {place: run.user(place) for place in US}
        for other in majority:
            control(run.state_dir, "POST", "partition", {"a": cut, "b": other})
        try:
            for answer in (reserve(run, cut, users[cut], sku, "cut"), run.call(cut, "GET", f"/v1/stock/{sku}")):
                assert (answer.status_code, answer.json()["error"]) == (503, "consistency_unavailable"), answer.text
                assert answer.headers["x-meridian-region"] == cut
            for n, place in enumerate(majority):
                assert reserve(run, place, users[place], sku, f"m{n}").status_code == 201
                assert run.call(place, "GET", f"/v1/stock/{sku}").json()["available"] == 9 - n
            assert run.replica(cut, sku)["available"] == 10  # it missed them
        finally:
            control(run.state_dir, "POST", "heal", {})
        assert run.call(cut, "GET", f"/v1/stock/{sku}").json() == {"sku": sku, "available": 8, "reserved": 2}
        assert reserve(run, cut, users[cut], sku, "after").status_code == 201
        assert all(run.replica(place, sku) == {"available": 7, "reserved": 3} for place in US)

    def test_one_email_one_account_from_two_regions_at_once(self, run: Run) -> None:
        """The same address (two spellings) sent from two regions at once: one 201, one 409 email_taken."""
        async def twice(email: str) -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=run.state["edge"], timeout=30) as http:
                return list(await asyncio.gather(*(
                    http.post("/v1/users", json={"email": spelling, "name": "Twin", "residency": "global"},
                              headers={"X-Meridian-Client-Region": place})
                    for place, spelling in ((US[1], email), (US[2], email.upper())))))

        for _ in range(4):
            answers = asyncio.run(twice(f"twin-{uuid.uuid4().hex[:8]}@example.com"))
            assert sorted(r.status_code for r in answers) == [201, 409], [r.text for r in answers]
            assert next(r for r in answers if r.status_code == 409).json()["error"] == "email_taken"


# -- the emulator itself ---------------------------------------------------------------------------------
class Emulated:
    """The emulator over two replicas (us-east-1, us-west-2) and a witness (us-east-2), with a network of
    its own: ``cut`` holds the pairs that cannot reach each other."""

    A, B, WITNESS = "us-east-1", "us-west-2", "us-east-2"

    def __init__(self, endpoint: str, *, copy_delay: float = 0.0) -> None:
        self.endpoint, self.table = endpoint, f"t-{uuid.uuid4().hex[:8]}"
        self.cut: set[frozenset[str]] = set()
        for region in (self.A, self.B):
            self.moto(region).create_table(TableName=self.table, KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                                           AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}], BillingMode="PAY_PER_REQUEST")
        spec = MrscTable(name=self.table, replicas=(self.A, self.B), witness=self.WITNESS, key_names=("k",))
        self.emulator = MrscEmulator({self.table: spec}, endpoint=endpoint, client=lambda r: Slow(self.moto(r), copy_delay),
                                     linked=lambda a, b: frozenset((a, b)) not in self.cut, catch_up_every=60)
        self.emulator.start()

    def moto(self, region: str) -> Any:
        return boto3.client("dynamodb", region_name=region, endpoint_url=self.endpoint, config=NO_RETRIES,
                            aws_access_key_id="t", aws_secret_access_key="t")

    def via(self, region: str) -> Any:
        """What a region's strong store holds: a boto3 client pointed at the emulator (one attempt a call)."""
        return boto3.client("dynamodb", region_name=region, endpoint_url=self.emulator.url, config=ONE_ATTEMPT,
                            aws_access_key_id="t", aws_secret_access_key="t")

    def put(self, region: str, value: str) -> None:
        self.via(region).put_item(TableName=self.table, Item={"k": {"S": "x"}, "v": {"S": value}})

    def read(self, region: str) -> str | None:
        item = self.via(region).get_item(TableName=self.table, Key={"k": {"S": "x"}}, ConsistentRead=True).get("Item")
        return item["v"]["S"] if item else None

    def stored(self, region: str) -> str | None:
        item = self.moto(region).get_item(TableName=self.table, Key={"k": {"S": "x"}}, ConsistentRead=True).get("Item")
        return item["v"]["S"] if item else None


class Slow:
    """A replica client whose copies (PutItem) take ``delay``: a write stays in flight that long."""

    def __init__(self, client: Any, delay: float) -> None:
        self.client, self.delay = client, delay

    def put_item(self, **kw: Any) -> Any:
        time.sleep(self.delay)
        return self.client.put_item(**kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)


@pytest.fixture
def emulated(run: Run) -> Iterator[Emulated]:
    env = Emulated(run.state["aws_endpoint"])
    yield env
    env.emulator.stop()


class TestEmulator:
    def test_a_write_reaches_every_replica_and_the_witness(self, emulated: Emulated) -> None:
        emulated.put(Emulated.A, "1")
        assert (emulated.stored(Emulated.A), emulated.stored(Emulated.B)) == ("1", "1")
        assert emulated.read(Emulated.B) == "1"

    def test_the_witness_makes_a_majority_and_catches_a_replica_up(self, emulated: Emulated) -> None:
        """A and B cut apart: each still reaches the witness (2 of 3). B missed A's write; its strong read
        first takes the latest version from the witness's change data (A is out of its reach)."""
        emulated.cut.add(frozenset((Emulated.A, Emulated.B)))
        emulated.put(Emulated.A, "2")
        assert emulated.stored(Emulated.B) is None
        assert emulated.read(Emulated.B) == "2" and emulated.stored(Emulated.B) == "2"

    def test_a_region_without_a_majority_gets_service_unavailable_and_nothing_is_written(self, emulated: Emulated) -> None:
        emulated.cut |= {frozenset((Emulated.A, Emulated.B)), frozenset((Emulated.A, Emulated.WITNESS))}
        for attempt in (lambda: emulated.put(Emulated.A, "3"), lambda: emulated.read(Emulated.A)):
            with pytest.raises(ClientError) as refused:
                attempt()
            assert refused.value.response["Error"]["Code"] == "ServiceUnavailable"
            assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
        assert emulated.stored(Emulated.A) is None
        emulated.put(Emulated.B, "4")  # B and the witness are a majority
        assert emulated.stored(Emulated.B) == "4"

    def test_a_write_meeting_another_regions_write_in_flight_conflicts(self, run: Run) -> None:
        """AWS's ReplicatedWriteConflictException, as botocore parses it: a ClientError with that code (and
        the modeled exception class). A write from the same region waits its turn instead."""
        env = Emulated(run.state["aws_endpoint"], copy_delay=0.6)
        try:
            first = threading.Thread(target=env.put, args=(Emulated.A, "first"))
            first.start()
            time.sleep(0.2)  # A's write is copying to B now
            client = env.via(Emulated.B)
            with pytest.raises(client.exceptions.ReplicatedWriteConflictException) as conflict:
                client.put_item(TableName=env.table, Item={"k": {"S": "x"}, "v": {"S": "second"}})
            assert isinstance(conflict.value, ClientError)
            assert conflict.value.response["Error"]["Code"] == "ReplicatedWriteConflictException"
            assert conflict.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            env.put(Emulated.A, "third")  # same region: queued behind "first", not refused
            first.join()
            assert env.read(Emulated.B) == "third"
            assert env.emulator.status()["conflicts"] == 1
        finally:
            env.emulator.stop()
