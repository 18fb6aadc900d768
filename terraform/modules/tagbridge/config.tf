# What tagbridge's own job reads: one Nomad Variable holding the rendered
# tagbridge.hcl, both tokens, the listener's certificate and key, and the
# signing secrets. This is the contract with nomad/tagbridge.nomad.hcl,
# kept in one place so the two are easy to align:
#
#   path   local.job_variable_path, in var.job_namespace. Nomad lets a job's
#          tasks read nomad/jobs/<job id> with their workload identity, so
#          the job needs no token of its own to read it.
#   items  local.job_variable_items: config, consul_token, nomad_token (only
#          when some service has a job), tls_crt, tls_key and
#          signing_<service> per signed service.
#   files  the job's templates write each secret item to the file named in
#          local.secret_files (tagbridge.hcl refers to those paths, as
#          ${NOMAD_SECRETS_DIR}/<file>, which the job's config template
#          replaces), and `config` to the file it passes to `tagbridge serve
#          --config`, with listen/admin_listen set from its own ports.
#   vars   local.job_vars: job_id, datacenters, count, driver,
#          signing_secrets (the signed service names), image and
#          artifact_url when set, then var.job_vars.
locals {
  job_variable_path = "nomad/jobs/${var.job_name}"

  services_by_name = { for s in var.services : s.name => s }

  # Whether a service's payloads are signed (signing_secret_file set).
  signed = {
    for s in var.services : s.name => coalesce(s.signed, contains(["github", "generic"], s.source))
  }
  signed_names = sort([for name, on in local.signed : name if on])

  has_rollouts = length([for s in var.services : s.name if s.job != null]) > 0

  # The task's secrets directory, as the literal text ${NOMAD_SECRETS_DIR}
  # (written $${ in a Terraform string): the job's config template replaces
  # it with the real directory, so the paths hold for docker and raw_exec.
  secrets_dir = "$${NOMAD_SECRETS_DIR}"

  secret_files = merge(
    {
      consul_token = "${local.secrets_dir}/consul.token"
      nomad_token  = "${local.secrets_dir}/nomad.token"
      tls_crt      = "${local.secrets_dir}/tls.crt"
      tls_key      = "${local.secrets_dir}/tls.key"
    },
    { for name in local.signed_names : "signing_${name}" => "${local.secrets_dir}/signing_${name}" },
  )

  # The URL secret of each service: given in var.url_secrets, else
  # generated. tagbridge only ever sees its sha256 (hex), like
  # `tagbridge secret` prints it.
  url_secret = {
    for name in keys(local.services_by_name) : name => lookup(var.url_secrets, name, random_bytes.url_secret[name].hex)
  }
  secret_sha256 = { for name, secret in local.url_secret : name => sha256(secret) }

  signing_secret = {
    for name in local.signed_names : name => lookup(var.signing_secrets, name, random_bytes.signing_secret[name].hex)
  }

  config_text = templatefile("${path.module}/tagbridge.hcl.tftpl", {
    variable_path     = local.job_variable_path
    listen            = var.listen
    admin_listen      = var.admin_listen
    state_prefix      = var.state_prefix
    files             = local.secret_files
    consul_address    = var.consul_address
    consul_datacenter = var.consul_datacenter
    nomad_address     = var.nomad_address
    nomad_region      = var.nomad_region
    has_rollouts      = local.has_rollouts
    services          = var.services
    signed            = local.signed
    secret_sha256     = local.secret_sha256
  })

  job_variable_items = merge(
    {
      config       = local.config_text
      consul_token = data.consul_acl_token_secret_id.tagbridge.secret_id
      tls_crt      = var.tls_cert_pem
      tls_key      = var.tls_key_pem
    },
    local.has_rollouts ? { nomad_token = nomad_acl_token.tagbridge[0].secret_id } : {},
    { for name in local.signed_names : "signing_${name}" => local.signing_secret[name] },
  )

  # Variables passed to the job file (nomad job run -var name=value); Nomad
  # refuses any the job file does not declare.
  job_vars = merge(
    {
      job_id          = var.job_name
      datacenters     = jsonencode(var.datacenters)
      count           = tostring(var.instances)
      driver          = var.driver
      signing_secrets = jsonencode(local.signed_names)
    },
    var.image == null ? {} : { image = var.image },
    var.artifact_url == null ? {} : { artifact_url = var.artifact_url },
    var.job_vars,
  )
}
