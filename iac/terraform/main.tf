# kafka-relay: attach the layer to YOUR function with Terraform.
#
# var.auth sets KAFKA_AUTH and grants exactly what that mode needs (docs: iac.md):
#   msk-iam  MSK IAM, port 9098 inside AWS (9198 public): msk_cluster_arn -> kafka-cluster:Connect
#            and WriteDataIdempotently on the cluster, DescribeTopic and WriteData on its topics
#   scram    MSK SCRAM, port 9096 (9196 public): kafka_secret_arn (an AmazonMSK_ secret) ->
#            secretsmanager:GetSecretValue, plus kms:Decrypt on secret_kms_key_arn
#   plain    Confluent Cloud, port 9092: kafka_secret_arn {"api_key","api_secret"} (+ key)
#   none     no authentication (MSK plaintext, port 9092)
#
#   ./build.sh publish-layer        # prints the layer version ARN per architecture
#   terraform init && terraform apply \
#     -var kafka_relay_layer_arn=arn:aws:lambda:eu-west-1:123456789012:layer:kafka-relay-x86_64:1 \
#     -var function_zip=orders-producer.zip -var handler=app.handler -var auth=msk-iam \
#     -var msk_cluster_arn=arn:aws:kafka:eu-west-1:123456789012:cluster/mycluster/abc \
#     -var kafka_bootstrap_servers=b-1.mycluster.abc123.c2.kafka.eu-west-1.amazonaws.com:9098 \
#     -var kafka_topic=orders -var 'subnet_ids=["subnet-a"]' -var 'security_group_ids=["sg-1"]'
#
# The same function, permissions and settings as iac/cloudformation/template.yaml. The test
# command applies it against moto (terraform with the AWS provider from a local mirror) once
# per auth mode and feeds each function's environment to the extension's load_config.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "function_name" {
  type    = string
  default = "orders-producer"
}

variable "function_zip" {
  type        = string
  description = "Your function's deployment package (a zip with your handler)"
}

variable "handler" {
  type    = string
  default = "app.handler"
}

variable "runtime" {
  type        = string
  default     = "python3.12"
  description = "python3.12, python3.13 or python3.14: the layer's confluent-kafka needs glibc >= 2.28"
  validation {
    condition     = contains(["python3.12", "python3.13", "python3.14"], var.runtime)
    error_message = "The layer loads on python3.12, python3.13 and python3.14 (Amazon Linux 2023)."
  }
}

variable "architecture" {
  type    = string
  default = "x86_64"
}

variable "kafka_relay_layer_arn" {
  type        = string
  description = "Layer version ARN from ./build.sh publish-layer, same architecture"
}

variable "kafka_bootstrap_servers" {
  type = string
}

variable "kafka_topic" {
  type = string
}

variable "auth" {
  type        = string
  default     = "none"
  description = "KAFKA_AUTH: none, plain, scram or msk-iam; grants what that mode needs"
  validation {
    condition     = contains(["none", "plain", "scram", "msk-iam"], var.auth)
    error_message = "auth is one of none, plain, scram, msk-iam."
  }
}

variable "kafka_secret_arn" {
  type        = string
  default     = ""
  description = "plain/scram: Secrets Manager secret with the SASL credentials"
}

variable "secret_kms_key_arn" {
  type        = string
  default     = ""
  description = "plain/scram: the secret's customer managed KMS key (MSK SCRAM requires one)"
}

variable "spill_bucket" {
  type    = string
  default = ""
}

variable "msk_cluster_arn" {
  type        = string
  default     = ""
  description = "msk-iam: the cluster's ARN"
}

variable "subnet_ids" {
  type    = list(string)
  default = []
}

variable "security_group_ids" {
  type    = list(string)
  default = []
}

variable "log_retention_days" {
  type    = number
  default = 30
}

data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  in_vpc      = length(var.subnet_ids) > 0
  uses_secret = contains(["plain", "scram"], var.auth) && var.kafka_secret_arn != ""
  uses_key    = local.uses_secret && var.secret_kms_key_arn != ""
  uses_iam    = var.auth == "msk-iam" && var.msk_cluster_arn != ""
  # arn:...:cluster/<name>/<uuid> -> arn:...:topic/<name>/<uuid>/*
  msk_topics = local.uses_iam ? "${replace(var.msk_cluster_arn, ":cluster/", ":topic/")}/*" : ""
  statements = concat(
    local.uses_secret ? [{
      Sid      = "ReadKafkaCredentials"
      Effect   = "Allow"
      Action   = ["secretsmanager:GetSecretValue"]
      Resource = [var.kafka_secret_arn]
    }] : [],
    local.uses_key ? [{
      Sid       = "DecryptKafkaCredentials"
      Effect    = "Allow"
      Action    = ["kms:Decrypt"]
      Resource  = [var.secret_kms_key_arn]
      Condition = { StringEquals = { "kms:ViaService" = "secretsmanager.${data.aws_region.current.name}.amazonaws.com" } }
    }] : [],
    local.uses_iam ? [{
      Sid      = "MskIamCluster"
      Effect   = "Allow"
      Action   = ["kafka-cluster:Connect", "kafka-cluster:WriteDataIdempotently"]
      Resource = [var.msk_cluster_arn]
    }] : [],
    local.uses_iam ? [{
      Sid      = "MskIamTopics"
      Effect   = "Allow"
      Action   = ["kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"]
      Resource = [local.msk_topics]
    }] : [],
    var.spill_bucket == "" ? [] : [{
      Sid      = "SpillUnsentRecords"
      Effect   = "Allow"
      Action   = ["s3:PutObject"]
      Resource = ["arn:${data.aws_partition.current.partition}:s3:::${var.spill_bucket}/*"]
    }],
  )
}

