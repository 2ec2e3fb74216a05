from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws
from test_api import Cluster


@pytest.fixture
def cluster(make_tables: Any) -> Iterator[Cluster]:
    """Three regional apps against moto (see test_api.Cluster)."""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        yield Cluster(make_tables)
