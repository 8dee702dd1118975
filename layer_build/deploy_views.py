"""Deploy the Lambda-Architecture views: table, bucket, roles, functions, mappings, schedule.

    python -m layer_build.deploy_views --bootstrap b1:9092,b2:9092 [--secret-arn ARN]
        [--msk-cluster-arn ARN] [--dry-run] [--prefix kafka-relay] [--region R]

What it creates (idempotent like ``layer_build.deploy``: read first, change only what
differs; ``--dry-run`` only reads):

* DynamoDB table ``<prefix>-views`` (on demand, ``pk``/``sk``, TTL on ``expires_at``);
  seen items live ``--dedupe-ttl-days``, refused when shorter than
  ``--topic-retention-days`` plus a day;
* S3 bucket ``<prefix>-views-<account>-<region>`` (archive, views, failures) with
  lifecycle rules: ``failures/`` and the mappings' ``aws/lambda/`` batches expire after
  ``--failures-days``, ``archive/`` after ``--archive-days`` when set;
* four functions from ``dist/views-functions.zip`` (the views modules and DuckDB, built
  for x86_64 and the oldest Python of the build; no layer: they consume), refused when the
  build's manifest says the zip cannot run on ``--runtime``:
  ``views-speed`` (``views_speed.handler``), ``views-archive``
  (``views_batch.archive_handler``), ``views-close`` (``views_batch.close_handler``,
  EventBridge ``rate(1 hour)``) and ``views-serve`` (``views_serve.handler``), each with
  its own role granting only what it touches;
* a Kafka event source mapping per consumer and topic (a mapping reads one topic):
  self-managed (``--bootstrap``, SASL/SCRAM secret with ``--secret-arn``) or MSK
  (``--msk-cluster-arn``), consumer groups ``<prefix>-views-speed`` / ``-archive``, batch
  100 and a 1 s window, the bucket as the on-failure destination (the consumers' roles
  carry ``s3:PutObject`` and ``s3:ListBucket`` for it; with MSK in a VPC the cluster's
  VPC needs an S3 gateway endpoint for Lambda to reach it); ``--pollers MIN:MAX``
  sets provisioned mode with ``ReportBatchItemFailures``, bisect on error and 10 retries.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import BotoCoreError, ClientError

from kafka_relay.tools.cli import run_cli
from layer_build.build import REPO_ROOT
from layer_build.deploy import Change, _document, _error_code, b64_sha256, say
from layer_build.errors import DeployError, LayerBuildError
from layer_build.manifest import MANIFEST_NAME, VIEWS_FILE_NAME, Manifest
from layer_build.plan import DEFAULT_PREFIX, DEFAULT_RUNTIME, Account, trust_policy

TOPICS = ("polymarket.price_hourly", "rss.events")
TABLE_KEYS = ("pk", "sk")
TTL_ATTRIBUTE = "expires_at"


@dataclass(frozen=True)
class ViewsOptions:
    bootstrap: tuple[str, ...] = ()
    msk_cluster_arn: str | None = None
    secret_arn: str | None = None
    prefix: str = DEFAULT_PREFIX
    region: str | None = None
    runtime: str = DEFAULT_RUNTIME
    function_zip: Path = REPO_ROOT / "dist" / VIEWS_FILE_NAME
    topics: tuple[str, ...] = TOPICS
    batch_size: int = 100
    window_s: int = 1
    retries: int = 10
    pollers: tuple[int, int] | None = None
    lateness_hours: int = 6
    retention_days: int = 7  # the topics' retention.ms, in days (-1: kept forever)
    dedupe_ttl_days: int = 14
    archive_days: int = 0  # S3 lifecycle: archive/ objects expire (0: kept)
    failures_days: int = 30  # S3 lifecycle: failures/ and aws/lambda/ objects expire
    mappings: bool = True
    dry_run: bool = False


@dataclass(frozen=True)
class ViewsFunction:
    short: str  # speed | archive | close | serve
    handler: str
    consumes: bool
    memory_mb: int = 256  # DuckDB's users get more: its library alone maps ~70 MB


FUNCTIONS = (
    ViewsFunction("speed", "views_speed.handler", consumes=True),
    ViewsFunction("archive", "views_batch.archive_handler", consumes=True, memory_mb=512),
    ViewsFunction("close", "views_batch.close_handler", consumes=False, memory_mb=512),
    ViewsFunction("serve", "views_serve.handler", consumes=False),
)


def check_zip_runtime(options: ViewsOptions) -> None:
    """A views zip carries DuckDB's extension module for one Python: refuse a runtime its
    build's manifest (next to it, when there is one) does not list."""
    if not (options.function_zip.parent / MANIFEST_NAME).is_file():
        return
    manifest = Manifest.load(options.function_zip.parent)
    for artifact in manifest.artifacts:
        if artifact.file == options.function_zip.name and artifact.kind == "views" and (
                options.runtime not in artifact.compatible_runtimes):
            raise DeployError(
                f"{options.function_zip} was built for "
                f"{', '.join(artifact.compatible_runtimes) or 'no Lambda runtime'}, not "
                f"--runtime {options.runtime}: build it with ./build.sh build "
                f"--python-version {options.runtime.removeprefix('python')}, or pass "
                f"--runtime {' or '.join(artifact.compatible_runtimes) or 'python3.12'}")


