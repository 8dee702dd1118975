"""The infrastructure-as-code snippets under iac/: linted, deployed on moto where moto can,
and held to the same environment and permissions as each other."""

from __future__ import annotations

import ast
import io
import json
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cfnlint.decode import decode_str

from devtools.moto_server import ACCOUNT_ID, MotoServer

REPO = Path(__file__).resolve().parents[2]
SAM = REPO / "iac" / "sam" / "template.yaml"
CFN = REPO / "iac" / "cloudformation" / "template.yaml"
TERRAFORM = REPO / "iac" / "terraform" / "main.tf"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
REGION = "eu-west-1"
MSK_ACTIONS = {"kafka-cluster:Connect", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData",
               "kafka-cluster:WriteDataIdempotently"}
CLUSTER = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/orders/0b1c-2d3e"
SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:kafka-abc"


def cfn_lint(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CFN_LINT), *map(str, paths)], capture_output=True, text=True,
                          timeout=120, check=False)


def template(path: Path) -> Any:
    decoded, problems = decode_str(path.read_text())
    assert not problems
    return decoded


def actions_in(value: Any) -> set[str]:
    """Every IAM action named anywhere in a (template) structure."""
    if isinstance(value, dict):
        found = set()
        for key, item in value.items():
            if key == "Action":
                found |= {item} if isinstance(item, str) else set(item)
            else:
                found |= actions_in(item)
        return found
    if isinstance(value, list):
        return set().union(*map(actions_in, value)) if value else set()
    return set()


def unquote(text: str) -> str:
    """python-hcl2 keeps the quotes of block labels."""
    return text.strip('"')


# --- lint -------------------------------------------------------------------------------------


def test_the_sam_and_cloudformation_templates_pass_cfn_lint() -> None:
    result = cfn_lint(SAM, CFN)

    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CFN.read_text().replace("Runtime: python3.12", "Runtime: python2.6"))

    result = cfn_lint(broken)

    assert result.returncode != 0
    assert "python2.6" in result.stdout


# --- the three snippets agree ------------------------------------------------------------------


def test_sam_and_cloudformation_set_the_same_variables_and_grant_the_same_actions() -> None:
    sam, cfn = template(SAM), template(CFN)
    sam_function = sam["Resources"]["ProducerFunction"]["Properties"]
    cfn_function = cfn["Resources"]["ProducerFunction"]["Properties"]

    assert sam_function["Environment"] == cfn_function["Environment"]
    assert sam_function["VpcConfig"] == cfn_function["VpcConfig"]
    assert sam_function["Layers"] == cfn_function["Layers"] == [{"Ref": "KafkaRelayLayerArn"}]
    assert actions_in(sam_function["Policies"]) == actions_in(
        cfn["Resources"]["ProducerRole"]["Properties"]["Policies"]
    ) == {"secretsmanager:GetSecretValue", "s3:PutObject", *MSK_ACTIONS}
    shared = set(sam["Parameters"]) & set(cfn["Parameters"])
    assert set(sam["Parameters"]) - shared == set()
    assert set(cfn["Parameters"]) - shared == {"CodeS3Bucket", "CodeS3Key", "Handler"}


def test_the_terraform_snippet_parses_and_matches_the_cloudformation() -> None:
    with TERRAFORM.open() as stream:
        parsed = hcl2.load(stream)
    variables = {unquote(name) for block in parsed["variable"] for name in block}
    resources = {f"{unquote(kind)}.{unquote(name)}"
                 for block in parsed["resource"] for kind, named in block.items()
                 for name in named}
    function = next(named['"producer"'] for block in parsed["resource"]
                    for kind, named in block.items() if kind == '"aws_lambda_function"')
    environment = json.dumps(function["environment"])
    cfn = template(CFN)["Resources"]["ProducerFunction"]["Properties"]

    assert {"kafka_relay_layer_arn", "kafka_bootstrap_servers", "kafka_topic",
            "kafka_secret_arn", "spill_bucket", "msk_cluster_arn", "subnet_ids",
            "security_group_ids", "log_retention_days", "function_zip",
            "handler"} <= variables
    assert {"aws_lambda_function.producer", "aws_iam_role.producer",
            "aws_iam_role_policy.kafka_relay", "aws_cloudwatch_log_group.producer",
            "aws_iam_role_policy_attachment.vpc"} <= resources
    assert function["layers"] == ["${var.kafka_relay_layer_arn}"]
    assert "vpc_config" in json.dumps(function)
    for variable in cfn["Environment"]["Variables"]:
        assert re.search(rf"\b{variable}\b", environment), variable
    statements = json.dumps(parsed["locals"])
    for action in {"secretsmanager:GetSecretValue", "s3:PutObject", *MSK_ACTIONS}:
        assert action in statements


