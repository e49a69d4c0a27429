//! Authorization rules in oslo.policy style: named rules with check strings, defaults in code,
//! overridden by a `policy.yaml` (`"<rule>": "<check string>"`).
//!
//! The supported check-string subset: `role:<name>` (case-insensitive), `rule:<name>`,
//! `<credential>:<value>` (e.g. `project_id:%(project_id)s`, `system_scope:all`,
//! `user_id:%(user_id)s`), `@` (always), `!` (never), an empty string (always), `and`,
//! `or`, `not` and parentheses. Values of the form `%(key)s` are taken from the target;
//! anything else is a literal (a quoted literal may use single or double quotes).
//!
//! A policy file that does not parse, or that refers to an unknown rule or loops, is a
//! start-up error; a missing file means the defaults.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The default rules: every rule of the operator API with its default check string and what
/// it protects.
pub const DEFAULT_RULES: &[(&str, &str, &str)] = &[
    ("context_is_admin", "role:admin", "Administrators."),
    (
        "system_reader",
        "role:reader and system_scope:all",
        "Readers of the whole deployment (system-scoped tokens).",
    ),
    (
        "admin_or_reader",
        "rule:context_is_admin or rule:system_reader",
        "Administrators and system readers.",
    ),
    (
        "kerbside:source:list",
        "rule:admin_or_reader",
        "GET /v1/sources",
    ),
    (
        "kerbside:source:show",
        "rule:admin_or_reader",
        "GET /v1/sources/{source}",
    ),
    (
        "kerbside:console:list",
        "rule:admin_or_reader",
        "GET /v1/consoles",
    ),
    (
        "kerbside:console:show",
        "rule:admin_or_reader",
        "GET /v1/consoles/{source}/{uuid}",
    ),
    (
        "kerbside:console:issue_token",
        "rule:context_is_admin",
        "GET /v1/consoles/{source}/{uuid}/console.vv",
    ),
    (
        "kerbside:event:list",
        "rule:admin_or_reader",
        "GET /v1/consoles/{source}/{uuid}/events",
    ),
    (
        "kerbside:session:list",
        "rule:admin_or_reader",
        "GET /v1/sessions",
    ),
    (
        "kerbside:session:show",
        "rule:admin_or_reader",
        "GET /v1/sessions/{session_id}",
    ),
    (
        "kerbside:session:terminate",
        "rule:context_is_admin",
        "POST /v1/sessions/{session_id}/terminate",
    ),
    (
        "kerbside:server:create_console",
        "@",
        "POST /v1/servers/{instance_uuid}/console (Nova authorizes the user as well)",
    ),
];

/// A parsed check string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// `@` or an empty string.
    Always,
    /// `!`.
    Never,
    /// `role:<name>`.
    Role(String),
    /// `rule:<name>`.
    Rule(String),
    /// `<credential>:<value>`.
    Match {
        /// Credential key (e.g. `project_id`).
        key: String,
        /// A literal, or `%(target_key)s`.
        value: String,
    },
    /// `not <check>`.
    Not(Box<Check>),
    /// `<check> and <check> ...`.
    And(Vec<Check>),
    /// `<check> or <check> ...`.
    Or(Vec<Check>),
}

/// A check string or policy file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PolicyError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Open,
    Close,
    And,
    Or,
    Not,
    Atom(String),
}

fn tokenize(s: &str) -> Vec<Tok> {
    let mut out = Vec::new();
    for word in s.split_whitespace() {
        let mut w = word;
        while let Some(rest) = w.strip_prefix('(') {
            out.push(Tok::Open);
            w = rest;
        }
        let mut closes = 0;
        while let Some(rest) = w.strip_suffix(')') {
            // `%(key)s` ends in `)s`, never in `)`, so a trailing `)` is always a parenthesis.
            closes += 1;
            w = rest;
        }
        if !w.is_empty() {
            out.push(match w.to_ascii_lowercase().as_str() {
                "and" => Tok::And,
                "or" => Tok::Or,
                "not" => Tok::Not,
                _ => Tok::Atom(w.to_owned()),
            });
        }
        out.extend(std::iter::repeat_n(Tok::Close, closes));
    }
    out
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn or(&mut self) -> Result<Check, PolicyError> {
        self.joined(&Tok::Or, Self::and, Check::Or)
    }

    fn and(&mut self) -> Result<Check, PolicyError> {
        self.joined(&Tok::And, Self::not, Check::And)
    }

    /// `operand (op operand)*`: a lone operand as it is, else `join` of them all.
    fn joined(
        &mut self,
        op: &Tok,
        operand: fn(&mut Self) -> Result<Check, PolicyError>,
        join: fn(Vec<Check>) -> Check,
    ) -> Result<Check, PolicyError> {
        let mut parts = vec![operand(self)?];
        while self.peek() == Some(op) {
            self.pos += 1;
            parts.push(operand(self)?);
        }
        Ok(if parts.len() == 1 {
            parts.remove(0)
        } else {
            join(parts)
        })
    }

    fn not(&mut self) -> Result<Check, PolicyError> {
        if self.peek() == Some(&Tok::Not) {
            self.pos += 1;
            return Ok(Check::Not(Box::new(self.not()?)));
        }
        self.atom()
    }

    fn atom(&mut self) -> Result<Check, PolicyError> {
        match self.next() {
            Some(Tok::Open) => {
                let inner = self.or()?;
                match self.next() {
                    Some(Tok::Close) => Ok(inner),
                    _ => Err(PolicyError("missing ')'".to_owned())),
                }
            }
            Some(Tok::Atom(a)) => atom(&a),
            Some(other) => Err(PolicyError(format!("unexpected {other:?}"))),
            None => Err(PolicyError("unexpected end of check string".to_owned())),
        }
    }
}

