# lambdapool: functions behind an RDS Proxy whose connection cap fits the database's
# max_connections. The numbers come from `lambdapool plan --format tfvars` (docs/infra.md).

locals {
  create_database = var.existing_db_instance_id == null
  db_instance_id  = local.create_database ? aws_db_instance.this[0].identifier : var.existing_db_instance_id
  db_secret_arn   = local.create_database ? aws_db_instance.this[0].master_user_secret[0].secret_arn : var.db_secret_arn
  # arn:aws:rds:REGION:ACCOUNT:db-proxy:prx-... -> prx-..., the resource id rds-db:connect names
  proxy_resource_id = split(":", aws_db_proxy.this.arn)[6]
  # ... and arn:aws:rds-db:REGION:ACCOUNT:dbuser:prx-.../USER, what it may connect as
  proxy_user_arn = "${replace(replace(aws_db_proxy.this.arn, ":rds:", ":rds-db:"), ":db-proxy:", ":dbuser:")}/${var.db_user}"
  alarm_actions     = var.alarm_topic_arn == null ? [] : [var.alarm_topic_arn]
  end_to_end_iam    = var.proxy_auth_scheme == "IAM_AUTH"
  # arn:aws:rds-db:REGION:ACCOUNT:dbuser:db-.../USER: what an end-to-end IAM proxy logs in as
  db_resource_id = local.create_database ? aws_db_instance.this[0].resource_id : var.existing_db_resource_id
  db_user_arn = local.end_to_end_iam ? "arn:${data.aws_partition.current.partition}:rds-db:${data.aws_region.current.region}:${data.aws_caller_identity.current.account_id}:dbuser:${local.db_resource_id}/${var.db_user}" : null
}

data "aws_partition" "current" {}
data "aws_region" "current" {}
data "aws_caller_identity" "current" {}

# --- network ----------------------------------------------------------------------------------

resource "aws_security_group" "function" {
  name_prefix = "${var.name}-function-"
  description = "lambdapool functions of ${var.name}"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "function_all" {
  security_group_id = aws_security_group.function.id
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  description       = "the proxy; AWS APIs only for auth_mode = secret or find_proxy_by = name"
}

resource "aws_security_group" "proxy" {
  name_prefix = "${var.name}-proxy-"
  description = "lambdapool RDS Proxy of ${var.name}: PostgreSQL from the functions"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "proxy_from_functions" {
  security_group_id            = aws_security_group.proxy.id
  referenced_security_group_id = aws_security_group.function.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "lambdapool functions"
}

resource "aws_vpc_security_group_egress_rule" "proxy_to_database" {
  security_group_id = aws_security_group.proxy.id
  ip_protocol       = "tcp"
  from_port         = 5432
  to_port           = 5432
  cidr_ipv4         = "0.0.0.0/0"
  description       = "the database"
}

resource "aws_security_group" "database" {
  count       = local.create_database ? 1 : 0
  name_prefix = "${var.name}-database-"
  description = "lambdapool database of ${var.name}: PostgreSQL from the proxy only"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_ingress_rule" "database_from_proxy" {
  count                        = local.create_database || var.existing_db_security_group_id != null ? 1 : 0
  security_group_id            = local.create_database ? aws_security_group.database[0].id : var.existing_db_security_group_id
  referenced_security_group_id = aws_security_group.proxy.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "lambdapool RDS Proxy"
}

# --- a new database (when existing_db_instance_id is null) -----------------------------------

resource "aws_db_subnet_group" "this" {
  count       = local.create_database ? 1 : 0
  name_prefix = "${var.name}-"
  subnet_ids  = var.subnet_ids
}

resource "aws_db_instance" "this" {
  count                       = local.create_database ? 1 : 0
  identifier_prefix           = "${var.name}-"
  engine                      = "postgres"
  instance_class              = var.db_instance_class
  allocated_storage           = var.db_allocated_storage
  storage_encrypted           = true
  db_name                     = var.db_name
  username                    = var.db_user
  manage_master_user_password = true
  # end-to-end IAM: the proxy logs in with rds-db:connect (then GRANT rds_iam TO the user)
  iam_database_authentication_enabled = local.end_to_end_iam
  publicly_accessible         = false
  db_subnet_group_name        = aws_db_subnet_group.this[0].name
  vpc_security_group_ids      = [aws_security_group.database[0].id]
  skip_final_snapshot         = false
  final_snapshot_identifier   = "${var.name}-final"
}

# --- the proxy ---------------------------------------------------------------------------------

data "aws_iam_policy_document" "assume" {
  for_each = { proxy = "rds.amazonaws.com", function = "lambda.amazonaws.com" }
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = [each.value]
    }
  }
}

resource "aws_iam_role" "proxy" {
  name_prefix        = "${var.name}-proxy-"
  assume_role_policy = data.aws_iam_policy_document.assume["proxy"].json
}

