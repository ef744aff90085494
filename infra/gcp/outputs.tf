output "function_uris" {
  value = { for name, fn in google_cloudfunctions2_function.this : name => fn.service_config[0].uri }
}

output "service_account_email" {
  value = google_service_account.function.email
}

output "database_user" {
  description = "The functions' Cloud SQL IAM user; GRANT it what it needs on your tables."
  value       = local.db_user
}

output "instance_connection_name" {
  value = local.connection_name
}

output "socket_setup_commands" {
  description = "connection = socket: give each function's Cloud Run service the Cloud SQL connection (google_cloudfunctions2_function has no argument for it); run after each deploy."
  value = var.connection == "socket" ? [
    for name, fn in google_cloudfunctions2_function.this :
    "gcloud run services update ${name} --project ${var.project} --region ${var.region} --add-cloudsql-instances ${local.connection_name}"
  ] : []
}
