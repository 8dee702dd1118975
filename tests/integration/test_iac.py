"""The infrastructure-as-code snippets under iac/: linted, deployed on moto (CloudFormation,
and Terraform with the real terraform binary), and for each Auth choice the function gets an
environment the extension's own load_config accepts as that mode and exactly that mode's
permissions."""

from __future__ import annotations

import ast
import io
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import hcl2
import pytest
from cfnlint.decode import decode_str

from devtools.moto_server import ACCOUNT_ID, MotoServer
from kafka_relay.config import AUTH_MODES
from kafka_relay.observability.metrics import DIMENSIONS, METRICS, NAMESPACE
from layer_build.function_env import AUTH_ENVIRONMENTS
from tests.function_envs import in_lambda

REPO = Path(__file__).resolve().parents[2]
SAM = REPO / "iac" / "sam" / "template.yaml"
CFN = REPO / "iac" / "cloudformation" / "template.yaml"
TERRAFORM = REPO / "iac" / "terraform" / "main.tf"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"
REGION = "eu-west-1"
MSK_ACTIONS = {"kafka-cluster:Connect", "kafka-cluster:DescribeTopic", "kafka-cluster:WriteData",
               "kafka-cluster:WriteDataIdempotently"}
SECRET_ACTIONS = {"secretsmanager:GetSecretValue", "kms:Decrypt"}
#: What each Auth choice may grant, given every ARN (the other modes' too).
GRANTS = {"none": set(), "plain": SECRET_ACTIONS, "scram": SECRET_ACTIONS,
          "msk-iam": MSK_ACTIONS}
CLUSTER = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:cluster/orders/0b1c-2d3e"
TOPICS = f"arn:aws:kafka:{REGION}:{ACCOUNT_ID}:topic/orders/0b1c-2d3e/*"
SECRET = f"arn:aws:secretsmanager:{REGION}:{ACCOUNT_ID}:secret:AmazonMSK_relay-abc"
KEY = f"arn:aws:kms:{REGION}:{ACCOUNT_ID}:key/1234abcd-12ab-34cd-56ef-1234567890ab"
BOOTSTRAP = {auth.mode: dict(auth.variables)["KAFKA_BOOTSTRAP_SERVERS"]
             for auth in AUTH_ENVIRONMENTS}


def parameters(mode: str) -> dict[str, str]:
    """Every ARN given, whatever the mode: Auth alone decides what is set and granted."""
    return {"Auth": mode, "KafkaBootstrapServers": BOOTSTRAP[mode], "KafkaTopic": "orders",
            "KafkaSecretArn": SECRET, "SecretKmsKeyArn": KEY, "MskClusterArn": CLUSTER}


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


# --- rendering a template for given parameters (what CloudFormation would resolve) ----------

_NO_VALUE = object()
_PSEUDO = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT_ID, "AWS::Partition": "aws"}


