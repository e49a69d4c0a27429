//! Typed option values: how each kind of option is parsed from its INI text, how it is
//! described in the sample file, and how secrets stay hidden.
//!
//! Owns the [`OptValue`] trait and its implementations. It does not know about files, sections
//! or defaults: see `mod.rs` and `section.rs` for those.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

/// Why one option value was refused. The words say what was expected; a secret's text is
/// never part of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// The option has no value and no default, and its type cannot be absent.
    #[error("a value is required")]
    Required,
    /// The value is empty where the type needs text.
    #[error("expected {expected}, got an empty value")]
    Empty {
        /// What kind of text was expected.
        expected: &'static str,
    },
    /// An empty secret.
    #[error("an empty secret is not allowed: remove the option or set a value")]
    EmptySecret,
    /// The text is not a value of the option's type.
    #[error("invalid {kind} '{raw}': expected {expected}")]
    Invalid {
        /// The type, in the sample's words ("port value").
        kind: &'static str,
        /// The text given (never a secret: secret types do not produce this variant).
        raw: String,
        /// What would have been accepted.
        expected: String,
    },
    /// A URL that does not parse.
    #[error("invalid URL: {0}")]
    Url(#[source] url::ParseError),
}

/// A type an option can have. `parse` turns the INI text into the value; `absent` says what an
/// option with no value and no default becomes (an error for required options).
pub trait OptValue: Sized {
    /// How the sample file describes this type, e.g. "integer value".
    const KIND: &'static str;
    /// Whether the value is a secret (never printed, shown as `<secret>`).
    const SECRET: bool = false;
    /// Whether repeating the key in one file adds values instead of being an error.
    const MULTI: bool = false;

    /// Parses the text of one value.
    ///
    /// # Errors
    /// A message saying what was expected, without repeating a secret value.
    fn parse(raw: &str) -> Result<Self, ValueError>;

    /// Parses all the values given for a multi-valued option (only called when `MULTI`).
    ///
    /// # Errors
    /// As [`OptValue::parse`].
    fn parse_all(raws: &[&str]) -> Result<Self, ValueError> {
        match raws.last() {
            Some(raw) => Self::parse(raw),
            None => Self::absent(),
        }
    }

    /// The value of an option that was not set and has no default.
    ///
    /// # Errors
    /// "a value is required" for types that cannot be absent.
    fn absent() -> Result<Self, ValueError> {
        Err(ValueError::Required)
    }

    /// Extra words the sample adds after the kind (choices, ranges).
    fn describe() -> Option<String> {
        None
    }
}

impl OptValue for String {
    const KIND: &'static str = "string value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        Ok(raw.to_owned())
    }
}

impl OptValue for PathBuf {
    const KIND: &'static str = "path value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() {
            return Err(ValueError::Empty {
                expected: "a file system path",
            });
        }
        Ok(PathBuf::from(raw))
    }
}

impl OptValue for bool {
    const KIND: &'static str = "boolean value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        // oslo.config accepts these spellings, case-insensitively.
        match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(ValueError::Invalid {
                kind: "boolean",
                raw: raw.to_owned(),
                expected: "true or false".to_owned(),
            }),
        }
    }
}

macro_rules! int_value {
    ($t:ty, $kind:literal) => {
        impl OptValue for $t {
            const KIND: &'static str = $kind;
            fn parse(raw: &str) -> Result<Self, ValueError> {
                raw.parse::<$t>().map_err(|_| ValueError::Invalid {
                    kind: $kind,
                    raw: raw.to_owned(),
                    expected: format!("a whole number from {} to {}", <$t>::MIN, <$t>::MAX),
                })
            }
        }
    };
}
int_value!(u16, "port value");
int_value!(u32, "integer value");
int_value!(u64, "integer value");

impl OptValue for IpAddr {
    const KIND: &'static str = "IP address value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        raw.parse().map_err(|_| ValueError::Invalid {
            kind: "IP address",
            raw: raw.to_owned(),
            expected: "e.g. 0.0.0.0, :: or 192.0.2.10".to_owned(),
        })
    }
}

impl OptValue for url::Url {
    const KIND: &'static str = "URI value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        url::Url::parse(raw).map_err(ValueError::Url)
    }
}

/// A secret option value (a password or a URL holding one). Its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(SecretString);

