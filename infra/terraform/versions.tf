terraform {
  required_version = ">= 1.3" # optional() object attributes
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      # aws_vpc_security_group_ingress_rule, manage_master_user_password (5.30); aws_db_proxy's
      # default_auth_scheme (end-to-end IAM), seen in 6.21.0's schema (earlier 6.x not checked);
      # aws_lambda_capacity_provider and capacity_provider_config (Managed Instances) are in
      # 6.28.0's docs (the release that added them not checked)
      version = ">= 6.28"
    }
  }
}
