"""CrossGuard pack: `pulumi preview --policy-pack policy/` runs the same rules as `meridian plan`."""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, PolicyPack, ReportViolation, StackValidationArgs, StackValidationPolicy

from policy.rules import RULES, Res, Rule


def _res(resource) -> Res:  # type: ignore[no-untyped-def]
    provider = getattr(resource, "provider", None)
    region = (provider.props or {}).get("region") if provider is not None else None
    return Res(type=resource.resource_type, name=resource.name, region=region, inputs=dict(resource.props or {}))


def _policy(rule: Rule) -> StackValidationPolicy:
    def validate(args: StackValidationArgs, report_violation: ReportViolation) -> None:
        resources = [_res(r) for r in args.resources]
        for violation in rule.check(resources, None):
            report_violation(f"{violation.resource}: {violation.message}", None)

    return StackValidationPolicy(
        name=rule.name, description=rule.description, validate=validate, enforcement_level=EnforcementLevel.MANDATORY
    )


PolicyPack(name="meridian", enforcement_level=EnforcementLevel.MANDATORY, policies=[_policy(rule) for rule in RULES])
