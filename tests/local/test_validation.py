"""Every request the local applier sends is checked against AWS's service model before it leaves the client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, cast

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError, ParamValidationError
from botocore.model import ServiceModel
from botocore.stub import Stubber

from meridian_local.applier import Applier
from meridian_local.validation import ModelConstraintError, check_params, skipped_patterns, validate_requests

NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing listens, so a request that is sent fails to connect


@pytest.fixture
def sent() -> list[str]:
    """URLs of the requests that reached the point of being sent."""
    return []


@pytest.fixture
def client(sent: list[str]) -> Iterator[Any]:
    def make(service: str) -> Any:
        c = boto3.client(service, region_name="eu-west-1", endpoint_url=NOWHERE, aws_access_key_id="t", aws_secret_access_key="t",
                         config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, connect_timeout=1))
        c.meta.events.register("before-send.*.*", lambda request, **_: sent.append(request.url))
        return validate_requests(c)

    yield make


def alarm(**over: Any) -> dict[str, Any]:
    return {"AlarmName": "meridian-prod-eu-west-1-throttles", "ComparisonOperator": "GreaterThanThreshold", "EvaluationPeriods": 3,
            "Threshold": 0.0, "Namespace": "AWS/DynamoDB", "MetricName": "ReadThrottleEvents", "Statistic": "Sum", "Period": 60, **over}


class TestRefusedBeforeSending:
    def test_max_length(self, client: Any, sent: list[str]) -> None:
        """An alarm name of 256 characters (the model's max is 255) is refused, naming service, operation and parameter."""
        with pytest.raises(ModelConstraintError) as caught:
            client("cloudwatch").put_metric_alarm(**alarm(AlarmName="a" * 256))
        assert str(caught.value) == "cloudwatch PutMetricAlarm: AlarmName has 256 characters, more than the maximum 255"
        assert sent == []

    def test_enum(self, client: Any, sent: list[str]) -> None:
        """BillingMode 'ON_DEMAND' is not a value of the enum (PAY_PER_REQUEST is); moto would take it."""
        with pytest.raises(ModelConstraintError, match=r"dynamodb CreateTable: BillingMode 'ON_DEMAND' is not one of PROVISIONED, PAY_PER_REQUEST"):
            client("dynamodb").create_table(
                TableName="t1", BillingMode="ON_DEMAND", KeySchema=[{"AttributeName": "k", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "k", "AttributeType": "S"}],
            )
        assert sent == []

    def test_pattern_matches_the_whole_value(self, client: Any, sent: list[str]) -> None:
        """'my function' contains a valid name but is not one: the pattern must match the whole value."""
        with pytest.raises(ModelConstraintError, match=r"lambda CreateFunction: FunctionName 'my function' does not match"):
            client("lambda").create_function(FunctionName="my function", Role="arn:aws:iam::123456789012:role/r", Handler="h.h",
                                              Runtime="python3.12", Code={"ZipFile": b"x"})
        assert sent == []

    def test_nested_list_and_number(self, client: Any, sent: list[str]) -> None:
        """Every problem is reported with its path: list sizes, nested members, numeric ranges."""
        with pytest.raises(ModelConstraintError) as caught:
            client("route53").create_health_check(
                CallerReference="c" * 65,
                HealthCheckConfig={"Type": "HTTPS", "FullyQualifiedDomainName": "eu-west-1.example.com", "RequestInterval": 10,
                                   "FailureThreshold": 11, "Regions": ["us-east-1", "eu-west-1"]},
            )
        message = str(caught.value)
        assert message.startswith("route53 CreateHealthCheck: CallerReference has 65 characters, more than the maximum 64")
        assert "HealthCheckConfig.FailureThreshold 11 is above the maximum 10" in message
        assert "HealthCheckConfig.Regions has 2 items, fewer than the minimum 3" in message
        assert sent == []

    def test_nothing_reaches_a_stubber(self) -> None:
        """A refused request never gets as far as a Stubber's canned response, which stays pending."""
        cloudwatch = validate_requests(boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="t", aws_secret_access_key="t"))
        with Stubber(cloudwatch) as stubber:
            stubber.add_response("put_metric_alarm", {})
            with pytest.raises(ModelConstraintError, match="AlarmActions has 6 items, more than the maximum 5"):
                cloudwatch.put_metric_alarm(**alarm(AlarmActions=[f"arn:aws:sns:eu-west-1:123456789012:t{i}" for i in range(6)]))
            with pytest.raises(AssertionError):
                stubber.assert_no_pending_responses()

    def test_sensitive_values_stay_out_of_the_message(self, client: Any) -> None:
        with pytest.raises(ModelConstraintError) as caught:
            client("lambda").create_function(FunctionName="f", Role="arn:aws:iam::123456789012:role/r", Handler="h.h", Runtime="python3.12",
                                              Code={"ZipFile": b"x"}, Environment={"Variables": {"1ST_SECRET": "hunter2"}})
        assert "Environment.Variables key (sensitive value) does not match" in str(caught.value)
        assert "hunter2" not in str(caught.value) and "1ST_SECRET" not in str(caught.value)