# --- CloudFormation on moto ---------------------------------------------------------------------


@pytest.fixture
def aws(moto: MotoServer) -> MotoServer:
    moto.reset()
    return moto.in_region(REGION)


def deploy_stack(aws: MotoServer, name: str, **overrides: str) -> dict[str, Any]:
    """The plain CloudFormation variant, with a function zip and the layer in moto."""
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return {}\n")
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=f"{name}-code",
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=f"{name}-code", Key="app.zip", Body=code.getvalue())
    layer = aws.client("lambda").publish_layer_version(
        LayerName=f"{name}-layer", Content={"ZipFile": code.getvalue()})["LayerVersionArn"]
    parameters = {"KafkaRelayLayerArn": layer, "CodeS3Bucket": f"{name}-code",
                  "CodeS3Key": "app.zip", "KafkaBootstrapServers": "b-1.orders:9098",
                  "KafkaTopic": "orders", **overrides}
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(
        StackName=name, TemplateBody=CFN.read_text(), Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    stack = cloudformation.describe_stacks(StackName=name)["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack.get("StackStatusReason")
    return {output["OutputKey"]: output["OutputValue"] for output in stack["Outputs"]}


def inline_policies(aws: MotoServer, role: str) -> list[dict[str, Any]]:
    iam = aws.client("iam")
    documents = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):
            # moto stores what its CloudFormation resolved as a Python repr, not JSON.
            document = ast.literal_eval(document)
        documents.append(document)
    return documents


def test_the_cloudformation_stack_deploys_with_every_option_on_moto(aws: MotoServer) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="to-msk", Description="to MSK",
                                      VpcId=vpc)["GroupId"]

    outputs = deploy_stack(aws, "full", KafkaSecretArn=SECRET, SpillBucket="spill",
                           MskClusterArn=CLUSTER, SubnetIds=subnet, SecurityGroupIds=group,
                           LogRetentionDays="14")

    function = aws.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionArn"])
    assert function["Environment"]["Variables"] == {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.orders:9098", "KAFKA_TOPIC": "orders",
        "KAFKA_SECRET_ARN": SECRET, "KAFKA_RELAY_SPILL_BUCKET": "spill",
    }
    assert function["VpcConfig"]["SubnetIds"] == [subnet]
    assert function["VpcConfig"]["SecurityGroupIds"] == [group]
    [policy] = inline_policies(aws, outputs["RoleName"])
    grants = {statement["Sid"]: statement for statement in policy["Statement"]}
    assert grants["ReadKafkaCredentials"]["Resource"] == SECRET
    assert grants["SpillUnsentRecords"]["Resource"] == "arn:aws:s3:::spill/*"
    assert set(grants["MskIamProduce"]["Action"]) == MSK_ACTIONS
    assert grants["MskIamProduce"]["Resource"] == [
        CLUSTER, f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:topic/orders/0b1c-2d3e/*",
    ]
    [group_info] = aws.client("logs").describe_log_groups(
        logGroupNamePrefix=outputs["LogGroup"])["logGroups"]
    assert group_info["retentionInDays"] == 14


def test_without_the_optional_settings_the_stack_grants_nothing_extra(aws: MotoServer) -> None:
    outputs = deploy_stack(aws, "minimal")

    function = aws.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionArn"])
    assert function["Environment"]["Variables"] == {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.orders:9098", "KAFKA_TOPIC": "orders",
    }
    assert not function.get("VpcConfig", {}).get("SubnetIds")
    assert inline_policies(aws, outputs["RoleName"]) == []
