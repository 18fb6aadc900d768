# tagbridge itself, as a Nomad service job (see nomad/README.md, section
# "Running tagbridge on Nomad").
#
# Everything tagbridge reads comes from ONE Nomad Variable, at the job's own
# path nomad/jobs/tagbridge (tasks of this job read it through their
# workload identity; no extra ACL policy is needed). Items:
#
#   config         the tagbridge.hcl text. listen/admin_listen come from
#                  this job's ports: lines setting them in the item are
#                  replaced by a comment. Files are named
#                  ${NOMAD_SECRETS_DIR}/<file> (replaced by the task's real
#                  secrets directory) or secrets/<file> (raw_exec: relative
#                  to the task directory) or /secrets/<file> (docker)
#   tls_crt        PEM certificate chain     -> secrets/tls.crt
#   tls_key        PEM private key           -> secrets/tls.key
#   consul_token   Consul ACL token          -> secrets/consul.token
#   nomad_token    Nomad ACL token           -> secrets/nomad.token
#   signing_<svc>  signing secret of service <svc> -> secrets/signing_<svc>,
#                  for each name listed in the job variable signing_secrets
#
# (With job_id set, the path is nomad/jobs/<job_id>.)
#
# Every file is rendered by a template with change_mode = "signal" and
# change_signal = "SIGHUP": tagbridge reloads its certificate on SIGHUP and
# re-reads its configuration (re-executing itself when it changed and is
# valid). Write the Nomad Variable before the job: its templates wait for it.

variable "driver" {
  type        = string
  default     = "docker"
  description = "Task driver: \"docker\" (the image) or \"raw_exec\" (a binary on the host, no container engine needed)."

  validation {
    condition     = contains(["docker", "raw_exec"], var.driver)
    error_message = "The driver variable must be \"docker\" or \"raw_exec\"."
  }
}

variable "job_id" {
  type        = string
  default     = "tagbridge"
  description = "Job ID (and name); its tasks read the Nomad Variable nomad/jobs/<job_id>."
}

variable "image" {
  type        = string
  default     = "tagbridge:0.1.0"
  description = "Container image (driver = \"docker\"), built from the repository's Dockerfile."
}

variable "binary" {
  type        = string
  default     = "/usr/local/bin/tagbridge"
  description = "Absolute path of the tagbridge binary on the client (driver = \"raw_exec\", artifact_url empty)."
}

variable "artifact_url" {
  type        = string
  default     = ""
  description = "driver = \"raw_exec\": an archive (tar.gz, zip) holding `tagbridge` at its root, downloaded into the task's local/ dir and run from there instead of `binary`. Empty: use `binary`."
}

