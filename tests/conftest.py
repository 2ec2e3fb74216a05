from __future__ import annotations

from collections.abc import Callable
from typing import Any

import boto3
import pytest

from meridian.topology import Topology


def create_tables(topology: Topology, region: str) -> None:
    """The service's tables of every zone that includes ``region``, as the program declares them (for
    tests of the library and Lambdas; the local run provisions from the Pulumi program itself)."""
    client = boto3.client("dynamodb", region_name=region)
    for tables in topology.tables_in_region(region).values():
        for logical, physical in tables.items():
            spec = topology.table(logical)
            keys = [{"AttributeName": spec.hash_key.name, "KeyType": "HASH"}]
            if spec.range_key:
                keys.append({"AttributeName": spec.range_key.name, "KeyType": "RANGE"})
            extra: dict[str, Any] = {}
            if spec.indexes:
                extra["GlobalSecondaryIndexes"] = [
                    {"IndexName": i.name, "KeySchema": [{"AttributeName": i.hash_key.name, "KeyType": "HASH"}],
                     "Projection": {"ProjectionType": "ALL"}} for i in spec.indexes
                ]
            client.create_table(
                TableName=physical, KeySchema=keys, BillingMode="PAY_PER_REQUEST",
                AttributeDefinitions=[{"AttributeName": a.name, "AttributeType": a.type} for a in spec.key_attributes()], **extra,
            )


@pytest.fixture
def make_tables() -> Callable[[Topology, str], None]:
    return create_tables
