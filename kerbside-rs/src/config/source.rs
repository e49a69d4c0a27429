//! Reading oslo-style INI files: which files, in which order, and where every value came from.
//!
//! Owns the raw, untyped view of the configuration ([`RawConfig`]) with file and line for every
//! value, and the syntax checks that need line numbers. Values are parsed by rust-ini; this
//! module adds the line index rust-ini does not keep. Typing and defaults live in `section.rs`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ini::{Ini, ParseOption};

use super::ConfigProblem;

/// Where a value was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    /// The configuration file.
    pub file: Arc<PathBuf>,
    /// The 1-based line of the `key = value` line.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One `key = value` occurrence.
#[derive(Clone, Debug)]
pub struct RawValue {
    /// The text after the separator, trimmed, surrounding quotes removed.
    pub text: String,
    /// Where it was written.
    pub location: Location,
    /// Which file of the load order it came from (0 = first).
    pub file_index: usize,
}

/// Every value of every file, in load order, keyed by (section, option).
#[derive(Debug, Default)]
pub struct RawConfig {
    /// The files read, in order.
    pub files: Vec<PathBuf>,
    values: BTreeMap<(String, String), Vec<RawValue>>,
    sections: BTreeMap<String, Location>,
}

impl RawConfig {
    /// Reads the files in order. Every unreadable file or syntax error is added to `problems`;
    /// the rest of the files are still read so that every problem is reported at once.
    pub fn load(files: &[PathBuf], problems: &mut Vec<ConfigProblem>) -> RawConfig {
        let mut raw = RawConfig::default();
        for (index, path) in files.iter().enumerate() {
            match std::fs::read_to_string(path) {
                Ok(text) => raw.add_text(path, index, &text, problems),
                Err(e) => problems.push(ConfigProblem::file(path, format!("cannot read: {e}"))),
            }
            raw.files.push(path.clone());
        }
        raw
    }

    /// Parses one file's text (also used by tests).
    pub fn add_text(
        &mut self,
        path: &Path,
        file_index: usize,
        text: &str,
        problems: &mut Vec<ConfigProblem>,
    ) {
        let file = Arc::new(path.to_path_buf());
        let Some(lines) = index_lines(&file, text, problems) else {
            return;
        };
        let options = ParseOption {
            enabled_quote: false,
            enabled_escape: false,
            enabled_indented_mutiline_value: true,
            ..ParseOption::default()
        };
        let ini = match Ini::load_from_str_opt(text, options) {
            Ok(ini) => ini,
            Err(e) => {
                let location = Location { file, line: e.line };
                problems.push(ConfigProblem::at(location, None, None, e.msg.to_string()));
                return;
            }
        };
        // rust-ini keeps repeated keys in order, so the n-th value of a key is the n-th line.
        let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
        for (section, props) in ini.iter() {
            let Some(section) = section else { continue };
            for (key, value) in props.iter() {
                let k = (section.to_owned(), key.to_owned());
                let n = seen.entry(k.clone()).or_insert(0);
                let line = lines
                    .keys
                    .get(&k)
                    .and_then(|v| v.get(*n))
                    .copied()
                    .unwrap_or(0);
                *n += 1;
                self.values.entry(k).or_default().push(RawValue {
                    text: unquote(value.trim()).to_owned(),
                    location: Location {
                        file: file.clone(),
                        line,
                    },
                    file_index,
                });
            }
        }
        for (section, line) in lines.sections {
            self.sections.entry(section).or_insert(Location {
                file: file.clone(),
                line,
            });
        }
    }

