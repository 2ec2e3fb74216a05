"""The AWS a local run provisions and serves from: the embedded moto server, or a LocalStack its user runs.

- ``moto`` (default): a moto server process started by the run on a free loopback port, and stopped
  with it (``meridian down``). Its global tables are separate tables per region: the replication
  emulator (meridian_local.replicator) carries writes between them.
- ``localstack``: a LocalStack the user started (``localstack start``), reached the way
  ``localstack-client`` reaches it: ``LOCALSTACK_HOST`` (default ``localhost:4566``; ``AWS_ENDPOINT_URL``,
  when set, wins, as in that library). It must answer an AWS call before anything is provisioned. The
  run never starts or stops it: ``meridian down`` leaves it and its data running.

What the backend's global tables do is **detected**, not assumed from its name
(:func:`probe_replicas`): a table is given a replica the AWS way (UpdateTable ReplicaUpdates), an item
written in one region is read in the other. LocalStack keeps one table behind every replica (its issue
7405): the write is there at once; moto keeps none (the run creates a separate table per region). With
shared replicas there is no lag and no conflict to rehearse, so the emulator stays off and the game-day
scenarios that need replicas to diverge are reported as not possible here, with the reason.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from meridian_local import moto_server

BACKENDS = ("moto", "localstack")
#: What ``meridian local status`` says of each replica behaviour.
SHARED_TEXT = "shared by the backend (no lag, no conflicts)"
SEPARATE_TEXT = "emulated between separate regional tables (lag, partitions, conflicts)"
#: Strong keys (docs/consistency.md) on shared replicas: one table is linearizable by itself.
STRONG_SHARED_TEXT = "one table behind every replica is linearizable by itself: no emulation needed"
STRONG_SEPARATE_TEXT = ("one owner region per key (replication here is asynchronous), or MRSC (emulated: meridian_local.mrsc) "
                        "where a zone is an MRSC set; strong_tables names each table's")

#: Game-day scenarios that need the replicas of a table to diverge, and why they cannot on shared replicas.
NEEDS_DIVERGING_REPLICAS = {
    "partition": "a partition between replicas cannot happen: every region reads and writes one shared table",
    "conflicts": "conflicting writes cannot be injected: both sides write the same shared item, the last one simply wins, "
                 "and no replica ever holds the other version",
    "hard-region-loss": "a region's replica cannot be cut off from the others: its data stays in the shared table",
}

_PROBE = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=10)


class BackendError(RuntimeError):
    """The backend cannot be used; the message is one line that says what to do."""


@dataclass(frozen=True)
class Replicas:
    """What the backend's global tables do, as :func:`detect_replicas` observed it."""

    shared: bool
    detail: str

    @property
    def replication(self) -> str:
        return SHARED_TEXT if self.shared else SEPARATE_TEXT

    @property
    def strong(self) -> str:
        return STRONG_SHARED_TEXT if self.shared else STRONG_SEPARATE_TEXT

    def to_json(self) -> dict[str, Any]:
        return {"shared": self.shared, "detail": self.detail, "replication": self.replication, "strong_keys": self.strong}


