"""The deployment plan: everything deploy needs, resolved and checked once, before any AWS call."""

from __future__ import annotations

import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from layer_build.build import REPO_ROOT
from layer_build.envfile import parse_env_file
from layer_build.errors import DeployError, EnvFileError, MissingArtifactError
from layer_build.manifest import Artifact, Manifest
from layer_build.targets import ARCHES, REFUSED_RUNTIMES, RUNTIME_GLIBC
from layer_build.zipper import file_sha256

#: Amazon Linux 2023: the oldest Lambda Python runtime whose glibc loads confluent-kafka
#: 2.16.1's manylinux_2_28 wheels (python3.10/3.11 run on Amazon Linux 2, glibc 2.26:
#: refused, see targets.REFUSED_RUNTIMES).
DEFAULT_RUNTIME = "python3.12"
DEFAULT_PREFIX = "kafka-relay"
#: Lambda refuses a function whose variables (names + values) exceed 4 KB.
ENV_LIMIT_BYTES = 4096
#: Variables Lambda sets itself and refuses in a function's configuration.
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})
#: The retention values CloudWatch Logs accepts.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096,
                      1827, 2192, 2557, 2922, 3288, 3653)
DEFAULT_LOG_RETENTION_DAYS = 30
SECRET_ARN_VAR = "KAFKA_SECRET_ARN"
AUTH_VAR = "KAFKA_AUTH"
MSK_IAM = "msk-iam"  # KAFKA_AUTH's value for MSK IAM (kafka_relay.config.MSK_IAM)
_MSK_CLUSTER_ARN = re.compile(r"^arn:[a-z-]+:kafka:[a-z0-9-]+:\d{12}:cluster/[^/]+/[^/]+$")
_KMS_KEY_ARN = re.compile(r"^arn:[a-z-]+:kms:[a-z0-9-]+:\d{12}:key/.+$")
SPILL_BUCKET_VAR = "KAFKA_RELAY_SPILL_BUCKET"
_NAME = re.compile(r"^[A-Za-z0-9_-]+$")
_NAME_LIMIT = 64  # functions, roles and rules alike


@dataclass(frozen=True)
class FunctionSpec:
    """A producer function as the project defines it; names get the deploy prefix."""

    name: str
    handler: str
    schedule: str
    default_topic: str
    env_prefix: str  # its own variables in the env file, e.g. RSS_KAFKA_TOPIC

    @property
    def module_file(self) -> str:
        return self.handler.rsplit(".", 1)[0] + ".py"


FUNCTIONS: tuple[FunctionSpec, ...] = (
    FunctionSpec("rss-producer", "rss_producer.handler", "rate(15 minutes)", "rss.events", "RSS_"),
    FunctionSpec(
        "polymarket-producer",
        "polymarket_producer.handler",
        "rate(1 hour)",
        "polymarket.price_hourly",
        "POLYMARKET_",
    ),
)


@dataclass(frozen=True)
class DeployOptions:
    dist: Path = REPO_ROOT / "dist"
    env_file: Path = REPO_ROOT / ".env"
    arch: str = "x86_64"
    prefix: str = DEFAULT_PREFIX
    runtime: str = DEFAULT_RUNTIME
    region: str | None = None  # None: boto3's own (AWS_DEFAULT_REGION, the profile's region)
    timeout_s: int = 300
    memory_mb: int = 256
    dry_run: bool = False
    # A VPC (e.g. to reach MSK): both or neither; Lambda needs a subnet and a security group.
    subnet_ids: tuple[str, ...] = ()
    security_group_ids: tuple[str, ...] = ()
    # Days CloudWatch keeps each function's log group; None leaves the retention alone.
    log_retention_days: int | None = DEFAULT_LOG_RETENTION_DAYS
    # MSK IAM (KAFKA_AUTH=msk-iam): the cluster the roles may connect and write to.
    msk_cluster_arn: str | None = None
    # The customer-managed key KAFKA_SECRET_ARN is encrypted with (None: AWS's own key).
    secret_kms_key_arn: str | None = None


@dataclass(frozen=True)
class ResourceNames:
    """The AWS names of one producer under a prefix (deploy creates them, teardown deletes)."""

    name: str
    role_name: str
    policy_name: str
    rule_name: str

    @classmethod
    def of(cls, prefix: str, spec: FunctionSpec) -> ResourceNames:
        name = f"{prefix}-{spec.name}"
        return cls(name=name, role_name=name, policy_name=name, rule_name=f"{name}-schedule")


def layer_name(prefix: str, arch: str) -> str:
    return f"{prefix}-{arch}"


@dataclass(frozen=True)
class FunctionPlan:
    spec: FunctionSpec
    name: str
    role_name: str
    policy_name: str
    rule_name: str
    environment: dict[str, str]


@dataclass(frozen=True)
class DeployPlan:
    options: DeployOptions
    layer_name: str
    layer: Artifact
    layer_zip: Path
    function_zip: Path
    function_artifact: Artifact
    secret_arn: str | None
    spill_bucket: str | None
    functions: tuple[FunctionPlan, ...]


