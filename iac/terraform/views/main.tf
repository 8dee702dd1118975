# kafka-relay views with Terraform: the same resources as iac/cloudformation/views.yaml and
# layer_build/deploy_views.py — the table, the bucket with lifecycle rules, four functions
# with their own roles, a Kafka event source mapping per consumer and topic (provisioned
# mode: partial batch responses, bisect, bounded retries, the bucket as on-failure
# destination), the hourly close, and Glue tables with partition projection for Athena.
#
#   terraform init && terraform apply -var function_zip=../../../dist/views-functions.zip \
#     -var 'kafka_bootstrap_servers=["b-1.example:9096"]' -var kafka_secret_arn=arn:...
#
# With MSK (msk_cluster_arn) in a VPC, the cluster's VPC needs an S3 gateway endpoint for
# Lambda to write on-failure batches to the bucket. Not applied in this repository's tests
# (no terraform binary there): they parse this file and hold it to the CloudFormation.

terraform {
  required_providers {
    aws = { source = "hashicorp/aws", version = ">= 5.0" }
  }
}

variable "prefix" {
  type    = string
  default = "kafka-relay"
}

variable "function_zip" {
  type        = string
  description = "dist/views-functions.zip from ./build.sh build (x86_64, Python 3.12)"
}

variable "kafka_bootstrap_servers" {
  type    = list(string)
  default = []
}

variable "kafka_secret_arn" {
  type    = string
  default = ""
}

variable "msk_cluster_arn" {
  type    = string
  default = ""
}

variable "price_topic" {
  type    = string
  default = "polymarket.price_hourly"
}

variable "rss_topic" {
  type    = string
  default = "rss.events"
}

variable "lateness_hours" {
  type    = number
  default = 6
}

variable "topic_retention_days" {
  type        = number
  default     = 7
  description = "the topics' retention; seen items must outlive it"
}

variable "dedupe_ttl_days" {
  type    = number
  default = 14
  validation {
    condition     = var.dedupe_ttl_days == 0 || var.dedupe_ttl_days > var.topic_retention_days
    error_message = "dedupe_ttl_days must exceed topic_retention_days (0: never expire)."
  }
}

variable "failures_days" {
  type    = number
  default = 30
}

variable "pollers" {
  type    = object({ minimum = number, maximum = number })
  default = { minimum = 1, maximum = 2 }
}

variable "maximum_retry_attempts" {
  type    = number
  default = 10
}

data "aws_caller_identity" "current" {}
data "aws_region" "current" {}

