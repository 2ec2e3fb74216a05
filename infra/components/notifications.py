"""One region's alarm topic: every alarm of the region (metric and composite) notifies it on ALARM and OK,
and the stack's ``meridian:alertEmails`` and ``meridian:alertHttpsEndpoints`` subscribe to it.

The topic is encrypted with a customer-managed KMS key of its own, not the AWS-managed ``alias/aws/sns``:
CloudWatch alarms publish to an encrypted topic only if the key's policy lets ``cloudwatch.amazonaws.com``
call ``kms:GenerateDataKey*`` and ``kms:Decrypt``, and the policy of an AWS-managed key cannot be changed.
With ``alias/aws/sns`` every alarm action fails (the alarm history shows KMS refusing CloudWatch) and
nobody hears anything. See AWS's knowledge center article
https://repost.aws/knowledge-center/cloudwatch-configure-alarm-sns and the SNS guide's "Key management".
A key per region (KMS keys are regional), about 1 USD a month each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import pulumi_aws as aws

from infra.components.scope import Scope

#: Days a deleted key waits before KMS destroys it (7 is KMS's minimum): a teardown leaves it pending.
KEY_DELETION_WINDOW_DAYS = 7


@dataclass(frozen=True)
class Notifications:
    topic: aws.sns.Topic
    key: aws.kms.Key


def key_policy(partition: str, account: str) -> dict[str, Any]:
    """The account administers the key (KMS's default statement); CloudWatch alarms may encrypt and decrypt
    with it, which publishing to the topic needs. No condition keys: AWS's documented statement for
    alarms has none, and a condition the request does not carry would drop every notification silently."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "AccountAdministersTheKey", "Effect": "Allow", "Principal": {"AWS": f"arn:{partition}:iam::{account}:root"},
             "Action": "kms:*", "Resource": "*"},
            {"Sid": "CloudWatchAlarmsPublishToTheTopic", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
             "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"},
        ],
    }


def subscription_name(name: str, protocol: str, endpoint: str) -> str:
    """A subscription's logical name, from its address (never list order: reordering changes nothing)."""
    return f"{name}-alarms-{protocol}-{hashlib.sha256(endpoint.encode()).hexdigest()[:10]}"


def notifications(scope: Scope) -> Notifications:
    name, region, prefix, ops = scope.name, scope.region, scope.prefix, scope.topology.operations
    key = aws.kms.Key(
        f"{name}-alarms-key",
        description=f"{prefix} {region}: encrypts the alarm topic; CloudWatch alarms may use it",
        enable_key_rotation=True,
        deletion_window_in_days=KEY_DELETION_WINDOW_DAYS,
        policy=scope.account_policy(key_policy),
        opts=scope.opts(),
    )
    aws.kms.Alias(f"{name}-alarms-key", name=f"alias/{prefix}-{region}-alarms", target_key_id=key.key_id, opts=scope.opts())
    topic = aws.sns.Topic(
        f"{name}-alarms",
        name=f"{prefix}-{region}-alarms",
        display_name=f"{prefix} {region} alarms",
        kms_master_key_id=key.arn,
        opts=scope.opts(),
    )
    for protocol, endpoints in (("email", ops.alert_emails), ("https", ops.alert_https_endpoints)):
        for endpoint in endpoints:
            # Both protocols wait for the address to confirm; until then SNS delivers nothing to it.
            aws.sns.TopicSubscription(
                subscription_name(name, protocol, endpoint), topic=topic.arn, protocol=protocol, endpoint=endpoint,
                opts=scope.opts(),
            )
    return Notifications(topic=topic, key=key)
