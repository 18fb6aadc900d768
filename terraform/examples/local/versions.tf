terraform {
  required_version = ">= 1.6.0"

  required_providers {
    consul = {
      source  = "hashicorp/consul"
      version = ">= 2.20.0, < 3.0.0"
    }
    nomad = {
      source  = "hashicorp/nomad"
      version = ">= 2.3.0, < 3.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0"
    }
  }
}