locals {
  bucket = "${var.prefix}-views-${data.aws_caller_identity.current.account_id}-${data.aws_region.current.name}"
  msk    = var.msk_cluster_arn != ""
  environment = {
    VIEWS_TABLE                  = aws_dynamodb_table.views.name
    VIEWS_BUCKET                 = aws_s3_bucket.views.bucket
    VIEWS_PRICE_TOPIC            = var.price_topic
    VIEWS_RSS_TOPIC              = var.rss_topic
    VIEWS_LATENESS_HOURS         = tostring(var.lateness_hours)
    VIEWS_DEDUPE_TTL_DAYS        = tostring(var.dedupe_ttl_days)
    VIEWS_PARTIAL_BATCH_RESPONSE = "true"
  }
  functions = {
    speed   = { handler = "views_speed.handler", timeout = 60, memory = 256 }
    archive = { handler = "views_batch.archive_handler", timeout = 60, memory = 512 }
    close   = { handler = "views_batch.close_handler", timeout = 300, memory = 512 }
    serve   = { handler = "views_serve.handler", timeout = 30, memory = 256 }
  }
  bucket_arn = aws_s3_bucket.views.arn
  # What the mapping's S3 on-failure destination needs of the consumers' roles.
  on_failure = [
    { Sid = "OnFailureDestination", Effect = "Allow", Action = ["s3:PutObject"], Resource = "${local.bucket_arn}/aws/lambda/*" },
    { Sid = "OnFailureDestinationList", Effect = "Allow", Action = ["s3:ListBucket"], Resource = local.bucket_arn },
    { Sid = "Poison", Effect = "Allow", Action = ["s3:PutObject"], Resource = "${local.bucket_arn}/failures/*" },
  ]
  secret = var.kafka_secret_arn == "" ? [] : [
    { Sid = "KafkaSecret", Effect = "Allow", Action = ["secretsmanager:GetSecretValue"], Resource = var.kafka_secret_arn },
  ]
  statements = {
    speed = concat([
      { Sid = "Aggregates", Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"], Resource = aws_dynamodb_table.views.arn },
    ], local.on_failure, local.secret)
    archive = concat([
      { Sid = "Archive", Effect = "Allow", Action = ["s3:PutObject"], Resource = "${local.bucket_arn}/archive/*" },
      { Sid = "DirtyProgressClaims", Effect = "Allow", Action = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"], Resource = aws_dynamodb_table.views.arn },
    ], local.on_failure, local.secret)
    close = [
      { Sid = "ReadArchiveAndViews", Effect = "Allow", Action = ["s3:GetObject"], Resource = ["${local.bucket_arn}/archive/*", "${local.bucket_arn}/views/*"] },
      { Sid = "List", Effect = "Allow", Action = ["s3:ListBucket"], Resource = local.bucket_arn, Condition = { StringLike = { "s3:prefix" = ["archive/*", "views/*"] } } },
      { Sid = "WriteViews", Effect = "Allow", Action = ["s3:PutObject"], Resource = ["${local.bucket_arn}/views/*", "${local.bucket_arn}/failures/*"] },
      { Sid = "DirtyAndSpeed", Effect = "Allow", Action = ["dynamodb:Query", "dynamodb:DeleteItem"], Resource = aws_dynamodb_table.views.arn },
    ]
    serve = [
      { Sid = "SpeedLayer", Effect = "Allow", Action = ["dynamodb:Query"], Resource = aws_dynamodb_table.views.arn },
      { Sid = "BatchViews", Effect = "Allow", Action = ["s3:GetObject"], Resource = "${local.bucket_arn}/views/*" },
      { Sid = "NoSuchKey", Effect = "Allow", Action = ["s3:ListBucket"], Resource = local.bucket_arn, Condition = { StringLike = { "s3:prefix" = ["views/*"] } } },
    ]
  }
  mappings = {
    "speed-prices"   = { function = "speed", topic = var.price_topic }
    "speed-feeds"    = { function = "speed", topic = var.rss_topic }
    "archive-prices" = { function = "archive", topic = var.price_topic }
    "archive-feeds"  = { function = "archive", topic = var.rss_topic }
  }
  # The archive is Parquet (written by DuckDB); the views are JSON lines (one row per period
  # x market x token, or per period x feed), which the serving function reads as they are.
  formats = {
    json = {
      input  = "org.apache.hadoop.mapred.TextInputFormat"
      output = "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
      serde  = "org.openx.data.jsonserde.JsonSerDe"
    }
    parquet = {
      input  = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat"
      output = "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat"
      serde  = "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"
    }
  }
  feed_view_columns = { period = "string", source = "string", count = "bigint" }
  price_view_columns = {
    period = "string", market_id = "string", token_id = "string", outcome = "string",
    question = "string", count = "bigint", sum = "decimal(38,12)", min = "decimal(38,12)",
    max = "decimal(38,12)", last = "decimal(38,12)", last_ts = "string", average = "decimal(38,12)"
  }
}

resource "aws_dynamodb_table" "views" {
  name         = "${var.prefix}-views"
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"
  attribute {
    name = "pk"
    type = "S"
  }
  attribute {
    name = "sk"
    type = "S"
  }
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }
}

resource "aws_s3_bucket" "views" {
  bucket = local.bucket
}

resource "aws_s3_bucket_public_access_block" "views" {
  bucket                  = aws_s3_bucket.views.id
  block_public_acls       = true
  ignore_public_acls      = true
  block_public_policy     = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_lifecycle_configuration" "views" {
  bucket = aws_s3_bucket.views.id
  rule {
    id     = "expire-failures"
    status = "Enabled"
    filter {
      prefix = "failures/"
    }
    expiration {
      days = var.failures_days
    }
  }
  rule {
    id     = "expire-aws-lambda"
    status = "Enabled"
    filter {
      prefix = "aws/lambda/"
    }
    expiration {
      days = var.failures_days
    }
  }
  rule {
    id     = "abort-incomplete-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_iam_role" "views" {
  for_each = local.functions
  name     = "${var.prefix}-views-${each.key}"
  assume_role_policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Principal = { Service = "lambda.amazonaws.com" }, Action = "sts:AssumeRole" }]
  })
}