resource "aws_iam_role_policy" "proxy_secret" {
  count = local.end_to_end_iam ? 0 : 1
  name  = "read-database-secret"
  role  = aws_iam_role.proxy.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "secretsmanager:GetSecretValue", Resource = local.db_secret_arn }]
  })
}

resource "aws_iam_role_policy" "proxy_connect" {
  count = local.end_to_end_iam ? 1 : 0
  name  = "connect-to-the-database"
  role  = aws_iam_role.proxy.id
  policy = jsonencode({
    Version   = "2012-10-17"
    Statement = [{ Effect = "Allow", Action = "rds-db:connect", Resource = local.db_user_arn }]
  })
}

resource "aws_db_proxy" "this" {
  name                   = var.name
  engine_family          = "POSTGRESQL"
  require_tls            = true
  idle_client_timeout    = 1800
  role_arn               = aws_iam_role.proxy.arn
  vpc_subnet_ids         = var.subnet_ids
  vpc_security_group_ids = [aws_security_group.proxy.id]
  # End-to-end IAM: clients and the proxy's own logins use IAM; no secret is involved.
  default_auth_scheme = local.end_to_end_iam ? "IAM_AUTH" : null

  dynamic "auth" {
    for_each = local.end_to_end_iam ? [] : [1]
    content {
      auth_scheme = "SECRETS"
      secret_arn  = local.db_secret_arn
      iam_auth    = var.auth_mode == "iam" ? "REQUIRED" : "DISABLED"

      client_password_auth_type = "POSTGRES_SCRAM_SHA_256"
    }
  }

  lifecycle {
    precondition {
      condition     = local.create_database || local.end_to_end_iam || var.db_secret_arn != null
      error_message = "An existing database needs db_secret_arn (the proxy logs in with it)."
    }
    precondition {
      condition     = local.create_database || !local.end_to_end_iam || var.existing_db_resource_id != null
      error_message = "proxy_auth_scheme = IAM_AUTH with an existing database needs existing_db_resource_id (db-...)."
    }
    precondition {
      condition     = !local.end_to_end_iam || var.auth_mode == "iam"
      error_message = "proxy_auth_scheme = IAM_AUTH has no secret for the functions to read: use auth_mode = iam."
    }
  }
}

resource "aws_db_proxy_default_target_group" "this" {
  db_proxy_name = aws_db_proxy.this.name

  connection_pool_config {
    max_connections_percent      = var.max_connections_percent
    max_idle_connections_percent = var.max_idle_connections_percent
    connection_borrow_timeout    = var.connection_borrow_timeout
  }
}

resource "aws_db_proxy_target" "this" {
  db_proxy_name          = aws_db_proxy.this.name
  target_group_name      = aws_db_proxy_default_target_group.this.name
  db_instance_identifier = local.db_instance_id
}

# --- the functions -----------------------------------------------------------------------------

resource "aws_iam_role" "function" {
  name_prefix        = "${var.name}-function-"
  assume_role_policy = data.aws_iam_policy_document.assume["function"].json
}

resource "aws_iam_role_policy_attachment" "function_vpc" {
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"
}

data "aws_iam_policy_document" "function" {
  # Only to look the proxy up by name: given its endpoint, the function calls no AWS API.
  dynamic "statement" {
    for_each = var.find_proxy_by == "name" ? [1] : []
    content {
      sid       = "FindTheProxy"
      actions   = ["rds:DescribeDBProxies"]
      resources = [aws_db_proxy.this.arn]
    }
  }
  dynamic "statement" {
    for_each = var.auth_mode == "iam" ? [1] : []
    content {
      sid       = "ConnectThroughTheProxy"
      actions   = ["rds-db:connect"]
      resources = [local.proxy_user_arn]
    }
  }
  dynamic "statement" {
    for_each = var.auth_mode == "secret" ? [1] : []
    content {
      sid       = "ReadTheDatabaseSecret"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = [local.db_secret_arn]
    }
  }
}

