output "consul_policy" {
  value = module.tagbridge.consul_policy
}

output "nomad_policy" {
  value = module.tagbridge.nomad_policy
}

output "consul_token_accessor_id" {
  value = module.tagbridge.consul_token_accessor_id
}

output "nomad_token_accessor_id" {
  value = module.tagbridge.nomad_token_accessor_id
}

output "webhook_urls" {
  value     = module.tagbridge.webhook_urls
  sensitive = true
}

output "signing_secrets" {
  value     = module.tagbridge.signing_secrets
  sensitive = true
}
