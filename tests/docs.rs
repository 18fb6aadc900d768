//! Documentation that cannot drift from the code: the configuration
//! reference names exactly the keys the parser accepts, the README's
//! minimal configuration passes `tagbridge check`, and every relative link
//! in the documentation reaches a file (and a heading) that exists. No
//! agents, no network: this runs in a second or two with `cargo test`.
//!
//! # The format of `docs/configuration.md` this test reads
//!
//! * Each block of `tagbridge.hcl` has one level-2 heading: `## Top level`
//!   for the file's top level, ``## `<path>` block`` for any other, with
//!   the block's path in backticks (`tls`, `service`, `service.rollout`; a
//!   label such as a service's name is not part of the path). Its section
//!   runs to the next level-2 heading, subsections included.
//! * In a block's section, the keys are the rows of the tables whose
//!   header row's first cell is `key`. Each such row's first cell is one
//!   key in backticks: ``| `listen` | … |``.
//! * Nothing else names a key for this test: prose, examples and other
//!   tables may mention keys freely. Level-2 headings of any other shape
//!   (`## Environment`) end a block's section and open none.
//!
//! The accepted keys come from the parser itself
//! (`tagbridge::config::accepted_keys`, which reads serde's field lists of
//! `src/config/raw.rs`), so a key added to, renamed in or removed from the
//! parser fails this test until the reference says so, and so does a row
//! naming a key the parser refuses.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{repo_root, TempDir, TestTls};

/// Keys per block path.
type Keys = BTreeMap<String, BTreeSet<String>>;

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

/// The block a level-2 heading opens: `Some("")` for `## Top level`,
/// `Some(path)` for ``## `path` block``, `None` for any other heading.
fn block_of(heading: &str) -> Option<String> {
    let title = heading.trim();
    if title == "Top level" {
        return Some(String::new());
    }
    let path = title.strip_prefix('`')?.strip_suffix("` block")?;
    (!path.is_empty() && !path.contains('`')).then(|| path.to_string())
}

/// The table cells of a Markdown row (`| a | b |`), trimmed; `None` for a
/// line that is not a table row. A `\|` inside a cell is not a separator.
fn cells(line: &str) -> Option<Vec<String>> {
    let inner = line.trim().strip_prefix('|')?.strip_suffix('|')?;
    let mut out = vec![String::new()];
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'|') => {
                out.last_mut().expect("a cell").push('|');
                chars.next();
            }
            '|' => out.push(String::new()),
            c => out.last_mut().expect("a cell").push(c),
        }
    }
    Some(out.into_iter().map(|c| c.trim().to_string()).collect())
}

/// The keys `docs/configuration.md` documents, per block, in the format the
/// module comment describes. A malformed key row, a block documented twice
/// or a key listed twice in one block is an error naming its line.
fn documented_keys(text: &str) -> Result<Keys, String> {
    let mut keys = Keys::new();
    let mut block: Option<String> = None;
    // In a table whose header's first cell is `key` (`Some(false)` until
    // its separator row has passed).
    let mut key_table: Option<bool> = None;
    let mut in_fence = false;
    for (n, line) in text.lines().enumerate() {
        let at = |what: String| format!("docs/configuration.md:{}: {what}", n + 1);
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if let Some(heading) = line.strip_prefix("## ") {
            block = block_of(heading);
            if let Some(b) = &block {
                if keys.insert(b.clone(), BTreeSet::new()).is_some() {
                    return Err(at(format!("block {b:?} has a second section")));
                }
            }
            key_table = None;
            continue;
        }
        let Some(row) = cells(line) else {
            key_table = None;
            continue;
        };
        match key_table {
            None => {
                if row.first().map(String::as_str) == Some("key") {
                    key_table = Some(false);
                }
            }
            Some(false) => key_table = Some(true),
            Some(true) => {
                let Some(b) = &block else {
                    return Err(at("a key table outside any block's section".into()));
                };
                let first = &row[0];
                let key = first
                    .strip_prefix('`')
                    .and_then(|k| k.strip_suffix('`'))
                    .filter(|k| {
                        !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_')
                    })
                    .ok_or_else(|| {
                        at(format!(
                            "a key row's first cell must be one key in backticks, not {first:?}"
                        ))
                    })?;
                if !keys.entry(b.clone()).or_default().insert(key.to_string()) {
                    return Err(at(format!("key `{key}` is listed twice in block {b:?}")));
                }
            }
        }
    }
    Ok(keys)
}

