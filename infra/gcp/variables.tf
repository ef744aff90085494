# The numbers (functions, pooler, max_pool_size, database_tier) come from
# `lambdapool plan --platform gcp --format tfvars`; the rest describes your project, network and code.

variable "project" {
  type = string
}

variable "region" {
  description = "Region of the functions (and of a new Cloud SQL instance)."
  type        = string
}

variable "name" {
  description = "Prefix of the resources: the Cloud SQL instance (when made here) and the service account (NAME-fn, 6-30 characters)."
  type        = string
}

variable "source_bucket" {
  description = "Cloud Storage bucket of the functions' source zip (main.py and a requirements.txt naming lambdapool)."
  type        = string
}

variable "source_object" {
  type = string
}

variable "runtime" {
  type    = string
  default = "python312"
}

variable "available_memory" {
  type    = string
  default = "512M"
}

variable "timeout" {
  description = "Seconds a request may run."
  type        = number
  default     = 60
}

variable "driver" {
  type    = string
  default = "psycopg"
  validation {
    condition     = contains(["psycopg", "psycopg-async", "asyncpg"], var.driver)
    error_message = "driver must be psycopg, psycopg-async or asyncpg."
  }
}

variable "db_name" {
  type    = string
  default = "app"
}

variable "database_instance" {
  description = "An existing Cloud SQL instance's name; null makes one here (database_tier, IAM authentication on)."
  type        = string
  default     = null
}

variable "database_tier" {
  description = "From the plan (--instance-class): the machine type of a new instance. db-perf-optimized-N-* is Enterprise Plus, which Managed Connection Pooling needs."
  type        = string
  default     = "db-custom-1-3840"
}

variable "database_version" {
  type    = string
  default = "POSTGRES_17"
}

variable "connection" {
  description = "private-ip: the functions reach the instance's private IP through direct VPC egress (subnetwork) or a Serverless VPC Access connector (vpc_connector), all in Terraform. socket: /cloudsql/PROJECT:REGION:INSTANCE, which needs the Cloud SQL connection set on each function's Cloud Run service (the socket_setup_commands output; google_cloudfunctions2_function has no argument for it)."
  type        = string
  default     = "private-ip"
  validation {
    condition     = contains(["private-ip", "socket"], var.connection)
    error_message = "connection must be private-ip or socket."
  }
}

variable "network" {
  description = "VPC network (id) with private services access to Cloud SQL: the new instance's private IP and the functions' direct VPC egress."
  type        = string
  default     = null
}

variable "subnetwork" {
  description = "Subnetwork for direct VPC egress (connection = private-ip without vpc_connector)."
  type        = string
  default     = null
}

variable "vpc_connector" {
  description = "A Serverless VPC Access connector instead of direct VPC egress."
  type        = string
  default     = null
}

variable "pooler" {
  description = "From the plan: cloud-sql (straight to Cloud SQL, port 5432) or cloud-sql-pooler (Managed Connection Pooling, port 6432)."
  type        = string
  default     = "cloud-sql"
  validation {
    condition     = contains(["cloud-sql", "cloud-sql-pooler"], var.pooler)
    error_message = "pooler must be cloud-sql or cloud-sql-pooler (lambdapool plan --platform gcp --pooler)."
  }
}

variable "max_pool_size" {
  description = "From the plan: Managed Connection Pooling's max_pool_size (server connections per pooler for the functions' database user)."
  type        = number
  default     = null
  validation {
    condition     = var.max_pool_size == null || coalesce(var.max_pool_size, 1) >= 1
    error_message = "max_pool_size must be at least 1 (lambdapool plan --pooler cloud-sql-pooler computes it)."
  }
}

variable "functions" {
  description = <<-EOT
    From the plan: function name => max_instance_count, max_instance_request_concurrency (1-1000;
    above 1 needs available_cpu of at least 1), connections per instance (LAMBDAPOOL_MAX_PER_INSTANCE,
    at most the concurrency), and optionally its own pooler (a NAME=...@cloud-sql function).
  EOT
  type = map(object({
    max_instance_count               = number
    max_instance_request_concurrency = optional(number, 1)
    max_per_instance                 = optional(number, 1)
    available_cpu                    = optional(string)
    pooler                           = optional(string)
    entry_point                      = optional(string, "handler")
  }))
  validation {
    condition     = alltrue([for f in values(var.functions) : f.max_instance_count >= 1 && f.max_instance_request_concurrency >= 1 && f.max_instance_request_concurrency <= 1000])
    error_message = "each function needs max_instance_count >= 1 and max_instance_request_concurrency between 1 and 1000."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.max_per_instance >= 1 && f.max_per_instance <= f.max_instance_request_concurrency])
    error_message = "max_per_instance must be between 1 and the function's max_instance_request_concurrency."
  }
  validation {
    condition     = alltrue([for f in values(var.functions) : f.max_instance_request_concurrency == 1 || tonumber(coalesce(f.available_cpu, "0")) >= 1])
    error_message = "max_instance_request_concurrency above 1 needs available_cpu of at least \"1\" (lambdapool plan sets it)."
  }
}
