"""Deploying the views (table, bucket, roles, functions, Kafka mappings, schedule) to moto."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.validate import ParamValidator

from devtools.moto_server import ACCOUNT_ID, MotoServer, use_moto
from layer_build.deploy_views import (
    FUNCTIONS,
    ViewsDeployer,
    ViewsOptions,
    main,
    mapping_request,
    mapping_update,
    role_policy,
)
from layer_build.errors import DeployError
from layer_build.manifest import Artifact, Manifest
from layer_build.plan import Account
from layer_build.zipper import FileTree, write_zip

REGION = "eu-west-1"
BUCKET = f"kafka-relay-views-{ACCOUNT_ID}-{REGION}"


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    return use_moto(moto.in_region(REGION), monkeypatch)


@pytest.fixture
def function_zip(tmp_path: Path) -> Path:
    tree = FileTree()
    tree.add("views_speed.py", b"def handler(event, context):\n    return {}\n", executable=False)
    out = tmp_path / "views-functions.zip"
    write_zip(tree, out)
    return out


def _options(function_zip: Path, **changes: Any) -> ViewsOptions:
    # moto 5.2 creates event source mappings only for SQS, DynamoDB and Kinesis ARNs, so
    # the Kafka mappings are checked against the API's own request schema instead.
    settings: dict[str, Any] = {"bootstrap": ("b1.example:9092", "b2.example:9092"),
                                "mappings": False, **changes}
    return ViewsOptions(function_zip=function_zip, region=REGION, **settings)


def _valid_request(aws: MotoServer, request: dict[str, Any]) -> None:
    """What botocore would send: every field exists in CreateEventSourceMapping, typed right."""
    model = aws.client("lambda").meta.service_model.operation_model("CreateEventSourceMapping")
    report = ParamValidator().validate(request, model.input_shape)
    assert not report.has_errors(), report.generate_report()


def test_deploys_every_views_resource_then_changes_nothing(
    aws: MotoServer, function_zip: Path
) -> None:
    lines: list[str] = []
    first = ViewsDeployer(_options(function_zip), session=aws.session(),
                          log=lines.append).run()
    assert set(first.actions("function").values()) == {"created"}
    assert len(first.actions("function")) == 4
    assert first.actions("table") == {"kafka-relay-views": "created"}
    assert first.bucket == BUCKET

    lam = aws.client("lambda")
    speed = lam.get_function(FunctionName="kafka-relay-views-speed")["Configuration"]
    assert speed["Handler"] == "views_speed.handler"
    assert speed["Environment"]["Variables"]["VIEWS_TABLE"] == "kafka-relay-views"
    ttl = aws.client("dynamodb").describe_time_to_live(TableName="kafka-relay-views")
    assert ttl["TimeToLiveDescription"]["AttributeName"] == "expires_at"
    rules = aws.client("s3").get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]
    assert {r["Filter"]["Prefix"]: r.get("Expiration", {}).get("Days") for r in rules} == {
        "failures/": 30, "aws/lambda/": 30, "": None}
    rule = aws.client("events").describe_rule(Name="kafka-relay-views-close")
    assert rule["ScheduleExpression"] == "rate(1 hour)"

    again = ViewsDeployer(_options(function_zip), session=aws.session(),
                          log=lines.append).run()
    assert {c.action for c in again.changes} == {"unchanged"}


def test_a_dry_run_only_reads(aws: MotoServer, function_zip: Path) -> None:
    result = ViewsDeployer(_options(function_zip, dry_run=True), session=aws.session(),
                           log=lambda _line: None).run()
    assert {c.action for c in result.changes} <= {"would create", "would update"}
    assert aws.client("lambda").list_functions()["Functions"] == []
    assert aws.client("dynamodb").list_tables()["TableNames"] == []


def test_the_mapping_request_follows_the_kafka_contract(aws: MotoServer, function_zip: Path
                                                        ) -> None:
    account = Account(ACCOUNT_ID, "aws", REGION)
    request = mapping_request(_options(function_zip, secret_arn="arn:aws:secretsmanager:x",
                                       pollers=(1, 4)), FUNCTIONS[0], "rss.events", BUCKET,
                              account)
    _valid_request(aws, request)
    assert request["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert request["DestinationConfig"]["OnFailure"]["Destination"] == f"arn:aws:s3:::{BUCKET}"
    assert request["SelfManagedKafkaEventSourceConfig"] == {
        "ConsumerGroupId": "kafka-relay-views-speed"}
    assert request["ProvisionedPollerConfig"] == {"MinimumPollers": 1, "MaximumPollers": 4}
    assert request["SourceAccessConfigurations"][0]["Type"] == "SASL_SCRAM_512_AUTH"
    msk = mapping_request(_options(function_zip, bootstrap=(), msk_cluster_arn="arn:aws:kafka:c"),
                          FUNCTIONS[1], "rss.events", BUCKET, account)
    _valid_request(aws, msk)
    assert msk["EventSourceArn"] == "arn:aws:kafka:c"
    assert "FunctionResponseTypes" not in msk  # on-demand mode takes no partial responses
    assert "SelfManagedEventSource" not in msk


def test_an_existing_mapping_is_brought_to_the_error_handling_wanted(
    aws: MotoServer, function_zip: Path
) -> None:
    account = Account(ACCOUNT_ID, "aws", REGION)
    request = mapping_request(_options(function_zip, pollers=(1, 4)), FUNCTIONS[0],
                              "rss.events", BUCKET, account)
    current = {"UUID": "u", "BatchSize": 100, "MaximumBatchingWindowInSeconds": 1,
               "FunctionResponseTypes": [], "MaximumRetryAttempts": -1,
               "BisectBatchOnFunctionError": False, "DestinationConfig": {}}
    changes = mapping_update(request, current)
    assert changes == {"FunctionResponseTypes": ["ReportBatchItemFailures"],
                       "MaximumRetryAttempts": 10, "BisectBatchOnFunctionError": True,
                       "DestinationConfig": request["DestinationConfig"],
                       "ProvisionedPollerConfig": {"MinimumPollers": 1, "MaximumPollers": 4}}
    model = aws.client("lambda").meta.service_model.operation_model("UpdateEventSourceMapping")
    uuid = "00000000-0000-0000-0000-000000000000"
    report = ParamValidator().validate({"UUID": uuid, **changes}, model.input_shape)
    assert not report.has_errors(), report.generate_report()
    assert mapping_update(request, {**current, **changes}) == {}


def test_each_role_grants_only_what_its_function_touches(function_zip: Path) -> None:
    account = Account(ACCOUNT_ID, "aws", REGION)
    table = f"arn:aws:dynamodb:{REGION}:{ACCOUNT_ID}:table/kafka-relay-views"
    policies = {fn.short: role_policy(fn, table_arn=table, bucket=BUCKET, account=account,
                                      options=_options(function_zip)) for fn in FUNCTIONS}

    def actions(short: str) -> set[str]:
        return {a for s in policies[short]["Statement"] for a in s["Action"]}

    assert "dynamodb:Query" not in actions("speed")
    assert "dynamodb:Query" not in actions("archive")
    assert "dynamodb:PutItem" not in actions("close")
    assert actions("serve") & {"dynamodb:PutItem", "s3:PutObject"} == set()
    resources = json.dumps(policies)
    assert '"*"' not in resources  # no wildcards without MSK
    for short in ("speed", "archive"):  # what the S3 on-failure destination needs
        grants = {(a, r) for st in policies[short]["Statement"] for a in st["Action"]
                  for r in ([st["Resource"]] if isinstance(st["Resource"], str)
                            else st["Resource"]) if "Condition" not in st}
        assert ("s3:ListBucket", f"arn:aws:s3:::{BUCKET}") in grants
        assert ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/aws/lambda/*") in grants


def test_seen_items_must_outlive_the_topics_retention(function_zip: Path) -> None:
    session = boto3.Session(region_name=REGION, aws_access_key_id="x",
                            aws_secret_access_key="y")
    with pytest.raises(DeployError, match="--dedupe-ttl-days 31"):
        ViewsDeployer(_options(function_zip, retention_days=30), session=session)
    with pytest.raises(DeployError, match="--dedupe-ttl-days 0"):
        ViewsDeployer(_options(function_zip, retention_days=-1), session=session)
    ViewsDeployer(_options(function_zip, retention_days=-1, dedupe_ttl_days=0),
                  session=session)


def test_a_views_zip_is_refused_for_a_runtime_its_duckdb_cannot_load(function_zip: Path
                                                                      ) -> None:
    session = boto3.Session(region_name=REGION, aws_access_key_id="x",
                            aws_secret_access_key="y")
    built = Artifact(file=function_zip.name, kind="views", arch="x86_64",
                     python_versions=("3.12",), sha256="0" * 64, zipped_bytes=1,
                     unzipped_bytes=1, files=1, wheels=(), glibc="2.27",
                     compatible_runtimes=("python3.12",))
    Manifest(source_date_epoch=None, pins={}, artifacts=(built,)).write(function_zip.parent)
    with pytest.raises(DeployError, match=r"--python-version 3\.13, or pass --runtime python3\.12"):
        ViewsDeployer(_options(function_zip, runtime="python3.13"), session=session)
    ViewsDeployer(_options(function_zip, runtime="python3.12"), session=session)


def test_the_cli_explains_a_missing_source(function_zip: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--function-zip", str(function_zip)], session=boto3.Session(
        region_name=REGION, aws_access_key_id="x", aws_secret_access_key="y")) == 1
    assert "--bootstrap" in capsys.readouterr().err
