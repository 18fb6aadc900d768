//! `tagbridge check` on a broken configuration, as the operator reads it:
//! each problem on one line, once, with the value as the file wrote it.
//!
//! The built binary is run, so the whole way from the loader through the
//! CLI's error to `main`'s printing is covered: the error chain once
//! printed every problem twice (a second time joined on one line), and a
//! number in a string field showed as hcl-rs's `"${5}"`. No Consul agent
//! or network is needed.

use std::process::Command;

/// Run `tagbridge check --config <file holding text>`: exit code, stdout
/// and stderr together, and the file's path as problems name it.
fn check(text: &str) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("broken.hcl");
    std::fs::write(&path, text).expect("write the configuration");
    let out = Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .arg("check")
        .arg("--config")
        .arg(&path)
        // The defaults come from HashiCorp's variables; none may leak in.
        .env_remove("CONSUL_HTTP_ADDR")
        .env_remove("NOMAD_ADDR")
        .output()
        .expect("run tagbridge");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text, path.display().to_string())
}

/// Every line is one problem: `tagbridge: <file>: ...`, naming the file
/// once, and no line repeats another.
fn one_problem_per_line(output: &str, file: &str) {
    let lines: Vec<&str> = output.lines().collect();
    assert!(!lines.is_empty(), "no problem printed");
    for line in &lines {
        assert!(
            line.starts_with(&format!("tagbridge: {file}: ")),
            "not one problem: {line:?} in:\n{output}"
        );
        assert_eq!(
            line.matches(file).count(),
            1,
            "problems joined on one line: {line:?} in:\n{output}"
        );
    }
    let mut unique = lines.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), lines.len(), "a problem repeated:\n{output}");
}

#[test]
fn check_prints_each_problem_once_with_the_value_as_written() {
    let (code, output, file) = check("listen = 5\n");
    assert_eq!(code, Some(1), "{output}");
    for problem in [
        "listen: 5 is not a string",
        "tls: a tls block with cert_file and key_file is required",
        "service: at least one service block is required",
    ] {
        assert_eq!(
            output.matches(problem).count(),
            1,
            "{problem:?} not exactly once in:\n{output}"
        );
    }
    assert!(
        !output.contains("${"),
        "hcl-rs's rendering shown:\n{output}"
    );
    assert_eq!(output.lines().count(), 3, "{output}");
    one_problem_per_line(&output, &file);
}

#[test]
fn a_wrong_type_in_a_block_is_named_once_as_written() {
    let (code, output, file) = check(
        r#"service "x" {
  history_keep = "a"
}
"#,
    );
    assert_eq!(code, Some(1), "{output}");
    let problem = r#"service "x": history_keep: "a" is not a number"#;
    assert_eq!(
        output.matches(problem).count(),
        1,
        "{problem:?} not exactly once in:\n{output}"
    );
    // The rest of the block is still checked, each problem once.
    assert_eq!(
        output
            .matches(r#"service "x": source: is required"#)
            .count(),
        1,
        "{output}"
    );
    assert!(!output.contains("${"), "{output}");
    assert!(!output.contains("expected i64"), "{output}");
    one_problem_per_line(&output, &file);
}

/// An absurd duration (past what an `Instant` can hold) is one problem
/// naming its field and bound, not a panic later on `?wait`.
#[test]
fn an_absurd_duration_is_one_problem_naming_its_field() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let pair = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("cert");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::write(&cert, pair.cert.pem()).expect("write the certificate");
    std::fs::write(&key, pair.signing_key.serialize_pem()).expect("write the key");
    let (code, output, file) = check(&format!(
        r#"tls {{
  cert_file = "{}"
  key_file  = "{}"
}}
service "web" {{
  secret_sha256 = "{}"
  source        = "dockerhub"
  repository    = "acme/web"
  key           = "configs/web/IMAGE_TAG"
  rollout {{
    job     = "web"
    timeout = "100000000h"
  }}
}}
"#,
        cert.display(),
        key.display(),
        "9f2c1e6b8a0d4c3b2a19f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a3",
    ));
    assert_eq!(code, Some(1), "{output}");
    one_problem_per_line(&output, &file);
    assert_eq!(
        output.trim_end(),
        format!(
            r#"tagbridge: {file}: service "web": rollout.timeout: "100000000h" is over the maximum of 24h"#
        ),
    );
}