resource "aws_iam_role_policy_attachment" "logs" {
  for_each   = local.functions
  role       = aws_iam_role.views[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole"
}

resource "aws_iam_role_policy_attachment" "msk" {
  for_each   = local.msk ? toset(["speed", "archive"]) : toset([])
  role       = aws_iam_role.views[each.key].name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AWSLambdaMSKExecutionRole"
}

resource "aws_iam_role_policy" "views" {
  for_each = local.functions
  name     = "views"
  role     = aws_iam_role.views[each.key].id
  policy   = jsonencode({ Version = "2012-10-17", Statement = local.statements[each.key] })
}

resource "aws_lambda_function" "views" {
  for_each         = local.functions
  function_name    = "${var.prefix}-views-${each.key}"
  role             = aws_iam_role.views[each.key].arn
  runtime          = "python3.12"
  handler          = each.value.handler
  filename         = var.function_zip
  source_code_hash = filebase64sha256(var.function_zip)
  timeout          = each.value.timeout
  memory_size      = each.value.memory
  environment {
    variables = local.environment
  }
}

resource "aws_lambda_event_source_mapping" "views" {
  for_each                           = local.mappings
  function_name                      = aws_lambda_function.views[each.value.function].arn
  topics                             = [each.value.topic]
  starting_position                  = "TRIM_HORIZON"
  batch_size                         = 100
  maximum_batching_window_in_seconds = 1
  event_source_arn                   = local.msk ? var.msk_cluster_arn : null
  # Provisioned mode: what makes partial batch responses, bisect and retries apply.
  provisioned_poller_config {
    minimum_pollers = var.pollers.minimum
    maximum_pollers = var.pollers.maximum
  }
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  maximum_retry_attempts         = var.maximum_retry_attempts
  destination_config {
    on_failure {
      destination_arn = aws_s3_bucket.views.arn
    }
  }
  dynamic "amazon_managed_kafka_event_source_config" {
    for_each = local.msk ? [1] : []
    content {
      consumer_group_id = "${var.prefix}-views-${each.value.function}"
    }
  }
  dynamic "self_managed_event_source" {
    for_each = local.msk ? [] : [1]
    content {
      endpoints = { KAFKA_BOOTSTRAP_SERVERS = join(",", var.kafka_bootstrap_servers) }
    }
  }
  dynamic "self_managed_kafka_event_source_config" {
    for_each = local.msk ? [] : [1]
    content {
      consumer_group_id = "${var.prefix}-views-${each.value.function}"
    }
  }
  dynamic "source_access_configuration" {
    for_each = var.kafka_secret_arn == "" ? [] : [1]
    content {
      type = "SASL_SCRAM_512_AUTH"
      uri  = var.kafka_secret_arn
    }
  }
}

resource "aws_cloudwatch_event_rule" "close" {
  name                = "${var.prefix}-views-close"
  schedule_expression = "rate(1 hour)"
}

resource "aws_cloudwatch_event_target" "close" {
  rule = aws_cloudwatch_event_rule.close.name
  arn  = aws_lambda_function.views["close"].arn
}

resource "aws_lambda_permission" "close" {
  function_name = aws_lambda_function.views["close"].function_name
  action        = "lambda:InvokeFunction"
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.close.arn
}

# --- Athena over the same layout (Glue tables with partition projection) -----------------

resource "aws_glue_catalog_database" "views" {
  name = "${replace(var.prefix, "-", "_")}_views"
}

locals {
  minute_projection = {
    "projection.minute.type"   = "integer"
    "projection.minute.range"  = "0,59"
    "projection.minute.digits" = "2"
  }
  hour_projection = {
    "projection.hour.type"   = "integer"
    "projection.hour.range"  = "0,23"
    "projection.hour.digits" = "2"
  }
  day_projection = {
    "projection.enabled"   = "true"
    "projection.dt.type"   = "date"
    "projection.dt.format" = "yyyy-MM-dd"
    "projection.dt.range"  = "2024-01-01,NOW"
  }
  archive_columns = {
    topic = "string", partition = "int", offset = "bigint", timestamp_ms = "bigint",
    relay_id = "string"
  }
  glue_tables = {
    archive_prices = {
      prefix     = "archive/topic=${var.price_topic}/"
      template   = "dt=$${dt}/hour=$${hour}/minute=$${minute}/"
      partitions = ["dt", "hour", "minute"]
      format     = "parquet"
      columns = merge(local.archive_columns, {
        market_id = "string", token_id = "string", outcome = "string", question = "string",
        price = "decimal(24,12)", ts = "string"
      })
    }
    archive_feeds = {
      prefix     = "archive/topic=${var.rss_topic}/"
      template   = "dt=$${dt}/hour=$${hour}/minute=$${minute}/"
      partitions = ["dt", "hour", "minute"]
      format     = "parquet"
      columns = merge(local.archive_columns, {
        source = "string", guid = "string", fetched_hour = "string", counted = "boolean"
      })
    }
    prices_hour = {
      prefix     = "views/prices_hour/"
      template   = "dt=$${dt}/hour=$${hour}/"
      partitions = ["dt", "hour"]
      format     = "json"
      columns    = local.price_view_columns
    }
    feeds_hour = {
      prefix     = "views/feeds_hour/"
      template   = "dt=$${dt}/hour=$${hour}/"
      partitions = ["dt", "hour"]
      format     = "json"
      columns    = local.feed_view_columns
    }
    prices_day = {
      prefix     = "views/prices_day/"
      template   = "dt=$${dt}/"
      partitions = ["dt"]
      format     = "json"
      columns    = local.price_view_columns
    }
    feeds_day = {
      prefix     = "views/feeds_day/"
      template   = "dt=$${dt}/"
      partitions = ["dt"]
      format     = "json"
      columns    = local.feed_view_columns
    }
  }
}

resource "aws_glue_catalog_table" "views" {
  for_each      = local.glue_tables
  name          = each.key
  database_name = aws_glue_catalog_database.views.name
  table_type    = "EXTERNAL_TABLE"
  parameters = merge(
    local.day_projection,
    contains(each.value.partitions, "hour") ? local.hour_projection : {},
    contains(each.value.partitions, "minute") ? local.minute_projection : {},
    { "storage.location.template" = "s3://${local.bucket}/${each.value.prefix}${each.value.template}" },
  )
  dynamic "partition_keys" {
    for_each = each.value.partitions
    content {
      name = partition_keys.value
      type = "string"
    }
  }
  storage_descriptor {
    location      = "s3://${local.bucket}/${each.value.prefix}"
    input_format  = local.formats[each.value.format].input
    output_format = local.formats[each.value.format].output
    ser_de_info {
      serialization_library = local.formats[each.value.format].serde
    }
    dynamic "columns" {
      for_each = each.value.columns
      content {
        name = columns.key
        type = columns.value
      }
    }
  }
}

output "table" {
  value = aws_dynamodb_table.views.name
}

output "bucket" {
  value = aws_s3_bucket.views.bucket
}

output "serve_function_arn" {
  value = aws_lambda_function.views["serve"].arn
}