@dataclass(frozen=True)
class Account:
    """Where the deployment lands: from STS, so ARNs are right in any partition."""

    account_id: str
    partition: str
    region: str

    def arn(self, service: str, resource: str, *, regional: bool = True) -> str:
        region = self.region if regional else ""
        return f"arn:{self.partition}:{service}:{region}:{self.account_id}:{resource}"


def trust_policy() -> dict[str, Any]:
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }


def role_policy(plan: DeployPlan, function: FunctionPlan, account: Account) -> dict[str, Any]:
    """Least privilege: its own log group, and the secret and bucket only when configured."""
    log_group = account.arn("logs", f"log-group:/aws/lambda/{function.name}:*")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "OwnLogGroup",
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": log_group,
        }
    ]
    if plan.secret_arn:
        statements.append({
            "Sid": "ReadKafkaCredentials",
            "Effect": "Allow",
            "Action": "secretsmanager:GetSecretValue",
            "Resource": plan.secret_arn,
        })
    if plan.options.subnet_ids:
        # What AWSLambdaVPCAccessExecutionRole grants: Lambda manages the function's ENIs.
        statements.append({
            "Sid": "VpcNetworkInterfaces",
            "Effect": "Allow",
            "Action": [
                "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ],
            "Resource": "*",
        })
    if plan.secret_arn and plan.options.secret_kms_key_arn:
        statements.append({
            "Sid": "DecryptKafkaCredentials",
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": plan.options.secret_kms_key_arn,
            "Condition": {"StringEquals": {
                "kms:ViaService": f"secretsmanager.{account.region}.amazonaws.com"}},
        })
    if plan.options.msk_cluster_arn:
        cluster = plan.options.msk_cluster_arn
        statements += [{
            "Sid": "MskIamCluster",
            "Effect": "Allow",
            "Action": ["kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently"],
            "Resource": cluster,
        }, {
            # arn:...:cluster/<name>/<uuid> -> arn:...:topic/<name>/<uuid>/*
            "Sid": "MskIamTopics",
            "Effect": "Allow",
            "Action": ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"],
            "Resource": cluster.replace(":cluster/", ":topic/", 1) + "/*",
        }]
    if plan.spill_bucket:
        statements.append({
            "Sid": "SpillUnsentRecords",
            "Effect": "Allow",
            "Action": "s3:PutObject",
            "Resource": f"arn:{account.partition}:s3:::{plan.spill_bucket}/*",
        })
    return {"Version": "2012-10-17", "Statement": statements}


def _check_names(prefix: str) -> None:
    if not _NAME.match(prefix):
        raise DeployError(f"--prefix {prefix!r} may hold only letters, digits, - and _")
    longest = max(len(f"{prefix}-{spec.name}-schedule") for spec in FUNCTIONS)
    if longest > _NAME_LIMIT:
        raise DeployError(
            f"--prefix {prefix!r} makes names {longest} characters long, past AWS's "
            f"{_NAME_LIMIT}: use a prefix of at most {len(prefix) - longest + _NAME_LIMIT}"
        )


def _check_vpc(options: DeployOptions) -> None:
    if bool(options.subnet_ids) != bool(options.security_group_ids):
        raise DeployError(
            "a VPC needs both --subnet-ids and --security-group-ids (Lambda places the "
            "function's network interfaces in those subnets, guarded by those groups)"
        )
    if options.log_retention_days is not None and (
        options.log_retention_days not in LOG_RETENTION_DAYS
    ):
        raise DeployError(
            f"--log-retention-days {options.log_retention_days} is not a value CloudWatch "
            f"accepts: use one of {', '.join(map(str, LOG_RETENTION_DAYS))}"
        )


def checked_zip(dist: Path, artifact: Artifact) -> Path:
    path = dist / artifact.file
    if not path.is_file():
        raise MissingArtifactError(f"{path} is missing: run ./build.sh build first")
    if file_sha256(path) != artifact.sha256:
        raise MissingArtifactError(
            f"{path} changed since {dist / 'manifest.json'} was written: run ./build.sh build"
        )
    return path


def _check_runtime(runtime: str, layer: Artifact) -> None:
    if runtime in REFUSED_RUNTIMES:
        raise DeployError(REFUSED_RUNTIMES[runtime])
    if runtime not in RUNTIME_GLIBC:
        raise DeployError(
            f"runtime {runtime!r} is not one the layer targets: use one of "
            f"{', '.join(RUNTIME_GLIBC)}"
        )
    if runtime in layer.compatible_runtimes:
        return
    if runtime.removeprefix("python") not in layer.python_versions:
        raise DeployError(
            f"{layer.file} carries confluent-kafka binaries for Python "
            f"{', '.join(layer.python_versions)} only: rebuild with ./build.sh build (all "
            f"versions by default) or with --python-version {runtime.removeprefix('python')}"
        )
    have = ".".join(map(str, RUNTIME_GLIBC[runtime]))
    raise DeployError(
        f"{runtime} runs on glibc {have}, but {layer.file}'s confluent-kafka wheels need glibc "
        f">= {layer.glibc} and would fail to load there: deploy with "
        f"--runtime {' or '.join(layer.compatible_runtimes) or DEFAULT_RUNTIME}"
    )


def _check_handlers(function_zip: Path) -> None:
    with zipfile.ZipFile(function_zip) as archive:
        names = set(archive.namelist())
    missing = [spec.module_file for spec in FUNCTIONS if spec.module_file not in names]
    if missing:
        raise MissingArtifactError(
            f"{function_zip} lacks {', '.join(missing)}: add the handlers under function/ "
            "and run ./build.sh build"
        )


def function_environment(
    spec: FunctionSpec, variables: Mapping[str, str]
) -> dict[str, str]:
    """The file's variables for every function, plus its own KAFKA_TOPIC."""
    environment = dict(variables)
    environment["KAFKA_TOPIC"] = variables.get(f"{spec.env_prefix}KAFKA_TOPIC", spec.default_topic)
    return dict(sorted(environment.items()))


def _check_environment(variables: Mapping[str, str], source: Path) -> None:
    reserved = sorted(set(variables) & RESERVED_ENV)
    if reserved:
        raise EnvFileError(
            f"{source} sets {', '.join(reserved)}, which Lambda reserves for itself: remove "
            "them (deploy credentials and region come from the usual AWS settings, not this file)"
        )


def _check_auth_grants(options: DeployOptions, variables: Mapping[str, str]) -> None:
    """The role gets what the functions' authentication needs, or deploy says what is missing."""
    msk_iam = variables.get(AUTH_VAR, "").strip().lower() == MSK_IAM
    cluster, key = options.msk_cluster_arn, options.secret_kms_key_arn
    if msk_iam and not cluster:
        raise DeployError(
            f"{AUTH_VAR}={MSK_IAM} needs --msk-cluster-arn: the functions' role is granted "
            "kafka-cluster:Connect on that cluster and WriteData on its topics, without "
            "which MSK refuses every connection")
    if cluster and not msk_iam:
        raise DeployError(f"--msk-cluster-arn is for {AUTH_VAR}={MSK_IAM}: set it in the env "
                          "file, or drop the option")
    if cluster and not _MSK_CLUSTER_ARN.match(cluster):
        raise DeployError(f"--msk-cluster-arn {cluster!r} is not an MSK cluster ARN "
                          "(arn:aws:kafka:REGION:ACCOUNT:cluster/NAME/UUID)")
    if key and not variables.get(SECRET_ARN_VAR):
        raise DeployError(f"--secret-kms-key-arn is the key {SECRET_ARN_VAR}'s secret is "
                          f"encrypted with: set {SECRET_ARN_VAR} in the env file, or drop it")
    if key and not _KMS_KEY_ARN.match(key):
        raise DeployError(f"--secret-kms-key-arn {key!r} is not a KMS key ARN "
                          "(arn:aws:kms:REGION:ACCOUNT:key/KEY-ID)")


def _check_environment_size(function: FunctionPlan) -> None:
    size = sum(len(k.encode()) + len(v.encode()) for k, v in function.environment.items())
    if size > ENV_LIMIT_BYTES:
        raise EnvFileError(
            f"{function.name}'s environment is {size} bytes, past Lambda's {ENV_LIMIT_BYTES}: "
            f"move long values into a secret ({SECRET_ARN_VAR})"
        )


def resolve_plan(
    options: DeployOptions, *, variables: Mapping[str, str] | None = None
) -> DeployPlan:
    """Check everything that can be checked locally; ``variables`` replaces the env file."""
    if options.arch not in ARCHES:
        raise DeployError(f"unknown --arch {options.arch!r}: use one of {', '.join(ARCHES)}")
    _check_names(options.prefix)
    _check_vpc(options)
    manifest = Manifest.load(options.dist)
    layer = manifest.layer(options.arch)
    function_artifact = manifest.function()
    _check_runtime(options.runtime, layer)
    layer_zip = checked_zip(options.dist, layer)
    function_zip = checked_zip(options.dist, function_artifact)
    _check_handlers(function_zip)
    if variables is None:
        variables = parse_env_file(options.env_file)
    _check_environment(variables, options.env_file)
    _check_auth_grants(options, variables)
    functions = tuple(
        FunctionPlan(
            spec=spec,
            name=names.name,
            role_name=names.role_name,
            policy_name=names.policy_name,
            rule_name=names.rule_name,
            environment=function_environment(spec, variables),
        )
        for spec, names in ((spec, ResourceNames.of(options.prefix, spec)) for spec in FUNCTIONS)
    )
    for function in functions:
        _check_environment_size(function)
    return DeployPlan(
        options=options,
        layer_name=layer_name(options.prefix, options.arch),
        layer=layer,
        layer_zip=layer_zip,
        function_zip=function_zip,
        function_artifact=function_artifact,
        secret_arn=variables.get(SECRET_ARN_VAR) or None,
        spill_bucket=variables.get(SPILL_BUCKET_VAR) or None,
        functions=functions,
    )
