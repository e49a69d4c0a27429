//! A test that the crate's modules (one per file) do not import one another in a cycle.
//!
//! It reads the sources, not the compiler's view: every `crate::`, `super::` and `self::` path
//! (in `use` lines and inline, `use` groups included) outside comments and outside top-level
//! `#[cfg(test)] mod ... { }` blocks. A path is resolved to the file that defines the item it
//! names: the longest module prefix, then the item's name among that module's own
//! definitions, else among its descendants' (this follows a parent's `pub use self::child::*`
//! to the child that defines the item). Paths without such a prefix (extern crates, a
//! parent's `use child::X`) are not read: within the crate they can only reach a module's
//! own children. An item a macro makes is seen only when its name follows a keyword in the
//! call (`section!`'s `pub struct Name`); the `id_newtype!` ids count as their parent
//! `db::models`'s.
//!
//! A dependency between a module and one of its ancestors or descendants does not count: a
//! parent declaring and re-exporting its children, and a child using its parent's shared
//! helpers, is how a Rust module tree is built. Cycles among siblings and cousins are what
//! this test reports (Tarjan's strongly connected components).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// A module's path inside the crate (`["db", "models", "session"]`; the crate root is empty).
type Module = Vec<String>;

/// Cycles that exist and are being taken apart elsewhere; each must still exist (remove it
/// here once it is gone), and no other may appear. Members sorted, joined by ` <-> `.
const KNOWN_CYCLES: &[&str] = &[];

/// Keywords after which a source file defines a name.
const DEFINING_KEYWORDS: &[&str] = &[
    "struct",
    "enum",
    "union",
    "fn",
    "trait",
    "const",
    "type",
    "static",
    "mod",
    "macro_rules",
];

/// The module a source file holds, from its path relative to `src/`; `None` for binaries.
fn module_of(relative: &Path) -> Option<Module> {
    let mut parts: Vec<String> = relative
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.first().is_some_and(|p| p == "bin") || parts == ["main"] {
        return None;
    }
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    Some(parts)
}

/// The code of a file without comments and top-level `#[cfg(test)] mod ... { }` blocks.
fn code_of(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.trim() == "#[cfg(test)]" {
            let mut j = i + 1;
            while j < lines.len() && lines[j].trim_start().starts_with("#[") {
                j += 1;
            }
            let item = lines.get(j).map_or("", |l| l.trim());
            if (item.starts_with("mod ") || item.starts_with("pub mod ")) && item.ends_with('{') {
                // rustfmt puts the closing brace of a top-level module alone at column 0.
                while j < lines.len() && lines[j] != "}" {
                    j += 1;
                }
                i = j + 1;
                continue;
            }
        }
        let code = line.trim_start();
        if !code.starts_with("//") {
            // A trailing comment, when no string literal could hold the `//`.
            let code = match (line.find(" //"), line.find('"')) {
                (Some(at), None) => &line[..at],
                _ => line,
            };
            out.push_str(code);
            out.push('\n');
        }
        i += 1;
    }
    out
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The names a file's code defines.
fn definitions(code: &str) -> BTreeSet<String> {
    let words: Vec<&str> = code
        .split(|c: char| !is_ident_char(c))
        .filter(|w| !w.is_empty())
        .collect();
    words
        .windows(2)
        .filter(|w| DEFINING_KEYWORDS.contains(&w[0]))
        .map(|w| w[1].to_owned())
        .collect()
}

/// Reads one path or `use` tree starting at `pos`, appending every full path it names (as
/// written, segments only) to `out`. Returns the position after it.
fn read_tree(
    chars: &[char],
    mut pos: usize,
    prefix: &[String],
    out: &mut Vec<Vec<String>>,
) -> usize {
    let skip_ws = |pos: &mut usize| {
        while chars.get(*pos).is_some_and(|c| c.is_whitespace()) {
            *pos += 1;
        }
    };
    let mut path = prefix.to_vec();
    loop {
        skip_ws(&mut pos);
        match chars.get(pos) {
            Some('{') => {
                pos += 1;
                loop {
                    skip_ws(&mut pos);
                    match chars.get(pos) {
                        None => return pos,
                        Some('}') => return pos + 1,
                        Some(',') => pos += 1,
                        Some(_) => {
                            let before = pos;
                            pos = read_tree(chars, pos, &path, out);
                            if pos == before {
                                pos += 1;
                            }
                        }
                    }
                }
            }
            Some('*') => {
                out.push(path);
                return pos + 1;
            }
            _ => {}
        }
        let start = pos;
        while chars.get(pos).copied().is_some_and(is_ident_char) {
            pos += 1;
        }
        if pos == start {
            out.push(path);
            return pos;
        }
        let segment: String = chars[start..pos].iter().collect();
        // `{self, X}` names the prefix itself.
        if segment != "self" || path.is_empty() {
            path.push(segment);
        }
        if chars.get(pos) == Some(&':') && chars.get(pos + 1) == Some(&':') {
            pos += 2;
        } else {
            out.push(path);
            return pos;
        }
    }
}

/// Every `crate::`, `super::` or `self::` path in `code`, made absolute for module `module`.
fn paths_in(module: &Module, code: &str) -> Vec<Module> {
    let chars: Vec<char> = code.chars().collect();
    let mut written = Vec::new();
    let mut pos = 0;
    while pos < chars.len() {
        let starts_path = ["crate::", "super::", "self::"].iter().find(|word| {
            let word: Vec<char> = word.chars().collect();
            chars.get(pos..pos + word.len()) == Some(&word[..])
        });
        let after_ident = pos > 0 && chars.get(pos - 1).copied().is_some_and(is_ident_char);
        match starts_path {
            Some(_) if !after_ident => pos = read_tree(&chars, pos, &[], &mut written),
            _ => pos += 1,
        }
    }
    written
        .into_iter()
        .filter_map(|path| {
            let mut segments = path.into_iter().peekable();
            let mut absolute = match segments.next()?.as_str() {
                "crate" => Vec::new(),
                "self" => module.clone(),
                "super" => module[..module.len().checked_sub(1)?].to_vec(),
                _ => return None,
            };
            while segments.peek().is_some_and(|s| s == "super") {
                segments.next();
                absolute.pop()?;
            }
            absolute.extend(segments);
            Some(absolute)
        })
        .collect()
}

