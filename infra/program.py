"""The Meridian stack: providers, shared secret, service image, global tables, one Region per region,
the global edge.

``__main__.py`` calls :func:`define_stack` with the topology read from stack config; ``meridian plan``,
the tests and the local run run that same ``__main__.py`` under Pulumi mocks.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import pulumi
import pulumi_aws as aws

from infra import layout
from infra.components.dashboard import Dashboard, DashboardArgs, RegionInputs
from infra.components.edge import GlobalEdge, GlobalEdgeArgs, RegionEndpoint
from infra.components.fis import fault_injection
from infra.components.functions import KeyRotation, KeyRotationArgs
from infra.components.image import ServiceImage, ServiceImageArgs
from infra.components.regional import Region, RegionArgs
from infra.components.tables import GlobalTables, GlobalTablesArgs
from infra.config import ProviderConfigError, fault_injection_enabled, read_provider_settings
from meridian.topology import Topology


def make_providers(topology: Topology) -> dict[str, aws.Provider]:
    """One explicit provider per region, plus the control-plane regions of Route 53 and Global Accelerator.

    Each gets the stack's ``aws:`` endpoint, credential and skip settings (an emulator such as LocalStack,
    see Pulumi.localstack.yaml): explicit providers do not inherit them, so one forgotten here would send
    its region's calls to real AWS.
    """
    wanted = [*topology.regions]
    for region in (layout.DNS_REGION, layout.ACCELERATOR_REGION):
        if region not in wanted:
            wanted.append(region)
    settings = provider_arguments()
    return {
        region: aws.Provider(
            f"aws-{region}",
            region=region,
            default_tags=aws.ProviderDefaultTagsArgs(tags=layout.tags(topology)),
            **settings,
        )
        for region in wanted
    }


_ENDPOINT_FIELDS = frozenset(inspect.signature(aws.ProviderEndpointArgs.__init__).parameters) - {"self"}
_SNAKE = {"skipCredentialsValidation": "skip_credentials_validation", "skipRequestingAccountId": "skip_requesting_account_id",
          "skipMetadataApiCheck": "skip_metadata_api_check", "s3UsePathStyle": "s3_use_path_style",
          "accessKey": "access_key", "secretKey": "secret_key"}


def provider_arguments() -> dict[str, Any]:
    """``aws.Provider`` keyword arguments from the stack's ``aws:`` settings (none for dev and prod)."""
    try:
        settings = read_provider_settings()
    except ProviderConfigError as exc:
        raise pulumi.RunError(f"aws config: {exc}") from None
    arguments: dict[str, Any] = {_SNAKE[k]: v for k, v in settings.items() if k != "endpoints"}
    if "endpoints" in settings:
        # pulumi-aws spells `lambda` as `lambda_`; names it does not know (pulumilocal writes a few) are left out.
        fields = {("lambda_" if k == "lambda" else k): url for k, url in settings["endpoints"].items()}
        arguments["endpoints"] = [aws.ProviderEndpointArgs(**{k: v for k, v in fields.items() if k in _ENDPOINT_FIELDS})]
    return arguments


#: The zone id a preview without ``meridian:hostedZoneId`` plans against (never deployed: `up` refuses).
PREVIEW_ZONE_ID = "ZPREVIEWNOTDELEGATED"


def replica_arn(arn: str, *, primary: str, region: str) -> str:
    """The ARN of a secret's replica: the same ARN with the replica's region."""
    return arn.replace(f":{primary}:", f":{region}:")


def hosted_zone(topology: Topology) -> str:
    """The delegated public zone of the domain.

    ACM validates each region's certificate through records in this zone; a zone nobody delegated
    leaves every certificate (and so the whole `pulumi up`) waiting until ACM gives up. So the program
    never creates one: `pulumi up` without ``meridian:hostedZoneId`` stops at once with what to do,
    and a preview (or ``meridian plan``) shows the rest of the stack against a placeholder.
    """
    if topology.hosted_zone_id:
        return topology.hosted_zone_id
    if pulumi.runtime.is_dry_run():
        pulumi.log.warn(
            f"meridian:hostedZoneId is not set: this preview uses a placeholder zone; `pulumi up` needs the id of a "
            f"public hosted zone for {topology.domain} that is delegated from its parent zone"
        )
        return PREVIEW_ZONE_ID
    raise pulumi.RunError(
        f"meridian:hostedZoneId is not set. Create a public hosted zone for {topology.domain} "
        f"(aws route53 create-hosted-zone --name {topology.domain} --caller-reference meridian-{topology.stack}), "
        "add its NS records to the parent zone, then `pulumi config set meridian:hostedZoneId <zone id>` and run `pulumi up` again."
    )