impl Secret {
    /// The secret text, for the one place that must send it somewhere.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(SecretString::from(value.to_owned()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<secret>")
    }
}

impl OptValue for Secret {
    const KIND: &'static str = "string value";
    const SECRET: bool = true;
    fn parse(raw: &str) -> Result<Self, ValueError> {
        if raw.is_empty() {
            return Err(ValueError::EmptySecret);
        }
        Ok(Secret::from(raw))
    }
}

impl<T: OptValue> OptValue for Option<T> {
    const KIND: &'static str = T::KIND;
    const SECRET: bool = T::SECRET;
    fn parse(raw: &str) -> Result<Self, ValueError> {
        // `option =` (empty) means "unset", as in oslo.config.
        if raw.is_empty() {
            return Ok(None);
        }
        T::parse(raw).map(Some)
    }
    fn absent() -> Result<Self, ValueError> {
        Ok(None)
    }
    fn describe() -> Option<String> {
        T::describe()
    }
}

/// A list option: comma separated, and the key may also be repeated to add values.
impl<T: OptValue> OptValue for Vec<T> {
    const KIND: &'static str = "list value";
    const MULTI: bool = true;
    fn parse(raw: &str) -> Result<Self, ValueError> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(T::parse)
            .collect()
    }
    fn parse_all(raws: &[&str]) -> Result<Self, ValueError> {
        let mut all = Vec::new();
        for raw in raws {
            all.extend(Self::parse(raw)?);
        }
        Ok(all)
    }
    fn absent() -> Result<Self, ValueError> {
        Ok(Vec::new())
    }
}

/// Declares an enum option type with its accepted spellings.
macro_rules! choice_value {
    ($(#[doc = $doc:literal])* $name:ident { $($(#[doc = $vdoc:literal])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            $($(#[doc = $vdoc])* $variant),+
        }

        impl $name {
            /// The spelling used in the configuration file.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl $crate::config::value::OptValue for $name {
            const KIND: &'static str = "string value";
            fn parse(raw: &str) -> Result<Self, $crate::config::value::ValueError> {
                match raw {
                    $($text => Ok(Self::$variant),)+
                    _ => Err($crate::config::value::ValueError::Invalid {
                        kind: "value",
                        raw: raw.to_owned(),
                        expected: format!("one of {}", [$($text),+].join(", ")),
                    }),
                }
            }
            fn describe() -> Option<String> {
                Some(format!("allowed values: {}", [$($text),+].join(", ")))
            }
        }
    };
}
pub(crate) use choice_value;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn booleans_accept_oslo_spellings() {
        for yes in ["true", "True", "YES", "on", "1"] {
            assert!(bool::parse(yes).unwrap());
        }
        for no in ["false", "No", "off", "0"] {
            assert!(!bool::parse(no).unwrap());
        }
        assert_eq!(
            bool::parse("maybe").unwrap_err().to_string(),
            "invalid boolean 'maybe': expected true or false"
        );
    }

    #[test]
    fn ports_are_bounded() {
        assert_eq!(u16::parse("5900").unwrap(), 5900);
        assert_eq!(
            u16::parse("70000").unwrap_err().to_string(),
            "invalid port value '70000': expected a whole number from 0 to 65535"
        );
    }

    #[test]
    fn lists_split_on_commas_and_accumulate() {
        let v = Vec::<String>::parse_all(&["a, b", "c"]).unwrap();
        assert_eq!(v, ["a", "b", "c"]);
        let ips = Vec::<IpAddr>::parse("0.0.0.0, ::").unwrap();
        assert_eq!(ips.len(), 2);
        assert!(Vec::<IpAddr>::parse("0.0.0.0, nope").is_err());
    }

    #[test]
    fn secrets_never_show_in_debug() {
        let s = Secret::parse("hunter2").unwrap();
        assert_eq!(format!("{s:?}"), "<secret>");
        assert_eq!(s.expose(), "hunter2");
        assert!(Secret::parse("").is_err());
    }

    #[test]
    fn optional_empty_is_unset() {
        assert_eq!(Option::<u16>::parse("").unwrap(), None);
        assert_eq!(Option::<u16>::parse("5").unwrap(), Some(5));
        assert_eq!(Option::<u16>::absent().unwrap(), None);
        assert!(u16::absent().is_err());
    }
}
