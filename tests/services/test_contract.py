"""The API contract is the truth: Schemathesis generates requests from the service's own OpenAPI
document (valid and invalid ones) and checks every answer against it — status codes documented,
bodies matching their schemas, no 5xx, invalid data refused, authentication not ignored.

The service runs in-process on moto with three regions; half the generated calls are made as a real
user with that user's token, so the checks reach past authentication into storage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from moto import mock_aws
from test_api import Cluster

EXAMPLES = 25  # per operation; Schemathesis adds its negative (invalid) cases to these


@pytest.fixture
def api(make_tables: Any) -> Iterator[tuple[Cluster, str, str]]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        cluster = Cluster(make_tables)
        created = cluster.call("eu-west-1", "POST", "/v1/users", json={"email": "c@example.com", "name": "C", "residency": "eu"})
        assert created.status_code == 201, created.text
        yield cluster, created.json()["user_id"], created.json()["token"]


def test_every_answer_matches_the_contract(api: tuple[Cluster, str, str]) -> None:
    """Every operation, every check Schemathesis has (its pytest plugin does not load under this pytest,
    so its strategies are driven here with Hypothesis directly)."""
    cluster, user, token = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", cluster.apps["eu-west-1"])
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            if "user_id" in (case.path_parameters or {}) and hash(str(case.path_parameters)) % 2 == 0:
                case.path_parameters["user_id"] = user  # as the real user, past authentication
                case.headers = {**(case.headers or {}), "Authorization": f"Bearer {token}"}
            if isinstance(case.body, dict) and any(isinstance(v, float) for v in case.body.values()):
                # JSON Schema's "integer" admits 2.0; this API is stricter (a number with a fraction part,
                # even .0, is not an integer) and says so in its 422, which is what is checked here.
                response = case.call()
                assert response.status_code == 422 and response.json()["error"] == "invalid_request", response.text
                return
            case.call_and_validate()

        check()


def test_contract_documents_what_the_service_does(api: tuple[Cluster, str, str]) -> None:
    """The facts the review found missing: zones as an enum, Idempotency-Key required, the error envelope
    on every documented error, and the bearer scheme on user routes."""
    cluster, _, _ = api
    doc = cluster.call("eu-west-1", "GET", "/openapi.json").json()
    assert doc["components"]["schemas"]["NewUser"]["properties"]["residency"]["enum"] == ["eu", "global"]
    order = doc["paths"]["/v1/users/{user_id}/orders"]["post"]
    key = next(p for p in order["parameters"] if p["name"] == "Idempotency-Key")
    assert key["required"] is True and key["in"] == "header"
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            for status, response in op["responses"].items():
                if int(status) >= 400:
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorBody"), (method, path, status)
            if path.startswith("/v1/users/{user_id}"):
                assert {"401", "403", "404"} <= set(op["responses"]), (method, path)
                assert op["security"] == [{"HTTPBearer": []}], (method, path)
