//! What a rollout asks of a live job (contract §6), as readable lines:
//! `tagbridge check --connect` prints them.

use serde_json::Value;

use super::template_reads::{reads, reads_beside, Reach};
use crate::clients::nomad::Job;
use crate::config::{RolloutConfig, ServiceConfig, Strategy};

/// What `check --connect` found in one live job.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Review {
    /// Requirements of the contract (§6) the job does not meet: `check`
    /// fails on any.
    pub unmet: Vec<String>,
    /// Choices that work but that an operator should know about.
    pub warnings: Vec<String>,
}

/// The requirements `job` does not meet, and the warnings, for this
/// service's rollout block. Pure: the caller fetched the job.
pub fn review(job: &Job, svc: &ServiceConfig, rc: &RolloutConfig) -> Review {
    let mut out = Review::default();
    for (name, update) in job.group_updates() {
        match update {
            None => out.unmet.push(format!(
                "group {name:?} has no update block: Nomad would replace every allocation at once, with no health gate"
            )),
            Some(u) if u.max_parallel <= 0 => out.unmet.push(format!(
                "group {name:?} has update.max_parallel = {}: Nomad would not roll it batch by batch",
                u.max_parallel
            )),
            Some(u) if rc.strategy == Strategy::Template && u.auto_revert => out.unmet.push(format!(
                "group {name:?} has update.auto_revert = true; the template strategy needs false (tagbridge restores the key before it reverts)"
            )),
            Some(_) => {}
        }
    }
    let tasks: Vec<&Value> = job
        .raw
        .get("TaskGroups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|g| {
            g.get("Tasks")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        })
        .collect();
    match rc.strategy {
        Strategy::Template => {
            template_strategy(&tasks, &svc.key, svc.digest_key.as_deref(), &mut out)
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
                out.unmet.push(format!(
                    "no task references ${{NOMAD_META_{}}}: the jobspec strategy sets that meta key and the task must read it",
                    rc.meta_key
                ));
            }
        }
    }
    out
}

/// The template strategy needs every template that renders the key to
/// have `change_mode = "noop"`, and at least one such template. A
/// template that reaches the key through a prefix (the classic setup's
/// `range ls`) counts; when it is noop, the other keys it renders stop
/// restarting the task, which the operator is warned about.
///
/// The `digest_key` is written with the key, so a template reading it
/// (and not the key) must be noop too; beside the key it is no "other".
fn template_strategy(tasks: &[&Value], key: &str, digest_key: Option<&str>, out: &mut Review) {
    let mut reading = 0;
    for task in tasks {
        let name = task.get("Name").and_then(Value::as_str).unwrap_or("");
        let templates = task.get("Templates").and_then(Value::as_array);
        for tpl in templates.into_iter().flatten() {
            let body = tpl
                .get("EmbeddedTmpl")
                .and_then(Value::as_str)
                .unwrap_or("");
            let mode = tpl
                .get("ChangeMode")
                .and_then(Value::as_str)
                .unwrap_or("restart");
            let r = reads_beside(body, key, digest_key.as_slice());
            let Some(reach) = r.key else {
                if let Some(dk) =
                    digest_key.filter(|dk| mode != "noop" && reads(body, dk).key.is_some())
                {
                    out.unmet.push(format!(
                        "task {name:?}: the template reading digest_key {dk:?} has change_mode = {mode:?}; it must be \"noop\": tagbridge writes it with the key when a rollout starts, and every instance would restart at once"
                    ));
                }
                continue;
            };
            reading += 1;
            let how = match &reach {
                Reach::Exact => String::new(),
                Reach::Prefix { func, prefix } => format!(" (through {func} {prefix:?})"),
            };
            let split = if r.others {
                split_advice(key, &reach)
            } else {
                String::new()
            };
            if mode != "noop" {
                out.unmet.push(format!(
                    "task {name:?}: the template reading {key:?}{how} has change_mode = {mode:?}; it must be \"noop\", or every instance restarts at once when the key changes{split}"
                ));
            } else if r.others {
                out.warnings.push(format!(
                    "task {name:?}: the noop template reading {key:?}{how} also renders other keys, and a change to them will not restart the task{split}"
                ));
            }
        }
    }
    if reading == 0 {
        out.unmet.push(format!(
            "no task template reads the key {key:?}: the template strategy needs one (with change_mode = \"noop\")"
        ));
    }
}

