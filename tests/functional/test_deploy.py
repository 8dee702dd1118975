"""Deploying to a local AWS (moto in server mode) through the standard AWS_ENDPOINT_URL."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import boto3
import pytest
from botocore.exceptions import ClientError

from devtools.moto_server import ACCOUNT_ID, MotoServer, use_moto
from kafka_relay.config import AUTH_MODES
from layer_build.deploy import (
    LAYER_LICENSE,
    DeployResult,
    deploy,
    main,
    retry_while_role_propagates,
)
from layer_build.envfile import parse_env_file
from layer_build.errors import DeployError, EnvFileError, MissingArtifactError
from layer_build.manifest import FUNCTION_FILE_NAME, Artifact, Manifest, layer_file_name
from layer_build.plan import DeployOptions, resolve_plan
from layer_build.publish import PublishOptions, publish
from layer_build.publish import main as publish_main
from layer_build.targets import compatible_runtimes
from layer_build.teardown import TeardownOptions, teardown
from layer_build.zipper import FileTree, ZipResult, write_zip
from tests.function_envs import environments_in, in_lambda

REGION = "eu-west-1"
RSS, POLYMARKET = "kafka-relay-rss-producer", "kafka-relay-polymarket-producer"
LAYER = "kafka-relay-x86_64"
ENV = {"KAFKA_BOOTSTRAP_SERVERS": "broker.example:9092", "KAFKA_API_KEY": "key"}


@pytest.fixture
def aws(moto: MotoServer, monkeypatch: pytest.MonkeyPatch) -> MotoServer:
    return use_moto(moto.in_region(REGION), monkeypatch)


BUILT_VERSION = "9.8.7"  # what manifest.json says the artifacts were built as


def artifact(result: ZipResult, *, kind: Literal["layer", "function"], arch: str,
             glibc: str | None, python_versions: tuple[str, ...]) -> Artifact:
    return Artifact(
        file=result.path.name, kind=kind, arch=arch,
        python_versions=python_versions, sha256=result.sha256, zipped_bytes=result.zipped_bytes,
        unzipped_bytes=result.unzipped_bytes, files=result.files, wheels=(), glibc=glibc,
        compatible_runtimes=compatible_runtimes(python_versions, parse_glibc(glibc)),
        version=BUILT_VERSION,
    )


def make_dist(
    dist: Path,
    *,
    layer_version: str = "1",
    arches: tuple[str, ...] = ("x86_64",),
    python_versions: tuple[str, ...] = ("3.12", "3.13", "3.14"),
    handlers: tuple[str, ...] = ("rss_producer.py", "polymarket_producer.py"),
) -> Manifest:
    """A small dist/ shaped like the real build's: what deploy reads, without the wheels."""
    layer = FileTree()
    layer.add("extensions/kafka-relay", b"#!/bin/sh\n", executable=True)
    layer.add("python/kafka_relay/__init__.py", f"__version__ = {layer_version!r}\n".encode(),
              executable=False)
    function = FileTree()
    for handler in handlers:
        function.add(handler, b"def handler(event, context):\n    return {}\n", executable=False)
    manifest = Manifest(
        source_date_epoch=None,
        pins={},
        artifacts=(
            *(artifact(write_zip(layer, dist / layer_file_name(arch)), kind="layer",
                       arch=arch, glibc="2.28", python_versions=python_versions)
              for arch in arches),
            artifact(write_zip(function, dist / FUNCTION_FILE_NAME), kind="function",
                     arch="any", glibc=None, python_versions=python_versions),
        ),
    )
    manifest.write(dist)
    return manifest


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    make_dist(tmp_path / "dist")
    return tmp_path / "dist"


def run(aws: MotoServer, dist: Path, variables: dict[str, str] | None = None,
        **options: Any) -> DeployResult:
    """Deploy through the server's one boto3 session: a fresh session per deploy loads every
    service model again (the CLI test still deploys through a session of its own)."""
    return deploy(
        DeployOptions(dist=dist, **options),
        session=aws.session(),
        variables=dict(ENV if variables is None else variables),
        log=lambda _line: None,
    )


