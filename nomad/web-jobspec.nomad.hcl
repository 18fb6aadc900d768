# Strategy "jobspec" (tagbridge rollout { strategy = "jobspec" }).
#
# The task reads its tag from the job meta (${NOMAD_META_image_tag}); the
# Consul key is only a record. tagbridge sets meta image_tag = <tag> and
# Nomad replaces the allocations one at a time under the update block.
# Nomad's own auto_revert may be enabled here (variable auto_revert);
# tagbridge then mirrors the outcome into the key and history.

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
  description = "Unused by this job (the key is only a record here); declared so every example job takes the same variables."
}

variable "initial_tag" {
  type        = string
  default     = "1.0.0"
  description = "Tag of the first version; tagbridge then sets meta image_tag."
}

variable "auto_revert" {
  type        = bool
  default     = false
  description = "Let Nomad revert a failed deployment itself (tagbridge mirrors the outcome)."
}

variable "job_name" {
  type    = string
  default = "web-jobspec"
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
    image_tag = var.initial_tag
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
      auto_revert       = var.auto_revert
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
        # Runtime interpolation by Nomad (not an HCL variable): the job meta.
        TAG    = "${NOMAD_META_image_tag}"
        PORT   = "${NOMAD_PORT_http}"
        WARMUP = var.warmup
      }

      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
