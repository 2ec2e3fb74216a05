"""Roles with inline policies, and what "the role is ready" means for the resources that use it."""

from __future__ import annotations

import json
from collections.abc import Mapping
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
