//! Which Consul keys a task template reads, from its consul-template text.
//!
//! `check --connect` must know whether a job reads the service's key and
//! how: by name (`key "configs/web/IMAGE_TAG"`), or through a prefix, as
//! the classic webhook-to-KV setup does (`range ls "configs/web"`). Only
//! the template's actions (`{{ … }}`) are read, and only their string
//! literals and the KV functions before them: the text between actions is
//! output, and Nomad has already resolved HCL's `${…}` when the job is
//! registered, so the live job holds plain strings.

/// How a template reaches the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// A string literal in an action names the key itself.
    Exact,
    /// A listing function (`ls`, `tree` and their `safe` forms) covers
    /// the key through `prefix`.
    Prefix { func: String, prefix: String },
}

/// What one template body reads, as far as the key is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reads {
    /// How the key is read, or `None` when it is not.
    pub key: Option<Reach>,
    /// The template also renders keys other than the service's key, so a
    /// `change_mode` chosen for the key applies to them too.
    pub others: bool,
}

/// Functions that list every key under a prefix: `ls` one level deep,
/// `tree` at any depth.
const LISTING: [(&str, bool); 4] = [
    ("ls", false),
    ("safeLs", false),
    ("tree", true),
    ("safeTree", true),
];
/// Functions that read one key by name.
const SINGLE: [&str; 3] = ["key", "keyOrDefault", "keyExists"];

/// What `body` reads, for the service key `key`.
///
/// A listing template that compares `.Key` unequal to the key's path
/// below its prefix (`{{ if ne .Key "IMAGE_TAG" }}`) is taken to leave the
/// key out: that is how `nomad/README.md` (web-prefix) tells operators to
/// split the key from the rest of the prefix. Any other mention of that
/// name does not count.
pub fn reads(body: &str, key: &str) -> Reads {
    reads_beside(body, key, &[])
}

/// [`reads`], where the keys in `beside` (the service's `digest_key`,
/// written with the key) do not count as other keys.
pub fn reads_beside(body: &str, key: &str, beside: &[&str]) -> Reads {
    let tokens: Vec<Token> = actions(body).flat_map(tokenize).collect();
    let literals: Vec<&str> = tokens.iter().filter_map(Token::literal).collect();
    let mut out = Reads {
        key: None,
        others: false,
    };
    if literals.iter().any(|l| without_dc(l) == key) {
        out.key = Some(Reach::Exact);
    }
    for pair in tokens.windows(2) {
        let (Token::Word(func), Token::Literal(arg)) = (&pair[0], &pair[1]) else {
            continue;
        };
        let arg = without_dc(arg);
        if SINGLE.contains(&func.as_str()) {
            out.others |= arg != key && !beside.contains(&arg);
            continue;
        }
        let Some(&(_, deep)) = LISTING.iter().find(|(f, _)| f == func) else {
            continue;
        };
        out.others = true;
        let Some(below) = below(arg, key, deep) else {
            continue;
        };
        let left_out = tokens.windows(3).any(|w| {
            matches!(w, [Token::Word(ne), Token::Word(k), Token::Literal(l)]
                if ne == "ne" && k == "Key" && l == below)
        });
        if out.key.is_none() && !left_out {
            out.key = Some(Reach::Prefix {
                func: func.clone(),
                prefix: arg.to_string(),
            });
        }
    }
    out
}

/// The key's path below `prefix` when a listing of `prefix` (one level, or
/// every level when `deep`) includes it.
fn below<'k>(prefix: &str, key: &'k str, deep: bool) -> Option<&'k str> {
    let prefix = prefix.trim_end_matches('/');
    let rest = if prefix.is_empty() {
        key
    } else {
        key.strip_prefix(prefix)?.strip_prefix('/')?
    };
    (!rest.is_empty() && (deep || !rest.contains('/'))).then_some(rest)
}

/// consul-template addresses another datacenter with `name@dc`; the key
/// path is the part before it.
fn without_dc(arg: &str) -> &str {
    arg.split_once('@').map_or(arg, |(path, _)| path)
}

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Literal(String),
}

impl Token {
    fn literal(&self) -> Option<&str> {
        match self {
            Token::Literal(s) => Some(s),
            Token::Word(_) => None,
        }
    }
}

/// The text inside each `{{ … }}`, trim markers included (they are
/// punctuation to `tokenize`). An unclosed action runs to the end.
fn actions(body: &str) -> impl Iterator<Item = &str> {
    body.split("{{")
        .skip(1)
        .map(|s| s.split("}}").next().unwrap_or(s))
}