class TestAccepted:
    def test_valid_request_is_sent(self, client: Any, sent: list[str]) -> None:
        """A valid request passes validation and is sent (here to an endpoint where nothing listens)."""
        with pytest.raises(EndpointConnectionError):
            client("cloudwatch").put_metric_alarm(**alarm())
        assert sent == [f"{NOWHERE}/"]

    def test_valid_request_reaches_a_stubber(self) -> None:
        cloudwatch = validate_requests(boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="t", aws_secret_access_key="t"))
        with Stubber(cloudwatch) as stubber:
            stubber.add_response("put_metric_alarm", {})
            cloudwatch.put_metric_alarm(**alarm())
            stubber.assert_no_pending_responses()

    def test_limit_absent_from_the_model_is_left_to_the_policy_rules(self) -> None:
        """CloudWatch's model has no pattern for MetricDataQuery.Id nor a maximum of 10 metrics: 'R0' and 11
        metrics pass here, and the policy rule alarm-metric-math is what refuses them."""
        cloudwatch = boto3.client("cloudwatch", region_name="eu-west-1", aws_access_key_id="t", aws_secret_access_key="t")
        metric = {"Namespace": "AWS/DynamoDB", "MetricName": "ReadThrottleEvents", "Dimensions": [{"Name": "TableName", "Value": "t"}]}
        queries = [{"Id": f"R{i}", "MetricStat": {"Metric": metric, "Period": 60, "Stat": "Sum"}} for i in range(11)]
        queries.append({"Id": "total", "Expression": "SUM(METRICS())", "ReturnData": True})
        params = {k: v for k, v in alarm(Metrics=queries).items() if k not in ("Namespace", "MetricName", "Statistic", "Period")}
        assert check_params(cloudwatch.meta.service_model.operation_model("PutMetricAlarm"), params) == []

    def test_wrong_types_are_left_to_botocore(self, client: Any, sent: list[str]) -> None:
        """A value of the wrong type is botocore's to report, with its own message."""
        with pytest.raises(ParamValidationError) as caught:
            client("cloudwatch").put_metric_alarm(**alarm(EvaluationPeriods="three"))
        assert not isinstance(caught.value, ModelConstraintError) and sent == []

    def test_the_error_is_a_param_validation_error(self) -> None:
        assert issubclass(ModelConstraintError, ParamValidationError)


class TestJavaPatterns:
    MODEL = ServiceModel(
        {
            "metadata": {"protocol": "json", "apiVersion": "2026-01-01", "endpointPrefix": "fake", "serviceId": "Fake",
                         "jsonVersion": "1.1", "targetPrefix": "Fake", "signatureVersion": "v4"},
            "operations": {"Put": {"name": "Put", "http": {"method": "POST", "requestUri": "/"}, "input": {"shape": "PutInput"}}},
            "shapes": {
                "PutInput": {"type": "structure", "members": {"Tag": {"shape": "Tag"}, "Odd": {"shape": "Odd"}, "Word": {"shape": "Word"}}},
                "Tag": {"type": "string", "pattern": r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*"},
                "Odd": {"type": "string", "pattern": r"[a-z&&[^b]]+"},
                "Word": {"type": "string", "pattern": r"\w+"},
            },
        },
        service_name="fake",
    )

    def test_patterns_python_cannot_express_are_skipped(self) -> None:
        """Unicode classes and class intersections are Java-only: skipped and listed, never a crash or a guess."""
        op = self.MODEL.operation_model("Put")
        assert check_params(op, {"Tag": "Zürich 1", "Odd": "abc"}) == []
        assert {r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*", r"[a-z&&[^b]]+"} <= skipped_patterns()

    def test_word_class_is_ascii_as_in_java(self) -> None:
        op = self.MODEL.operation_model("Put")
        assert check_params(op, {"Word": "abc_1"}) == []
        assert check_params(op, {"Word": "zürich"}) == ["Word 'zürich' does not match \\w+"]


class TestApplier:
    def test_applier_clients_are_validated(self) -> None:
        """Every client the applier creates refuses an invalid request before sending it."""
        applier = Applier(cast(Any, None), NOWHERE)
        with pytest.raises(ModelConstraintError, match=r"^logs CreateLogGroup: logGroupName '/meridian/prod:svc' does not match"):
            applier.client("logs", "eu-west-1").create_log_group(logGroupName="/meridian/prod:svc")