def parse_glibc(text: str | None) -> tuple[int, int] | None:
    return None if text is None else (int(text.split(".")[0]), int(text.split(".")[1]))


def lambda_sha(path: Path) -> str:
    return base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()


def inline_policy(aws: MotoServer, role: str) -> dict[str, Any]:
    iam = aws.client("iam")
    assert iam.list_role_policies(RoleName=role)["PolicyNames"] == [role]
    document = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    return dict(json.loads(document) if isinstance(document, str) else document)


def log_group_arn(function: str) -> str:
    return f"arn:aws:logs:{REGION}:{ACCOUNT_ID}:log-group:/aws/lambda/{function}:*"


# --- a full deployment, twice ----------------------------------------------------------------


@pytest.fixture
def deployed_twice(aws: MotoServer, dist: Path) -> tuple[DeployResult, DeployResult]:
    return run(aws, dist), run(aws, dist)


def test_a_second_deploy_changes_nothing(deployed_twice: tuple[DeployResult, DeployResult]) -> None:
    first, second = deployed_twice

    assert first.actions("layer") == {LAYER: "published"}
    for kind in ("role", "function"):
        assert first.actions(kind) == {RSS: "created", POLYMARKET: "created"}
    assert set(first.actions("schedule").values()) == {"created"}
    assert {change.action for change in second.changes} == {"unchanged"}
    assert second.layer_version_arn == first.layer_version_arn
    assert second.function_arns == first.function_arns


def test_the_layer_version_holds_the_built_zip(
    aws: MotoServer, dist: Path, deployed_twice: tuple[DeployResult, DeployResult]
) -> None:
    lam = aws.client("lambda")
    manifest = Manifest.load(dist)
    layer_zip = dist / layer_file_name("x86_64")

    versions = lam.list_layer_versions(LayerName=LAYER)["LayerVersions"]
    assert [v["Version"] for v in versions] == [1]
    # moto answers Content.Location with a bare "s3://"; CodeSha256 is what the service
    # computed over the bytes it received, so it proves the content just as well.
    version = lam.get_layer_version(LayerName=LAYER, VersionNumber=1)
    assert version["LayerVersionArn"] == deployed_twice[0].layer_version_arn
    assert version["Content"]["CodeSha256"] == lambda_sha(layer_zip)
    assert version["Content"]["CodeSize"] == layer_zip.stat().st_size
    assert f"sha256:{manifest.layer('x86_64').sha256}" in version["Description"]
    assert version["CompatibleRuntimes"] == ["python3.12", "python3.13", "python3.14"]
    assert version["CompatibleArchitectures"] == ["x86_64"]


@pytest.mark.parametrize(
    "expected",
    [(RSS, "rss_producer.handler", "rss.events"),
     (POLYMARKET, "polymarket_producer.handler", "polymarket.price_hourly")],
)
def test_each_function_is_configured_once_with_the_layer_attached(
    aws: MotoServer,
    dist: Path,
    deployed_twice: tuple[DeployResult, DeployResult],
    expected: tuple[str, str, str],
) -> None:
    name, handler, topic = expected
    lam = aws.client("lambda")

    assert sorted(f["FunctionName"] for f in lam.list_functions()["Functions"]) == sorted(
        [RSS, POLYMARKET]
    )
    config = lam.get_function_configuration(FunctionName=name)
    assert config["Runtime"] == "python3.12"
    assert config["Handler"] == handler
    assert (config["Timeout"], config["MemorySize"]) == (300, 256)
    assert config["Architectures"] == ["x86_64"]
    assert config["Role"] == f"arn:aws:iam::{ACCOUNT_ID}:role/{name}"
    assert config["CodeSha256"] == lambda_sha(dist / FUNCTION_FILE_NAME)
    assert config["Environment"]["Variables"] == {**ENV, "KAFKA_TOPIC": topic}
    assert [layer["Arn"] for layer in config["Layers"]] == [deployed_twice[0].layer_version_arn]


