# lambdapool on Google Cloud: Cloud Run functions (2nd gen) with Cloud SQL IAM database login,
# whose max_instance_count x max_instance_request_concurrency x connections per instance (with
# surge headroom) fits the database's max_connections. The numbers come from
# `lambdapool plan --platform gcp --format tfvars` (docs/gcp.md).

locals {
  create_database = var.database_instance == null
  instance_name   = local.create_database ? google_sql_database_instance.this[0].name : var.database_instance
  connection_name = local.create_database ? google_sql_database_instance.this[0].connection_name : data.google_sql_database_instance.existing[0].connection_name
  private_ip      = local.create_database ? google_sql_database_instance.this[0].private_ip_address : data.google_sql_database_instance.existing[0].private_ip_address
  # A Cloud SQL IAM user for a service account is its email less ".gserviceaccount.com" (PostgreSQL).
  db_user         = trimsuffix(google_service_account.function.email, ".gserviceaccount.com")
  enterprise_plus = startswith(var.database_tier, "db-perf-optimized-")
  direct_vpc      = var.connection == "private-ip" && var.vpc_connector == null
  # An IAM login carries an access token as its password: TLS over the private IP; the socket is
  # a local Unix socket whose far side (Cloud Run's built-in connector) encrypts.
  host = var.connection == "socket" ? "/cloudsql/${local.connection_name}" : local.private_ip
  tls  = var.connection == "socket" ? "" : " sslmode=require"
  # Managed Connection Pooling listens on 6432; Cloud SQL itself on 5432.
  port = { "cloud-sql" = 5432, "cloud-sql-pooler" = 6432 }
}

data "google_sql_database_instance" "existing" {
  count   = local.create_database ? 0 : 1
  name    = var.database_instance
  project = var.project
}

# --- the database --------------------------------------------------------------------------------

resource "google_sql_database_instance" "this" {
  count               = local.create_database ? 1 : 0
  name                = var.name
  project             = var.project
  region              = var.region
  database_version    = var.database_version
  deletion_protection = true

  settings {
    tier    = var.database_tier
    edition = local.enterprise_plus ? "ENTERPRISE_PLUS" : "ENTERPRISE"

    database_flags {
      name  = "cloudsql.iam_authentication" # IAM database login (the functions' service account)
      value = "on"
    }

    ip_configuration {
      ipv4_enabled    = var.connection == "socket" # the socket reaches a public-IP instance; private-ip needs none
      private_network = var.network
      ssl_mode        = "ENCRYPTED_ONLY"
    }

    dynamic "connection_pool_config" { # Managed Connection Pooling (Enterprise Plus)
      for_each = var.pooler == "cloud-sql-pooler" ? [1] : []
      content {
        connection_pooling_enabled = true
        flags {
          name  = "max_pool_size"
          value = tostring(var.max_pool_size)
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = var.pooler != "cloud-sql-pooler" || (local.enterprise_plus && var.max_pool_size != null)
      error_message = "cloud-sql-pooler needs an Enterprise Plus database_tier (db-perf-optimized-N-*) and max_pool_size from lambdapool plan --pooler cloud-sql-pooler."
    }
    precondition {
      condition     = var.connection == "socket" || var.network != null
      error_message = "connection = private-ip needs network (a VPC with private services access)."
    }
  }
}

resource "google_sql_database" "this" {
  count    = local.create_database ? 1 : 0
  name     = var.db_name
  instance = local.instance_name
  project  = var.project
}

# --- identity: a service account that may connect and log in, and nothing else ------------------

resource "google_service_account" "function" {
  project      = var.project
  account_id   = "${var.name}-fn"
  display_name = "lambdapool functions of ${var.name}"
}

resource "google_project_iam_member" "function" {
  for_each = toset(["roles/cloudsql.client", "roles/cloudsql.instanceUser"])
  project  = var.project
  role     = each.value
  member   = "serviceAccount:${google_service_account.function.email}"
}

resource "google_sql_user" "function" {
  project  = var.project
  instance = local.instance_name
  name     = local.db_user
  type     = "CLOUD_IAM_SERVICE_ACCOUNT"
}

# --- the functions ------------------------------------------------------------------------------

resource "google_cloudfunctions2_function" "this" {
  for_each = var.functions
  name     = each.key
  project  = var.project
  location = var.region

  build_config {
    runtime     = var.runtime
    entry_point = each.value.entry_point
    source {
      storage_source {
        bucket = var.source_bucket
        object = var.source_object
      }
    }
  }

  service_config {
    max_instance_count               = each.value.max_instance_count
    max_instance_request_concurrency = each.value.max_instance_request_concurrency
    available_cpu                    = each.value.available_cpu
    available_memory                 = var.available_memory
    timeout_seconds                  = var.timeout
    service_account_email            = google_service_account.function.email
    vpc_connector                    = var.connection == "private-ip" ? var.vpc_connector : null
    vpc_connector_egress_settings    = var.connection == "private-ip" && var.vpc_connector != null ? "PRIVATE_RANGES_ONLY" : null
    direct_vpc_egress                = local.direct_vpc ? "VPC_EGRESS_PRIVATE_RANGES_ONLY" : null

    dynamic "direct_vpc_network_interface" {
      for_each = local.direct_vpc ? [1] : []
      content {
        network    = var.network
        subnetwork = var.subnetwork
      }
    }

    environment_variables = {
      LAMBDAPOOL_POOLER           = coalesce(each.value.pooler, var.pooler)
      LAMBDAPOOL_IAM_AUTH         = "true"
      LAMBDAPOOL_DRIVER           = var.driver
      LAMBDAPOOL_MAX_PER_INSTANCE = tostring(each.value.max_per_instance)
      # No password: the SDK logs in with the service account's access token from the metadata server.
      LAMBDAPOOL_DSN = "host=${local.host} port=${local.port[coalesce(each.value.pooler, var.pooler)]} dbname=${var.db_name} user=${local.db_user}${local.tls}"
    }
  }

  lifecycle {
    precondition {
      condition     = coalesce(each.value.pooler, var.pooler) != "cloud-sql-pooler" || var.connection == "private-ip"
      error_message = "cloud-sql-pooler is reached at the instance's private IP, port 6432: set connection = private-ip."
    }
    precondition {
      condition     = var.connection == "socket" || var.vpc_connector != null || (var.network != null && var.subnetwork != null)
      error_message = "connection = private-ip needs network and subnetwork (direct VPC egress) or vpc_connector."
    }
  }

  depends_on = [google_project_iam_member.function, google_sql_user.function]
}