resource "aws_iam_role_policy" "function" {
  name   = "lambdapool"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

# --- Lambda Managed Instances (functions with managed_instances) ------------------------------
# Each such function gets its own capacity provider, so that its vCPU cap bounds its own
# environments: environments x vCPUs per environment (memory_size / 1024 / memory_gib_per_vcpu).
# Its fan-out is then environments x per_execution_environment_max_concurrency x max_per_instance.

locals {
  managed = { for name, fn in var.functions : name => fn if fn.managed_instances != null }
}

resource "aws_iam_role" "capacity_provider" {
  count              = length(local.managed) > 0 && var.capacity_provider_operator_role_arn == null ? 1 : 0
  name_prefix        = "${var.name}-lmi-operator-"
  assume_role_policy = data.aws_iam_policy_document.assume["function"].json
}

resource "aws_iam_role_policy_attachment" "capacity_provider" {
  count      = length(aws_iam_role.capacity_provider)
  role       = aws_iam_role.capacity_provider[0].name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AWSLambdaManagedEC2ResourceOperator"
}

resource "aws_lambda_capacity_provider" "this" {
  for_each = local.managed
  name     = "${var.name}-${each.key}"

  vpc_config {
    subnet_ids         = var.subnet_ids
    security_group_ids = [aws_security_group.function.id]
  }

  permissions_config {
    capacity_provider_operator_role_arn = coalesce(var.capacity_provider_operator_role_arn,
    one(aws_iam_role.capacity_provider[*].arn))
  }

  instance_requirements { # the functions' architecture: their zip's wheels are built for it
    architectures = [var.architecture]
  }

  capacity_provider_scaling_config {
    scaling_mode   = "Auto"
    max_vcpu_count = max(2, ceil(each.value.reserved_concurrency * var.memory_size / 1024 / each.value.managed_instances.memory_gib_per_vcpu))
  }
}

resource "aws_lambda_function" "this" {
  for_each      = var.functions
  function_name = each.key
  role          = aws_iam_role.function.arn
  s3_bucket     = var.code_s3_bucket
  s3_key        = var.code_s3_key
  handler       = each.value.handler
  runtime       = var.runtime
  architectures = [var.architecture]
  timeout       = var.timeout
  memory_size   = var.memory_size
  # On Managed Instances the environments are capped by the capacity provider instead.
  reserved_concurrent_executions = each.value.managed_instances == null ? each.value.reserved_concurrency : null
  publish                        = each.value.managed_instances != null # environments run published versions

  dynamic "vpc_config" { # a Managed Instances function takes its network from its capacity provider
    for_each = each.value.managed_instances == null ? [1] : []
    content {
      subnet_ids         = var.subnet_ids
      security_group_ids = [aws_security_group.function.id]
    }
  }

  dynamic "capacity_provider_config" {
    for_each = each.value.managed_instances == null ? [] : [each.value.managed_instances]
    content {
      lambda_managed_instances_capacity_provider_config {
        capacity_provider_arn                     = aws_lambda_capacity_provider.this[each.key].arn
        per_execution_environment_max_concurrency = capacity_provider_config.value.per_execution_environment_max_concurrency
        execution_environment_memory_gib_per_vcpu = capacity_provider_config.value.memory_gib_per_vcpu
      }
    }
  }

  environment {
    variables = merge(
      {
        LAMBDAPOOL_POOLER           = "rds-proxy"
        LAMBDAPOOL_DRIVER           = var.driver
        LAMBDAPOOL_USER             = var.db_user
        LAMBDAPOOL_DBNAME           = var.db_name
        LAMBDAPOOL_MAX_PER_INSTANCE = tostring(each.value.max_per_instance)
        LAMBDAPOOL_IAM_AUTH         = var.auth_mode == "iam" ? "true" : "false"
      },
      var.auth_mode == "secret" ? { LAMBDAPOOL_SECRET_ARN = local.db_secret_arn } : {},
      # the proxy's hostname itself (no control-plane call at cold start), or its name to look up
      var.find_proxy_by == "endpoint" ? { LAMBDAPOOL_DSN = "postgresql://${aws_db_proxy.this.endpoint}:5432" } : {},
      var.find_proxy_by == "name" ? { LAMBDAPOOL_PROXY_NAME = aws_db_proxy.this.name } : {},
    )
  }
}

# --- alarms ------------------------------------------------------------------------------------

locals {
  proxy_dimensions = { ProxyName = aws_db_proxy.this.name }
  alarms = {
    proxy-connections = {
      description = "The proxy holds its whole share of the database's connections; clients wait to borrow."
      metric      = "DatabaseConnections"
      dimensions  = local.proxy_dimensions
      statistic   = "Maximum"
      threshold   = var.proxy_connections_alarm_threshold
    }
    pinned-connections = {
      description = "Connections stay pinned to client sessions; the proxy cannot share them."
      metric      = "DatabaseConnectionsCurrentlySessionPinned"
      dimensions  = local.proxy_dimensions
      statistic   = "Maximum"
      threshold   = var.pinned_connections_alarm_threshold
    }
    borrow-latency = {
      description = "Borrowing a backend from the proxy is slow; the cap is too small for the traffic."
      metric      = "DatabaseConnectionsBorrowLatency"
      dimensions  = local.proxy_dimensions
      statistic   = "Average"
      threshold   = var.borrow_latency_alarm_microseconds
    }
    database-connections = {
      description = "The database holds as many backends as the budget allows; the next client may be refused."
      metric      = "DatabaseConnections"
      dimensions  = { DBInstanceIdentifier = local.db_instance_id }
      statistic   = "Maximum"
      threshold   = var.database_connections_alarm_threshold
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "this" {
  for_each            = local.alarms
  alarm_name          = "${var.name}-${each.key}"
  alarm_description   = each.value.description
  namespace           = "AWS/RDS"
  metric_name         = each.value.metric
  dimensions          = each.value.dimensions
  statistic           = each.value.statistic
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 3
  threshold           = each.value.threshold
  comparison_operator = "GreaterThanOrEqualToThreshold"
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
}
