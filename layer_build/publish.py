"""Publish only the kafka-relay layer, for your own functions: ``./build.sh publish-layer``.

    python -m layer_build.publish [--arch x86_64 arm64] [--region R] [--prefix kafka-relay]
                                  [--dist dist] [--dry-run]

One layer per architecture (``<prefix>-x86_64``, ``<prefix>-arm64``), with its
compatible runtimes, architecture and licence set. A new version is
published only when the newest one is not this build (its sha256 is in the
description). Prints each layer version ARN and, per KAFKA_AUTH mode, the complete
environment of a function that attaches it (``function_env``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3

from kafka_relay.tools.cli import run_cli
from layer_build.build import REPO_ROOT
from layer_build.deploy import (
    PAST,
    Log,
    caller_account,
    checked_region,
    publish_layer,
    report_errors,
    say,
)
from layer_build.function_env import environment_lines
from layer_build.manifest import Manifest
from layer_build.plan import DEFAULT_PREFIX, checked_zip, layer_name
from layer_build.targets import ARCHES


@dataclass(frozen=True)
class PublishOptions:
    dist: Path = REPO_ROOT / "dist"
    arches: tuple[str, ...] = tuple(ARCHES)
    prefix: str = DEFAULT_PREFIX
    region: str | None = None
    dry_run: bool = False


@dataclass
class PublishResult:
    arns: dict[str, str] = field(default_factory=dict)  # arch -> layer version ARN
    actions: dict[str, str] = field(default_factory=dict)  # layer name -> action


def publish(options: PublishOptions, *, session: Any = None, log: Log = say) -> PublishResult:
    manifest = Manifest.load(options.dist)
    # Every requested architecture must be built and unchanged before anything is published.
    layers = {arch: manifest.layer(arch) for arch in options.arches}
    zips = {arch: checked_zip(options.dist, layer) for arch, layer in layers.items()}
    if session is None:
        session = boto3.Session(region_name=options.region)
    region = checked_region(session, options.region)
    account = caller_account(session, region)
    lam = session.client("lambda", region_name=region)
    result = PublishResult()
    dry = options.dry_run

    def record(kind: str, name: str, verb: str | None, detail: str = "") -> None:
        action = "unchanged" if verb is None else f"would {verb}" if dry else PAST[verb]
        result.actions[name] = action
        log(f"{kind} {name}: {action}{f' ({detail})' if detail else ''}")

    log(f"{'dry run: ' if dry else ''}publishing the kafka-relay layer to {region} "
        f"(account {account.account_id}): {', '.join(options.arches)}")
    for arch, layer in layers.items():
        result.arns[arch] = publish_layer(
            lam, name=layer_name(options.prefix, arch), layer=layer, layer_zip=zips[arch],
            account=account, dry_run=dry, record=record,
        )
    log("")
    for arch, arn in result.arns.items():
        runtimes = ", ".join(layers[arch].compatible_runtimes)
        log(f"{arch:<7} kafka-relay {layers[arch].version} -> {arn}")
        log(f"        for functions with Architectures=[{arch}] on {runtimes}")
    log("")
    for line in environment_lines():
        log(line)
    log("templates with an Auth choice: iac/sam/template.yaml, iac/cloudformation/template.yaml, "
        "iac/terraform/main.tf (docs: iac.md)")
    return result


def parse_args(argv: Sequence[str] | None) -> PublishOptions:
    parser = argparse.ArgumentParser(
        prog="./build.sh publish-layer",
        description="Publish only the kafka-relay layer (no functions) and print its ARNs.",
    )
    parser.add_argument("--arch", nargs="+", choices=list(ARCHES), default=list(ARCHES))
    parser.add_argument("--region", help="default: boto3's (AWS_DEFAULT_REGION, profile)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="layer name prefix: <prefix>-<arch> (default: %(default)s)")
    parser.add_argument("--dist", type=Path, default=REPO_ROOT / "dist")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be published; call no mutating API")
    args = parser.parse_args(argv)
    return PublishOptions(dist=args.dist, arches=tuple(dict.fromkeys(args.arch)),
                          prefix=args.prefix, region=args.region, dry_run=args.dry_run)


def main(argv: Sequence[str] | None = None, *, session: Any = None) -> int:
    options = parse_args(argv)
    return report_errors(lambda: publish(options, session=session),
                         needs="lambda:PublishLayerVersion")


if __name__ == "__main__":
    sys.exit(run_cli(main))