def table_name(prefix: str) -> str:
    return f"{prefix}-views"


def bucket_name(prefix: str, account: Account) -> str:
    return f"{prefix}-views-{account.account_id}-{account.region}"


def create_table(dynamodb: Any, name: str) -> None:
    """The views table (also what the local demo and tests create)."""
    dynamodb.create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": k, "AttributeType": "S"} for k in TABLE_KEYS],
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"},
                   {"AttributeName": "sk", "KeyType": "RANGE"}])
    dynamodb.get_waiter("table_exists").wait(TableName=name)
    dynamodb.update_time_to_live(TableName=name, TimeToLiveSpecification={
        "Enabled": True, "AttributeName": TTL_ATTRIBUTE})


def check_retention(options: ViewsOptions) -> None:
    """Seen items and claims must outlive the topics' retention: a replay from
    TRIM_HORIZON would otherwise count expired identities again."""
    if options.dedupe_ttl_days == 0:
        return
    if options.retention_days < 0:
        raise DeployError("the topics keep records forever (--topic-retention-days -1): "
                          "pass --dedupe-ttl-days 0 so seen items never expire")
    if options.dedupe_ttl_days < options.retention_days + 1:
        raise DeployError(
            f"--dedupe-ttl-days {options.dedupe_ttl_days} is shorter than the topics' "
            f"retention ({options.retention_days} days) plus a day: pass --dedupe-ttl-days "
            f"{options.retention_days + 1} or more (0: never expire)")


def lifecycle_rules(options: ViewsOptions) -> list[dict[str, Any]]:
    """S3 lifecycle: quarantined records and on-failure batches go after
    ``failures_days``; the archive after ``archive_days`` if set (views are kept)."""
    rules = [{"ID": f"expire-{prefix.rstrip('/').replace('/', '-')}", "Status": "Enabled",
              "Filter": {"Prefix": prefix}, "Expiration": {"Days": options.failures_days}}
             for prefix in ("failures/", "aws/lambda/")]
    if options.archive_days:
        rules.append({"ID": "expire-archive", "Status": "Enabled",
                      "Filter": {"Prefix": "archive/"},
                      "Expiration": {"Days": options.archive_days}})
    rules.append({"ID": "abort-incomplete-uploads", "Status": "Enabled",
                  "Filter": {"Prefix": ""},
                  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}})
    return rules


