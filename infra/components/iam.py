"""Roles with inline policies, and what "the role is ready" means for the resources that use it."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.scope import Scope


@dataclass(frozen=True)
class RoleWithPolicies:
    role: aws.iam.Role
    #: The role's inline policies (and attachments added later): a function, an event source mapping or a
    #: task definition must depend on these, not only on the role, or it is created while the role still
    #: lacks its permissions (an event source mapping's creation checks the stream permissions and fails).
    grants: list[pulumi.Resource]


def role_with_policies(scope: Scope, resource_name: str, principal: str, policies: Mapping[str, pulumi.Input[str]]) -> RoleWithPolicies:
    """A role ``principal`` may assume, with one inline policy per ``resource name -> document``."""
    role = aws.iam.Role(resource_name, assume_role_policy=json.dumps(layout.assume_role(principal)), opts=scope.opts())
    grants: list[pulumi.Resource] = [
        aws.iam.RolePolicy(policy_name, role=role.id, policy=document, opts=scope.opts()) for policy_name, document in policies.items()
    ]
    return RoleWithPolicies(role, grants)


#: What a running task needs to refresh its key rings (meridian.keysource). The secret is encrypted with
#: Secrets Manager's AWS managed key (aws/secretsmanager), whose key policy already lets any principal of
#: the account decrypt through Secrets Manager: no kms:Decrypt statement. A customer-managed key would need
#: one, on that key in the same region.
SECRET_READ_ACTIONS = ("secretsmanager:GetSecretValue",)
#: What the key rotator needs (meridian.rotation): read the current version, write the next one.
SECRET_ROTATE_ACTIONS = ("secretsmanager:GetSecretValue", "secretsmanager:PutSecretValue")


def secret_policy_document(sid: str, actions: Sequence[str], secret_arn: str) -> str:
    """A policy allowing ``actions`` on exactly one secret (one region's replica: the ARN names its region)."""
    if ":secretsmanager:" not in secret_arn or "*" in secret_arn:
        raise ValueError(f"{sid}: {secret_arn!r} is not one secret's ARN")
    return json.dumps(layout.policy(layout.allow(sid, actions, [secret_arn])))


def secret_policy(sid: str, actions: Sequence[str], secret_arn: pulumi.Input[str]) -> pulumi.Output[str]:
    return pulumi.Output.from_input(secret_arn).apply(lambda arn: secret_policy_document(sid, actions, arn))
