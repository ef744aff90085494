terraform {
  required_version = ">= 1.3" # optional() object attributes
  required_providers {
    google = {
      source = "hashicorp/google"
      # google_cloudfunctions2_function's service_config.max_instance_request_concurrency,
      # available_cpu, direct_vpc_network_interface / direct_vpc_egress, and
      # google_sql_database_instance's settings.connection_pool_config (Managed Connection
      # Pooling) are all in the 6.x provider docs; the release that added each was not checked
      version = ">= 6.0"
    }
  }
}