@dataclass
class Backend:
    name: str
    endpoint: str
    #: started by this run (and so stopped by it); False for a LocalStack the user runs
    owned: bool
    access_key: str = "meridian-local"
    secret_key: str = "meridian-local"
    proc: subprocess.Popen[bytes] | None = None
    replicas: Replicas | None = field(default=None)
    #: a user's LocalStack is probed at most this often (an AWS call, as at start)
    probe_every: float = 5.0
    _probed_at: float = field(default=-1e9, repr=False)
    _answered: bool = field(default=True, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def client(self, service: str, region: str, config: Config | None = None) -> Any:
        """A boto3 client of this backend. LocalStack's come from a ``localstack_client`` session."""
        if self.name == "localstack":
            from localstack_client.session import Session  # type: ignore[import-untyped]

            session = Session(aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                              region_name=region, localstack_host=_host_of(self.endpoint))
            return session.client(service, config=config)
        return boto3.client(service, region_name=region, endpoint_url=self.endpoint, config=config,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def environment(self) -> dict[str, str]:
        """What a regional service process needs to reach this backend."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}

    def alive(self) -> bool:
        """An owned server is alive while its process runs; a user's LocalStack while it answers an AWS call
        (probed every ``probe_every`` seconds; it may stop and come back: it is theirs)."""
        if self.proc is not None:
            return self.proc.poll() is None
        if self.owned:
            return True
        if time.monotonic() - self._probed_at >= self.probe_every:
            self._probed_at = time.monotonic()
            try:
                check_answers(self.endpoint)
                self._answered = True
            except BackendError:
                self._answered = False
        return self._answered

    def stop(self) -> None:
        """Stop what this run started, and nothing else: a user's LocalStack and its data stay."""
        if not self.owned or self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def describe(self) -> str:
        what = "embedded moto server" if self.name == "moto" else "LocalStack"
        return f"{what} at {self.endpoint}" + ("" if self.owned else " (not started by Meridian: left running by `meridian down`)")

    def status(self) -> dict[str, Any]:
        return {"name": self.name, "endpoint": self.endpoint, "owned": self.owned, "pid": self.pid,
                **(self.replicas.to_json() if self.replicas else {})}


# -- LocalStack: where it is, and whether it answers --------------------------------------------------
def localstack_host() -> str:
    return os.environ.get("LOCALSTACK_HOST", "").strip() or "localhost:4566"


def localstack_endpoint() -> str:
    """The endpoint ``localstack_client`` reaches: ``AWS_ENDPOINT_URL`` if set, else ``LOCALSTACK_HOST``."""
    from localstack_client import config as ls_config  # type: ignore[import-untyped]

    try:
        endpoint = ls_config.get_service_endpoint("dynamodb")
    except RuntimeError:
        raise BackendError(f"LOCALSTACK_HOST={localstack_host()!r} is not host:port (e.g. localhost:4566)") from None
    return str(endpoint)


def _host_of(endpoint: str) -> str:
    return endpoint.split("://", 1)[-1].rstrip("/")


def check_answers(endpoint: str, client: Callable[[str, str], Any] | None = None) -> None:
    """Raise :class:`BackendError` unless ``endpoint`` answers an AWS call (STS, else DynamoDB).

    Not LocalStack's own health path: other LocalStack-compatible endpoints (a moto server) lack it.
    """
    def default(service: str, region: str) -> Any:
        return boto3.client(service, region_name=region, endpoint_url=endpoint, config=_PROBE,
                            aws_access_key_id="test", aws_secret_access_key="test")

    make = client or default
    where = f"LOCALSTACK_HOST={os.environ['LOCALSTACK_HOST']}" if os.environ.get("LOCALSTACK_HOST") else "LOCALSTACK_HOST unset, so localhost:4566"
    if os.environ.get("AWS_ENDPOINT_URL"):
        where = f"AWS_ENDPOINT_URL={os.environ['AWS_ENDPOINT_URL']}, which wins over LOCALSTACK_HOST"
    refused = ""
    for service, call in (("sts", "get_caller_identity"), ("dynamodb", "list_tables")):
        try:
            getattr(make(service, "us-east-1"), call)()
            return
        except ClientError as exc:
            refused = f"{service} answered {exc.response.get('Error', {}).get('Code', 'an error')}: {exc.response.get('Error', {}).get('Message', '')}".strip()
        except (BotoCoreError, OSError):
            continue
    if refused:
        raise BackendError(f"the AWS endpoint {endpoint} ({where}) refused the first calls ({refused}); check that LocalStack started "
                           "with its auth token (`localstack start`, LOCALSTACK_AUTH_TOKEN)")
    raise BackendError(f"no AWS endpoint answers at {endpoint} ({where}): start LocalStack with `localstack start`, "
                       "or set LOCALSTACK_HOST to the host:port it listens on")


def start(name: str, state_dir: Path) -> Backend:
    """The backend of a run: moto is started here (and owned); LocalStack must already answer."""
    if name == "moto":
        proc, endpoint = moto_server.start(state_dir / "moto.log")
        return Backend("moto", endpoint, owned=True, proc=proc)
    if name == "localstack":
        endpoint = localstack_endpoint()
        check_answers(endpoint)
        return Backend("localstack", endpoint, owned=False, access_key="test", secret_key="test")
    raise BackendError(f"unknown backend {name!r}; use {' or '.join(BACKENDS)}")


# -- what the backend's global tables do ---------------------------------------------------------------
def detect_replicas(writer: Any, reader: Any, *, table: str, writer_region: str, reader_region: str) -> Replicas:
    """Write a probe item through ``writer`` (one replica region), read it back through ``reader`` (another).

    Read with ``ConsistentRead`` at once: separate tables (moto; AWS, before replication) do not have it,
    one shared table (LocalStack) does. The probe item is deleted again either way.
    """
    token = uuid.uuid4().hex
    key = {"pk": {"S": f"meridian-probe-{token}"}}
    writer.put_item(TableName=table, Item={**key, "probe": {"S": token}})
    try:
        item = reader.get_item(TableName=table, Key=key, ConsistentRead=True).get("Item")
    finally:
        writer.delete_item(TableName=table, Key=key)
    if item is not None and item.get("probe") == {"S": token}:
        return Replicas(True, f"an item written in {writer_region} was read at once in {reader_region}: one table behind both replicas")
    return Replicas(False, f"an item written in {writer_region} was not in {reader_region}: separate tables per replica")


def create_global_table(client: Callable[[str], Any], args: dict[str, Any], primary: str, replicas: Iterable[str]) -> list[str]:
    """Create a table in ``primary`` and ask for its replicas as AWS takes them (UpdateTable ReplicaUpdates);
    a replica region where the backend then has no such table (moto accepts the call and creates nothing)
    gets a table of its own. Returns the regions where a table was created here (``client(region)`` is
    that region's DynamoDB client)."""
    name = args["TableName"]
    client(primary).create_table(**args)
    created = [primary]
    others = [r for r in replicas if r != primary]
    if others:
        _wait_active(client(primary), name)
        for region in others:
            with contextlib.suppress(ClientError):  # a backend without replica support: the table below stands in
                client(primary).update_table(TableName=name, ReplicaUpdates=[{"Create": {"RegionName": region}}])
            _wait_active(client(primary), name)
    for region in others:
        try:
            client(region).describe_table(TableName=name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
            client(region).create_table(**args)
            created.append(region)
    return created


def _wait_active(client: Any, table: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table_status = client.describe_table(TableName=table)["Table"]
        replicas = table_status.get("Replicas") or []
        if table_status.get("TableStatus") == "ACTIVE" and all(r.get("ReplicaStatus", "ACTIVE") == "ACTIVE" for r in replicas):
            return
        time.sleep(0.1)
    raise BackendError(f"table {table} was not ACTIVE within {timeout:.0f} s")


def probe_replicas(backend: Backend, regions: list[str], *, prefix: str) -> Replicas:
    """Detect the backend's replica behaviour on a probe table created like the stack's global tables, then
    delete it. One region only (nothing to replicate): separate, trivially."""
    if len(regions) < 2:
        return Replicas(False, "one region: nothing is replicated")
    primary, other = regions[0], regions[1]
    name = f"{prefix}-replica-probe-{uuid.uuid4().hex[:8]}"
    clients: dict[str, Any] = {}

    def client(region: str) -> Any:
        if region not in clients:
            clients[region] = backend.client("dynamodb", region, _PROBE)
        return clients[region]

    args = {"TableName": name, "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
            "AttributeDefinitions": [{"AttributeName": "pk", "AttributeType": "S"}], "BillingMode": "PAY_PER_REQUEST",
            "StreamSpecification": {"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"}}
    created = create_global_table(client, args, primary, [other])
    try:
        return detect_replicas(client(primary), client(other), table=name, writer_region=primary, reader_region=other)
    finally:
        for region in (other, primary):  # the replica first: AWS refuses to delete a table that still has one
            try:
                if region not in created:
                    client(primary).update_table(TableName=name, ReplicaUpdates=[{"Delete": {"RegionName": region}}])
                else:
                    client(region).delete_table(TableName=name)
            except ClientError:
                pass  # best effort: a probe table left behind holds no data


def split_scenarios(scenarios: Iterable[str], backend_status: dict[str, Any] | None) -> tuple[list[str], dict[str, str]]:
    """The scenarios this backend can run, and the others with the reason (shared replicas only)."""
    wanted = list(scenarios)
    if not (backend_status or {}).get("shared"):
        return wanted, {}
    return ([s for s in wanted if s not in NEEDS_DIVERGING_REPLICAS],
            {s: f"not possible on {backend_status.get('name', 'this backend') if backend_status else 'this backend'}: "
                f"{NEEDS_DIVERGING_REPLICAS[s]}" for s in wanted if s in NEEDS_DIVERGING_REPLICAS})


def record_not_possible(report_dir: Path, not_possible: dict[str, str]) -> None:
    """Add the scenarios this backend could not run, with the reason, to report.md and metrics.json."""
    if not not_possible:
        return
    import json

    report, metrics = report_dir / "report.md", report_dir / "metrics.json"
    if report.is_file():
        lines = ["", "## Not possible on this backend", "", *[f"- `{name}`: {reason}" for name, reason in not_possible.items()], ""]
        report.write_text(report.read_text() + "\n".join(lines))
    if metrics.is_file():
        data = json.loads(metrics.read_text())
        data["not_possible"] = not_possible
        metrics.write_text(json.dumps(data, indent=2, default=str))


def existing_tables(client: Callable[[str], Any], tables: dict[str, str]) -> list[str]:
    """The tables of ``tables`` (name -> region) that the backend already holds: a LocalStack keeps an
    earlier run's data (``meridian down`` never deletes it), and provisioning over it would fail half-way."""
    found = []
    for name, region in tables.items():
        try:
            client(region).describe_table(TableName=name)
            found.append(name)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "ResourceNotFoundException":
                raise
    return found
