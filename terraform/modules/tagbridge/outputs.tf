output "consul_policy" {
  description = "Rules of the Consul ACL policy (for review)."
  value       = local.consul_policy
}

output "nomad_policy" {
  description = "Rules of the Nomad ACL policy (for review); empty when no service has a job."
  value       = local.nomad_policy
}

output "consul_token_accessor_id" {
  description = "Accessor ID of tagbridge's Consul token (its secret is only in the Nomad Variable)."
  value       = consul_acl_token.tagbridge.id
}

output "nomad_token_accessor_id" {
  description = "Accessor ID of tagbridge's Nomad token; null when no service has a job."
  value       = one(nomad_acl_token.tagbridge[*].accessor_id)
}

output "webhook_urls" {
  description = "Webhook URL of each service, to give its registry: <webhook_base_url>/hooks/<secret>."
  value       = { for name, secret in local.url_secret : name => "${var.webhook_base_url}/hooks/${secret}" }
  sensitive   = true
}

output "signing_secrets" {
  description = "Signing secret of each signed service, to give its registry (GitHub webhook secret, X-Hub-Signature-256 key, Harbor Authorization header, Artifactory secret)."
  value       = local.signing_secret
  sensitive   = true
}

output "job_variable_path" {
  description = "Nomad Variable the job reads (in job_namespace)."
  value       = local.job_variable_path
}

output "tagbridge_hcl" {
  description = "The rendered tagbridge.hcl (holds only hashes and file paths, but derives from the secrets)."
  value       = local.config_text
  sensitive   = true
}

output "job_id" {
  description = "ID of tagbridge's Nomad job."
  value       = nomad_job.tagbridge.id
}