@pytest.mark.parametrize("name", [RSS, POLYMARKET])
def test_each_role_trusts_lambda_and_may_only_write_its_own_logs(
    aws: MotoServer, deployed_twice: tuple[DeployResult, DeployResult], name: str
) -> None:
    iam = aws.client("iam")
    role = iam.get_role(RoleName=name)["Role"]
    trust = role["AssumeRolePolicyDocument"]

    assert trust["Statement"] == [{
        "Effect": "Allow",
        "Principal": {"Service": "lambda.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }]
    assert iam.list_attached_role_policies(RoleName=name)["AttachedPolicies"] == []
    assert inline_policy(aws, name)["Statement"] == [{
        "Sid": "OwnLogGroup",
        "Effect": "Allow",
        "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
        "Resource": log_group_arn(name),
    }]


@pytest.mark.parametrize(("name", "expression"),
                         [(RSS, "rate(15 minutes)"), (POLYMARKET, "rate(1 hour)")])
def test_each_schedule_invokes_its_function_and_only_it_may(
    aws: MotoServer,
    deployed_twice: tuple[DeployResult, DeployResult],
    name: str,
    expression: str,
) -> None:
    events, lam = aws.client("events"), aws.client("lambda")
    rule_name = f"{name}-schedule"
    rule = events.describe_rule(Name=rule_name)
    function_arn = deployed_twice[0].function_arns[name]

    assert (rule["ScheduleExpression"], rule["State"]) == (expression, "ENABLED")
    targets = events.list_targets_by_rule(Rule=rule_name)["Targets"]
    assert [(t["Id"], t["Arn"]) for t in targets] == [("kafka-relay-producer", function_arn)]
    statements = json.loads(lam.get_policy(FunctionName=name)["Policy"])["Statement"]
    assert len(statements) == 1
    assert statements[0]["Action"] == "lambda:InvokeFunction"
    assert statements[0]["Principal"] == {"Service": "events.amazonaws.com"}
    assert statements[0]["Condition"]["ArnLike"]["AWS:SourceArn"] == rule["Arn"]
    assert len(events.list_rules()["Rules"]) == 2


# --- changes between deployments ------------------------------------------------------------


def test_secret_and_spill_bucket_are_granted_only_while_configured(
    aws: MotoServer, dist: Path
) -> None:
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:kafka-AbCdEf"
    configured = {**ENV, "KAFKA_SECRET_ARN": secret, "KAFKA_RELAY_SPILL_BUCKET": "relay-spill"}

    run(aws, dist, configured)
    granted = inline_policy(aws, RSS)["Statement"]
    result = run(aws, dist)  # the same file without them
    revoked = inline_policy(aws, RSS)["Statement"]

    assert [(s["Action"], s["Resource"]) for s in granted] == [
        (["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"], log_group_arn(RSS)),
        ("secretsmanager:GetSecretValue", secret),
        ("s3:PutObject", "arn:aws:s3:::relay-spill/*"),
    ]
    assert result.actions("role") == {RSS: "updated", POLYMARKET: "updated"}
    assert revoked == granted[:1]
    assert [s["Resource"] for s in inline_policy(aws, POLYMARKET)["Statement"]] == [
        log_group_arn(POLYMARKET)
    ]


CLUSTER = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/prices/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def test_msk_iam_and_a_customer_key_are_granted_as_the_templates_grant_them(
    aws: MotoServer, dist: Path
) -> None:
    secret = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:kafka-AbCdEf"

    run(aws, dist, {**ENV, "KAFKA_AUTH": "msk-iam"}, msk_cluster_arn=CLUSTER)
    iam = inline_policy(aws, RSS)["Statement"][1:]
    run(aws, dist, {**ENV, "KAFKA_SECRET_ARN": secret}, secret_kms_key_arn=KEY)
    key = inline_policy(aws, POLYMARKET)["Statement"][1:]

    assert iam == [
        {"Sid": "MskIamCluster", "Effect": "Allow", "Resource": CLUSTER,
         "Action": ["kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently"]},
        {"Sid": "MskIamTopics", "Effect": "Allow",
         "Resource": CLUSTER.replace(":cluster/", ":topic/") + "/*",
         "Action": ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]},
    ]
    assert [s["Sid"] for s in key] == ["ReadKafkaCredentials", "DecryptKafkaCredentials"]
    assert key[1]["Action"] == "kms:Decrypt"
    assert key[1]["Resource"] == KEY
    assert key[1]["Condition"] == {
        "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}


@pytest.mark.parametrize(("variables", "options", "says"), [
    ({"KAFKA_AUTH": "msk-iam"}, {}, r"KAFKA_AUTH=msk-iam needs --msk-cluster-arn"),
    ({}, {"msk_cluster_arn": CLUSTER}, r"--msk-cluster-arn is for KAFKA_AUTH=msk-iam"),
    ({"KAFKA_AUTH": "msk-iam"}, {"msk_cluster_arn": "prices"}, r"is not an MSK cluster ARN"),
    ({}, {"secret_kms_key_arn": KEY}, r"set KAFKA_SECRET_ARN in the env file, or drop it"),
    ({"KAFKA_SECRET_ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k"},
     {"secret_kms_key_arn": "alias/kafka"}, r"is not a KMS key ARN"),
])
def test_an_auth_grant_that_does_not_fit_the_env_file_names_the_option_and_the_fix(
    dist: Path, variables: dict[str, str], options: dict[str, Any], says: str
) -> None:
    with pytest.raises(DeployError, match=says):
        resolve_plan(DeployOptions(dist=dist, **options), variables={**ENV, **variables})


def test_a_new_layer_build_is_published_and_both_functions_move_to_it(
    aws: MotoServer, dist: Path
) -> None:
    first = run(aws, dist)
    make_dist(dist, layer_version="2")

    second = run(aws, dist)
    third = run(aws, dist)

    lam = aws.client("lambda")
    versions = lam.list_layer_versions(LayerName=LAYER)["LayerVersions"]
    assert sorted(version["Version"] for version in versions) == [1, 2]
    assert second.actions("layer") == {LAYER: "published"}
    assert second.layer_version_arn.endswith(":2")
    assert second.layer_version_arn != first.layer_version_arn
    assert second.actions("function") == {RSS: "updated", POLYMARKET: "updated"}
    for name in (RSS, POLYMARKET):
        config = lam.get_function_configuration(FunctionName=name)
        assert [layer["Arn"] for layer in config["Layers"]] == [second.layer_version_arn]
    assert {change.action for change in third.changes} == {"unchanged"}


# --- dry run --------------------------------------------------------------------------------


def recording_session() -> tuple[Any, list[str]]:
    """A plain boto3 session that notes every API operation it is about to call."""
    session = boto3.Session()
    calls: list[str] = []

    def note(model: Any, **_: Any) -> None:
        calls.append(model.name)

    session.events.register("before-call", note)
    return session, calls


READ_ONLY = re.compile(r"^(Get|List|Describe)[A-Za-z0-9]*$")


def test_a_dry_run_only_reads_and_creates_nothing(aws: MotoServer, dist: Path) -> None:
    session, calls = recording_session()
    lines: list[str] = []

    result = deploy(DeployOptions(dist=dist, dry_run=True), session=session, variables=ENV,
                    log=lines.append)

    assert calls, "a dry run still reads what exists"
    assert [call for call in calls if not READ_ONLY.match(call)] == []
    assert {change.action for change in result.changes} == {"would create", "would publish"}
    assert lines[-1] == "dry run: nothing was changed"
    lam, iam, events = aws.client("lambda"), aws.client("iam"), aws.client("events")
    assert lam.list_layers()["Layers"] == []
    assert lam.list_functions()["Functions"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"]] == []
    assert events.list_rules()["Rules"] == []


def test_a_dry_run_after_a_rebuild_shows_the_update_without_making_it(
    aws: MotoServer, dist: Path
) -> None:
    deployed = run(aws, dist)
    make_dist(dist, layer_version="2")
    session, calls = recording_session()

    result = deploy(DeployOptions(dist=dist, dry_run=True), session=session, variables=ENV,
                    log=lambda _line: None)

    assert [call for call in calls if not READ_ONLY.match(call)] == []
    assert result.actions("layer") == {LAYER: "would publish"}
    assert result.actions("function") == {RSS: "would update", POLYMARKET: "would update"}
    assert set(result.actions("role").values()) == {"unchanged"}
    lam = aws.client("lambda")
    assert len(lam.list_layer_versions(LayerName=LAYER)["LayerVersions"]) == 1
    config = lam.get_function_configuration(FunctionName=RSS)
    assert [layer["Arn"] for layer in config["Layers"]] == [deployed.layer_version_arn]


# --- a new role reaching Lambda -------------------------------------------------------------


TRUST = json.dumps({"Version": "2012-10-17", "Statement": [{
    "Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole",
}]})


def create_function_with(aws: MotoServer, dist: Path, role: str) -> Any:
    return aws.client("lambda").create_function(
        FunctionName="late-role", Runtime="python3.12", Handler="rss_producer.handler",
        Role=f"arn:aws:iam::{ACCOUNT_ID}:role/{role}",
        Code={"ZipFile": (dist / FUNCTION_FILE_NAME).read_bytes()},
    )


def test_create_waits_while_lambda_cannot_assume_the_new_role_yet(
    aws: MotoServer, dist: Path
) -> None:
    """moto, like Lambda during IAM propagation, refuses a role it does not know yet."""
    slept: list[float] = []

    def role_arrives(seconds: float) -> None:
        slept.append(seconds)
        if len(slept) == 2:
            aws.client("iam").create_role(RoleName="late", AssumeRolePolicyDocument=TRUST)

    created = retry_while_role_propagates(
        lambda: create_function_with(aws, dist, "late"),
        sleep=role_arrives, budget_s=60, log=lambda _line: None,
    )

    assert created["FunctionName"] == "late-role"
    assert slept == [1.0, 2.0]


def test_a_role_that_never_arrives_fails_within_the_budget(aws: MotoServer, dist: Path) -> None:
    slept: list[float] = []

    with pytest.raises(ClientError, match="cannot be assumed"):
        retry_while_role_propagates(
            lambda: create_function_with(aws, dist, "never"),
            sleep=slept.append, budget_s=10, log=lambda _line: None,
        )

    assert slept == [1.0, 2.0, 4.0]  # the next 8 s wait would pass the 10 s budget


# --- the command line -----------------------------------------------------------------------


def test_cli_deploys_with_the_env_file_through_aws_endpoint_url(
    aws: MotoServer, dist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text(
        "# kafka-relay producers\n"
        "KAFKA_BOOTSTRAP_SERVERS=pkc-1.eu-west-1.aws.confluent.cloud:9092  # cluster\n"
        "KAFKA_API_KEY='ABC'\n"
        'KAFKA_API_SECRET="s3cr#t"\n'
        "RSS_KAFKA_TOPIC=rss.events.v2\n"
        "RSS_FEED_URLS=https://a.example/rss\n"
    )

    code = main(["--dist", str(dist), "--env-file", str(env_file), "--prefix", "staging"])

    out = capsys.readouterr().out
    assert code == 0
    lam = aws.client("lambda")
    rss = lam.get_function_configuration(FunctionName="staging-rss-producer")
    polymarket = lam.get_function_configuration(FunctionName="staging-polymarket-producer")
    file_vars = {
        "KAFKA_BOOTSTRAP_SERVERS": "pkc-1.eu-west-1.aws.confluent.cloud:9092",
        "KAFKA_API_KEY": "ABC",
        "KAFKA_API_SECRET": "s3cr#t",
        "RSS_KAFKA_TOPIC": "rss.events.v2",
        "RSS_FEED_URLS": "https://a.example/rss",
    }
    assert rss["Environment"]["Variables"] == {**file_vars, "KAFKA_TOPIC": "rss.events.v2"}
    assert polymarket["Environment"]["Variables"] == {
        **file_vars, "KAFKA_TOPIC": "polymarket.price_hourly",
    }
    assert "function staging-rss-producer: created" in out
    assert "KAFKA_API_SECRET=****" in out
    assert "s3cr#t" not in out
    assert out.splitlines()[-1] == "deployed"


def test_cli_without_a_build_says_to_build_first(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["--dist", str(tmp_path / "dist"), "--env-file", str(tmp_path / ".env")])

    assert code == 1
    assert "run ./build.sh build first" in capsys.readouterr().err


def test_cli_without_credentials_or_region_says_how_to_set_them(
    dist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                 "AWS_WEB_IDENTITY_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    env_file = tmp_path / ".env"
    env_file.write_text("KAFKA_BOOTSTRAP_SERVERS=b:9092\n")

    code = main(["--dist", str(dist), "--env-file", str(env_file)])
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.delenv("AWS_REGION", raising=False)
    no_region = main(["--dist", str(dist), "--env-file", str(env_file)])

    assert (code, no_region) == (2, 2)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET")
    assert err[1] == (
        "error: no AWS region: pass --region, or set AWS_DEFAULT_REGION (or a profile's region)"
    )


# --- what is refused before any AWS call ----------------------------------------------------


def test_an_amazon_linux_2_runtime_is_refused_with_the_reason_and_the_runtimes_to_use(
    dist: Path,
) -> None:
    with pytest.raises(DeployError, match=(
        r"^python3.11 runs on Amazon Linux 2 \(glibc 2.26\), which cannot load confluent-kafka "
        r"2.16.1's manylinux_2_28 wheels.*move the function to python3.12, python3.13 or "
        r"python3.14 \(Amazon Linux 2023\)$"
    )):
        resolve_plan(DeployOptions(dist=dist, runtime="python3.11"), variables=ENV)


def test_a_runtime_the_layer_has_no_binaries_for_is_refused(tmp_path: Path) -> None:
    make_dist(tmp_path, python_versions=("3.12",))

    with pytest.raises(DeployError, match=r"for Python 3.12 only: .* --python-version 3.13"):
        resolve_plan(DeployOptions(dist=tmp_path, runtime="python3.13"), variables=ENV)


def test_variables_lambda_reserves_are_refused(dist: Path) -> None:
    with pytest.raises(EnvFileError, match=r"sets AWS_ACCESS_KEY_ID, AWS_REGION, which Lambda"):
        resolve_plan(DeployOptions(dist=dist), variables={
            **ENV, "AWS_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "AKIA",
        })


def test_an_environment_past_lambdas_4_kb_is_refused(dist: Path) -> None:
    with pytest.raises(EnvFileError, match=r"past Lambda's 4096: move long values into a secret"):
        resolve_plan(DeployOptions(dist=dist), variables={**ENV, "RSS_FEED_URLS": "u" * 4096})


def test_a_zip_changed_since_the_build_is_refused(dist: Path) -> None:
    with (dist / FUNCTION_FILE_NAME).open("ab") as stream:
        stream.write(b"\0")

    with pytest.raises(MissingArtifactError, match=r"changed since .*: run ./build.sh build"):
        resolve_plan(DeployOptions(dist=dist), variables=ENV)


def test_a_function_zip_without_a_handler_is_refused(tmp_path: Path) -> None:
    make_dist(tmp_path, handlers=("rss_producer.py",))

    with pytest.raises(MissingArtifactError, match=r"lacks polymarket_producer.py"):
        resolve_plan(DeployOptions(dist=tmp_path), variables=ENV)


def test_a_missing_architecture_names_the_build_command(dist: Path) -> None:
    with pytest.raises(MissingArtifactError, match=r"run ./build.sh build --arch arm64"):
        resolve_plan(DeployOptions(dist=dist, arch="arm64"), variables=ENV)


# --- VPC and log retention ------------------------------------------------------------------


def vpc(aws: MotoServer) -> tuple[str, str]:
    ec2 = aws.client("ec2")
    vpc_id = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="msk-clients", Description="to MSK",
                                      VpcId=vpc_id)["GroupId"]
    return subnet, group


def test_functions_join_the_vpc_and_their_role_may_manage_its_network_interfaces(
    aws: MotoServer, dist: Path
) -> None:
    subnet, group = vpc(aws)

    first = run(aws, dist, subnet_ids=(subnet,), security_group_ids=(group,))
    second = run(aws, dist, subnet_ids=(subnet,), security_group_ids=(group,))

    config = aws.client("lambda").get_function_configuration(FunctionName=RSS)
    assert config["VpcConfig"]["SubnetIds"] == [subnet]
    assert config["VpcConfig"]["SecurityGroupIds"] == [group]
    sids = [s["Sid"] for s in inline_policy(aws, RSS)["Statement"]]
    assert sids == ["OwnLogGroup", "VpcNetworkInterfaces"]
    assert first.actions("function") == {RSS: "created", POLYMARKET: "created"}
    assert {change.action for change in second.changes} == {"unchanged"}


def test_a_subnet_without_a_security_group_is_refused(dist: Path) -> None:
    with pytest.raises(DeployError, match=r"needs both --subnet-ids and --security-group-ids"):
        resolve_plan(DeployOptions(dist=dist, subnet_ids=("subnet-1",)), variables=ENV)


def test_each_log_group_is_created_with_its_retention_and_follows_a_change(
    aws: MotoServer, dist: Path
) -> None:
    first = run(aws, dist)
    shorter = run(aws, dist, log_retention_days=7)

    logs = aws.client("logs")
    groups = {g["logGroupName"]: g.get("retentionInDays")
              for g in logs.describe_log_groups(logGroupNamePrefix="/aws/lambda/")["logGroups"]}
    assert groups == {f"/aws/lambda/{RSS}": 7, f"/aws/lambda/{POLYMARKET}": 7}
    assert set(first.actions("log-group").values()) == {"created"}
    assert set(shorter.actions("log-group").values()) == {"updated"}


def test_a_retention_cloudwatch_does_not_accept_is_refused(dist: Path) -> None:
    with pytest.raises(DeployError, match=r"--log-retention-days 10 is not a value"):
        resolve_plan(DeployOptions(dist=dist, log_retention_days=10), variables=ENV)


# --- publish-layer ----------------------------------------------------------------------------


def test_publish_layer_publishes_both_architectures_once_and_prints_what_to_set(
    aws: MotoServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dist = tmp_path / "dist"
    make_dist(dist, arches=("x86_64", "arm64"))

    first = publish_main(["--dist", str(dist)])
    out = capsys.readouterr().out
    again = publish(PublishOptions(dist=dist), log=lambda _line: None)

    assert first == 0
    lam = aws.client("lambda")
    for arch in ("x86_64", "arm64"):
        version = lam.get_layer_version(LayerName=f"kafka-relay-{arch}", VersionNumber=1)
        assert version["CompatibleArchitectures"] == [arch]
        assert version["CompatibleRuntimes"] == ["python3.12", "python3.13", "python3.14"]
        assert version["LicenseInfo"] == LAYER_LICENSE
        assert version["Description"].startswith(f"kafka-relay {BUILT_VERSION} extension, ")
        assert f"{arch:<7} kafka-relay {BUILT_VERSION} -> {version['LayerVersionArn']}\n" in out
        assert again.arns[arch] == version["LayerVersionArn"]
    assert set(again.actions.values()) == {"unchanged"}
    printed = environments_in(out)
    assert sorted(printed) == sorted(AUTH_MODES)  # a complete environment per KAFKA_AUTH
    assert {mode: in_lambda(env).auth for mode, env in printed.items()} == {
        mode: mode for mode in AUTH_MODES}
    assert "OAUTHBEARER" not in out  # KAFKA_AUTH=msk-iam, not a mechanism to set by hand
    assert lam.list_functions()["Functions"] == []


def test_publish_layer_without_an_arm64_build_names_the_build_command(
    aws: MotoServer, dist: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = publish_main(["--dist", str(dist)])

    assert code == 1
    assert "run ./build.sh build --arch arm64" in capsys.readouterr().err
    assert aws.client("lambda").list_layers()["Layers"] == []


# --- teardown -------------------------------------------------------------------------------


def test_teardown_deletes_everything_deploy_made_and_a_second_run_finds_it_absent(
    aws: MotoServer, dist: Path
) -> None:
    run(aws, dist)
    quiet = {"log": lambda _line: None}

    preview = teardown(TeardownOptions(dry_run=True), session=aws.session(), **quiet)
    lam = aws.client("lambda")
    assert len(lam.list_functions()["Functions"]) == 2, "a dry run deletes nothing"
    first = teardown(TeardownOptions(), session=aws.session(), **quiet)
    second = teardown(TeardownOptions(), session=aws.session(), **quiet)

    assert set(preview.actions.values()) == {"would delete", "absent"}
    assert preview.actions[f"function {RSS}"] == "would delete"
    assert first.actions[f"layer {LAYER}"] == "deleted"
    assert first.actions["layer kafka-relay-arm64"] == "absent"
    assert {k for k, v in first.actions.items() if v == "deleted"} == {
        k for k, v in preview.actions.items() if v == "would delete"
    }
    assert set(second.actions.values()) == {"absent"}
    assert lam.list_functions()["Functions"] == []
    assert lam.list_layer_versions(LayerName=LAYER)["LayerVersions"] == []
    assert aws.client("iam").list_roles()["Roles"] == []
    assert aws.client("events").list_rules()["Rules"] == []
    assert aws.client("logs").describe_log_groups()["logGroups"] == []


def test_teardown_leaves_other_prefixes_alone(aws: MotoServer, dist: Path) -> None:
    run(aws, dist, prefix="other")

    result = teardown(TeardownOptions(), session=aws.session(), log=lambda _line: None)

    assert set(result.actions.values()) == {"absent"}
    assert len(aws.client("lambda").list_functions()["Functions"]) == 2


# --- .env.example ---------------------------------------------------------------------------


def test_the_env_example_parses_and_names_only_variables_something_reads() -> None:
    repo = Path(__file__).resolve().parents[2]
    example = repo / ".env.example"
    readers = "".join(path.read_text() for path in [
        *(repo / "extension" / "kafka_relay").rglob("*.py"), *(repo / "function").glob("*.py"),
        repo / "layer_build" / "plan.py",
    ])

    variables = parse_env_file(example)
    named = set(re.findall(r"\b((?:KAFKA|RSS|POLYMARKET)_[A-Z_]+)=", example.read_text()))

    assert set(variables) == {"KAFKA_BOOTSTRAP_SERVERS", "KAFKA_AUTH", "KAFKA_SECRET_ARN"}
    assert named - {"RSS_KAFKA_TOPIC", "POLYMARKET_KAFKA_TOPIC"} == {
        name for name in named if f'"{name}"' in readers
    } - {"RSS_KAFKA_TOPIC", "POLYMARKET_KAFKA_TOPIC"}