def define_stack(topology: Topology) -> dict[str, Any]:
    providers = make_providers(topology)
    dns = providers[layout.DNS_REGION]
    primary = topology.secret_region
    hosted_zone_id = hosted_zone(topology)

    # One key pair for session tokens and region-to-region calls, replicated to every region so that any
    # region verifies what another signed. Generated once; later `pulumi up`s keep it (ignore_changes).
    secret = aws.secretsmanager.Secret(
        "session-keys",
        name=f"{layout.resource_prefix(topology)}/session-keys",
        description="Meridian key rings: session tokens (session), region-to-region calls (peer), user tokens (users), operator credential (operator)",
        replicas=[aws.secretsmanager.SecretReplicaArgs(region=r) for r in topology.regions if r != primary],
        recovery_window_in_days=7,
        opts=pulumi.ResourceOptions(provider=providers[primary]),
    )
    invoke = pulumi.InvokeOutputOptions(provider=providers[primary])
    session_key = aws.secretsmanager.get_random_password_output(password_length=64, exclude_punctuation=True, opts=invoke)
    peer_key = aws.secretsmanager.get_random_password_output(password_length=64, exclude_punctuation=True, opts=invoke)
    user_key = aws.secretsmanager.get_random_password_output(password_length=64, exclude_punctuation=True, opts=invoke)
    operator_key = aws.secretsmanager.get_random_password_output(password_length=48, exclude_punctuation=True, opts=invoke)
    claim_key = aws.secretsmanager.get_random_password_output(password_length=64, exclude_punctuation=True, opts=invoke)
    aws.secretsmanager.SecretVersion(
        "session-keys",
        secret_id=secret.id,
        secret_string=pulumi.Output.json_dumps({"session": session_key.random_password, "peer": peer_key.random_password,
                                                "users": user_key.random_password, "operator": operator_key.random_password,
                                                "claims": claim_key.random_password}),
        opts=pulumi.ResourceOptions(provider=providers[primary], ignore_changes=["secretString"]),
    )

    image = ServiceImage("service-image", ServiceImageArgs(topology=topology, providers=providers))
    tables = GlobalTables("tables", GlobalTablesArgs(topology=topology, providers=providers))
    cidrs = layout.vpc_cidrs(topology.regions)
    regions: dict[str, Region] = {}
    shared_validation: list[pulumi.Output[str]] | None = None
    for region in topology.regions:
        regions[region] = Region(
            region,
            RegionArgs(
                topology=topology,
                region=region,
                cidr=cidrs[region],
                dns_provider=dns,
                hosted_zone_id=hosted_zone_id,
                secret_arn=secret.arn.apply(functools.partial(replica_arn, primary=primary, region=region)),
                stream_arns=tables.streams_in_region(region),
                shared_validation_fqdns=shared_validation,
                # A pinned region runs its pin (meridian:release, moved by `meridian rollout`); the others the built image.
                image=topology.release.pin(region) or image.uris[region],
                depends_on=[tables],
            ),
            opts=pulumi.ResourceOptions(providers={"aws": providers[region]}),
        )
        shared_validation = regions[region].shared_validation_fqdns

    # Scheduled rotation of the signing keys (meridian:keyRotationDays; 0: none), in the secret's region.
    if topology.operations.key_rotation_days:
        KeyRotation("key-rotation", KeyRotationArgs(topology=topology, secret_arn=secret.arn, provider=providers[primary],
                                                    alarm_topic_arn=regions[primary].alarm_topic_arn))

    # AWS FIS experiment templates of `meridian gameday --target aws` (meridian:faultInjection).
    fis_templates = fault_injection(topology, providers=providers, regions=regions, tables=tables, enabled=fault_injection_enabled())
    edge = GlobalEdge(
        "edge",
        GlobalEdgeArgs(
            topology=topology,
            hosted_zone_id=hosted_zone_id,
            endpoints={
                r: RegionEndpoint(alb_arn=c.alb_arn, alb_dns_name=c.alb_dns_name, alb_zone_id=c.alb_zone_id,
                                  evacuation_alarm_name=c.evacuation_alarm_name)
                for r, c in regions.items()
            },
            dns_provider=dns,
            accelerator_provider=providers[layout.ACCELERATOR_REGION],
        ),
    )
    dashboard = Dashboard(
        "dashboard",
        DashboardArgs(
            topology=topology,
            provider=dns,
            regions={r: RegionInputs(alb_arn_suffix=c.alb_arn_suffix, alarm_arns=c.key_alarm_arns) for r, c in regions.items()},
            serving_check_ids=edge.serving_check_ids,
        ),
    )
    return {
        "hostedZoneId": hosted_zone_id,
        "dashboardUrl": dashboard.url,
        "serviceImage": image.tag if not topology.sizing.image else topology.sizing.image,
        "apiUrl": f"https://{topology.domain}",
        "regions": {
            r: {"albDnsName": c.alb_dns_name, "serviceName": c.service_name, "clusterArn": c.cluster_arn,
                "url": f"https://{r}.{topology.domain}", "alarmTopicArn": c.alarm_topic_arn}
            for r, c in regions.items()
        },
        "fisTemplates": fis_templates,
        "acceleratorDnsName": edge.accelerator_dns_name or "",
        "acceleratorIps": edge.accelerator_ips or [],
        "tables": {
            zone.name: {s.name: topology.table_name(s.name, zone.name) for s in topology.tables if zone in topology.table_zones(s)}
            for zone in topology.zones
        },
    }
