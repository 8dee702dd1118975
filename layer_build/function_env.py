"""What a function that attaches the layer sets, for each way its cluster authenticates.

One table for ``publish-layer``'s output, ``.env.example`` and the authentication page of
the docs; the tests feed each environment to ``kafka_relay.config.load_config``. (The
layer's build tools run without the extension's package on the path, so the MSK ports are
written out here and checked against ``config.MSK_PORTS`` by the tests.)
"""

from __future__ import annotations

from dataclasses import dataclass

_MSK_HOSTS = ("b-1.mycluster.abc123.c2.kafka.eu-west-1.amazonaws.com",
              "b-2.mycluster.abc123.c2.kafka.eu-west-1.amazonaws.com")


def _msk_brokers(port: int) -> str:
    return ",".join(f"{host}:{port}" for host in _MSK_HOSTS)


@dataclass(frozen=True)
class AuthEnvironment:
    mode: str  # KAFKA_AUTH
    title: str  # which cluster, which port
    variables: tuple[tuple[str, str], ...]  # (name, example value), in the order to set them
    grants: str  # what the execution role needs for it

    def lines(self) -> list[str]:
        return [f"{name}={value}" for name, value in self.variables]


AUTH_ENVIRONMENTS = (
    AuthEnvironment(
        "msk-iam",
        "MSK with IAM access control: port 9098 inside AWS, 9198 over public access",
        (("KAFKA_BOOTSTRAP_SERVERS", _msk_brokers(9098)), ("KAFKA_AUTH", "msk-iam"),
         ("KAFKA_TOPIC", "orders")),
        "kafka-cluster:Connect and kafka-cluster:WriteDataIdempotently on the cluster, "
        "kafka-cluster:DescribeTopic and kafka-cluster:WriteData on its topics (the DLQ, "
        "dlq.<topic>, too)",
    ),
    AuthEnvironment(
        "scram",
        "MSK with SASL/SCRAM: port 9096 inside AWS, 9196 over public access",
        (("KAFKA_BOOTSTRAP_SERVERS", _msk_brokers(9096)), ("KAFKA_AUTH", "scram"),
         ("KAFKA_SECRET_ARN",
          "arn:aws:secretsmanager:eu-west-1:123456789012:secret:AmazonMSK_relay-AbCdEf"),
         ("KAFKA_TOPIC", "orders")),
        "secretsmanager:GetSecretValue on the secret ({\"username\", \"password\"}, named "
        "AmazonMSK_...) and kms:Decrypt on its customer managed key",
    ),
    AuthEnvironment(
        "plain",
        "Confluent Cloud (an API key, SASL/PLAIN over TLS): port 9092",
        (("KAFKA_BOOTSTRAP_SERVERS", "pkc-xxxxx.eu-west-1.aws.confluent.cloud:9092"),
         ("KAFKA_AUTH", "plain"),
         ("KAFKA_SECRET_ARN",
          "arn:aws:secretsmanager:eu-west-1:123456789012:secret:confluent-api-key-AbCdEf"),
         ("KAFKA_TOPIC", "orders")),
        "secretsmanager:GetSecretValue on the secret ({\"api_key\", \"api_secret\"}), and "
        "kms:Decrypt on its key if that is a customer managed one",
    ),
    AuthEnvironment(
        "none",
        "No authentication: MSK's plaintext listener (port 9092) or your own cluster",
        (("KAFKA_BOOTSTRAP_SERVERS", _msk_brokers(9092)), ("KAFKA_AUTH", "none"),
         ("KAFKA_TOPIC", "orders")),
        "nothing for Kafka; the function must reach the brokers (VPC)",
    ),
)

#: Optional for every mode: (name, example value, meaning).
OPTIONAL_VARIABLES = (
    ("KAFKA_RELAY_SPILL_BUCKET", "my-kafka-relay-spill",
     "S3 bucket for records Kafka never took (the role needs s3:PutObject on it)"),
)


def environment_lines() -> list[str]:
    """What ``publish-layer`` prints after the ARNs: one complete environment per mode."""
    lines = ["set on each function that attaches it, for how your cluster authenticates "
             "(KAFKA_AUTH):"]
    for auth in AUTH_ENVIRONMENTS:
        lines += ["", f"  {auth.mode}: {auth.title}"]
        lines += [f"    {line}" for line in auth.lines()]
        lines.append(f"    # the execution role needs {auth.grants}")
    lines.append("")
    for name, value, meaning in OPTIONAL_VARIABLES:
        lines.append(f"  optional, any mode: {name}={value}  # {meaning}")
    return lines
