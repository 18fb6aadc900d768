# Strategy "template", with the classic setup's layout: the service's
# configuration is every key under one Consul prefix (configs/web/LOG_LEVEL,
# configs/web/IMAGE_TAG, ...), rendered into the environment.
#
# The webhook-to-KV services tagbridge replaces read the whole prefix with
# one `range ls` template and change_mode = "restart", so a new tag restarts
# every instance at once. Here the prefix is split in two templates:
#   - every key but IMAGE_TAG, left out by name, with change_mode =
#     "restart": a configuration change still restarts the task, as before;
#   - IMAGE_TAG alone, with change_mode = "noop": tagbridge rolls a new tag
#     out through job meta image_tag, one allocation at a time, and each new
#     allocation renders it. `tagbridge check --connect` recognises both
#     templates and says how to split one that reads the prefix whole.
#
# Note: the template's `key` function blocks until the key exists; write
# the key before registering the job.

variable "testsvc" {
  type        = string
  default     = "/usr/local/bin/tagbridge-testsvc"
  description = "Absolute path of the tagbridge-testsvc binary (raw_exec)."
}

variable "count" {
  type    = number
  default = 3
}

variable "warmup" {
  type        = string
  default     = "1"
  description = "Seconds the service waits before it listens (WARMUP)."
}

variable "config_prefix" {
  type        = string
  default     = "configs/web"
  description = "Consul prefix of the service's configuration; the tag is <config_prefix>/IMAGE_TAG (the service's `key` in tagbridge.hcl)."
}

variable "job_name" {
  type    = string
  default = "web-prefix"
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

variable "min_healthy_time" {
  type    = string
  default = "2s"
}

variable "healthy_deadline" {
  type    = string
  default = "20s"
}

variable "progress_deadline" {
  type    = string
  default = "40s"
}

job "web" {
  id          = var.job_name
  name        = var.job_name
  type        = "service"
  datacenters = var.datacenters

  meta {
    # Set by tagbridge on every rollout; changing it replaces allocations.
    image_tag = ""
  }

  group "web" {
    count = var.count

    network {
      port "http" {}
    }

    update {
      max_parallel      = 1
      min_healthy_time  = var.min_healthy_time
      healthy_deadline  = var.healthy_deadline
      progress_deadline = var.progress_deadline
      health_check      = "checks"
      auto_revert       = false
    }

    # A broken release must fail fast, not be retried forever.
    restart {
      attempts = 0
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    service {
      name     = var.job_name
      provider = "nomad"
      port     = "http"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "1s"
        timeout  = "1s"
      }
    }

    task "web" {
      driver       = "raw_exec"
      kill_timeout = "2s"

      config {
        command = var.testsvc
      }

      env {
        # Explicit, so a PORT in the Nomad client's own environment (raw_exec
        # tasks inherit it) cannot win over the allocated port.
        PORT   = "${NOMAD_PORT_http}"
        WARMUP = var.warmup
      }

      # Every key under the prefix but IMAGE_TAG: a change to one of them
      # restarts the task, as in the classic setup. IMAGE_TAG is left out
      # by name, so a new tag does not re-render this file.
      template {
        data        = <<-EOT
          {{ range ls "${var.config_prefix}" }}{{ if ne .Key "IMAGE_TAG" }}{{ .Key }}={{ .Value }}
          {{ end }}{{ end }}
        EOT
        destination = "local/config.env"
        env         = true
        change_mode = "restart"
      }

      # IMAGE_TAG alone: tagbridge replaces allocations to change it.
      template {
        data        = <<-EOT
          TAG={{ key "${var.config_prefix}/IMAGE_TAG" }}
        EOT
        destination = "local/tag.env"
        env         = true
        change_mode = "noop"
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