/// How to give the key a template of its own, in the operator's terms.
fn split_advice(key: &str, reach: &Reach) -> String {
    let own = format!(
        "read {key:?} in a template of its own ({{{{ key {key:?} }}}}) with change_mode = \"noop\""
    );
    match reach {
        Reach::Exact => {
            format!("; {own}, and keep the other keys in a template with change_mode = \"restart\"")
        }
        Reach::Prefix { func, prefix } => {
            let name = key
                .strip_prefix(prefix.trim_end_matches('/'))
                .map_or(key, |rest| rest.trim_start_matches('/'));
            format!(
                "; {own}, and leave it out of the {func} {prefix:?} template with {{{{ if ne .Key {name:?} }}}} (nomad/web-prefix.nomad.hcl shows the layout)"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Purpose};
    use serde_json::json;

    const KEY: &str = "configs/web/IMAGE_TAG";

    fn config_text(strategy: &str) -> String {
        format!(
            r#"
consul {{ address = "http://127.0.0.1:9" }}
nomad {{ address = "http://127.0.0.1:9" }}
service "web" {{
  secret_sha256 = "{sha}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "{KEY}"
  rollout {{
    job      = "web"
    strategy = "{strategy}"
  }}
}}
"#,
            sha = "ab".repeat(32)
        )
    }

    /// A one-group job with a sane update block and these templates
    /// (body, change_mode).
    fn job(templates: &[(&str, &str)]) -> Job {
        let templates: Vec<_> = templates
            .iter()
            .map(|(body, mode)| json!({"EmbeddedTmpl": body, "ChangeMode": mode}))
            .collect();
        Job::from_value(json!({
            "ID": "web", "Namespace": "default", "Version": 0, "JobModifyIndex": 1,
            "TaskGroups": [{
                "Name": "web",
                "Update": {"MaxParallel": 1, "AutoRevert": false},
                "Tasks": [{"Name": "web", "Templates": templates}],
            }],
        }))
        .expect("job")
    }

    fn review_of(templates: &[(&str, &str)]) -> Review {
        review_with(templates, "")
    }

    /// [`review_of`] with `extra` lines in the service block.
    fn review_with(templates: &[(&str, &str)], extra: &str) -> Review {
        let text = config_text("template").replace(
            &format!("key           = \"{KEY}\""),
            &format!("key           = \"{KEY}\"\n  {extra}"),
        );
        let cfg = Config::parse(
            std::path::Path::new("t.hcl"),
            &text,
            Purpose::Client,
            &|_| None,
        )
        .expect("test config");
        let svc = &cfg.services[0];
        review(&job(templates), svc, svc.rollout.as_ref().expect("rollout"))
    }

    const CLASSIC: &str = "{{ range ls \"configs/web\" }}{{ .Key }}={{ .Value }}\n{{ end }}";
    const OWN: &str = "TAG={{ key \"configs/web/IMAGE_TAG\" }}\n";
    const REST: &str =
        "{{ range ls \"configs/web\" }}{{ if ne .Key \"IMAGE_TAG\" }}{{ .Key }}={{ .Value }}\n{{ end }}{{ end }}";

    #[test]
    fn the_classic_prefix_template_is_recognised_and_told_how_to_split() {
        let r = review_of(&[(CLASSIC, "restart")]);
        assert_eq!(r.unmet.len(), 1, "{r:?}");
        let line = &r.unmet[0];
        assert!(line.contains("through ls \"configs/web\""), "{line}");
        assert!(line.contains("change_mode = \"restart\""), "{line}");
        assert!(line.contains("{{ if ne .Key \"IMAGE_TAG\" }}"), "{line}");
        assert!(r.warnings.is_empty());
    }

    #[test]
    fn a_noop_prefix_template_meets_the_requirement_with_a_warning() {
        let r = review_of(&[(CLASSIC, "noop")]);
        assert!(r.unmet.is_empty(), "{r:?}");
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].contains("will not restart the task"), "{r:?}");
    }

    #[test]
    fn the_split_layout_meets_every_requirement_without_a_warning() {
        let r = review_of(&[(REST, "restart"), (OWN, "noop")]);
        assert_eq!(r, Review::default());
    }

    #[test]
    fn a_split_that_forgets_to_leave_the_key_out_still_restarts_everything() {
        let r = review_of(&[(CLASSIC, "restart"), (OWN, "noop")]);
        assert_eq!(r.unmet.len(), 1, "{r:?}");
        assert!(r.unmet[0].contains("through ls"), "{r:?}");
    }

    #[test]
    fn a_job_that_reads_only_other_keys_does_not_read_the_key() {
        let r = review_of(&[(REST, "restart")]);
        assert_eq!(r.unmet.len(), 1, "{r:?}");
        assert!(
            r.unmet[0].starts_with("no task template reads the key"),
            "{r:?}"
        );
    }

    #[test]
    fn a_digest_key_read_with_the_key_is_no_other_key_and_must_be_noop_alone() {
        const DK: &str = "digest_key = \"configs/web/IMAGE_DIGEST\"";
        let both =
            "T={{ key \"configs/web/IMAGE_TAG\" }}\nD={{ key \"configs/web/IMAGE_DIGEST\" }}\n";
        assert_eq!(review_with(&[(both, "noop")], DK), Review::default());
        // Without digest_key configured, the same template renders another key.
        assert_eq!(review_of(&[(both, "noop")]).warnings.len(), 1);
        // The split layout's rest template would render the digest key and
        // restart every instance when a rollout starts.
        let r = review_with(&[(REST, "restart"), (OWN, "noop")], DK);
        assert_eq!(r.unmet.len(), 1, "{r:?}");
        assert!(
            r.unmet[0].contains("reading digest_key \"configs/web/IMAGE_DIGEST\""),
            "{r:?}"
        );
        let own_digest = "D={{ key \"configs/web/IMAGE_DIGEST\" }}";
        let r = review_with(&[(OWN, "noop"), (own_digest, "noop")], DK);
        assert_eq!(r, Review::default());
    }
}