fn atom(a: &str) -> Result<Check, PolicyError> {
    match a {
        "@" => return Ok(Check::Always),
        "!" => return Ok(Check::Never),
        _ => {}
    }
    let (kind, value) = a
        .split_once(':')
        .ok_or_else(|| PolicyError(format!("'{a}' is not a check (expected kind:value)")))?;
    let value = value.trim_matches(|c| c == '\'' || c == '"');
    if value.is_empty() || kind.is_empty() {
        return Err(PolicyError(format!("'{a}' is incomplete")));
    }
    Ok(match kind {
        "role" => Check::Role(value.to_lowercase()),
        "rule" => Check::Rule(value.to_owned()),
        "http" | "https" => {
            return Err(PolicyError(format!(
                "'{a}': HTTP checks are not supported by kerbside"
            )));
        }
        _ => Check::Match {
            key: kind.to_owned(),
            value: value.to_owned(),
        },
    })
}

/// Parses one check string.
///
/// # Errors
/// A syntax error, naming what is wrong.
pub fn parse(check: &str) -> Result<Check, PolicyError> {
    let toks = tokenize(check);
    if toks.is_empty() {
        return Ok(Check::Always);
    }
    let mut p = Parser { toks, pos: 0 };
    let c = p.or()?;
    if p.pos != p.toks.len() {
        return Err(PolicyError(format!(
            "unexpected text after position {} in '{check}'",
            p.pos
        )));
    }
    Ok(c)
}

/// Who is asking: the credential side of a check.
#[derive(Clone, Debug, Default)]
pub struct Creds {
    /// Role names, lower case.
    pub roles: Vec<String>,
    /// Other credential values (`user_id`, `project_id`, `system_scope`, ...).
    pub values: HashMap<String, String>,
}

/// The rules in force.
#[derive(Clone, Debug)]
pub struct Policy {
    rules: HashMap<String, Check>,
}

/// How deep `rule:` references may nest before evaluation gives up (a loop guard).
const MAX_DEPTH: usize = 32;

impl Policy {
    /// The defaults overridden by `overrides` (rule name → check string).
    ///
    /// # Errors
    /// A rule that does not parse, refers to an unknown rule or loops.
    pub fn with_overrides(overrides: &BTreeMap<String, String>) -> Result<Self, PolicyError> {
        let mut rules = HashMap::new();
        for (name, check, _) in DEFAULT_RULES {
            rules.insert((*name).to_owned(), parse(check)?);
        }
        for (name, check) in overrides {
            let parsed = parse(check).map_err(|e| PolicyError(format!("rule \"{name}\": {e}")))?;
            rules.insert(name.clone(), parsed);
        }
        let policy = Policy { rules };
        policy.check_references()?;
        Ok(policy)
    }

    /// The defaults.
    ///
    /// # Errors
    /// Never in practice (the defaults are tested).
    pub fn defaults() -> Result<Self, PolicyError> {
        Self::with_overrides(&BTreeMap::new())
    }