    /// The values given for an option, in load order.
    pub fn values(&self, section: &str, option: &str) -> &[RawValue] {
        self.values
            .get(&(section.to_owned(), option.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    /// Every (section, option) that was set, with its first location.
    pub fn all_keys(&self) -> impl Iterator<Item = (&str, &str, &Location)> {
        self.values.iter().filter_map(|((s, k), v)| {
            v.first()
                .map(|first| (s.as_str(), k.as_str(), &first.location))
        })
    }

    /// Every section header seen, with its first location.
    pub fn sections(&self) -> impl Iterator<Item = (&str, &Location)> {
        self.sections.iter().map(|(s, l)| (s.as_str(), l))
    }
}

/// Line numbers of section headers and keys, found by a scan that also reports the syntax
/// errors rust-ini would describe without a usable line.
struct LineIndex {
    keys: BTreeMap<(String, String), Vec<usize>>,
    sections: Vec<(String, usize)>,
}

fn index_lines(
    file: &Arc<PathBuf>,
    text: &str,
    problems: &mut Vec<ConfigProblem>,
) -> Option<LineIndex> {
    let mut index = LineIndex {
        keys: BTreeMap::new(),
        sections: Vec::new(),
    };
    let mut section: Option<String> = None;
    let mut after_key = false;
    let before = problems.len();
    for (n, line) in text.lines().enumerate() {
        let number = n + 1;
        let at = || Location {
            file: file.clone(),
            line: number,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with(';') {
            continue;
        }
        if line.starts_with([' ', '\t']) && after_key {
            continue; // a continuation of the previous value
        }
        if let Some(rest) = trimmed.strip_prefix('[') {
            match rest.strip_suffix(']') {
                Some(name) if !name.trim().is_empty() => {
                    let name = name.trim().to_owned();
                    index.sections.push((name.clone(), number));
                    section = Some(name);
                }
                _ => problems.push(ConfigProblem::at(
                    at(),
                    None,
                    None,
                    format!("invalid section header '{trimmed}': expected '[name]'"),
                )),
            }
            after_key = false;
            continue;
        }
        let Some(split) = trimmed.find(['=', ':']) else {
            problems.push(ConfigProblem::at(
                at(),
                section.clone(),
                None,
                format!(
                    "expected 'name = value' or '[section]', found '{}'",
                    shorten(trimmed)
                ),
            ));
            after_key = false;
            continue;
        };
        let key = trimmed.get(..split).unwrap_or_default().trim();
        match (&section, key.is_empty()) {
            (_, true) => problems.push(ConfigProblem::at(
                at(),
                section.clone(),
                None,
                "an option name is missing before '='".to_owned(),
            )),
            (None, false) => problems.push(ConfigProblem::at(
                at(),
                None,
                Some(key.to_owned()),
                "option outside any section: add a section header such as [DEFAULT] above it"
                    .to_owned(),
            )),
            (Some(s), false) => index
                .keys
                .entry((s.clone(), key.to_owned()))
                .or_default()
                .push(number),
        }
        after_key = true;
    }
    (problems.len() == before).then_some(index)
}

/// Shows at most 40 characters of a bad line (it could hold a secret pasted by mistake).
fn shorten(line: &str) -> String {
    let mut out: String = line.chars().take(40).collect();
    if out.len() < line.len() {
        out.push('…');
    }
    out
}

/// oslo.config strips one pair of matching surrounding quotes.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return value.get(1..value.len() - 1).unwrap_or(value);
        }
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (RawConfig, Vec<ConfigProblem>) {
        let mut problems = Vec::new();
        let mut raw = RawConfig::default();
        raw.add_text(Path::new("k.conf"), 0, text, &mut problems);
        (raw, problems)
    }

    #[test]
    fn values_keep_their_lines() {
        let (raw, problems) =
            parse("[DEFAULT]\n# c\ndebug = true\n\n[proxy]\nbind_host = a\nbind_host = 'b'\n");
        assert!(problems.is_empty(), "{problems:?}");
        let v = raw.values("proxy", "bind_host");
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].location.line, 6);
        assert_eq!(v[1].location.line, 7);
        assert_eq!(v[1].text, "b");
        assert_eq!(
            raw.values("DEFAULT", "debug")[0].location.to_string(),
            "k.conf:3"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let (_, problems) = parse("[DEFAULT]\ndebug = true\njunk here\n");
        assert_eq!(
            problems[0].to_string(),
            "k.conf:3: [DEFAULT]: expected 'name = value' or '[section]', found 'junk here'"
        );
        let (_, problems) = parse("debug = true\n");
        assert_eq!(
            problems[0].to_string(),
            "k.conf:1: debug: option outside any section: add a section header such as [DEFAULT] above it"
        );
        let (_, problems) = parse("[proxy\n");
        assert_eq!(
            problems[0].to_string(),
            "k.conf:1: invalid section header '[proxy': expected '[name]'"
        );
    }

    #[test]
    fn continuation_lines_join() {
        let (raw, problems) = parse("[a]\nk = one\n  two\nj = 3\n");
        assert!(problems.is_empty());
        assert_eq!(raw.values("a", "k")[0].text, "one\ntwo");
        assert_eq!(raw.values("a", "j")[0].location.line, 4);
    }
}
