# tagbridge against local dev agents with ACLs on: Consul on 127.0.0.1:8500,
# Nomad on 127.0.0.1:4646 (raw_exec). terraform/README.md has the steps.
#
# The providers take their management tokens from the environment
# (CONSUL_HTTP_TOKEN, NOMAD_TOKEN), so no secret is written here.

provider "consul" {
  address = "http://127.0.0.1:8500"
}

provider "nomad" {
  address = "http://127.0.0.1:4646"
}

module "tagbridge" {
  source = "../../modules/tagbridge"

  services = [
    {
      # nomad/web-jobspec.nomad.hcl, run as job "web" in namespace default.
      name       = "web"
      source     = "dockerhub"
      repository = "acme/web"
      key        = "configs/web/IMAGE_TAG"
      job        = "web"
      namespace  = "default"
      strategy   = "jobspec"
      timeout    = "5m"
      tags = {
        include = "^release-[0-9]{14}$"
        order   = "numeric"
      }
    },
  ]

  state_prefix     = "tagbridge"
  webhook_base_url = "https://localhost:8443" # registries' view; see README.md
  consul_address   = "http://127.0.0.1:8500"
  nomad_address    = "http://127.0.0.1:4646"
  tls_cert_pem     = file("${path.module}/tls.crt")
  tls_key_pem      = file("${path.module}/tls.key")

  jobspec_path = "${path.module}/../../../nomad/tagbridge.nomad.hcl"
  datacenters  = ["dc1"]
  instances    = 1 # the job places replicas on distinct clients; a dev agent is one
  driver       = "raw_exec"
  job_vars = {
    # raw_exec runs this binary on the client (no artifact to download).
    binary = var.tagbridge_binary
  }
}

variable "tagbridge_binary" {
  description = "Absolute path of the tagbridge binary the dev agent runs (cargo build --release)."
  type        = string
  default     = "/usr/local/bin/tagbridge"
}