    /// Loads `path`: a YAML (or JSON) map of rule names to check strings. A missing file
    /// means the defaults.
    ///
    /// # Errors
    /// An unreadable or invalid file, naming the file and the rule.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::defaults(),
            Err(e) => return Err(PolicyError(format!("cannot read {}: {e}", path.display()))),
        };
        let overrides: BTreeMap<String, String> = if text.trim().is_empty() {
            BTreeMap::new()
        } else {
            serde_norway::from_str::<Option<BTreeMap<String, String>>>(&text)
                .map_err(|e| {
                    PolicyError(format!(
                        "{}: not a map of rule names to check strings: {e}",
                        path.display()
                    ))
                })?
                .unwrap_or_default()
        };
        Self::with_overrides(&overrides)
            .map_err(|e| PolicyError(format!("{}: {}", path.display(), e.0)))
    }

    fn check_references(&self) -> Result<(), PolicyError> {
        fn visit(
            policy: &Policy,
            check: &Check,
            path: &mut Vec<String>,
        ) -> Result<(), PolicyError> {
            match check {
                Check::Rule(name) => {
                    if path.contains(name) {
                        return Err(PolicyError(format!(
                            "rule \"{name}\" refers to itself through {}",
                            path.join(" -> ")
                        )));
                    }
                    let inner = policy.rules.get(name).ok_or_else(|| {
                        PolicyError(format!(
                            "rule \"{}\" refers to unknown rule \"{name}\"",
                            path.last().map(String::as_str).unwrap_or("?")
                        ))
                    })?;
                    path.push(name.clone());
                    visit(policy, inner, path)?;
                    path.pop();
                    Ok(())
                }
                Check::Not(c) => visit(policy, c, path),
                Check::And(cs) | Check::Or(cs) => {
                    cs.iter().try_for_each(|c| visit(policy, c, path))
                }
                _ => Ok(()),
            }
        }
        for (name, check) in &self.rules {
            visit(self, check, &mut vec![name.clone()])?;
        }
        Ok(())
    }

    /// Whether `creds` pass rule `name` for `target`. An unknown rule denies.
    pub fn allows(&self, name: &str, creds: &Creds, target: &HashMap<String, String>) -> bool {
        self.rules
            .get(name)
            .is_some_and(|c| self.eval(c, creds, target, 0))
    }

    fn eval(
        &self,
        check: &Check,
        creds: &Creds,
        target: &HashMap<String, String>,
        depth: usize,
    ) -> bool {
        if depth > MAX_DEPTH {
            return false;
        }
        match check {
            Check::Always => true,
            Check::Never => false,
            Check::Role(r) => creds.roles.iter().any(|have| have.eq_ignore_ascii_case(r)),
            Check::Rule(name) => self
                .rules
                .get(name)
                .is_some_and(|c| self.eval(c, creds, target, depth + 1)),
            Check::Match { key, value } => {
                let want = match value.strip_prefix("%(").and_then(|v| v.strip_suffix(")s")) {
                    Some(target_key) => match target.get(target_key) {
                        Some(v) => v.as_str(),
                        None => return false,
                    },
                    None => value.as_str(),
                };
                creds
                    .values
                    .get(key)
                    .is_some_and(|have| have.eq_ignore_ascii_case(want) && !have.is_empty())
            }
            Check::Not(c) => !self.eval(c, creds, target, depth + 1),
            Check::And(cs) => cs.iter().all(|c| self.eval(c, creds, target, depth + 1)),
            Check::Or(cs) => cs.iter().any(|c| self.eval(c, creds, target, depth + 1)),
        }
    }
}