/// Words and string literals of one action; everything else (pipes,
/// parentheses, `.Key`, `:=`) separates them. Go's interpreted strings
/// ("…", with backslash escapes) and raw strings (`…`) are both literals.
fn tokenize(action: &str) -> Vec<Token> {
    let mut out = Vec::new();
    let mut chars = action.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                let mut s = String::new();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => s.extend(chars.next()),
                        '"' => break,
                        c => s.push(c),
                    }
                }
                out.push(Token::Literal(s));
            }
            '`' => out.push(Token::Literal(
                chars.by_ref().take_while(|&c| c != '`').collect(),
            )),
            c if c.is_alphanumeric() || c == '_' => {
                let mut w = String::from(c);
                while let Some(&c) = chars.peek() {
                    if !(c.is_alphanumeric() || c == '_') {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "configs/web/IMAGE_TAG";

    fn prefix(func: &str, prefix: &str) -> Option<Reach> {
        Some(Reach::Prefix {
            func: func.into(),
            prefix: prefix.into(),
        })
    }

    #[test]
    fn a_key_named_exactly_is_read_and_nothing_else() {
        let r = reads("TAG={{ key \"configs/web/IMAGE_TAG\" }}\n", KEY);
        assert_eq!(r.key, Some(Reach::Exact));
        assert!(!r.others);
        let r = reads(
            "TAG={{ keyOrDefault `configs/web/IMAGE_TAG@dc1` \"x\" }}",
            KEY,
        );
        assert_eq!(r.key, Some(Reach::Exact));
        assert!(!r.others, "the default is not a key");
    }

    #[test]
    fn the_classic_range_ls_covers_the_key_and_renders_others() {
        let body = "{{ range ls \"configs/web\" }}{{ .Key }}={{ .Value }}\n{{ end }}";
        let r = reads(body, KEY);
        assert_eq!(r.key, prefix("ls", "configs/web"));
        assert!(r.others);
        // A trailing slash and the trim markers change nothing.
        let r = reads("{{- range ls \"configs/web/\" -}}{{ .Key }}{{- end }}", KEY);
        assert_eq!(r.key, prefix("ls", "configs/web/"));
    }

    #[test]
    fn ls_is_one_level_deep_and_tree_every_level() {
        let body = "{{ range ls \"configs\" }}{{ .Key }}{{ end }}";
        assert_eq!(reads(body, KEY).key, None);
        let body = "{{ range tree \"configs\" }}{{ .Key }}{{ end }}";
        assert_eq!(reads(body, KEY).key, prefix("tree", "configs"));
        let body = "{{ range safeTree \"\" }}{{ .Key }}{{ end }}";
        assert_eq!(reads(body, KEY).key, prefix("safeTree", ""));
    }

    #[test]
    fn a_prefix_that_only_shares_letters_does_not_cover_the_key() {
        let body = "{{ range ls \"configs/we\" }}{{ .Key }}{{ end }}";
        assert_eq!(reads(body, KEY).key, None);
    }

    #[test]
    fn a_listing_that_leaves_the_key_out_by_name_does_not_read_it() {
        let body = "{{ range ls \"configs/web\" }}{{ if ne .Key \"IMAGE_TAG\" }}{{ .Key }}={{ .Value }}\n{{ end }}{{ end }}";
        let r = reads(body, KEY);
        assert_eq!(r.key, None);
        assert!(r.others);
    }

    #[test]
    fn only_ne_key_leaves_the_key_out() {
        for body in [
            "{{ range ls \"configs/web\" }}{{ if eq .Key \"IMAGE_TAG\" }}x{{ end }}{{ .Key }}{{ end }}",
            "{{ env \"IMAGE_TAG\" }}{{ range ls \"configs/web\" }}{{ .Key }}{{ end }}",
        ] {
            assert_eq!(reads(body, KEY).key, Some(Reach::Prefix { func: "ls".into(), prefix: "configs/web".into() }), "{body}");
        }
    }

    #[test]
    fn text_outside_actions_is_output_not_a_read() {
        let r = reads(
            "# reads \"configs/web/IMAGE_TAG\" and ls \"configs\"\n",
            KEY,
        );
        assert_eq!(
            r,
            Reads {
                key: None,
                others: false
            }
        );
    }

    #[test]
    fn another_key_by_name_is_another_key() {
        let body = "{{ key \"configs/web/IMAGE_TAG\" }} {{ key \"configs/web/LOG_LEVEL\" }}";
        let r = reads(body, KEY);
        assert_eq!(r.key, Some(Reach::Exact));
        assert!(r.others);
    }

    #[test]
    fn unterminated_actions_and_strings_do_not_panic() {
        for body in ["{{ key \"configs/web", "{{ `", "{{ \"\\", "}}{{", "{{"] {
            let _ = reads(body, KEY);
        }
    }
}
