"""The service image: built from ``services/Dockerfile`` once per `pulumi up`, pushed to an ECR repository
in **every** region, so that no region needs another to start tasks (a registry outage or a region's loss
never blocks scaling elsewhere).

The tag is a hash of the build context, so unchanged code yields the same tag, the same task definition
and no deployment. ``meridian:image`` deploys a prebuilt image instead (no Docker needed).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from infra import layout
from meridian.topology import Topology

SERVICES = Path(__file__).resolve().parents[2] / "services"
DOCKERFILE = SERVICES / "Dockerfile"
#: What the Dockerfile copies from its context (services/): the library and the Dockerfile itself.
CONTEXT_PARTS = ("Dockerfile", ".dockerignore", "meridian")
KEEP_IMAGES = 20


def content_tag(root: Path = SERVICES, parts: tuple[str, ...] = CONTEXT_PARTS) -> str:
    """``src-<16 hex>``: a hash of every file the build reads (paths and bytes, sorted; no caches)."""
    digest = hashlib.sha256()
    for part in parts:
        base = root / part
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for path in files:
            if "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return f"src-{digest.hexdigest()[:16]}"


def lifecycle_policy(keep: int) -> str:
    """Expire all but the newest ``keep`` images (older releases stay available for a rollback)."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"keep the newest {keep} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep},
                    "action": {"type": "expire"},
                }
            ]
        }
    )


@dataclass(frozen=True, kw_only=True)
class ServiceImageArgs:
    topology: Topology
    providers: Mapping[str, aws.Provider]

    def __post_init__(self) -> None:
        missing = [r for r in self.topology.regions if r not in self.providers]
        if missing:
            raise ValueError(f"no provider for region(s) {missing}")


class ServiceImage(pulumi.ComponentResource):
    """The image each region runs: ``uris[region]`` is in that region's own repository."""

    def __init__(self, name: str, args: ServiceImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("meridian:image:ServiceImage", name, None, opts)
        topology = args.topology
        self.repositories: dict[str, aws.ecr.Repository] = {}
        self.image: docker_build.Image | None = None
        if topology.sizing.image:
            self.tag = topology.sizing.image
            self.uris: dict[str, pulumi.Output[str]] = {r: pulumi.Output.from_input(topology.sizing.image) for r in topology.regions}
            self.register_outputs({"uris": self.uris})
            return

        self.tag = content_tag()
        for region in topology.regions:
            provider = args.providers[region]
            repo = aws.ecr.Repository(
                f"{name}-{region}",
                name=f"{layout.resource_prefix(topology)}/service",
                # Content tags: a tag always names the same bytes; a rebuild of changed code gets a new tag.
                image_tag_mutability="IMMUTABLE",
                image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
                encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type="AES256")],
                opts=pulumi.ResourceOptions(parent=self, provider=provider),
            )
            aws.ecr.LifecyclePolicy(
                f"{name}-{region}",
                repository=repo.name,
                policy=lifecycle_policy(KEEP_IMAGES),
                opts=pulumi.ResourceOptions(parent=self, provider=provider),
            )
            self.repositories[region] = repo

        def registry(region: str, repo: aws.ecr.Repository) -> docker_build.RegistryArgs:
            token = aws.ecr.get_authorization_token_output(
                registry_id=repo.registry_id, opts=pulumi.InvokeOutputOptions(parent=self, provider=args.providers[region])
            )
            return docker_build.RegistryArgs(address=repo.repository_url, username=token.user_name, password=token.password)

        # One build, pushed to every regional repository (the same manifest digest in each).
        image = docker_build.Image(
            f"{name}-build",
            context=docker_build.BuildContextArgs(location=str(SERVICES)),
            dockerfile=docker_build.DockerfileArgs(location=str(DOCKERFILE)),
            platforms=[docker_build.Platform.LINUX_AMD64],  # the task definition's X86_64 runtime platform
            push=True,
            tags=[pulumi.Output.concat(repo.repository_url, ":", self.tag) for repo in self.repositories.values()],
            registries=[registry(r, repo) for r, repo in self.repositories.items()],
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.image = image
        # The URI is known before the push; reading it through the digest makes tasks wait for the push.
        self.uris = {
            r: pulumi.Output.all(repo.repository_url, image.digest).apply(lambda v: f"{v[0]}:{self.tag}")
            for r, repo in self.repositories.items()
        }
        self.register_outputs({"uris": self.uris})