/// The module that defines what `path` names (see the module doc).
fn resolve(path: &[String], defines: &BTreeMap<Module, BTreeSet<String>>) -> Module {
    let prefix_len = (0..=path.len())
        .rev()
        .find(|&n| defines.contains_key(&path[..n]))
        .unwrap_or(0);
    let module = path[..prefix_len].to_vec();
    let Some(name) = path.get(prefix_len) else {
        return module;
    };
    if defines.get(&module).is_some_and(|d| d.contains(name)) {
        return module;
    }
    let mut holders = defines
        .iter()
        .filter(|(m, d)| m.len() > module.len() && m.starts_with(&module) && d.contains(name));
    match (holders.next(), holders.next()) {
        (Some((holder, _)), None) => holder.clone(),
        _ => module,
    }
}

/// The dependencies between modules that count (see the module doc), from each file's text.
fn dependencies(files: &BTreeMap<Module, String>) -> BTreeMap<Module, BTreeSet<Module>> {
    let code: BTreeMap<&Module, String> = files.iter().map(|(m, t)| (m, code_of(t))).collect();
    let defines: BTreeMap<Module, BTreeSet<String>> = code
        .iter()
        .map(|(m, c)| ((*m).clone(), definitions(c)))
        .collect();
    code.iter()
        .map(|(module, code)| {
            let targets = paths_in(module, code)
                .iter()
                .map(|path| resolve(path, &defines))
                .filter(|target| !target.starts_with(module) && !module.starts_with(target))
                .collect();
            ((*module).clone(), targets)
        })
        .collect()
}

/// The cycles of a dependency graph: its strongly connected components of two or more
/// modules, each as its sorted member names joined by ` <-> `.
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> BTreeSet<String> {
    struct Tarjan<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: BTreeSet<String>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a Module) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut members = Vec::new();
                while let Some(w) = self.stack.pop() {
                    members.push(w.join("::"));
                    if w == v {
                        break;
                    }
                }
                if members.len() > 1 {
                    members.sort();
                    self.found.insert(members.join(" <-> "));
                }
            }
        }
    }
    let mut tarjan = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: BTreeSet::new(),
    };
    for v in graph.keys() {
        if !tarjan.index.contains_key(v) {
            tarjan.visit(v);
        }
    }
    tarjan.found
}

/// Every source file of the crate's library, by module.
fn crate_sources() -> BTreeMap<Module, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Module, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs")
                && let Some(module) = module_of(path.strip_prefix(root).unwrap())
            {
                out.insert(module, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    walk(&root, &root, &mut out);
    out
}

fn module(path: &str) -> Module {
    path.split("::").map(str::to_owned).collect()
}

#[test]
fn the_crate_has_no_module_cycles_but_the_known_ones() {
    let graph = dependencies(&crate_sources());
    // The reader works: dependencies it must see, through `use`, inline paths, `use` groups
    // and a parent's glob re-export.
    for (from, to) in [
        ("cli", "service"),
        ("service", "config"),
        ("manage", "db::models::ids"),
        ("db::models::session", "db::models::console"),
        ("db::models::session", "db::models::ids"),
    ] {
        assert!(
            graph[&module(from)].contains(&module(to)),
            "{from} -> {to} not found; the reader is broken: {:?}",
            graph[&module(from)]
        );
    }
    let found = cycles(&graph);
    let known: BTreeSet<String> = KNOWN_CYCLES.iter().map(|&c| c.to_owned()).collect();
    let describe = |cycle: &String| {
        let members: Vec<Module> = cycle.split(" <-> ").map(module).collect();
        let edges: Vec<String> = members
            .iter()
            .flat_map(|m| {
                graph[m]
                    .iter()
                    .filter(|t| members.contains(t))
                    .map(move |t| format!("{} -> {}", m.join("::"), t.join("::")))
            })
            .collect();
        format!("{cycle} ({})", edges.join(", "))
    };
    let new: Vec<String> = found.difference(&known).map(describe).collect();
    assert!(new.is_empty(), "module cycles: {new:#?}");
    let gone: Vec<&String> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "these cycles are gone: remove them from KNOWN_CYCLES: {gone:?}"
    );
}

#[test]
fn a_cycle_through_a_reexport_or_a_use_group_is_found() {
    let files: BTreeMap<Module, String> = [
        ("", "pub mod a;\npub mod b;\n"),
        ("a", "pub mod x;\npub use self::x::*;\n"),
        ("a::x", "use crate::b::{self, Other};\npub struct Thing;\n"),
        ("b", "pub struct Other;\n/// crate::c::Z in a comment\nfn f() { let _ = crate::a::Thing; }\n"),
        ("c", "#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n}\npub struct Z;\n"),
    ]
    .into_iter()
    .map(|(m, t)| (module(m).into_iter().filter(|s| !s.is_empty()).collect(), t.to_owned()))
    .collect();
    let graph = dependencies(&files);
    assert_eq!(
        graph[&module("c")],
        BTreeSet::new(),
        "a test module counted"
    );
    assert_eq!(graph[&module("b")], BTreeSet::from([module("a::x")]));
    assert_eq!(cycles(&graph), BTreeSet::from(["a::x <-> b".to_owned()]));
}
