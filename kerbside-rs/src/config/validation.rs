//! Checks that values fit together: [`Validator`] collects the problems that each section's
//! `validate` (in the section's own file) and [`super::Config`]'s cross-section checks find,
//! each placed at the line where its option was last written.
//!
//! It knows no section or option: the sections decide what to check, and this module words
//! the common cases ("must be at least 1", "cannot read") and finds each problem's line.
//! Single values were already checked by their types while loading (`section.rs`).

use std::path::Path;

use super::ConfigProblem;
use super::source::{Location, RawConfig};

/// Collects the problems found while validating a loaded configuration, in the order found.
pub struct Validator<'a> {
    /// The values read from the files, to find where an option was written.
    raw: &'a RawConfig,
    /// The problems found so far.
    problems: Vec<ConfigProblem>,
}

impl<'a> Validator<'a> {
    /// No problems yet; locations are looked up in `raw`.
    pub fn new(raw: &'a RawConfig) -> Self {
        Validator {
            raw,
            problems: Vec::new(),
        }
    }

    /// Checks of one section's options: what is reported through it names `section`.
    pub fn section(&mut self, section: &'static str) -> SectionValidator<'_> {
        SectionValidator {
            raw: self.raw,
            problems: &mut self.problems,
            section,
        }
    }

    /// The problems found, in the order they were reported.
    pub fn into_problems(self) -> Vec<ConfigProblem> {
        self.problems
    }
}

/// The checks of one section's options, reporting into a [`Validator`].
pub struct SectionValidator<'c> {
    /// The values read from the files, to find where an option was written.
    raw: &'c RawConfig,
    /// Where problems go.
    problems: &'c mut Vec<ConfigProblem>,
    /// The section every problem is about.
    section: &'static str,
}

impl SectionValidator<'_> {
    /// Reports a problem with `option`, at the line where it was last written (no line when
    /// only its default applies).
    pub fn problem(&mut self, option: &str, message: impl Into<String>) {
        self.problem_near(option, option, message);
    }

    /// Reports a problem with `option` at the line where `written` (an option of the same
    /// section) was last written: a missing option has no line of its own, so the report
    /// points at the one that needs it.
    pub fn problem_near(&mut self, option: &str, written: &str, message: impl Into<String>) {
        let location = self.location(written);
        self.problems.push(ConfigProblem::option(
            self.section,
            option,
            location,
            message.into(),
        ));
    }

    /// Reports "must be at least 1" when a count is 0.
    pub fn at_least_one(&mut self, option: &str, value: impl Into<u64>) {
        if value.into() == 0 {
            self.problem(option, "must be at least 1");
        }
    }

    /// Reports "must be at least 1 second" when a duration in seconds is 0.
    pub fn at_least_one_second(&mut self, option: &str, seconds: u64) {
        if seconds == 0 {
            self.problem(option, "must be at least 1 second");
        }
    }

    /// Reports a file option whose file cannot be opened for reading now. Only opening is
    /// tried: what the file holds is checked by the component that uses it.
    pub fn readable(&mut self, option: &str, path: Option<&Path>) {
        if let Some(path) = path
            && let Err(e) = std::fs::File::open(path)
        {
            self.problem(option, format!("cannot read {}: {e}", path.display()));
        }
    }

    /// Where `option` of this section was last written, if anywhere.
    fn location(&self, option: &str) -> Option<Location> {
        self.raw
            .values(self.section, option)
            .last()
            .map(|v| v.location.clone())
    }
}
