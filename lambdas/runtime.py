"""What every Meridian Lambda shares: the topology and region from its environment, one boto3 client
per service (created once per container), Powertools logger and metrics."""

from __future__ import annotations

import os
from functools import cache
from typing import Any

import boto3
from aws_lambda_powertools import Logger, Metrics

from meridian.topology import Topology

logger = Logger(service="meridian")
metrics = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "Meridian/Replication"), service="meridian")


@cache
def topology() -> Topology:
    return Topology.from_json(os.environ["MERIDIAN_TOPOLOGY"])


def region() -> str:
    return os.environ["MERIDIAN_REGION"]


@cache
def client(service: str, region_name: str | None = None) -> Any:
    return boto3.client(service, region_name=region_name or region())
