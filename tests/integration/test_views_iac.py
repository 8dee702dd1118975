"""The views' IaC (SAM, CloudFormation, Terraform): linted, and held to the boto3 deployer
and to the layout the code writes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
from views_batch import day_view_keys, hour_view_keys
from views_sql import FEED_COLUMNS, PRICE_COLUMNS, PRICE_TYPE

from devtools.moto_server import ACCOUNT_ID
from layer_build.deploy_views import FUNCTIONS, ViewsOptions, role_policy
from layer_build.manifest import VIEWS_FILE_NAME
from layer_build.plan import Account
from tests.integration.test_iac import actions_in, cfn_lint, template, unquote

REPO = Path(__file__).resolve().parents[2]
SAM = REPO / "iac" / "sam" / "views.yaml"
CFN = REPO / "iac" / "cloudformation" / "views.yaml"
TERRAFORM = REPO / "iac" / "terraform" / "views" / "main.tf"
ROLES = {"speed": "SpeedRole", "archive": "ArchiveRole", "close": "CloseRole",
         "serve": "ServeRole"}
MAPPINGS = ("SpeedPrices", "SpeedFeeds", "ArchivePrices", "ArchiveFeeds")
GLUE_TABLES = {"archive_prices", "archive_feeds", "prices_hour", "prices_day", "feeds_hour",
               "feeds_day"}
PARQUET_SERDE = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
JSON_SERDE = "org.openx.data.jsonserde.JsonSerDe"


def _deployer_actions(short: str) -> set[str]:
    fn = next(f for f in FUNCTIONS if f.short == short)
    policy = role_policy(fn, table_arn="arn:aws:dynamodb:r:1:table/t", bucket="b",
                         account=Account(ACCOUNT_ID, "aws", "eu-west-1"),
                         options=ViewsOptions(bootstrap=("b:9092",)))
    return actions_in(policy) - {"logs:CreateLogGroup", "logs:CreateLogStream",
                                 "logs:PutLogEvents"}


def _terraform() -> Any:
    with TERRAFORM.open() as stream:
        return hcl2.load(stream)


def test_the_views_templates_pass_cfn_lint() -> None:
    result = cfn_lint(SAM, CFN)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_function_is_granted_what_the_boto3_deployer_grants() -> None:
    cfn, sam = template(CFN)["Resources"], template(SAM)["Resources"]
    for short, role in ROLES.items():
        function = f"{short.capitalize()}Function"
        cfn_actions = actions_in(cfn[role]["Properties"]["Policies"])
        sam_actions = actions_in(sam[function]["Properties"]["Policies"])
        assert cfn_actions == sam_actions == _deployer_actions(short) | (
            {"secretsmanager:GetSecretValue"} if short in ("speed", "archive") else set()
        ), short


def test_every_kafka_mapping_bisects_retries_and_keeps_what_fails_in_the_bucket() -> None:
    for path in (CFN, SAM):
        resources = template(path)["Resources"]
        for name in MAPPINGS:
            props = resources[name]["Properties"]
            assert props["BisectBatchOnFunctionError"] is True
            assert props["MaximumRetryAttempts"] == {"Ref": "MaximumRetryAttempts"}
            assert props["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
            assert props["DestinationConfig"] == {
                "OnFailure": {"Destination": {"Fn::GetAtt": ["Bucket", "Arn"]}}}
            assert props["StartingPosition"] == "TRIM_HORIZON"
            assert "ProvisionedPollerConfig" in props
    assert template(CFN)["Resources"]["SpeedFeeds"]["Properties"]["Topics"] == [
        {"Ref": "RssTopic"}]


def test_the_glue_tables_project_the_layout_the_close_writes() -> None:
    resources = template(CFN)["Resources"]
    tables = {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"]
              for r in resources.values() if r["Type"] == "AWS::Glue::Table"}
    assert set(tables) == GLUE_TABLES
    hour_prefix = hour_view_keys("2026-11-28T10")[0].rsplit("/", 1)[0]
    day_prefix = day_view_keys("2026-11-28")[0].rsplit("/", 1)[0]
    feed_hour = hour_view_keys("2026-11-28T10")[1].rsplit("/", 1)[0]
    feed_day = day_view_keys("2026-11-28")[1].rsplit("/", 1)[0]
    for name, expected in (("prices_hour", hour_prefix), ("prices_day", day_prefix),
                           ("feeds_hour", feed_hour), ("feeds_day", feed_day)):
        location = json.dumps(tables[name]["Parameters"]["storage.location.template"])
        projected = location.replace("${!dt}", "2026-11-28").replace("${!hour}", "10")
        assert f"{expected}/" in projected, name
        assert tables[name]["Parameters"]["projection.enabled"] == "true"
    rule_prefixes = {r.get("Prefix") for r in resources["Bucket"]["Properties"][
        "LifecycleConfiguration"]["Rules"]}
    assert {"failures/", "aws/lambda/"} <= rule_prefixes


def test_the_terraform_parses_and_matches_the_cloudformation() -> None:
    parsed = _terraform()
    resources: dict[str, dict[str, Any]] = {}
    for block in parsed["resource"]:
        for kind, named in block.items():
            for name, body in named.items():
                resources[f"{unquote(kind)}.{unquote(name)}"] = body
    mapping = resources["aws_lambda_event_source_mapping.views"]
    assert mapping["bisect_batch_on_function_error"] is True
    assert mapping["function_response_types"] == ['"ReportBatchItemFailures"']
    assert "destination_config" in json.dumps(mapping)
    assert unquote(mapping["starting_position"]) == "TRIM_HORIZON"
    assert "aws_glue_catalog_table.views" in resources
    tables = next(block["glue_tables"] for block in parsed["locals"] if "glue_tables" in block)
    assert set(tables) == GLUE_TABLES
    local_text = json.dumps(parsed["locals"])
    cfn = template(CFN)["Resources"]
    for short, role in ROLES.items():
        for action in actions_in(cfn[role]["Properties"]["Policies"]):
            assert action in local_text, (short, action)
    for variable in cfn["SpeedFunction"]["Properties"]["Environment"]["Variables"]:
        assert re.search(rf"\b{variable}\b", local_text), variable
    mappings = next(block["mappings"] for block in parsed["locals"] if "mappings" in block)
    assert len(mappings) == len(MAPPINGS)


def _glue_tables(path: Path) -> dict[str, Any]:
    return {r["Properties"]["TableInput"]["Name"]: r["Properties"]["TableInput"]
            for r in template(path)["Resources"].values() if r["Type"] == "AWS::Glue::Table"}


def test_athena_reads_the_archive_as_parquet_with_its_columns_and_the_views_as_json() -> None:
    for path in (CFN, SAM):
        tables = _glue_tables(path)
        assert set(tables) == GLUE_TABLES
        for name, columns in (("archive_prices", PRICE_COLUMNS),
                              ("archive_feeds", FEED_COLUMNS)):
            storage = tables[name]["StorageDescriptor"]
            assert storage["SerdeInfo"]["SerializationLibrary"] == PARQUET_SERDE
            assert "Parquet" in storage["InputFormat"]
            assert [c["Name"] for c in storage["Columns"]] == list(columns)
        price = next(c for c in tables["archive_prices"]["StorageDescriptor"]["Columns"]
                     if c["Name"] == "price")
        assert price["Type"] == PRICE_TYPE.lower()
        for name in ("prices_hour", "prices_day", "feeds_hour", "feeds_day"):
            serde = tables[name]["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
            assert serde == JSON_SERDE, name
        assert [c["Name"] for c in tables["feeds_day"]["StorageDescriptor"]["Columns"]] == [
            "period", "source", "count"]
    tf = next(block["glue_tables"] for block in _terraform()["locals"] if "glue_tables" in block)
    assert {name: unquote(table["format"]) for name, table in tf.items()} == {
        name: "parquet" if name.startswith("archive_") else "json" for name in GLUE_TABLES}
    assert f'price = "{PRICE_TYPE.lower()}"' in TERRAFORM.read_text()


def test_the_functions_run_the_views_zip_with_the_deployers_memory() -> None:
    memory = {fn.short: fn.memory_mb for fn in FUNCTIONS}
    cfn, sam = template(CFN), template(SAM)
    assert cfn["Parameters"]["CodeS3Key"]["Default"] == VIEWS_FILE_NAME
    for short, megabytes in memory.items():
        function = f"{short.capitalize()}Function"
        assert sam["Resources"][function]["Properties"]["CodeUri"].endswith(
            f"/dist/{VIEWS_FILE_NAME}")
        for resources in (cfn["Resources"], sam["Resources"]):
            assert resources[function]["Properties"]["MemorySize"] == megabytes, short
    tf = next(block["functions"] for block in _terraform()["locals"] if "functions" in block)
    assert {short: body["memory"] for short, body in tf.items()} == memory