variable "artifact_checksum" {
  type        = string
  default     = ""
  description = "Checksum of artifact_url, e.g. \"sha256:<hex>\" (recommended)."
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "count" {
  type        = number
  default     = 2
  description = "Replicas, each on a distinct client (distinct_hosts)."
}

variable "signing_secrets" {
  type        = list(string)
  default     = []
  description = "Service names whose Nomad Variable item signing_<name> is rendered to secrets/signing_<name>."
}

variable "secrets_uid" {
  type        = number
  default     = -1
  description = "Owner of the rendered files; -1 = the Nomad client's user (raw_exec as root). Docker: the image's user, 65532."
}

variable "secrets_gid" {
  type    = number
  default = -1
}

variable "min_healthy_time" {
  type    = string
  default = "10s"
}

variable "healthy_deadline" {
  type    = string
  default = "2m"
}

variable "progress_deadline" {
  type    = string
  default = "5m"
}

variable "cpu" {
  type    = number
  default = 200
}

variable "memory" {
  type    = number
  default = 128
}

locals {
  var_path = "nomad/jobs/${var.job_id}"
  docker   = var.driver == "docker"

  # In a container, listen on every interface of its own network namespace
  # (Nomad maps the host ports onto them); with raw_exec, on the address
  # Nomad allocated the port on, which is what the service advertises.
  https_ip = local.docker ? "0.0.0.0" : "{{ env \"NOMAD_IP_https\" }}"
  admin_ip = local.docker ? "0.0.0.0" : "{{ env \"NOMAD_IP_admin\" }}"

  # The docker image runs as 65532 (Dockerfile); 0600 files must be its own.
  file_uid = local.docker && var.secrets_uid < 0 ? 65532 : var.secrets_uid
  file_gid = local.docker && var.secrets_gid < 0 ? 65532 : var.secrets_gid

  # One file per Nomad Variable item (the config is rendered separately).
  secret_files = concat(
    [
      { file = "tls.crt", item = "tls_crt" },
      { file = "tls.key", item = "tls_key" },
      { file = "consul.token", item = "consul_token" },
      { file = "nomad.token", item = "nomad_token" },
    ],
    [for s in var.signing_secrets : { file = "signing_${s}", item = "signing_${s}" }],
  )

  command = var.artifact_url != "" ? "$${NOMAD_TASK_DIR}/tagbridge" : var.binary
  args    = ["--config", "$${NOMAD_SECRETS_DIR}/tagbridge.hcl", "serve"]
}

job "tagbridge" {
  id          = var.job_id
  name        = var.job_id
  type        = "service"
  datacenters = var.datacenters

  group "tagbridge" {
    count = var.count

    # Two replicas on one client protect against nothing.
    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    network {
      port "https" {}
      port "admin" {}
    }

    update {
      max_parallel      = 1
      health_check      = "checks"
      min_healthy_time  = var.min_healthy_time
      healthy_deadline  = var.healthy_deadline
      progress_deadline = var.progress_deadline
      # tagbridge is not a tagbridge-managed service: Nomad reverts a
      # release of tagbridge that does not become healthy.
      auto_revert = true
    }

    # Webhook listener: an HTTPS check of GET /healthz, which the listener
    # answers itself (not a webhook: not counted, not rate limited). It
    # passes only once the TLS certificate is loaded and served.
    service {
      name     = var.job_id
      provider = "nomad"
      port     = "https"
      tags     = ["webhooks", "https"]

      check {
        name            = "webhook-listener"
        type            = "http"
        protocol        = "https"
        path            = "/healthz"
        tls_skip_verify = true
        interval        = "5s"
        timeout         = "2s"
      }
    }

    # Admin listener (plain HTTP): /readyz = Consul reachable with a leader
    # and TLS certificate loaded. Also where /metrics is scraped.
    service {
      name     = "${var.job_id}-admin"
      provider = "nomad"
      port     = "admin"
      tags     = ["metrics"]

      check {
        name     = "readyz"
        type     = "http"
        path     = "/readyz"
        interval = "5s"
        timeout  = "2s"
      }
    }

    task "tagbridge" {
      driver = var.driver

      # docker: the image's ENTRYPOINT is the binary.
      dynamic "config" {
        for_each = local.docker ? [1] : []
        content {
          image           = var.image
          args            = local.args
          ports           = ["https", "admin"]
          readonly_rootfs = true
          cap_drop        = ["ALL"]
          security_opt    = ["no-new-privileges"]
          pids_limit      = 256
        }
      }

      # raw_exec: a binary on the client, or one fetched by the artifact.
      dynamic "config" {
        for_each = local.docker ? [] : [1]
        content {
          command = local.command
          args    = local.args
        }
      }

      dynamic "artifact" {
        for_each = !local.docker && var.artifact_url != "" ? [1] : []
        content {
          source      = var.artifact_url
          destination = "local/"

          dynamic "options" {
            for_each = var.artifact_checksum != "" ? [1] : []
            content {
              checksum = var.artifact_checksum
            }
          }
        }
      }

      # Deregister the services first, then SIGTERM: tagbridge finishes
      # the requests in flight and the controller gives up its lock.
      shutdown_delay = "5s"
      kill_signal    = "SIGTERM"
      kill_timeout   = "30s"

      # The configuration. listen/admin_listen come from the allocated
      # ports (the item's own lines for them become comments); the item
      # "config" supplies everything else. A change re-renders the file and
      # sends SIGHUP: tagbridge drains and re-executes itself with it, or
      # logs why it refused it and keeps the running one. The splay (a
      # random 0-5 s delay per allocation) keeps the replicas from
      # re-executing at the same instant.
      template {
        destination   = "secrets/tagbridge.hcl"
        perms         = "0640"
        uid           = local.file_uid
        gid           = local.file_gid
        change_mode   = "signal"
        change_signal = "SIGHUP"
        splay         = "5s"
        data          = <<-EOT
          # Rendered by Nomad from the Nomad Variable ${local.var_path} (item "config").
          listen       = "${local.https_ip}:{{ env "NOMAD_PORT_https" }}"
          admin_listen = "${local.admin_ip}:{{ env "NOMAD_PORT_admin" }}"
          {{ with nomadVar "${local.var_path}" }}{{ .config.Value | regexReplaceAll `(?m)^[ \t]*(listen|admin_listen)[ \t]*=.*$` "# $1: set by the Nomad job (its ports)" | replaceAll "$${NOMAD_SECRETS_DIR}" (env "NOMAD_SECRETS_DIR") }}{{ end }}
        EOT
      }

      # Certificate, key, tokens and signing secrets: one 0600 file each.
      dynamic "template" {
        for_each = local.secret_files
        content {
          destination   = "secrets/${template.value.file}"
          perms         = "0600"
          uid           = local.file_uid
          gid           = local.file_gid
          change_mode   = "signal"
          change_signal = "SIGHUP"
          data          = "{{ with nomadVar \"${local.var_path}\" }}{{ with index .ItemsMap \"${template.value.item}\" }}{{ . }}{{ end }}{{ end }}"
        }
      }

      resources {
        cpu    = var.cpu
        memory = var.memory
      }
    }
  }
}