/// What the parser accepts, per block.
fn accepted() -> Keys {
    let mut keys = Keys::new();
    for (block, key) in tagbridge::config::accepted_keys() {
        keys.entry(block).or_default().insert(key.to_string());
    }
    keys
}

/// Both directions, per block: every accepted key documented in its
/// block, every documented key accepted there. Empty when they agree.
fn disagreements(accepted: &Keys, documented: &Keys) -> Vec<String> {
    let name = |b: &str| {
        if b.is_empty() {
            "the top level (`## Top level`)".to_string()
        } else {
            format!("block `{b}` (``## `{b}` block``)")
        }
    };
    let none = BTreeSet::new();
    let blocks: BTreeSet<&String> = accepted.keys().chain(documented.keys()).collect();
    let mut out = Vec::new();
    for b in blocks {
        let (acc, doc) = (
            accepted.get(b).unwrap_or(&none),
            documented.get(b).unwrap_or(&none),
        );
        if !accepted.contains_key(b) {
            out.push(format!(
                "{} is documented, but the parser has no such block",
                name(b)
            ));
        } else if !documented.contains_key(b) {
            out.push(format!("{} has no section", name(b)));
        }
        for k in acc.difference(doc) {
            out.push(format!(
                "{}: `{k}` is accepted by the parser but not documented",
                name(b)
            ));
        }
        if accepted.contains_key(b) {
            for k in doc.difference(acc) {
                out.push(format!(
                    "{}: `{k}` is documented but the parser refuses it",
                    name(b)
                ));
            }
        }
    }
    out
}

#[test]
fn the_configuration_reference_names_exactly_the_accepted_keys() {
    let accepted = accepted();
    // The walk reached the nested blocks (a sanity check of the walker,
    // not a second list).
    for block in ["", "tls", "service", "service.rollout", "service.registry"] {
        assert!(accepted.contains_key(block), "{block:?}: {accepted:?}");
    }
    let documented =
        documented_keys(&read("docs/configuration.md")).unwrap_or_else(|e| panic!("{e}"));
    let problems = disagreements(&accepted, &documented);
    assert!(
        problems.is_empty(),
        "docs/configuration.md and src/config/raw.rs disagree:\n  {}\n\
         (each block's keys are the rows of its `key` tables; see the top of tests/docs.rs)",
        problems.join("\n  ")
    );
}

/// The checker itself: a missing row, an extra row and a missing section
/// are each reported, in the direction they are wrong.
#[test]
fn the_reference_check_reports_each_direction() {
    let accepted = accepted();
    let text = read("docs/configuration.md");
    let documented = documented_keys(&text).expect("the reference parses");

    let without = text.replacen("| `max_headers` |", "| `max_headerz` |", 1);
    assert_ne!(without, text, "the reference has a `max_headers` row");
    let problems = disagreements(&accepted, &documented_keys(&without).expect("parses"));
    assert_eq!(
        problems,
        [
            "the top level (`## Top level`): `max_headers` is accepted by the parser but not documented",
            "the top level (`## Top level`): `max_headerz` is documented but the parser refuses it",
        ],
        "{problems:?}"
    );

    let mut fewer = documented.clone();
    fewer.remove("service.tags");
    let problems = disagreements(&accepted, &fewer);
    assert_eq!(
        problems[0],
        "block `service.tags` (``## `service.tags` block``) has no section"
    );
    assert!(problems.len() > 1, "{problems:?}");

    let bad = "## `tls` block\n\n| key | x |\n|---|---|\n| cert_file | y |\n";
    let err = documented_keys(bad).unwrap_err();
    assert!(err.contains(":5: a key row's first cell"), "{err}");
}

