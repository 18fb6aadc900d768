# tagbridge on Consul + Nomad: two least-privilege tokens, the Nomad
# Variable its job reads, and the job itself. See terraform/README.md.

# ---------------------------------------------------------------- secrets

# 256-bit URL secrets (hex, URL-safe). Rotate one with
#   tofu apply -replace='module.tagbridge.random_bytes.url_secret["web"]'
# and give the registry the new webhook URL.
resource "random_bytes" "url_secret" {
  for_each = local.services_by_name
  length   = 32
}

resource "random_bytes" "signing_secret" {
  for_each = toset(local.signed_names)
  length   = 32
}

# ---------------------------------------------------------------- Consul

resource "consul_acl_policy" "tagbridge" {
  name        = var.job_name
  description = "tagbridge: write on its services' tag keys and under ${var.state_prefix}/, session write for the leader lock"
  rules       = local.consul_policy

  lifecycle {
    precondition {
      condition = alltrue([for s in var.services :
        s.key != var.state_prefix && !startswith(s.key, "${var.state_prefix}/")
      ])
      error_message = "A service's key must not be inside state_prefix (${var.state_prefix}), which tagbridge owns."
    }
  }
}

resource "consul_acl_token" "tagbridge" {
  description = "tagbridge (${var.job_name}), managed by Terraform"
  policies    = [consul_acl_policy.tagbridge.name]
  local       = false
}

data "consul_acl_token_secret_id" "tagbridge" {
  accessor_id = consul_acl_token.tagbridge.id
}

# ---------------------------------------------------------------- Nomad

resource "nomad_acl_policy" "tagbridge" {
  count       = local.has_rollouts ? 1 : 0
  name        = var.job_name
  description = "tagbridge: list, read and submit its rollout jobs"
  rules_hcl   = local.nomad_policy
}

resource "nomad_acl_token" "tagbridge" {
  count    = local.has_rollouts ? 1 : 0
  name     = var.job_name
  type     = "client"
  policies = [nomad_acl_policy.tagbridge[0].name]
}

resource "nomad_variable" "tagbridge" {
  path      = local.job_variable_path
  namespace = var.job_namespace
  items     = local.job_variable_items
}

resource "nomad_job" "tagbridge" {
  jobspec = file(var.jobspec_path)

  hcl2 {
    vars = local.job_vars
  }

  # The job's templates block until the variable exists.
  depends_on = [nomad_variable.tagbridge]
}
