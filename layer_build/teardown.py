"""Delete what ``./build.sh deploy`` / ``publish-layer`` created: ``./build.sh teardown``.

    python -m layer_build.teardown [--region R] [--prefix kafka-relay] [--dry-run]
                                   [--keep-layers] [--keep-logs]

Idempotent: what is already gone is reported as "absent", so a second run
changes nothing. Only resources named after the prefix are touched: the two
producer functions, their roles (inline policy first), schedules (targets
first), log groups, and every version of the ``<prefix>-<arch>`` layers.
Needs no build.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
from botocore.exceptions import ClientError

from kafka_relay.tools.cli import run_cli
from layer_build.deploy import Log, checked_region, report_errors, say
from layer_build.plan import DEFAULT_PREFIX, FUNCTIONS, ResourceNames, layer_name
from layer_build.targets import ARCHES

_GONE = frozenset({"ResourceNotFoundException", "NoSuchEntity", "NoSuchEntityException"})


@dataclass(frozen=True)
class TeardownOptions:
    prefix: str = DEFAULT_PREFIX
    region: str | None = None
    dry_run: bool = False
    keep_layers: bool = False
    keep_logs: bool = False


@dataclass
class TeardownResult:
    actions: dict[str, str] = field(default_factory=dict)  # "kind name" -> deleted | absent ...


class Teardown:
    def __init__(self, options: TeardownOptions, *, session: Any, log: Log) -> None:
        self.options = options
        self.log = log
        region = checked_region(session, options.region)
        self.lam = session.client("lambda", region_name=region)
        self.iam = session.client("iam", region_name=region)
        self.events = session.client("events", region_name=region)
        self.logs = session.client("logs", region_name=region)
        self.result = TeardownResult()
        self.log(f"{'dry run: ' if options.dry_run else ''}tearing down {options.prefix} "
                 f"in {region}")

    def _delete(self, kind: str, name: str, exists: Callable[[], bool],
                delete: Callable[[], object]) -> None:
        try:
            present = exists()
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in _GONE:
                raise
            present = False
        if not present:
            action = "absent"
        elif self.options.dry_run:
            action = "would delete"
        else:
            delete()
            action = "deleted"
        self.result.actions[f"{kind} {name}"] = action
        self.log(f"{kind} {name}: {action}")

    def run(self) -> TeardownResult:
        for spec in FUNCTIONS:
            names = ResourceNames.of(self.options.prefix, spec)
            self._schedule(names.rule_name)
            self._function(names.name)
            self._role(names)
            if not self.options.keep_logs:
                self._log_group(f"/aws/lambda/{names.name}")
        if not self.options.keep_layers:
            for arch in ARCHES:
                self._layer(layer_name(self.options.prefix, arch))
        self.log("dry run: nothing was changed" if self.options.dry_run else "torn down")
        return self.result

    def _schedule(self, rule: str) -> None:
        def delete() -> None:
            targets = self.events.list_targets_by_rule(Rule=rule).get("Targets", [])
            if targets:
                self.events.remove_targets(Rule=rule, Ids=[t["Id"] for t in targets])
            self.events.delete_rule(Name=rule)

        self._delete("schedule", rule, lambda: bool(self.events.describe_rule(Name=rule)), delete)

    def _role(self, names: ResourceNames) -> None:
        role = names.role_name

        def delete() -> None:
            for policy in self.iam.list_role_policies(RoleName=role).get("PolicyNames", []):
                self.iam.delete_role_policy(RoleName=role, PolicyName=policy)
            self.iam.delete_role(RoleName=role)

        self._delete("role", role, lambda: bool(self.iam.get_role(RoleName=role)), delete)

    def _function(self, name: str) -> None:
        self._delete("function", name, lambda: bool(self.lam.get_function(FunctionName=name)),
                     lambda: self.lam.delete_function(FunctionName=name))

    def _log_group(self, group: str) -> None:
        def exists() -> bool:
            found = self.logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
            return any(g["logGroupName"] == group for g in found)

        self._delete("log-group", group, exists,
                     lambda: self.logs.delete_log_group(logGroupName=group))

    def _layer(self, name: str) -> None:
        def versions() -> list[int]:
            found = self.lam.list_layer_versions(LayerName=name).get("LayerVersions", [])
            return [int(v["Version"]) for v in found]

        def delete() -> None:
            for number in versions():
                self.lam.delete_layer_version(LayerName=name, VersionNumber=number)

        self._delete("layer", name, lambda: bool(versions()), delete)


def teardown(options: TeardownOptions, *, session: Any = None, log: Log = say) -> TeardownResult:
    if session is None:
        session = boto3.Session(region_name=options.region)
    return Teardown(options, session=session, log=log).run()


def parse_args(argv: Sequence[str] | None) -> TeardownOptions:
    parser = argparse.ArgumentParser(
        prog="./build.sh teardown",
        description="Delete the functions, roles, schedules, log groups and layers that "
        "deploy and publish-layer created under a prefix.",
    )
    parser.add_argument("--region", help="default: boto3's (AWS_DEFAULT_REGION, profile)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="default: %(default)s")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would be deleted; call no mutating API")
    parser.add_argument("--keep-layers", action="store_true",
                        help="leave the published layer versions (other functions may use them)")
    parser.add_argument("--keep-logs", action="store_true", help="leave the log groups")
    args = parser.parse_args(argv)
    return TeardownOptions(prefix=args.prefix, region=args.region, dry_run=args.dry_run,
                           keep_layers=args.keep_layers, keep_logs=args.keep_logs)


def main(argv: Sequence[str] | None = None, *, session: Any = None) -> int:
    options = parse_args(argv)
    return report_errors(lambda: teardown(options, session=session),
                         needs="Lambda, IAM, EventBridge, CloudWatch Logs")


if __name__ == "__main__":
    sys.exit(run_cli(main))