def role_policy(fn: ViewsFunction, *, table_arn: str, bucket: str, account: Account,
                options: ViewsOptions) -> dict[str, Any]:
    """Least privilege per function: only the actions and keys it uses."""
    s3 = f"arn:{account.partition}:s3:::{bucket}"
    logs = account.arn("logs", f"log-group:/aws/lambda/{options.prefix}-views-{fn.short}:*")
    statements: list[dict[str, Any]] = [{
        "Sid": "OwnLogGroup", "Effect": "Allow", "Resource": logs,
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"]}]

    def allow(sid: str, actions: list[str], resource: str | list[str],
              condition: dict[str, Any] | None = None) -> None:
        statement: dict[str, Any] = {"Sid": sid, "Effect": "Allow", "Action": actions,
                                     "Resource": resource}
        if condition:
            statement["Condition"] = condition
        statements.append(statement)

    if fn.short == "speed":
        # TransactWriteItems is authorised per contained action; UpdateItem also marks
        # hours dirty and records progress.
        allow("Aggregates", ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                             "dynamodb:ConditionCheckItem"], table_arn)
    if fn.consumes:
        allow("Poison", ["s3:PutObject"], f"{s3}/failures/*")
        # The mapping's on-failure destination writes with this role: Lambda needs
        # PutObject and ListBucket on the bucket (its objects go under aws/lambda/).
        allow("OnFailureDestination", ["s3:PutObject"], f"{s3}/aws/lambda/*")
        allow("OnFailureDestinationList", ["s3:ListBucket"], s3)
    if fn.short == "archive":
        allow("Archive", ["s3:PutObject"], f"{s3}/archive/*")
        allow("DirtyProgressClaims", ["dynamodb:GetItem", "dynamodb:PutItem",
                                      "dynamodb:UpdateItem"], table_arn)
    if fn.short == "close":
        allow("ReadArchiveAndViews", ["s3:GetObject"], [f"{s3}/archive/*", f"{s3}/views/*"])
        allow("List", ["s3:ListBucket"], s3,
              {"StringLike": {"s3:prefix": ["archive/*", "views/*"]}})
        allow("WriteViews", ["s3:PutObject"], [f"{s3}/views/*", f"{s3}/failures/*"])
        allow("DirtyAndSpeed", ["dynamodb:Query", "dynamodb:DeleteItem"], table_arn)
    if fn.short == "serve":
        allow("SpeedLayer", ["dynamodb:Query"], table_arn)
        allow("BatchViews", ["s3:GetObject"], f"{s3}/views/*")
        allow("NoSuchKey", ["s3:ListBucket"], s3, {"StringLike": {"s3:prefix": ["views/*"]}})
    if fn.consumes and options.secret_arn:
        allow("KafkaSecret", ["secretsmanager:GetSecretValue"], options.secret_arn)
    if fn.consumes and options.msk_cluster_arn:
        allow("Msk", ["kafka:DescribeClusterV2", "kafka:GetBootstrapBrokers",
                      "kafka-cluster:Connect", "kafka-cluster:DescribeGroup",
                      "kafka-cluster:AlterGroup", "kafka-cluster:DescribeTopic",
                      "kafka-cluster:ReadData"], "*")
        allow("MskVpc", ["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                         "ec2:DescribeVpcs", "ec2:DeleteNetworkInterface",
                         "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups"], "*")
    return {"Version": "2012-10-17", "Statement": statements}


def mapping_request(o: ViewsOptions, fn: ViewsFunction, topic: str, bucket: str,
                    account: Account) -> dict[str, Any]:
    """CreateEventSourceMapping for one consumer and topic (a Kafka mapping reads one)."""
    group = f"{o.prefix}-views-{fn.short}"
    request: dict[str, Any] = {
        "FunctionName": f"{o.prefix}-views-{fn.short}", "Topics": [topic],
        "BatchSize": o.batch_size, "MaximumBatchingWindowInSeconds": o.window_s,
        "StartingPosition": "TRIM_HORIZON",
        "DestinationConfig": {"OnFailure": {
            "Destination": f"arn:{account.partition}:s3:::{bucket}"}},
    }
    if o.msk_cluster_arn:
        request["EventSourceArn"] = o.msk_cluster_arn
        request["AmazonManagedKafkaEventSourceConfig"] = {"ConsumerGroupId": group}
    else:
        request["SelfManagedEventSource"] = {
            "Endpoints": {"KAFKA_BOOTSTRAP_SERVERS": list(o.bootstrap)}}
        request["SelfManagedKafkaEventSourceConfig"] = {"ConsumerGroupId": group}
    if o.secret_arn:
        request["SourceAccessConfigurations"] = [
            {"Type": "SASL_SCRAM_512_AUTH", "URI": o.secret_arn}]
    if o.pollers:
        # Provisioned mode: also what enables retries, bisect and partial batch responses.
        request["ProvisionedPollerConfig"] = {"MinimumPollers": o.pollers[0],
                                              "MaximumPollers": o.pollers[1]}
        request["MaximumRetryAttempts"] = o.retries
        request["BisectBatchOnFunctionError"] = True
        request["FunctionResponseTypes"] = ["ReportBatchItemFailures"]
    return request


UPDATABLE = ("BatchSize", "MaximumBatchingWindowInSeconds", "FunctionResponseTypes",
             "MaximumRetryAttempts", "BisectBatchOnFunctionError", "DestinationConfig",
             "ProvisionedPollerConfig")


def mapping_update(request: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """What UpdateEventSourceMapping must change so an existing mapping matches ``request``
    (its error handling included); empty when it already does."""
    wanted = {key: request[key] for key in UPDATABLE if key in request}
    wanted.setdefault("FunctionResponseTypes", [])
    return {key: value for key, value in wanted.items()
            if current.get(key, [] if key == "FunctionResponseTypes" else None) != value}


@dataclass
class ViewsResult:
    table: str = ""
    bucket: str = ""
    function_arns: dict[str, str] = field(default_factory=dict)
    mappings: dict[str, str] = field(default_factory=dict)  # "<short> <topic>" -> UUID
    changes: list[Change] = field(default_factory=list)

    def actions(self, kind: str) -> dict[str, str]:
        return {c.name: c.action for c in self.changes if c.kind == kind}


class ViewsDeployer:
    def __init__(self, options: ViewsOptions, *, session: Any, log: Any = say) -> None:
        if not options.bootstrap and not options.msk_cluster_arn:
            raise DeployError("no Kafka source: pass --bootstrap host:port[,...] "
                                  "(self-managed) or --msk-cluster-arn ARN")
        check_retention(options)
        if not options.function_zip.is_file():
            raise DeployError(f"{options.function_zip} is missing: run ./build.sh build")
        check_zip_runtime(options)
        self.options = options
        self.log = log
        region = options.region or session.region_name
        self.clients = {name: session.client(name, region_name=region) for name in
                        ("sts", "iam", "lambda", "events", "dynamodb", "s3")}
        self.region = str(region)
        self.result = ViewsResult()

    def _record(self, kind: str, name: str, verb: str | None, detail: str = "") -> None:
        past = {"create": "created", "update": "updated"}
        action = ("unchanged" if verb is None else f"would {verb}" if self.options.dry_run
                  else past[verb])
        self.result.changes.append(Change(kind, name, action))
        self.log(f"{kind} {name}: {action}{f' ({detail})' if detail else ''}")

    def run(self) -> ViewsResult:
        ident = self.clients["sts"].get_caller_identity()
        account = Account(str(ident["Account"]), str(ident["Arn"]).split(":")[1], self.region)
        table_arn = self._table(account)
        bucket = self._bucket(account)
        self._lifecycle(bucket)
        for fn in FUNCTIONS:
            role = self._role(fn, account, table_arn, bucket)
            arn = self._function(fn, role, account, bucket)
            self.result.function_arns[fn.short] = arn
            if fn.consumes and self.options.mappings:
                for topic in self.options.topics:
                    self._mapping(fn, topic, bucket, account)
        self._schedule(account)
        self.log("dry run: nothing was changed" if self.options.dry_run else "deployed views")
        return self.result

    def _table(self, account: Account) -> str:
        name = self.result.table = table_name(self.options.prefix)
        ddb = self.clients["dynamodb"]
        try:
            arn = str(ddb.describe_table(TableName=name)["Table"]["TableArn"])
            self._record("table", name, None)
            return arn
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
        if not self.options.dry_run:
            create_table(ddb, name)
        self._record("table", name, "create", "on demand, pk/sk, TTL expires_at")
        return account.arn("dynamodb", f"table/{name}")

    def _bucket(self, account: Account) -> str:
        name = self.result.bucket = bucket_name(self.options.prefix, account)
        s3 = self.clients["s3"]
        try:
            s3.head_bucket(Bucket=name)
            self._record("bucket", name, None)
            return name
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                raise
        if not self.options.dry_run:
            extra = ({} if self.region == "us-east-1" else
                     {"CreateBucketConfiguration": {"LocationConstraint": self.region}})
            s3.create_bucket(Bucket=name, **extra)
            s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
                "BlockPublicAcls": True, "IgnorePublicAcls": True,
                "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
        self._record("bucket", name, "create")
        return name

    def _lifecycle(self, bucket: str) -> None:
        s3, wanted = self.clients["s3"], lifecycle_rules(self.options)
        try:
            current = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules")
        except ClientError as exc:
            if _error_code(exc) not in ("NoSuchLifecycleConfiguration", "NoSuchBucket",
                                        "404"):
                raise
            current = None
        same = current is not None and sorted(current, key=lambda r: r["ID"]) == sorted(
            wanted, key=lambda r: r["ID"])
        if not same and not self.options.dry_run:
            s3.put_bucket_lifecycle_configuration(
                Bucket=bucket, LifecycleConfiguration={"Rules": wanted})
        self._record("lifecycle", bucket, None if same else "update" if current else "create",
                     ", ".join(r["ID"] for r in wanted))

    def _role(self, fn: ViewsFunction, account: Account, table_arn: str, bucket: str) -> str:
        iam = self.clients["iam"]
        name = f"{self.options.prefix}-views-{fn.short}"
        policy = role_policy(fn, table_arn=table_arn, bucket=bucket, account=account,
                             options=self.options)
        try:
            role = iam.get_role(RoleName=name)["Role"]
        except ClientError as exc:
            if _error_code(exc) != "NoSuchEntity":
                raise
            role = None
        if role is None:
            if not self.options.dry_run:
                role = iam.create_role(RoleName=name,
                                       AssumeRolePolicyDocument=json.dumps(trust_policy()))["Role"]
                iam.put_role_policy(RoleName=name, PolicyName="views",
                                    PolicyDocument=json.dumps(policy))
            self._record("role", name, "create")
            return str(role["Arn"]) if role else account.arn("iam", f"role/{name}", regional=False)
        try:
            current = _document(iam.get_role_policy(RoleName=name, PolicyName="views")
                                ["PolicyDocument"])
        except ClientError as exc:
            if _error_code(exc) != "NoSuchEntity":
                raise
            current = None
        if current != policy and not self.options.dry_run:
            iam.put_role_policy(RoleName=name, PolicyName="views",
                                PolicyDocument=json.dumps(policy))
        self._record("role", name, "update" if current != policy else None)
        return str(role["Arn"])

    def _function(self, fn: ViewsFunction, role_arn: str, account: Account, bucket: str) -> str:
        lam = self.clients["lambda"]
        name = f"{self.options.prefix}-views-{fn.short}"
        env = {"VIEWS_TABLE": self.result.table, "VIEWS_BUCKET": bucket,
               "VIEWS_LATENESS_HOURS": str(self.options.lateness_hours),
               "VIEWS_DEDUPE_TTL_DAYS": str(self.options.dedupe_ttl_days),
               # Without provisioned mode the mapping ignores partial batch responses: the
               # consumer then fails the whole batch instead (reprocessing is idempotent).
               "VIEWS_PARTIAL_BATCH_RESPONSE": "true" if self.options.pollers else "false"}
        wanted = {"FunctionName": name, "Runtime": self.options.runtime, "Role": role_arn,
                  "Handler": fn.handler, "Timeout": 60 if fn.consumes else 300,
                  "MemorySize": fn.memory_mb, "Environment": {"Variables": env}}
        try:
            current = lam.get_function(FunctionName=name)["Configuration"]
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            current = None
        code = self.options.function_zip
        if current is None:
            arn = account.arn("lambda", f"function:{name}")
            if not self.options.dry_run:
                arn = str(lam.create_function(**wanted, Code={"ZipFile": code.read_bytes()},
                                              PackageType="Zip")["FunctionArn"])
            self._record("function", name, "create", fn.handler)
            return arn
        changed = [k for k in wanted if k != "FunctionName" and current.get(k) != wanted[k]]
        new_code = current.get("CodeSha256") != b64_sha256(code)
        if not self.options.dry_run:
            if changed:
                lam.update_function_configuration(**wanted)
            if new_code:
                lam.update_function_code(FunctionName=name, ZipFile=code.read_bytes())
        self._record("function", name, "update" if changed or new_code else None,
                     ", ".join(changed + (["code"] if new_code else [])))
        return str(current["FunctionArn"])

    def _mapping(self, fn: ViewsFunction, topic: str, bucket: str, account: Account) -> None:
        lam = self.clients["lambda"]
        request = mapping_request(self.options, fn, topic, bucket, account)
        name = f"{fn.short} {topic}"
        existing = [m for m in lam.list_event_source_mappings(
            FunctionName=request["FunctionName"]).get("EventSourceMappings", [])
            if m.get("Topics") == [topic]]
        if existing:
            uuid = str(existing[0]["UUID"])
            changes = mapping_update(request, existing[0])
            changed = bool(changes)
            if changed and not self.options.dry_run:
                lam.update_event_source_mapping(UUID=uuid, **changes)
            self.result.mappings[name] = uuid
            self._record("mapping", name, "update" if changed else None)
            return
        uuid = "<new>"
        if not self.options.dry_run:
            uuid = str(lam.create_event_source_mapping(**request)["UUID"])
        self.result.mappings[name] = uuid
        self._record("mapping", name, "create",
                     f"group {request['FunctionName']}, batch {request['BatchSize']}")

    def _schedule(self, account: Account) -> None:
        events, lam = self.clients["events"], self.clients["lambda"]
        rule = f"{self.options.prefix}-views-close"
        try:
            current = events.describe_rule(Name=rule)
        except ClientError as exc:
            if _error_code(exc) != "ResourceNotFoundException":
                raise
            current = None
        expression = "rate(1 hour)"
        same = current is not None and current.get("ScheduleExpression") == expression
        if not same and not self.options.dry_run:
            rule_arn = events.put_rule(Name=rule, ScheduleExpression=expression)["RuleArn"]
            function_arn = self.result.function_arns["close"]
            events.put_targets(Rule=rule, Targets=[{"Id": "views-close", "Arn": function_arn}])
            try:
                lam.add_permission(FunctionName=function_arn, StatementId="views-close-schedule",
                                   Action="lambda:InvokeFunction",
                                   Principal="events.amazonaws.com", SourceArn=rule_arn)
            except ClientError as exc:
                if _error_code(exc) != "ResourceConflictException":
                    raise
        self._record("schedule", rule, None if same else "update" if current else "create",
                     expression)


def parse_args(argv: Sequence[str] | None) -> ViewsOptions:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="", help="self-managed Kafka: host:port,...")
    parser.add_argument("--msk-cluster-arn")
    parser.add_argument("--secret-arn", help="SASL/SCRAM-512 secret for the mappings")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--region")
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME)
    parser.add_argument("--function-zip", type=Path,
                        default=REPO_ROOT / "dist" / VIEWS_FILE_NAME,
                        help="the views functions' zip (default: dist/views-functions.zip)")
    parser.add_argument("--pollers", help="provisioned mode MIN:MAX pollers, e.g. 1:4")
    parser.add_argument("--lateness-hours", type=int, default=6)
    parser.add_argument("--topic-retention-days", type=int, default=7,
                        help="the topics' retention in days (-1: forever); seen items must "
                             "outlive it")
    parser.add_argument("--dedupe-ttl-days", type=int, default=14,
                        help="how long seen items and claims live (0: forever)")
    parser.add_argument("--archive-days", type=int, default=0,
                        help="expire archive/ objects after this many days (0: keep)")
    parser.add_argument("--failures-days", type=int, default=30,
                        help="expire failures/ and on-failure batches after this many days")
    parser.add_argument("--no-mappings", action="store_true",
                        help="create the consumers without their Kafka triggers")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    pollers = None
    if args.pollers:
        low, _, high = args.pollers.partition(":")
        pollers = (int(low), int(high or low))
    return ViewsOptions(
        bootstrap=tuple(b for b in args.bootstrap.split(",") if b),
        msk_cluster_arn=args.msk_cluster_arn, secret_arn=args.secret_arn, prefix=args.prefix,
        region=args.region, runtime=args.runtime, function_zip=args.function_zip,
        pollers=pollers, lateness_hours=args.lateness_hours,
        retention_days=args.topic_retention_days, dedupe_ttl_days=args.dedupe_ttl_days,
        archive_days=args.archive_days, failures_days=args.failures_days,
        mappings=not args.no_mappings,
        dry_run=args.dry_run)


def main(argv: Sequence[str] | None = None, *, session: Any = None) -> int:
    try:
        options = parse_args(argv)
        ViewsDeployer(options, session=session or boto3.Session()).run()
    except (LayerBuildError, ClientError, BotoCoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
