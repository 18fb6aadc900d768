//! What a rollout asks of a live job (contract §6), as readable lines:
//! `tagbridge check --connect` prints them.

use crate::config::{RolloutConfig, ServiceConfig, Strategy};
use crate::nomad::Job;

/// Every requirement of the contract (§6) that `job` does not meet for
/// this service's rollout block, one readable line each. Pure: the
/// caller fetched the job.
pub fn unmet_requirements(job: &Job, svc: &ServiceConfig, rc: &RolloutConfig) -> Vec<String> {
    use serde_json::Value;
    let mut out = Vec::new();
    let groups = job
        .raw
        .get("TaskGroups")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (name, update) in job.group_updates() {
        match update {
            None => out.push(format!(
                "group {name:?} has no update block: Nomad would replace every allocation at once, with no health gate"
            )),
            Some(u) if u.max_parallel <= 0 => out.push(format!(
                "group {name:?} has update.max_parallel = {}: Nomad would not roll it batch by batch",
                u.max_parallel
            )),
            Some(u) => {
                if rc.strategy == Strategy::Template && u.auto_revert {
                    out.push(format!(
                        "group {name:?} has update.auto_revert = true; the template strategy needs false (tagbridge restores the key before it reverts)"
                    ));
                }
            }
        }
    }
    let tasks: Vec<&Value> = groups
        .iter()
        .flat_map(|g| {
            g.get("Tasks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    match rc.strategy {
        Strategy::Template => {
            let reading: Vec<(String, String)> = tasks
                .iter()
                .flat_map(|t| {
                    let task = t
                        .get("Name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    t.get("Templates")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter(|tpl| {
                            tpl.get("EmbeddedTmpl")
                                .and_then(Value::as_str)
                                .is_some_and(|body| body.contains(&format!("\"{}\"", svc.key)))
                        })
                        .map(move |tpl| {
                            (
                                task.clone(),
                                tpl.get("ChangeMode")
                                    .and_then(Value::as_str)
                                    .unwrap_or("restart")
                                    .to_string(),
                            )
                        })
                })
                .collect();
            if reading.is_empty() {
                out.push(format!(
                    "no task template reads the key {:?}: the template strategy needs one (with change_mode = \"noop\")",
                    svc.key
                ));
            }
            for (task, mode) in reading {
                if mode != "noop" {
                    out.push(format!(
                        "task {task:?}: the template reading {:?} has change_mode = {mode:?}; it must be \"noop\", or every instance restarts at once when the key changes",
                        svc.key
                    ));
                }
            }
        }
        Strategy::Jobspec => {
            let needles = [
                format!("NOMAD_META_{}", rc.meta_key),
                format!("meta.{}", rc.meta_key),
            ];
            let uses = tasks.iter().any(|t| {
                let text = serde_json::to_string(t).unwrap_or_default();
                needles.iter().any(|n| text.contains(n.as_str()))
            });
            if !uses {
                out.push(format!(
                    "no task references ${{NOMAD_META_{}}}: the jobspec strategy sets that meta key and the task must read it",
                    rc.meta_key
                ));
            }
        }
    }
    out
}
