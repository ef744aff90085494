output "proxy_name" {
  value = aws_db_proxy.this.name
}

output "proxy_endpoint" {
  value = aws_db_proxy.this.endpoint
}

output "proxy_resource_id" {
  value = local.proxy_resource_id
}

output "function_arns" {
  value = { for name, fn in aws_lambda_function.this : name => fn.arn }
}
