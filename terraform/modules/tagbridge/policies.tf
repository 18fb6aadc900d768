# The ACL rules of tagbridge's two tokens, as plain policy text.
#
# Both are heredoc templates that use only `var.state_prefix`,
# `var.services` and template directives (no functions), so that a test can
# evaluate them with nothing but the variables (e.g. with the hcl-rs crate)
# and check that they allow exactly what tagbridge calls. Only `s.key`,
# `s.name`, `s.job` (null = KV only) and `s.namespace` of a service are read.
#
# Consul: tagbridge reads and writes
#   * each service's `key` (ingest writes the tag of KV-only services; the
#     controller writes it for rollout services and restores it on rollback),
#   * everything under `<state_prefix>/`: history/<svc>/<seq> entries and
#     history/<svc>/head (one key per entry; writes also delete the oldest,
#     and the first one deletes an old single-value history/<svc>),
#     desired/, deployed/, pin/, and the controller's lock
#     `<state_prefix>/leader` (acquire and release are key writes with
#     ?acquire/?release or txn verbs);
#   * /v1/txn needs only the key rules of the keys it touches;
#   * /v1/status/leader needs no ACL.
# It creates, renews and destroys one session for the leader lock. Consul
# binds a session to a node (the node of the agent that serves the request,
# since tagbridge names none) and checks `session` write on that node's name.
# Which node that is depends on where the replica runs and which agent it
# talks to, and changes when Nomad reschedules it, so the rule covers every
# node name: `session_prefix "" { policy = "write" }`. It grants nothing but
# session create/renew/destroy; a session alone can lock only keys the token
# may already write.
#
# Nomad: the controller, on each configured job's namespace, reads the job,
# its versions, deployments, allocations, evaluations and allocation checks
# (read-job), registers, plans and reverts it and promotes or fails its
# deployments (submit-job), and lists jobs (list-jobs). Having capabilities
# on a namespace also lets it read that namespace (`check --connect`).
# Nothing on other namespaces; no node, agent, operator or variable rules.
# Nomad merges namespace blocks that name the same namespace, so two
# services in one namespace simply repeat the block. Services without a job
# (KV only) get no Nomad rights; with no job at all no Nomad policy or token
# is created (Nomad refuses an empty policy).
locals {
  # Plain `<<EOT` heredocs with the text at column 0: indented (`<<-`)
  # heredocs and template directives strip indentation differently in
  # OpenTofu and in hcl-rs; this form renders the same in both.
  consul_policy = <<EOT
# tagbridge: the tag key of each service
%{for s in var.services~}
key "${s.key}" {
  policy = "write"
}
%{endfor~}
# tagbridge: history, desired, deployed, pin records and the leader lock
key_prefix "${var.state_prefix}/" {
  policy = "write"
}
# tagbridge: the leader lock's session (bound to the serving agent's node)
session_prefix "" {
  policy = "write"
}
EOT

  nomad_policy = <<EOT
%{for s in var.services~}
%{if s.job != null~}
# tagbridge: service "${s.name}", job "${s.job}"
namespace "${s.namespace}" {
  capabilities = ["list-jobs", "read-job", "submit-job"]
}
%{endif~}
%{endfor~}
EOT
}
