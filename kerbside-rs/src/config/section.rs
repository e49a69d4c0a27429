//! Typed sections: the `section!` macro that declares a section's options once (type, default
//! and help text), and the [`Loader`] that turns raw values into those types while collecting
//! every problem.
//!
//! It knows no section itself (the sections are declared with its macro, in their own files):
//! the caller hands [`Loader::new`] the `[DEFAULT]` option specs that `$name` substitution
//! falls back to. Checks that span options are each section's `validate` (in its own file,
//! with `super::validation`'s helpers); checks that span sections are [`super::Config`]'s.

use std::collections::BTreeSet;

use super::ConfigProblem;
use super::source::{RawConfig, RawValue};
use super::value::OptValue;

/// What the sample file and `config check` know about one option.
#[derive(Debug)]
pub struct OptionSpec {
    /// The option name.
    pub name: &'static str,
    /// The help text (the field's doc comment).
    pub help: &'static str,
    /// The type's description, e.g. "integer value".
    pub kind: &'static str,
    /// Extra description of the type (allowed values).
    pub describe: Option<String>,
    /// The default as written in the file, if any.
    pub default: Option<&'static str>,
    /// Whether the value is a secret.
    pub secret: bool,
}

/// A section of the configuration file.
pub trait Section: Sized {
    /// The section name, e.g. `proxy`.
    const NAME: &'static str;
    /// One line on what the section configures.
    const HELP: &'static str;
    /// Every option of the section, in declaration order.
    fn specs() -> Vec<OptionSpec>;
    /// Loads the section, recording problems in the loader. `None` when any option failed.
    fn load(loader: &mut Loader<'_>) -> Option<Self>;
}

/// Turns raw values into typed ones, remembering which options are known and every problem.
pub struct Loader<'a> {
    /// The values read from the files.
    raw: &'a RawConfig,
    /// The `[DEFAULT]` section's options: `$name` substitution falls back to their defaults.
    defaults: Vec<OptionSpec>,
    /// Every problem found so far.
    pub problems: Vec<ConfigProblem>,
    /// Every `(section, option)` read so far, to find the unknown ones.
    known: BTreeSet<(String, String)>,
}

impl<'a> Loader<'a> {
    /// A loader over the given raw configuration. `defaults` are the `[DEFAULT]` section's
    /// option specs (the loader does not know the sections; the caller does).
    pub fn new(raw: &'a RawConfig, defaults: Vec<OptionSpec>) -> Self {
        Loader {
            raw,
            defaults,
            problems: Vec::new(),
            known: BTreeSet::new(),
        }
    }

    /// Whether an option of `section` is declared (used to find unknown ones).
    pub fn is_known(&self, section: &str, option: &str) -> bool {
        self.known
            .contains(&(section.to_owned(), option.to_owned()))
    }

    /// Whether the section name belongs to any declared option.
    pub fn is_known_section(&self, section: &str) -> bool {
        self.known.iter().any(|(s, _)| s == section)
    }

    /// Reads one option: the values in the files (later files win; a list option collects all
    /// of them), else the default, else `T::absent()`.
    pub fn get<T: OptValue>(
        &mut self,
        section: &'static str,
        option: &'static str,
        default: Option<&'static str>,
    ) -> Option<T> {
        self.known.insert((section.to_owned(), option.to_owned()));
        let values = self.raw.values(section, option);
        if values.is_empty() {
            let parsed = match default {
                Some(text) => T::parse(&self.interpolate(text)),
                None => T::absent(),
            };
            return parsed
                .map_err(|message| {
                    let message = if default.is_some() {
                        format!("invalid default (a bug): {message}")
                    } else {
                        format!("{message}: set it in the configuration file")
                    };
                    self.problems
                        .push(ConfigProblem::option(section, option, None, message));
                })
                .ok();
        }
        if !T::MULTI {
            self.check_duplicates(section, option, values);
        }
        let texts: Vec<String> = if T::MULTI {
            values.iter().map(|v| self.interpolate(&v.text)).collect()
        } else {
            values
                .last()
                .map(|v| self.interpolate(&v.text))
                .into_iter()
                .collect()
        };
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let location = values.last().map(|v| v.location.clone());
        T::parse_all(&refs)
            .map_err(|error| {
                self.problems.push(ConfigProblem::option(
                    section,
                    option,
                    location,
                    error.to_string(),
                ));
            })
            .ok()
    }

