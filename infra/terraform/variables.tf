# The numbers (max_connections_percent, max_idle_connections_percent, functions, alarm
# thresholds) come from `lambdapool plan --format tfvars`; the rest describes your network,
# code and database.

variable "name" {
  description = "Name of the RDS Proxy and prefix of the other resources."
  type        = string
}

variable "vpc_id" {
  type = string
}

variable "subnet_ids" {
  description = "Private subnets (two AZs at least) for the functions, the proxy and a new database."
  type        = list(string)
}

variable "code_s3_bucket" {
  description = "Bucket of the deployment package (your handlers and lambdapool)."
  type        = string
}

variable "code_s3_key" {
  type = string
}

variable "runtime" {
  description = "Lambda's Python runtime; build the zip for it: lambdapool package --runtime."
  type        = string
  default     = "python3.12"
  validation {
    condition     = contains(["python3.12", "python3.13", "python3.14"], var.runtime)
    error_message = "runtime must be python3.12, python3.13 or python3.14 (Lambda retired python3.11 and older with Amazon Linux 2)."
  }
}

variable "architecture" {
  description = "The functions' instruction set (and their capacity providers'); build the zip for it: lambdapool package --arch. x86_64 is Lambda's default, so functions made before this variable keep the zip they were built for; arm64 (Graviton) is cheaper."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.architecture)
    error_message = "architecture must be x86_64 or arm64."
  }
}

variable "timeout" {
  type    = number
  default = 30
}

variable "memory_size" {
  type    = number
  default = 512
}

variable "driver" {
  type    = string
  default = "psycopg"
  validation {
    condition     = contains(["psycopg", "psycopg-async", "asyncpg"], var.driver)
    error_message = "driver must be psycopg, psycopg-async or asyncpg."
  }
}

variable "db_user" {
  description = "Database user the functions connect as (the master user of a new database)."
  type        = string
  default     = "app"
}

variable "db_name" {
  type    = string
  default = "app"
}

variable "auth_mode" {
  description = "iam: functions sign IAM tokens (rds-db:connect on the proxy); secret: they read the password from Secrets Manager."
  type        = string
  default     = "iam"
  validation {
    condition     = contains(["iam", "secret"], var.auth_mode)
    error_message = "auth_mode must be iam or secret."
  }
}

variable "find_proxy_by" {
  description = "endpoint: functions get the proxy's hostname in LAMBDAPOOL_DSN and call no AWS API to find it (no rds:DescribeDBProxies, NAT gateway or RDS VPC endpoint); name: LAMBDAPOOL_PROXY_NAME, looked up once per instance."
  type        = string
  default     = "endpoint"
  validation {
    condition     = contains(["endpoint", "name"], var.find_proxy_by)
    error_message = "find_proxy_by must be endpoint or name."
  }
}

variable "proxy_auth_scheme" {
  description = "How the proxy logs in to the database. SECRETS: with the database secret. IAM_AUTH: end-to-end IAM (default_auth_scheme), no secret; needs auth_mode = iam and GRANT rds_iam TO db_user."
  type        = string
  default     = "SECRETS"
  validation {
    condition     = contains(["SECRETS", "IAM_AUTH"], var.proxy_auth_scheme)
    error_message = "proxy_auth_scheme must be SECRETS or IAM_AUTH."
  }
}

variable "max_connections_percent" {
  description = "From the plan: share of max_connections the proxy may open."
  type        = number
  validation {
    condition     = var.max_connections_percent >= 1 && var.max_connections_percent <= 100
    error_message = "max_connections_percent must be between 1 and 100 (lambdapool plan computes it)."
  }
}

variable "max_idle_connections_percent" {
  description = "From the plan: share of max_connections the proxy keeps open while idle."
  type        = number
  validation {
    condition     = var.max_idle_connections_percent >= 0 && var.max_idle_connections_percent <= 100
    error_message = "max_idle_connections_percent must be between 0 and 100."
  }
}

variable "connection_borrow_timeout" {
  description = "Seconds a client waits for a backend; keep it well under the function timeout."
  type        = number
  default     = 10
}

variable "functions" {
  description = <<-EOT
    From the plan: function name => reserved concurrency and connections per process. With
    managed_instances (a NAME=ENVSxCONNSxPROCS plan) the function runs on Lambda Managed
    Instances: reserved_concurrency is then its execution environments (its own capacity
    provider gets max_vcpu_count = environments x vCPUs per environment) and
    per_execution_environment_max_concurrency its processes per environment.
  EOT
  type = map(object({
    reserved_concurrency = number
    max_per_instance     = optional(number, 1)
    handler              = optional(string, "app.handler")
    managed_instances = optional(object({
      per_execution_environment_max_concurrency = number
      memory_gib_per_vcpu                       = optional(number, 2)
    }))
  }))
}

variable "capacity_provider_operator_role_arn" {
  description = "Lambda Managed Instances: the operator role (AWSLambdaManagedEC2ResourceOperator); null = create one."
  type        = string
  default     = null
}

variable "proxy_connections_alarm_threshold" {
  description = "From the plan (the proxy's cap): alarm when the proxy holds this many backends."
  type        = number
}

variable "database_connections_alarm_threshold" {
  description = "From the plan (the usable slots): alarm when the database holds this many backends."
  type        = number
}

variable "pinned_connections_alarm_threshold" {
  type    = number
  default = 5
}

variable "borrow_latency_alarm_microseconds" {
  type    = number
  default = 100000
}

variable "alarm_topic_arn" {
  description = "SNS topic notified by the alarms (optional)."
  type        = string
  default     = null
}

variable "existing_db_instance_id" {
  description = "Null to create a new database; else the identifier of an existing RDS PostgreSQL instance."
  type        = string
  default     = null
}

variable "existing_db_security_group_id" {
  description = "With an existing database, its security group (the module lets the proxy in)."
  type        = string
  default     = null
}

variable "db_secret_arn" {
  description = "Secret with db_user's username and password; required with an existing database."
  type        = string
  default     = null
}

variable "existing_db_resource_id" {
  description = "With an existing database and proxy_auth_scheme = IAM_AUTH: its resource id (db-...), which the proxy's rds-db:connect names."
  type        = string
  default     = null
}

variable "db_instance_class" {
  description = "Class of a new database (plan with --instance-class of the same value)."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_allocated_storage" {
  type    = number
  default = 20
}