/// The text between `<!-- name -->` and `<!-- /name -->`, inside its one
/// fenced block (`lang` its language).
fn marked_block(text: &str, name: &str, lang: &str) -> String {
    let inner = text
        .split(&format!("<!-- {name} -->"))
        .nth(1)
        .and_then(|r| r.split(&format!("<!-- /{name} -->")).next())
        .unwrap_or_else(|| panic!("the {name} markers"));
    inner
        .trim()
        .strip_prefix(&format!("```{lang}"))
        .and_then(|b| b.strip_suffix("```"))
        .unwrap_or_else(|| panic!("one ```{lang} block between the {name} markers"))
        .to_string()
}

/// The README's minimal configuration, as it is, passes `tagbridge check`
/// (no Consul or Nomad needed without `--connect`). Every file it names
/// under `/secrets/` is made in a scratch directory first: the TLS pair
/// (`.crt`, `.key`) from a test CA, anything else a made-up secret.
#[test]
fn the_readme_minimal_config_passes_check() {
    let hcl = marked_block(&read("README.md"), "minimal-config", "hcl");
    let dir = TempDir::new("docs-minimal");
    let tls = TestTls::new(&dir);
    let mut files = BTreeSet::new();
    for part in hcl.split("\"/secrets/").skip(1) {
        let name = part.split('"').next().expect("a closing quote");
        assert!(
            !name.is_empty() && !name.contains('/'),
            "a /secrets/ file name: {name:?}"
        );
        files.insert(name.to_string());
    }
    assert!(
        files.iter().any(|f| f.ends_with(".crt")) && files.iter().any(|f| f.ends_with(".key")),
        "the minimal config names its TLS pair under /secrets/: {files:?}"
    );
    for name in &files {
        let data = if name.ends_with(".crt") {
            std::fs::read(&tls.cert_file).expect("cert")
        } else if name.ends_with(".key") {
            std::fs::read(&tls.key_file).expect("key")
        } else {
            format!("made-up-{name}-0123456789abcdef").into_bytes()
        };
        dir.write(name, data);
    }
    let text = hcl.replace("\"/secrets/", &format!("\"{}/", dir.path().display()));
    let config = dir.write("tagbridge.hcl", text);
    let out = Command::new(env!("CARGO_BIN_EXE_tagbridge"))
        .args(["check", "--config"])
        .arg(&config)
        // Only what the file says: no CONSUL_* / NOMAD_* from the caller.
        .env_clear()
        .output()
        .expect("run tagbridge check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    assert!(stdout.contains("ok (1 services)"), "{stdout}");
    assert!(!stdout.contains("warning:"), "{stdout}");
}

/// The Markdown files a reader follows links through.
fn doc_files() -> Vec<PathBuf> {
    let mut files = vec![
        repo_root().join("README.md"),
        repo_root().join("CONTRIBUTING.md"),
    ];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("docs/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

/// GitHub's anchor for a heading: lowercase, punctuation dropped, spaces
/// as `-`; a repeated heading gets `-1`, `-2`.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    let mut in_fence = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
        }
        if in_fence || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim();
        let slug: String = title
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 {
            slug.clone()
        } else {
            format!("{slug}-{n}")
        });
        *n += 1;
    }
    out
}

/// Every relative link (`[text](path)`, `[text](path#anchor)`,
/// `[text](#anchor)`) in the README, CONTRIBUTING.md and docs/ names a
/// file that exists and, with an anchor in a Markdown file, a heading
/// there.
#[test]
fn every_relative_link_in_the_docs_resolves() {
    let mut broken = Vec::new();
    for file in doc_files() {
        let text = std::fs::read_to_string(&file).expect("read");
        let shown = file
            .strip_prefix(repo_root())
            .unwrap_or(&file)
            .display()
            .to_string();
        for target in text.split("](").skip(1).filter_map(|r| r.split(')').next()) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let dest: PathBuf = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap_or(Path::new(".")).join(path)
            };
            if !dest.exists() {
                broken.push(format!("{shown}: ({target}): no such file"));
                continue;
            }
            if !anchor.is_empty() && dest.extension().is_some_and(|e| e == "md") {
                let there = std::fs::read_to_string(&dest).expect("read link target");
                if !anchors(&there).contains(anchor) {
                    broken.push(format!("{shown}: ({target}): no such heading"));
                }
            }
        }
    }
    assert!(
        broken.is_empty(),
        "broken links:\n  {}",
        broken.join("\n  ")
    );
}