    /// A single-valued option given twice in the same file is almost always a mistake (which
    /// one did the operator mean?), so it is reported. Across files, the later file wins.
    fn check_duplicates(&mut self, section: &str, option: &str, values: &[RawValue]) {
        for pair in values.windows(2) {
            if let [a, b] = pair
                && a.file_index == b.file_index
            {
                self.problems.push(ConfigProblem::option(
                    section,
                    option,
                    Some(b.location.clone()),
                    format!(
                        "set more than once in this file (also at line {}); keep one",
                        a.location.line
                    ),
                ));
            }
        }
    }

    /// Replaces `$name` and `${name}` with the value of the `[DEFAULT] option` `name`, as
    /// oslo.config does. Only declared `[DEFAULT] options` are substituted, so a `$` in a password
    /// stays as it is; `$$` is a literal `$`.
    fn interpolate(&self, text: &str) -> String {
        if !text.contains('$') {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(pos) = rest.find('$') {
            out.push_str(rest.get(..pos).unwrap_or_default());
            let after = rest.get(pos + 1..).unwrap_or_default();
            if let Some(tail) = after.strip_prefix('$') {
                out.push('$');
                rest = tail;
                continue;
            }
            let (name, tail) = match after.strip_prefix('{') {
                Some(inner) => match inner.find('}') {
                    Some(end) => (
                        inner.get(..end).unwrap_or_default(),
                        inner.get(end + 1..).unwrap_or_default(),
                    ),
                    None => ("", after),
                },
                None => {
                    let end = after
                        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                        .unwrap_or(after.len());
                    (
                        after.get(..end).unwrap_or_default(),
                        after.get(end..).unwrap_or_default(),
                    )
                }
            };
            match self.default_value_text(name) {
                Some(value) if !name.is_empty() => {
                    out.push_str(&value);
                    rest = tail;
                }
                _ => {
                    out.push('$');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The text of a `[DEFAULT] option` for substitution: its last value, else its declared
    /// default.
    fn default_value_text(&self, name: &str) -> Option<String> {
        if let Some(v) = self.raw.values("DEFAULT", name).last() {
            return Some(v.text.clone());
        }
        self.defaults
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.default.map(str::to_owned))
    }
}

/// Declares a configuration section: a struct whose fields are the options. The doc comment of
/// each field is its help text (in rustdoc and in the sample file); `= "text"` is its default,
/// written as it would be in the file. Fields without a default must be `Option<_>` or lists.
macro_rules! section {
    (
        $(#[doc = $sdoc:literal])*
        pub struct $name:ident($section:literal) {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty $(= $default:literal)?
            ),* $(,)?
        }
    ) => {
        $(#[doc = $sdoc])*
        #[derive(Clone, Debug)]
        pub struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $crate::config::section::Section for $name {
            const NAME: &'static str = $section;
            const HELP: &'static str = concat!($($sdoc),*);
            fn specs() -> Vec<$crate::config::section::OptionSpec> {
                vec![$(
                    $crate::config::section::OptionSpec {
                        name: stringify!($field),
                        help: concat!($($doc, "\n"),*),
                        kind: <$ty as $crate::config::value::OptValue>::KIND,
                        describe: <$ty as $crate::config::value::OptValue>::describe(),
                        default: None $(.or(Some($default)))?,
                        secret: <$ty as $crate::config::value::OptValue>::SECRET,
                    },
                )*]
            }
            fn load(loader: &mut $crate::config::section::Loader<'_>) -> Option<Self> {
                $(
                    let $field = loader.get::<$ty>($section, stringify!($field), None $(.or(Some($default)))?);
                )*
                Some(Self { $( $field: $field?, )* })
            }
        }
    };
}
pub(crate) use section;
