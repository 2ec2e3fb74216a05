"""Each region's alarm topic: encrypted with a key CloudWatch may use, subscribed from config, named from the
address (never the list order), and kept out of what the tasks and Lambdas read."""

from __future__ import annotations

import json

import boto3
import pytest
from botocore.stub import Stubber

from infra.components.notifications import subscription_name
from infra.render import Plan, render_values
from meridian.topology import TopologyError, load_topology

TOPIC = "aws:sns/topic:Topic"
KEY = "aws:kms/key:Key"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
BASE = {"regions": ["us-east-1", "eu-west-1"]}
ALERTS = {**BASE, "alertEmails": ["oncall@example.com", "lead@example.com"], "alertHttpsEndpoints": ["https://events.example.com/hook"]}


@pytest.fixture(scope="module")
def alerts_plan() -> Plan:
    return render_values(ALERTS, stack="alerts")


class TestTopic:
    @pytest.mark.parametrize("plan_name", ["dev_plan", "prod_plan"])
    def test_one_topic_per_region_with_a_key_cloudwatch_may_use(self, plan_name: str, request: pytest.FixtureRequest) -> None:
        """Not alias/aws/sns: CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed key (its policy
        cannot grant cloudwatch.amazonaws.com kms:GenerateDataKey* and kms:Decrypt). A customer-managed key in the
        same region whose policy does."""
        plan: Plan = request.getfixturevalue(plan_name)
        topics = plan.of_type(TOPIC)
        keys = {k.region: k for k in plan.of_type(KEY)}
        assert sorted(t.region for t in topics) == sorted(plan.topology.regions)
        for topic in topics:
            assert topic.inputs["name"] == f"meridian-{plan.topology.stack}-{topic.region}-alarms"
            assert topic.inputs["kmsMasterKeyId"] != "alias/aws/sns"
            key = keys[topic.region]
            assert topic.inputs["kmsMasterKeyId"] == key.outputs["arn"] and f":{topic.region}:" in key.outputs["arn"]
            assert key.inputs["enableKeyRotation"] is True
            statements = json.loads(key.inputs["policy"])["Statement"]
            (cloudwatch,) = [s for s in statements if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
            assert set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"} and cloudwatch["Effect"] == "Allow"
            assert any(s["Principal"] == {"AWS": "arn:aws:iam::123456789012:root"} and s["Action"] == "kms:*" for s in statements)

    def test_no_subscriptions_by_default(self, prod_plan: Plan) -> None:
        assert prod_plan.of_type(SUBSCRIPTION) == []


class TestSubscriptions:
    def test_every_address_subscribes_to_every_regions_topic(self, alerts_plan: Plan) -> None:
        topics = {t.region: t.outputs["arn"] for t in alerts_plan.of_type(TOPIC)}
        subs = alerts_plan.of_type(SUBSCRIPTION)
        for region, arn in topics.items():
            mine = sorted((s.inputs["protocol"], s.inputs["endpoint"]) for s in subs if s.region == region)
            assert mine == [("email", "lead@example.com"), ("email", "oncall@example.com"), ("https", "https://events.example.com/hook")]
            assert all(s.inputs["topic"] == arn for s in subs if s.region == region)

    def test_names_follow_the_address_not_the_order(self, alerts_plan: Plan) -> None:
        """Reordering the list changes no logical name (so no subscription is replaced)."""
        reordered = render_values({**ALERTS, "alertEmails": list(reversed(ALERTS["alertEmails"]))}, stack="alerts")
        assert {s.name for s in reordered.of_type(SUBSCRIPTION)} == {s.name for s in alerts_plan.of_type(SUBSCRIPTION)}
        assert subscription_name("eu-west-1", "email", "a@example.com") != subscription_name("eu-west-1", "email", "b@example.com")

    def test_requests_pass_snss_model(self, alerts_plan: Plan) -> None:
        """CreateTopic (with its key) and Subscribe as SNS's real model takes them."""
        client = boto3.client("sns", region_name="eu-west-1", aws_access_key_id="x", aws_secret_access_key="x")
        stub = Stubber(client)
        with stub:
            for topic in alerts_plan.of_type(TOPIC):
                params = {"Name": topic.inputs["name"], "Attributes": {"KmsMasterKeyId": topic.inputs["kmsMasterKeyId"],
                                                                        "DisplayName": topic.inputs["displayName"]}}
                stub.add_response("create_topic", {"TopicArn": topic.outputs["arn"]}, params)
                client.create_topic(**params)
            for sub in alerts_plan.of_type(SUBSCRIPTION):
                params = {"TopicArn": sub.inputs["topic"], "Protocol": sub.inputs["protocol"], "Endpoint": sub.inputs["endpoint"]}
                stub.add_response("subscribe", {"SubscriptionArn": "pending confirmation"}, params)
                client.subscribe(**params)
        stub.assert_no_pending_responses()

    def test_addresses_stay_out_of_the_tasks(self, alerts_plan: Plan) -> None:
        """An address is deploy-time only: adding one changes no task definition or function environment."""
        plain = render_values(BASE, stack="alerts")

        def environments(plan: Plan) -> list[str]:
            return sorted([json.dumps(r.inputs["containerDefinitions"]) for r in plan.of_type("aws:ecs/taskDefinition:TaskDefinition")]
                          + [json.dumps(r.inputs["environment"]) for r in plan.of_type("aws:lambda/function:Function")])

        assert environments(alerts_plan) == environments(plain)
        assert "example.com/hook" not in alerts_plan.topology.to_json()

    @pytest.mark.parametrize(("key", "value"), [("alertEmails", ["not-an-address"]), ("alertHttpsEndpoints", ["http://plain.example.com"]),
                                                ("alertEmails", ["a@example.com", "a@example.com"]), ("conflictsPerMinute", 0)])
    def test_bad_values_refused(self, key: str, value: object) -> None:
        with pytest.raises(TopologyError, match=f"meridian:{key}"):
            load_topology({**BASE, key: value})