resource "aws_iam_role" "producer" {
  name = var.function_name
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "lambda.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
}

resource "aws_iam_role_policy_attachment" "logs" {
  role       = aws_iam_role.producer.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}

resource "aws_iam_role_policy_attachment" "vpc" {
  count      = local.in_vpc ? 1 : 0
  role       = aws_iam_role.producer.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

resource "aws_iam_role_policy" "kafka_relay" {
  count  = length(local.statements) > 0 ? 1 : 0
  name   = "kafka-relay"
  role   = aws_iam_role.producer.id
  policy = jsonencode({ Version = "2012-10-17", Statement = local.statements })
}

resource "aws_cloudwatch_log_group" "producer" {
  name              = "/aws/lambda/${var.function_name}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "producer" {
  function_name = var.function_name
  filename      = var.function_zip
  handler       = var.handler
  runtime       = var.runtime
  architectures = [var.architecture]
  role          = aws_iam_role.producer.arn
  timeout       = 60
  memory_size   = 256
  layers        = [var.kafka_relay_layer_arn]

  environment {
    variables = merge(
      {
        KAFKA_BOOTSTRAP_SERVERS = var.kafka_bootstrap_servers
        KAFKA_TOPIC             = var.kafka_topic
        KAFKA_AUTH              = var.auth
      },
      local.uses_secret ? { KAFKA_SECRET_ARN = var.kafka_secret_arn } : {},
      var.spill_bucket == "" ? {} : { KAFKA_RELAY_SPILL_BUCKET = var.spill_bucket },
    )
  }

  dynamic "vpc_config" {
    for_each = local.in_vpc ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = var.security_group_ids
    }
  }

  lifecycle {
    precondition {
      condition     = !contains(["plain", "scram"], var.auth) || var.kafka_secret_arn != ""
      error_message = "auth = ${var.auth} reads its credentials from kafka_secret_arn: set it."
    }
    precondition {
      condition     = var.auth != "msk-iam" || var.msk_cluster_arn != ""
      error_message = "auth = msk-iam needs msk_cluster_arn (the permissions are on the cluster)."
    }
  }

  depends_on = [aws_cloudwatch_log_group.producer]
}

# Alarms on the extension's EMF metrics (namespace KafkaRelay); add alarm_actions (an SNS
# topic) to be told. What each means and what to run: docs/operate/runbook.md.
locals {
  kafka_relay_alarms = {
    RecordsSpilled = { statistic = "Sum", threshold = 1, periods = 1,
      description = "kafka-relay spilled records (S3 or log lines): kafka-relay-logs prints where and the replay command" }
    DeadLetterFailures = { statistic = "Sum", threshold = 1, periods = 1,
      description = "the dead-letter topic did not take records: check the DLQ topic exists and the function may write to it" }
    OldestPendingMs = { statistic = "Maximum", threshold = 300000, periods = 1,
      description = "a record has waited over 5 minutes for Kafka: the broker is slow or unreachable" }
    BreakerOpen = { statistic = "Maximum", threshold = 1, periods = 3,
      description = "the broker breaker has been open for 15 minutes: invocations stop waiting for Kafka, records buffer" }
  }
}

resource "aws_cloudwatch_metric_alarm" "kafka_relay" {
  for_each            = local.kafka_relay_alarms
  alarm_name          = "${var.function_name}-kafka-relay-${each.key}"
  alarm_description   = each.value.description
  namespace           = "KafkaRelay"
  metric_name         = each.key
  dimensions          = { FunctionName = aws_lambda_function.producer.function_name }
  statistic           = each.value.statistic
  period              = 300
  evaluation_periods  = each.value.periods
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
}

output "function_arn" {
  value = aws_lambda_function.producer.arn
}

output "function_name" {
  value = aws_lambda_function.producer.function_name
}

output "role_name" {
  value = aws_iam_role.producer.name
}

output "log_group" {
  description = "python -m kafka_relay.tools.logs --log-group <this>"
  value       = aws_cloudwatch_log_group.producer.name
}