/// The defaults as a commented `policy.yaml`, for documentation.
pub fn sample_yaml() -> String {
    let mut out = String::from(
        "# kerbside operator API policy (oslo.policy style). Uncomment a rule to change it.\n",
    );
    for (name, check, help) in DEFAULT_RULES {
        out.push_str(&format!("\n# {help}\n#\"{name}\": \"{check}\"\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(roles: &[&str], values: &[(&str, &str)]) -> Creds {
        Creds {
            roles: roles.iter().map(|r| r.to_string()).collect(),
            values: values
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn policy(rules: &[(&str, &str)]) -> Policy {
        Policy::with_overrides(
            &rules
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .unwrap()
    }

    #[test]
    fn parses_the_grammar() {
        assert_eq!(parse("").unwrap(), Check::Always);
        assert_eq!(parse("@").unwrap(), Check::Always);
        assert_eq!(parse("!").unwrap(), Check::Never);
        assert_eq!(parse("role:Admin").unwrap(), Check::Role("admin".into()));
        assert_eq!(
            parse("role:a or role:b and not role:c").unwrap(),
            Check::Or(vec![
                Check::Role("a".into()),
                Check::And(vec![
                    Check::Role("b".into()),
                    Check::Not(Box::new(Check::Role("c".into())))
                ])
            ])
        );
        assert_eq!(
            parse("(role:a or role:b) and project_id:%(project_id)s").unwrap(),
            Check::And(vec![
                Check::Or(vec![Check::Role("a".into()), Check::Role("b".into())]),
                Check::Match {
                    key: "project_id".into(),
                    value: "%(project_id)s".into()
                }
            ])
        );
        assert_eq!(
            parse("((role:a))").unwrap(),
            Check::Role("a".into()),
            "nested parentheses"
        );
        for bad in [
            "role:a or",
            "(role:a",
            "role:a)",
            "role",
            "and role:a",
            "http://x",
            "role:",
        ] {
            assert!(parse(bad).is_err(), "{bad} should not parse");
        }
    }

    #[test]
    fn defaults_admin_everything_readers_read() {
        let p = Policy::defaults().unwrap();
        let none = HashMap::new();
        let admin = creds(&["admin", "member", "reader"], &[("project_id", "p1")]);
        let member = creds(&["member", "reader"], &[("project_id", "p1")]);
        let system_reader = creds(&["reader"], &[("system_scope", "all")]);
        for (name, _, _) in DEFAULT_RULES
            .iter()
            .filter(|(n, _, _)| n.starts_with("kerbside:"))
        {
            assert!(p.allows(name, &admin, &none), "admin may {name}");
        }
        assert!(!p.allows("kerbside:source:list", &member, &none));
        assert!(p.allows("kerbside:source:list", &system_reader, &none));
        assert!(!p.allows("kerbside:session:terminate", &system_reader, &none));
        assert!(p.allows("kerbside:server:create_console", &member, &none));
        assert!(!p.allows("no:such:rule", &admin, &none));
    }

    #[test]
    fn target_substitution_and_negation() {
        let p = policy(&[
            ("owner", "project_id:%(project_id)s"),
            (
                "kerbside:session:terminate",
                "rule:owner and not role:observer",
            ),
        ]);
        let target: HashMap<String, String> = [("project_id".to_owned(), "p1".to_owned())].into();
        let mine = creds(&["member"], &[("project_id", "p1")]);
        let theirs = creds(&["member"], &[("project_id", "p2")]);
        let observer = creds(&["member", "observer"], &[("project_id", "p1")]);
        assert!(p.allows("kerbside:session:terminate", &mine, &target));
        assert!(!p.allows("kerbside:session:terminate", &theirs, &target));
        assert!(!p.allows("kerbside:session:terminate", &observer, &target));
        assert!(!p.allows("kerbside:session:terminate", &mine, &HashMap::new()));
    }

    #[test]
    fn always_and_never() {
        let p = policy(&[("kerbside:source:list", "!"), ("kerbside:source:show", "@")]);
        let admin = creds(&["admin"], &[]);
        assert!(!p.allows("kerbside:source:list", &admin, &HashMap::new()));
        assert!(p.allows("kerbside:source:show", &creds(&[], &[]), &HashMap::new()));
    }

    #[test]
    fn rejects_unknown_rules_and_loops() {
        let unknown = Policy::with_overrides(&[("a".to_owned(), "rule:nope".to_owned())].into());
        assert!(unknown.unwrap_err().0.contains("unknown rule \"nope\""));
        let looped = Policy::with_overrides(
            &[
                ("a".to_owned(), "rule:b".to_owned()),
                ("b".to_owned(), "role:x or rule:a".to_owned()),
            ]
            .into(),
        );
        assert!(looped.unwrap_err().0.contains("refers to itself"));
    }

    #[test]
    fn loads_files() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Policy::load(&dir.path().join("none.yaml")).unwrap();
        assert!(!missing.allows(
            "kerbside:source:list",
            &creds(&["member"], &[]),
            &HashMap::new()
        ));
        let good = dir.path().join("policy.yaml");
        std::fs::write(&good, "\"kerbside:source:list\": \"role:member\"\n").unwrap();
        let p = Policy::load(&good).unwrap();
        assert!(p.allows(
            "kerbside:source:list",
            &creds(&["member"], &[]),
            &HashMap::new()
        ));
        let broken = dir.path().join("broken.yaml");
        std::fs::write(&broken, "\"kerbside:source:list\": \"role:member or\"\n").unwrap();
        let e = Policy::load(&broken).unwrap_err().0;
        assert!(
            e.contains("broken.yaml") && e.contains("kerbside:source:list"),
            "{e}"
        );
        std::fs::write(&broken, "- not a map\n").unwrap();
        assert!(Policy::load(&broken).is_err());
    }

    #[test]
    fn sample_lists_every_rule() {
        let s = sample_yaml();
        for (name, _, _) in DEFAULT_RULES {
            assert!(s.contains(name));
        }
    }
}
