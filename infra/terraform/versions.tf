terraform {
  required_version = ">= 1.3" # optional() object attributes
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.30" # aws_vpc_security_group_ingress_rule, manage_master_user_password
    }
  }
}
