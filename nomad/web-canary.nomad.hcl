# Strategy "template" with a canary (tagbridge rollout { strategy = "template" }).
#
# Same as web-template.nomad.hcl, plus update { canary = 1, auto_promote =
# false }: a rollout first places ONE extra allocation with the new tag next
# to the old ones; the deployment then waits for a promotion. tagbridge
# promotes it once the canary is healthy (and the rollout's verify_url, if
# any, answers), after which Nomad replaces the old allocations one at a
# time. tagbridge owns rollback, hence auto_revert = false.
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

variable "tag_key" {
  type        = string
  default     = "configs/web/IMAGE_TAG"
  description = "Consul key holding the tag (the service's `key` in tagbridge.hcl)."
}

variable "job_name" {
  type    = string
  default = "web-canary"
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
      canary            = 1
      auto_promote      = false
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

      # Canaries register with this tag until promoted, so a verify step
      # can address the canary alone.
      canary_tags = ["canary"]

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

      template {
        data        = <<-EOT
          TAG={{ key "${var.tag_key}" }}
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
