"""Deploy the built layer and producer functions to AWS Lambda with boto3.

    python -m layer_build.deploy [--env-file .env] [--dry-run] [--arch x86_64]
                                 [--region R] [--prefix kafka-relay] [--runtime python3.12]

Idempotent: every step reads what exists first and changes only what
differs, so a re-run with the same dist/ and env file changes nothing. With
``--dry-run`` only the reads happen and each change is printed as "would ...".
Credentials, region and endpoint come the usual boto3 way (env,
profile, ``AWS_ENDPOINT_URL``); a ``boto3.Session`` can be injected.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from kafka_relay.tools.cli import run_cli
from layer_build.build import REPO_ROOT
from layer_build.errors import CredentialsError, LayerBuildError
from layer_build.manifest import Artifact
from layer_build.plan import (
    DEFAULT_LOG_RETENTION_DAYS,
    DEFAULT_PREFIX,
    DEFAULT_RUNTIME,
    LOG_RETENTION_DAYS,
    Account,
    DeployOptions,
    DeployPlan,
    FunctionPlan,
    resolve_plan,
    role_policy,
    trust_policy,
)
from layer_build.region import NO_REGION
from layer_build.targets import ARCHES, REFUSED_RUNTIMES, RUNTIME_GLIBC

Log = Callable[[str], None]
Sleep = Callable[[float], None]

_DESCRIBED_SHA = re.compile(r"sha256:([0-9a-f]{64})")
_SENSITIVE = re.compile(r"SECRET|PASSWORD|TOKEN|API_KEY|CREDENTIAL", re.IGNORECASE)
_TARGET_ID = "kafka-relay-producer"
PAST = {"create": "created", "update": "updated", "publish": "published"}
_AUTH_ERRORS = frozenset({
    "InvalidClientTokenId", "ExpiredToken", "ExpiredTokenException", "UnrecognizedClientException",
    "SignatureDoesNotMatch", "InvalidSignatureException",
})
#: A new IAM role takes a few seconds before Lambda may assume it.
ROLE_PROPAGATION_S = 60.0


def say(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True)
class Change:
    kind: str  # layer | role | function | schedule
    name: str
    action: str  # created | updated | published | unchanged; "would create" etc. in a dry run


@dataclass
class DeployResult:
    layer_version_arn: str = ""
    function_arns: dict[str, str] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)

    def actions(self, kind: str) -> dict[str, str]:
        return {change.name: change.action for change in self.changes if change.kind == kind}


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _document(value: Any) -> Any:
    """IAM policy documents arrive parsed or as URL-encoded JSON, depending on the client."""
    if isinstance(value, str):
        return json.loads(urllib.parse.unquote(value))
    return value


def masked(environment: dict[str, str]) -> str:
    return ", ".join(
        f"{key}={'****' if _SENSITIVE.search(key) else value}"
        for key, value in environment.items()
    )


def b64_sha256(path: Path) -> str:
    """Lambda's CodeSha256: the base64 of the zip's SHA-256."""
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def retry_while_role_propagates(
    call: Callable[[], Any], *, sleep: Sleep, budget_s: float, log: Log
) -> Any:
    """Lambda refuses a role it cannot assume yet; a new role gets there within seconds."""
    waited, delay = 0.0, 1.0
    while True:
        try:
            return call()
        except ClientError as exc:
            propagating = _error_code(exc) == "InvalidParameterValueException" and (
                "cannot be assumed" in str(exc)
            )
            if not propagating or waited + delay > budget_s:
                raise
            log(f"  waiting {delay:.0f} s for the new role to reach Lambda")
            sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 8.0)


Record = Callable[..., None]  # (kind, name, verb | None, detail)
#: What the layer bundles, as an SPDX expression: kafka-relay, confluent-kafka and the MSK IAM
#: signer (Apache-2.0), librdkafka and what its wheel links statically (BSD-2-Clause,
#: BSD-3-Clause, MIT, Zlib, curl; OpenSSL 3 is Apache-2.0). NOTICE lists each.
LAYER_LICENSE = "Apache-2.0 AND BSD-2-Clause AND BSD-3-Clause AND MIT AND Zlib AND curl"


def publish_layer(
    lam: Any, *, name: str, layer: Artifact, layer_zip: Path, account: Account,
    dry_run: bool, record: Record,
) -> str:
    """Publish ``layer_zip`` as a new version of ``name`` unless the newest is this build."""
    try:
        versions = lam.list_layer_versions(LayerName=name).get("LayerVersions", [])
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        versions = []
    newest = max(versions, key=lambda version: int(version["Version"]), default=None)
    if newest is not None:
        described = _DESCRIBED_SHA.search(str(newest.get("Description", "")))
        if described and described[1] == layer.sha256:
            record("layer", name, None, f"version {newest['Version']}")
            return str(newest["LayerVersionArn"])
    if dry_run:
        arn = account.arn("lambda", f"layer:{name}:<next version>")
    else:
        published = lam.publish_layer_version(
            LayerName=name,
            Description=f"kafka-relay {layer.version} extension, {layer.arch}, "
                        f"sha256:{layer.sha256}",
            Content={"ZipFile": layer_zip.read_bytes()},
            CompatibleRuntimes=list(layer.compatible_runtimes),
            CompatibleArchitectures=[layer.arch],
            LicenseInfo=LAYER_LICENSE,
        )
        arn = str(published["LayerVersionArn"])
    record("layer", name, "publish", f"{arn}, kafka-relay {layer.version}, "
                                     f"sha256 {layer.sha256[:12]}")
    return arn


def checked_region(session: Any, region: str | None) -> str:
    """The region to use; CredentialsError naming the fix when region or credentials are missing."""
    chosen = region or session.region_name
    if not chosen:
        raise CredentialsError(NO_REGION)
    if session.get_credentials() is None:
        raise CredentialsError(
            "no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or "
            "AWS_PROFILE (after aws configure / aws sso login)"
        )
    return str(chosen)


def caller_account(session: Any, region: str) -> Account:
    identity = session.client("sts", region_name=region).get_caller_identity()
    return Account(
        account_id=str(identity["Account"]),
        partition=str(identity["Arn"]).split(":")[1],
        region=region,
    )


class Deployer:
    def __init__(
        self,
        plan: DeployPlan,
        *,
        session: Any,
        log: Log = say,
        sleep: Sleep = time.sleep,
        role_propagation_s: float = ROLE_PROPAGATION_S,
    ) -> None:
        self.plan = plan
        self.dry_run = plan.options.dry_run
        self.log = log
        self.sleep = sleep
        self.role_propagation_s = role_propagation_s
        self.region = checked_region(session, plan.options.region)
        self.session = session
        self.iam = session.client("iam", region_name=self.region)
        self.lam = session.client("lambda", region_name=self.region)
        self.events = session.client("events", region_name=self.region)
        self.logs = session.client("logs", region_name=self.region)
        self.result = DeployResult()

    def _record(self, kind: str, name: str, verb: str | None, detail: str = "") -> None:
        """``verb`` is create, update or publish; None when nothing had to change."""
        action = "unchanged" if verb is None else f"would {verb}" if self.dry_run else PAST[verb]
        self.result.changes.append(Change(kind, name, action))
        self.log(f"{kind} {name}: {action}{f' ({detail})' if detail else ''}")

    def run(self) -> DeployResult:
        plan = self.plan
        account = caller_account(self.session, self.region)
        self.log(
            f"{'dry run: ' if self.dry_run else ''}deploying {plan.options.prefix} to "
            f"{account.region} (account {account.account_id}), {plan.options.arch}, "
            f"{plan.options.runtime}"
        )
        self.result.layer_version_arn = self._layer(account)
        for function in plan.functions:
            role_arn = self._role(function, account)
            function_arn = self._function(function, role_arn, account)
            self.result.function_arns[function.name] = function_arn
            self._log_retention(function)
            self._schedule(function, function_arn, account)
        self.log("dry run: nothing was changed" if self.dry_run else "deployed")
        return self.result

    # --- layer -----------------------------------------------------------------------------

    def _layer(self, account: Account) -> str:
        plan = self.plan
        return publish_layer(
            self.lam, name=plan.layer_name, layer=plan.layer, layer_zip=plan.layer_zip,
            account=account, dry_run=self.dry_run, record=self._record,
        )

    # --- role ------------------------------------------------------------------------------

    def _role(self, function: FunctionPlan, account: Account) -> str:
        trust = trust_policy()
        policy = role_policy(self.plan, function, account)
        name = function.role_name
        try:
            role = self.iam.get_role(RoleName=name)["Role"]
        except ClientError as exc:
            if _error_code(exc) != "NoSuchEntity":
                raise
            role = None
        grants = ", ".join(
            action
            for statement in policy["Statement"]
            for action in ([statement["Action"]] if isinstance(statement["Action"], str)
                           else statement["Action"])
        )
        if role is None:
            arn = account.arn("iam", f"role/{name}", regional=False)
            if not self.dry_run:
                created = self.iam.create_role(
                    RoleName=name,
                    AssumeRolePolicyDocument=json.dumps(trust),
                    Description=f"kafka-relay {function.spec.name}: its own logs; the Kafka "
                    "secret and spill bucket only when configured",
                )
                arn = str(created["Role"]["Arn"])
                self._put_policy(function, policy)
            self._record("role", name, "create", grants)
            return arn
        changed = False
        if _document(role["AssumeRolePolicyDocument"]) != trust:
            changed = True
            if not self.dry_run:
                self.iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
        try:
            current = _document(
                self.iam.get_role_policy(RoleName=name, PolicyName=function.policy_name)[
                    "PolicyDocument"
                ]
            )
        except ClientError as exc:
            if _error_code(exc) != "NoSuchEntity":
                raise
            current = None
        if current != policy:
            changed = True
            if not self.dry_run:
                self._put_policy(function, policy)
        self._record("role", name, "update" if changed else None, grants)
        return str(role["Arn"])

    def _put_policy(self, function: FunctionPlan, policy: dict[str, Any]) -> None:
        self.iam.put_role_policy(
            RoleName=function.role_name,
            PolicyName=function.policy_name,
            PolicyDocument=json.dumps(policy),
        )

    # --- function --------------------------------------------------------------------------

    def _configuration(self, function: FunctionPlan, role_arn: str) -> dict[str, Any]:
        options = self.plan.options
        return {
            "FunctionName": function.name,
            "Runtime": options.runtime,
            "Role": role_arn,
            "Handler": function.spec.handler,
            "Timeout": options.timeout_s,
            "MemorySize": options.memory_mb,
            "Description": f"kafka-relay {function.spec.name} ({function.spec.schedule})",
            "Environment": {"Variables": function.environment},
            "Layers": [self.result.layer_version_arn],
            **({"VpcConfig": {"SubnetIds": sorted(options.subnet_ids),
                              "SecurityGroupIds": sorted(options.security_group_ids)}}
               if options.subnet_ids else {}),
        }

    @staticmethod
    def _differences(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
        """Settings whose current value is not the wanted one (in the API's request shape)."""
        seen = {
            **{key: current.get(key) for key in wanted},
            "Environment": {"Variables": current.get("Environment", {}).get("Variables", {})},
            "Layers": [layer["Arn"] for layer in current.get("Layers", [])],
            "VpcConfig": {
                key: sorted(current.get("VpcConfig", {}).get(key, []))
                for key in ("SubnetIds", "SecurityGroupIds")
            },
        }
        return [key for key in wanted if key != "FunctionName" and seen[key] != wanted[key]]

    def _function(self, function: FunctionPlan, role_arn: str, account: Account) -> str:
        plan = self.plan
        wanted = self._configuration(function, role_arn)
        code_sha = b64_sha256(plan.function_zip)
        try:
            current = self.lam.get_function(FunctionName=function.name)["Configuration"]
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            current = None
        detail = (
            f"{plan.options.runtime}, {plan.options.timeout_s} s, {plan.options.memory_mb} MB, "
            f"env: {masked(function.environment)}"
        )
        if current is None:
            arn = account.arn("lambda", f"function:{function.name}")
            if not self.dry_run:
                created = retry_while_role_propagates(
                    lambda: self.lam.create_function(
                        **wanted,
                        Code={"ZipFile": plan.function_zip.read_bytes()},
                        Architectures=[plan.options.arch],
                        PackageType="Zip",
                    ),
                    sleep=self.sleep,
                    budget_s=self.role_propagation_s,
                    log=self.log,
                )
                arn = str(created["FunctionArn"])
                self.lam.get_waiter("function_active_v2").wait(FunctionName=function.name)
            self._record("function", function.name, "create", detail)
            return arn
        changes: list[str] = []
        if current.get("CodeSha256") != code_sha:
            changes.append("code")
        if current.get("Architectures") != [plan.options.arch]:
            changes.append("Architectures")
        if changes and not self.dry_run:
            self.lam.update_function_code(
                FunctionName=function.name,
                ZipFile=plan.function_zip.read_bytes(),
                Architectures=[plan.options.arch],
            )
            self.lam.get_waiter("function_updated_v2").wait(FunctionName=function.name)
        differing = self._differences(current, wanted)
        changes += differing
        if differing and not self.dry_run:
            retry_while_role_propagates(
                lambda: self.lam.update_function_configuration(**wanted),
                sleep=self.sleep,
                budget_s=self.role_propagation_s,
                log=self.log,
            )
            self.lam.get_waiter("function_updated_v2").wait(FunctionName=function.name)
        self._record(
            "function",
            function.name,
            "update" if changes else None,
            f"{', '.join(changes)}; {detail}" if changes else "",
        )
        return str(current["FunctionArn"])

    # --- log group ----------------------------------------------------------------------------

    def _log_retention(self, function: FunctionPlan) -> None:
        """Create the function's log group up front, so its retention is set from day one."""
        days = self.plan.options.log_retention_days
        if days is None:
            return
        group = f"/aws/lambda/{function.name}"
        found = self.logs.describe_log_groups(logGroupNamePrefix=group).get("logGroups", [])
        current = next((g for g in found if g["logGroupName"] == group), None)
        if current is not None and current.get("retentionInDays") == days:
            self._record("log-group", group, None, f"{days} days")
            return
        if not self.dry_run:
            if current is None:
                self.logs.create_log_group(logGroupName=group)
            self.logs.put_retention_policy(logGroupName=group, retentionInDays=days)
        self._record("log-group", group, "create" if current is None else "update",
                     f"retention {days} days")

    # --- schedule --------------------------------------------------------------------------

    def _schedule(self, function: FunctionPlan, function_arn: str, account: Account) -> None:
        name = function.rule_name
        expression = function.spec.schedule
        try:
            rule: dict[str, Any] | None = self.events.describe_rule(Name=name)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            rule = None
        changes: list[str] = []
        rule_arn = account.arn("events", f"rule/{name}")
        if rule is not None:
            rule_arn = str(rule["Arn"])
        if rule is None or rule.get("ScheduleExpression") != expression or (
            rule.get("State") != "ENABLED"
        ):
            changes.append("rule")
            if not self.dry_run:
                rule_arn = str(
                    self.events.put_rule(
                        Name=name,
                        ScheduleExpression=expression,
                        State="ENABLED",
                        Description=f"runs {function.name} {expression}",
                    )["RuleArn"]
                )
        targets = (
            self.events.list_targets_by_rule(Rule=name).get("Targets", []) if rule else []
        )
        if not any(t["Id"] == _TARGET_ID and t["Arn"] == function_arn for t in targets):
            changes.append("target")
            if not self.dry_run:
                self.events.put_targets(
                    Rule=name, Targets=[{"Id": _TARGET_ID, "Arn": function_arn}]
                )
        if self._ensure_invoke_permission(function, rule_arn):
            changes.append("permission")
        verb = None if not changes else "create" if rule is None else "update"
        self._record("schedule", name, verb, f"{expression} -> {function.name}")

    def _ensure_invoke_permission(self, function: FunctionPlan, rule_arn: str) -> bool:
        """Let exactly this rule invoke the function; True when that had to change."""
        statement_id = function.rule_name
        try:
            policy = json.loads(self.lam.get_policy(FunctionName=function.name)["Policy"])
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            policy = {"Statement": []}
        existing = [s for s in policy.get("Statement", []) if s.get("Sid") == statement_id]
        if existing and rule_arn in json.dumps(existing[0]):
            return False
        if not self.dry_run:
            if existing:
                self.lam.remove_permission(FunctionName=function.name, StatementId=statement_id)
            self.lam.add_permission(
                FunctionName=function.name,
                StatementId=statement_id,
                Action="lambda:InvokeFunction",
                Principal="events.amazonaws.com",
                SourceArn=rule_arn,
            )
        return True


def deploy(
    options: DeployOptions,
    *,
    session: Any = None,
    variables: dict[str, str] | None = None,
    log: Log = say,
    sleep: Sleep = time.sleep,
) -> DeployResult:
    """Resolve the plan, then carry it out (or print it, with ``options.dry_run``)."""
    plan = resolve_plan(options, variables=variables)
    if session is None:
        session = boto3.Session(region_name=options.region)
    return Deployer(plan, session=session, log=log, sleep=sleep).run()


def parse_args(argv: Sequence[str] | None) -> DeployOptions:
    parser = argparse.ArgumentParser(
        prog="python -m layer_build.deploy",
        description="Publish the kafka-relay layer and deploy the producer functions.",
    )
    parser.add_argument("--env-file", type=Path, default=REPO_ROOT / ".env",
                        help="the functions' KEY=VALUE settings (default: the checkout's .env)")
    parser.add_argument("--dry-run", action="store_true",
                        help="print what would change; call no mutating API")
    parser.add_argument("--arch", choices=list(ARCHES), default="x86_64")
    parser.add_argument("--region", help="default: boto3's (AWS_DEFAULT_REGION, profile)")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX,
                        help="prefix of every resource name (default: %(default)s)")
    parser.add_argument("--runtime", choices=[*RUNTIME_GLIBC, *REFUSED_RUNTIMES],
                        default=DEFAULT_RUNTIME,
                        help="the functions' Lambda runtime (default: %(default)s)")
    parser.add_argument("--dist", type=Path, default=REPO_ROOT / "dist",
                        help="where ./build.sh build put the artifacts (default: the "
                             "checkout's dist/)")
    parser.add_argument("--subnet-ids", type=_ids, default=(), metavar="subnet-1,subnet-2",
                        help="run the functions in these VPC subnets (e.g. to reach MSK)")
    parser.add_argument("--security-group-ids", type=_ids, default=(), metavar="sg-1,sg-2",
                        help="the functions' security groups (with --subnet-ids)")
    parser.add_argument("--log-retention-days", type=int, choices=LOG_RETENTION_DAYS,
                        default=DEFAULT_LOG_RETENTION_DAYS, metavar="DAYS",
                        help="days CloudWatch keeps the functions' logs (default: %(default)s)")
    parser.add_argument("--msk-cluster-arn", metavar="ARN",
                        help="with KAFKA_AUTH=msk-iam: the cluster the functions' role may "
                             "connect to and write its topics")
    parser.add_argument("--secret-kms-key-arn", metavar="ARN",
                        help="the customer-managed KMS key KAFKA_SECRET_ARN is encrypted "
                             "with (the role may decrypt through Secrets Manager)")
    args = parser.parse_args(argv)
    return DeployOptions(
        dist=args.dist,
        env_file=args.env_file,
        arch=args.arch,
        prefix=args.prefix,
        runtime=args.runtime,
        region=args.region,
        dry_run=args.dry_run,
        subnet_ids=args.subnet_ids,
        security_group_ids=args.security_group_ids,
        log_retention_days=args.log_retention_days,
        msk_cluster_arn=args.msk_cluster_arn,
        secret_kms_key_arn=args.secret_kms_key_arn,
    )


def _ids(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def report_errors(run: Callable[[], object], *, needs: str) -> int:
    """Run a deploy-side command: errors become one line on stderr (2: no region or
    credentials, 1: anything else); ``needs`` names the services for an AccessDenied hint."""
    try:
        run()
    except CredentialsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except LayerBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        hint = ""
        if code in _AUTH_ERRORS:
            hint = " (the AWS credentials are invalid or expired: renew them, e.g. aws sso login)"
        elif "AccessDenied" in code:
            hint = f" (these credentials may not do that: this needs {needs})"
        print(
            f"error: AWS refused {exc.operation_name}: {code}: {error.get('Message')}{hint}",
            file=sys.stderr,
        )
        return 1
    except BotoCoreError as exc:
        print(f"error: {exc} (check the region, AWS_ENDPOINT_URL and the network)",
              file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None, *, session: Any = None) -> int:
    options = parse_args(argv)
    return report_errors(lambda: deploy(options, session=session),
                         needs="Lambda, IAM, EventBridge, CloudWatch Logs")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