class Rendered:
    """The template with ``given`` parameters: conditions decided, intrinsics resolved."""

    def __init__(self, body: Mapping[str, Any], given: Mapping[str, str]) -> None:
        self.params: dict[str, Any] = dict(_PSEUDO)
        for name, spec in body["Parameters"].items():
            value = given.get(name, spec.get("Default", ""))
            is_list = spec["Type"] == "CommaDelimitedList"
            self.params[name] = str(value).split(",") if is_list else str(value)
        self._conditions = body.get("Conditions", {})
        self.conditions = {name: self.condition(name) for name in self._conditions}

    def condition(self, name: str) -> bool:
        return bool(self.value(self._conditions[name]))

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [item for item in map(self.value, node) if item is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            [(key, arg)] = node.items()
            function = self._functions().get(key)
            if function is not None:
                return function(arg)
        resolved = {key: self.value(item) for key, item in node.items()}
        return {key: item for key, item in resolved.items() if item is not _NO_VALUE}

    def _functions(self) -> dict[str, Any]:
        return {
            "Ref": lambda name: _NO_VALUE if name == "AWS::NoValue" else self.params.get(
                name, f"<{name}>"),
            "Fn::If": lambda arg: self.value(arg[1] if self.condition(arg[0]) else arg[2]),
            "Fn::Equals": lambda arg: self.value(arg[0]) == self.value(arg[1]),
            "Fn::Not": lambda arg: not self.value(arg[0]),
            "Fn::And": lambda arg: all(map(self.value, arg)),
            "Fn::Or": lambda arg: any(map(self.value, arg)),
            "Condition": self.condition,
            "Fn::Join": lambda arg: arg[0].join(self.value(arg[1])),
            "Fn::Split": lambda arg: self.value(arg[1]).split(arg[0]),
            "Fn::Select": lambda arg: self.value(arg[1])[int(arg[0])],
            "Fn::Sub": self._sub,
            "Fn::GetAtt": lambda arg: f"<{'.'.join(arg)}>",
        }

    def _sub(self, arg: Any) -> str:
        text, names = (arg, {}) if isinstance(arg, str) else (arg[0], self.value(arg[1]))
        values = {**self.params, **names}
        return re.sub(r"\$\{([^}]+)\}", lambda m: str(values.get(m[1], f"<{m[1]}>")), text)


def function_environment(path: Path, mode: str) -> dict[str, str]:
    body = template(path)
    rendered = Rendered(body, parameters(mode))
    function = body["Resources"]["ProducerFunction"]["Properties"]
    return dict(rendered.value(function["Environment"])["Variables"])


def granted_actions(path: Path, mode: str) -> set[str]:
    body = template(path)
    rendered = Rendered(body, parameters(mode))
    resources = body["Resources"]
    if "ProducerRole" in resources:
        return actions_in(rendered.value(resources["ProducerRole"]["Properties"]["Policies"]))
    return actions_in(rendered.value(resources["ProducerFunction"]["Properties"]["Policies"]))


# --- lint -------------------------------------------------------------------------------------


def test_the_sam_and_cloudformation_templates_pass_cfn_lint() -> None:
    result = cfn_lint(SAM, CFN)

    assert result.returncode == 0, result.stdout + result.stderr


def test_cfn_lint_would_catch_a_broken_template(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(CFN.read_text().replace("Runtime: !Ref Runtime", "Runtime: python2.6"))

    result = cfn_lint(broken)

    assert result.returncode != 0
    assert "python2.6" in result.stdout


# --- per Auth choice: an environment load_config accepts, exactly that mode's grants ----------


@pytest.mark.parametrize("path", [SAM, CFN], ids=["sam", "cloudformation"])
@pytest.mark.parametrize("mode", AUTH_MODES)
def test_each_auth_choice_gives_an_environment_load_config_accepts_as_that_mode(
    path: Path, mode: str,
) -> None:
    env = function_environment(path, mode)

    assert env["KAFKA_AUTH"] == mode
    config = in_lambda(env)
    assert (config.auth, config.bootstrap_servers) == (mode, BOOTSTRAP[mode])


@pytest.mark.parametrize("path", [SAM, CFN], ids=["sam", "cloudformation"])
@pytest.mark.parametrize("mode", AUTH_MODES)
def test_each_auth_choice_grants_exactly_what_that_mode_needs(path: Path, mode: str) -> None:
    assert granted_actions(path, mode) == GRANTS[mode]


def test_the_renderer_sees_a_grant_that_a_mode_should_not_have() -> None:
    body = template(CFN)
    # A template that gave MSK IAM's grant to every mode would be caught.
    body["Conditions"]["UsesMskIam"] = {"Fn::Not": [{"Fn::Equals": ["", "x"]}]}
    policies = body["Resources"]["ProducerRole"]["Properties"]["Policies"]

    assert actions_in(Rendered(body, parameters("none")).value(policies)) >= MSK_ACTIONS


def test_sam_and_cloudformation_set_the_same_variables_and_grant_the_same_actions() -> None:
    sam, cfn = template(SAM), template(CFN)
    sam_function = sam["Resources"]["ProducerFunction"]["Properties"]
    cfn_function = cfn["Resources"]["ProducerFunction"]["Properties"]

    assert sam_function["Environment"] == cfn_function["Environment"]
    assert sam_function["VpcConfig"] == cfn_function["VpcConfig"]
    assert sam_function["Layers"] == cfn_function["Layers"] == [{"Ref": "KafkaRelayLayerArn"}]
    assert actions_in(sam_function["Policies"]) == actions_in(
        cfn["Resources"]["ProducerRole"]["Properties"]["Policies"]
    ) == {"s3:PutObject", *SECRET_ACTIONS, *MSK_ACTIONS}
    assert sam["Conditions"] == {name: condition for name, condition in cfn["Conditions"].items()
                                 if name != "GrantsAnything"}
    assert sam["Rules"] == cfn["Rules"]
    shared = set(sam["Parameters"]) & set(cfn["Parameters"])
    assert set(sam["Parameters"]) - shared == set()
    assert set(cfn["Parameters"]) - shared == {"CodeS3Bucket", "CodeS3Key", "Handler"}


def test_the_templates_say_nothing_stale_about_msk_iam() -> None:
    for path in (SAM, CFN, TERRAFORM):
        text = path.read_text()
        assert "has not landed" not in text, path
        assert "until MSK IAM" not in text, path
        assert "9098" in text, path  # both of MSK IAM's listeners
        assert "9198" in text, path


def _alarms(path: Path) -> dict[str, tuple[str, float, int]]:
    """metric -> (statistic, threshold, evaluation periods) of a template's alarms."""
    found = {}
    for resource in template(path)["Resources"].values():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            alarm = resource["Properties"]
            assert alarm["Namespace"] == NAMESPACE
            assert [d["Name"] for d in alarm["Dimensions"]] == list(DIMENSIONS)
            found[alarm["MetricName"]] = (alarm["Statistic"], float(alarm["Threshold"]),
                                          int(alarm["EvaluationPeriods"]))
    return found


def test_the_three_snippets_alarm_on_the_same_metrics_the_extension_writes() -> None:
    with TERRAFORM.open() as stream:
        parsed = hcl2.load(stream)
    terraform = {name: (unquote(alarm["statistic"]), float(alarm["threshold"]),
                        int(alarm["periods"]))
                 for block in parsed["locals"] if "kafka_relay_alarms" in block
                 for name, alarm in block["kafka_relay_alarms"].items()}

    sam, cfn = _alarms(SAM), _alarms(CFN)
    assert sam == cfn == terraform
    assert set(sam) == {"RecordsSpilled", "DeadLetterFailures", "OldestPendingMs",
                        "BreakerOpen"}
    assert set(sam) <= {metric.name for metric in METRICS}


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

    assert {"kafka_relay_layer_arn", "kafka_bootstrap_servers", "kafka_topic", "auth",
            "kafka_secret_arn", "secret_kms_key_arn", "spill_bucket", "msk_cluster_arn",
            "subnet_ids", "security_group_ids", "log_retention_days", "function_zip",
            "handler"} <= variables
    assert {"aws_lambda_function.producer", "aws_iam_role.producer",
            "aws_iam_role_policy.kafka_relay", "aws_cloudwatch_log_group.producer",
            "aws_iam_role_policy_attachment.vpc"} <= resources
    assert function["layers"] == ["${var.kafka_relay_layer_arn}"]
    assert "vpc_config" in json.dumps(function)
    for variable in cfn["Environment"]["Variables"]:
        assert re.search(rf"\b{variable}\b", environment), variable
    statements = json.dumps(parsed["locals"])
    for action in {"s3:PutObject", *SECRET_ACTIONS, *MSK_ACTIONS}:
        assert action in statements


# --- CloudFormation on moto ---------------------------------------------------------------------


@pytest.fixture
def aws(moto: MotoServer) -> MotoServer:
    moto.reset()
    return moto.in_region(REGION)


def function_zip() -> bytes:
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("app.py", "def handler(event, context):\n    return {}\n")
    return code.getvalue()


def deploy_stack(aws: MotoServer, name: str, **overrides: str) -> dict[str, Any]:
    """The plain CloudFormation variant, with a function zip and the layer in moto."""
    code = function_zip()
    s3 = aws.client("s3")
    s3.create_bucket(Bucket=f"{name}-code",
                     CreateBucketConfiguration={"LocationConstraint": REGION})
    s3.put_object(Bucket=f"{name}-code", Key="app.zip", Body=code)
    layer = aws.client("lambda").publish_layer_version(
        LayerName=f"{name}-layer", Content={"ZipFile": code})["LayerVersionArn"]
    given = {"KafkaRelayLayerArn": layer, "CodeS3Bucket": f"{name}-code",
             "CodeS3Key": "app.zip", "KafkaBootstrapServers": "b-1.orders:9092",
             "KafkaTopic": "orders", **overrides}
    cloudformation = aws.client("cloudformation")
    cloudformation.create_stack(
        StackName=name, TemplateBody=CFN.read_text(), Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in given.items()],
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


def statements_by_sid(aws: MotoServer, role: str) -> dict[str, dict[str, Any]]:
    # moto's CloudFormation leaves an AWS::NoValue in a list as None; AWS drops it.
    return {statement["Sid"]: statement for policy in inline_policies(aws, role)
            for statement in policy["Statement"] if statement is not None}


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def assert_grants(statements: Mapping[str, Mapping[str, Any]], mode: str) -> None:
    """Exactly the mode's actions, each on the resources it belongs to."""
    actions = {action for statement in statements.values()
               for action in as_list(statement["Action"])}
    assert actions == GRANTS[mode]
    if mode == "msk-iam":
        assert as_list(statements["MskIamCluster"]["Resource"]) == [CLUSTER]
        assert as_list(statements["MskIamTopics"]["Resource"]) == [TOPICS]
    if mode in ("plain", "scram"):
        assert as_list(statements["ReadKafkaCredentials"]["Resource"]) == [SECRET]
        decrypt = statements["DecryptKafkaCredentials"]
        assert as_list(decrypt["Resource"]) == [KEY]
        assert decrypt["Condition"] == {
            "StringEquals": {"kms:ViaService": f"secretsmanager.{REGION}.amazonaws.com"}}


@pytest.mark.parametrize("mode", AUTH_MODES)
def test_the_cloudformation_stack_deploys_each_auth_choice_on_moto(
    aws: MotoServer, mode: str,
) -> None:
    outputs = deploy_stack(aws, f"auth-{mode}", **parameters(mode))

    function = aws.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionArn"])
    env = function["Environment"]["Variables"]
    assert in_lambda(env).auth == mode
    assert_grants(statements_by_sid(aws, outputs["RoleName"]), mode)


def test_the_cloudformation_stack_deploys_with_every_option_on_moto(aws: MotoServer) -> None:
    ec2 = aws.client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="to-msk", Description="to MSK",
                                      VpcId=vpc)["GroupId"]

    outputs = deploy_stack(aws, "full", **parameters("scram"), SpillBucket="spill",
                           SubnetIds=subnet, SecurityGroupIds=group, LogRetentionDays="14")

    function = aws.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionArn"])
    assert function["Environment"]["Variables"] == {
        "KAFKA_BOOTSTRAP_SERVERS": BOOTSTRAP["scram"], "KAFKA_TOPIC": "orders",
        "KAFKA_AUTH": "scram", "KAFKA_SECRET_ARN": SECRET, "KAFKA_RELAY_SPILL_BUCKET": "spill",
    }
    assert function["VpcConfig"]["SubnetIds"] == [subnet]
    assert function["VpcConfig"]["SecurityGroupIds"] == [group]
    grants = statements_by_sid(aws, outputs["RoleName"])
    assert grants["SpillUnsentRecords"]["Resource"] == "arn:aws:s3:::spill/*"
    [group_info] = aws.client("logs").describe_log_groups(
        logGroupNamePrefix=outputs["LogGroup"])["logGroups"]
    assert group_info["retentionInDays"] == 14


def test_without_the_optional_settings_the_stack_grants_nothing_extra(aws: MotoServer) -> None:
    outputs = deploy_stack(aws, "minimal")

    function = aws.client("lambda").get_function_configuration(
        FunctionName=outputs["FunctionArn"])
    assert function["Environment"]["Variables"] == {
        "KAFKA_BOOTSTRAP_SERVERS": "b-1.orders:9092", "KAFKA_TOPIC": "orders",
        "KAFKA_AUTH": "none",
    }
    assert not function.get("VpcConfig", {}).get("SubnetIds")
    assert inline_policies(aws, outputs["RoleName"]) == []


# --- Terraform applied on moto -------------------------------------------------------------------

TERRAFORM_BIN = shutil.which("terraform")
PROVIDER_MIRROR = Path(os.environ.get("KAFKA_RELAY_TF_MIRROR", "/opt/tf-plugins"))
MIRRORED_AWS = PROVIDER_MIRROR / "registry.terraform.io" / "hashicorp" / "aws"
NO_TERRAFORM = (f"needs a terraform binary on PATH and the hashicorp/aws provider in a "
                f"filesystem mirror at {PROVIDER_MIRROR} (KAFKA_RELAY_TF_MIRROR): nothing is "
                "downloaded")
needs_terraform = pytest.mark.skipif(TERRAFORM_BIN is None or not MIRRORED_AWS.is_dir(),
                                     reason=NO_TERRAFORM)
TF_VARIABLES = {"Auth": "auth", "KafkaBootstrapServers": "kafka_bootstrap_servers",
                "KafkaTopic": "kafka_topic", "KafkaSecretArn": "kafka_secret_arn",
                "SecretKmsKeyArn": "secret_kms_key_arn", "MskClusterArn": "msk_cluster_arn"}


class Terraform:
    """terraform in a scratch root that uses iac/terraform as a module, once per auth mode,
    with the AWS provider pointed at ``endpoint_url`` (moto). Given ``installed`` (a root
    ``init`` ran in), the root shares its .terraform: the mirror's provider is copied once."""

    def __init__(self, directory: Path, endpoint_url: str, *,
                 installed: Path | None = None) -> None:
        self.directory = directory
        directory.mkdir(exist_ok=True)
        (directory / "kafka_relay").mkdir()
        shutil.copy(TERRAFORM, directory / "kafka_relay" / "main.tf")
        if installed is not None:
            (directory / ".terraform").symlink_to(installed / ".terraform")
            shutil.copy(installed / ".terraform.lock.hcl", directory)
        endpoints = "\n".join(f'    {service} = "{endpoint_url}"'
                              for service in ("cloudwatch", "iam", "lambda", "logs", "sts"))
        self.provider = f'''provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  endpoints {{
{endpoints}
  }}
}}
'''
        config = directory / "terraform.rc"
        config.write_text(f'''provider_installation {{
  filesystem_mirror {{
    path    = "{PROVIDER_MIRROR}"
    include = ["registry.terraform.io/hashicorp/aws"]
  }}
  direct {{
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }}
}}
''')
        self.env = {"PATH": os.environ.get("PATH", ""), "HOME": str(directory),
                    "TF_CLI_CONFIG_FILE": str(config), "TF_IN_AUTOMATION": "1",
                    "CHECKPOINT_DISABLE": "1"}

    def write_root(self, modules: Mapping[str, Mapping[str, str]]) -> None:
        """``module "<name>" { source = "./kafka_relay", <arguments> }`` per entry."""
        blocks = [self.provider]
        for name, arguments in modules.items():
            lines = "\n".join(f"  {key} = {json.dumps(value)}" for key, value in arguments.items())
            blocks.append(f'module "{name}" {{\n  source = "./kafka_relay"\n{lines}\n}}\n')
        (self.directory / "main.tf").write_text("\n".join(blocks))

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        assert TERRAFORM_BIN is not None
        return subprocess.run([TERRAFORM_BIN, *args, "-no-color", "-input=false"],
                              cwd=self.directory, env=self.env, capture_output=True,
                              text=True, timeout=600, check=False)


def tf_arguments(mode: str, layer: str) -> dict[str, str]:
    return {"function_name": f"tf-{mode}", "function_zip": "${path.root}/app.zip",
            "kafka_relay_layer_arn": layer,
            **{TF_VARIABLES[key]: value for key, value in parameters(mode).items()}}


def tf_modules(layer: str) -> dict[str, dict[str, str]]:
    """One module per auth mode, named after it."""
    return {mode.replace("-", "_"): tf_arguments(mode, layer) for mode in AUTH_MODES}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root ``terraform init`` ran in (the provider from the filesystem mirror), with a
    module per auth mode."""
    if TERRAFORM_BIN is None or not MIRRORED_AWS.is_dir():
        pytest.skip(NO_TERRAFORM)
    runner = Terraform(tmp_path_factory.mktemp("terraform-init"), "http://127.0.0.1:1")
    runner.write_root(tf_modules(f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:x:1"))
    result = runner.run("init")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr
    return runner.directory


@pytest.fixture(scope="module")
def applied(installed: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """Every auth mode applied by terraform against moto (one apply: a root per mode would
    save the seconds the provider waits after each function, at three times the CPU)."""
    # The role attaches AWS managed policies: moto knows them only when asked to load them.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        with MotoServer(region=REGION) as aws:
            aws.reset()  # backends made before the variable was set are made anew
            runner = Terraform(tmp_path_factory.mktemp("terraform"), aws.endpoint_url,
                               installed=installed)
            (runner.directory / "app.zip").write_bytes(function_zip())
            layer = aws.client("lambda").publish_layer_version(
                LayerName="tf-layer", Content={"ZipFile": function_zip()})["LayerVersionArn"]
            runner.write_root(tf_modules(layer))
            result = runner.run("apply", "-auto-approve")
            assert result.returncode == 0, result.stdout[-4000:] + result.stderr
            yield aws


@needs_terraform
@pytest.mark.parametrize("mode", AUTH_MODES)
def test_terraform_applies_each_auth_choice_on_moto(applied: MotoServer, mode: str) -> None:
    name = f"tf-{mode}"

    function = applied.client("lambda").get_function_configuration(FunctionName=name)
    assert in_lambda(function["Environment"]["Variables"]).auth == mode
    assert_grants(statements_by_sid(applied, name), mode)
    attached = applied.client("iam").list_attached_role_policies(RoleName=name)
    assert [p["PolicyName"] for p in attached["AttachedPolicies"]] == [
        "AWSLambdaBasicExecutionRole"]


@needs_terraform
def test_terraform_refuses_a_sasl_mode_without_its_secret(installed: Path, tmp_path: Path) -> None:
    with MotoServer(region=REGION) as aws:
        runner = Terraform(tmp_path / "root", aws.endpoint_url, installed=installed)
        arguments = tf_arguments("scram", f"arn:aws:lambda:{REGION}:{ACCOUNT_ID}:layer:x:1")
        del arguments["kafka_secret_arn"]
        runner.write_root({"scram": arguments})  # a module name the shared init knows

        planned = runner.run("plan")

    assert planned.returncode != 0
    assert "auth = scram reads its credentials from kafka_secret_arn" in planned.stderr
