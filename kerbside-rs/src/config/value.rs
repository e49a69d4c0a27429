//! Typed option values: how each kind of option is parsed from its INI text, how it is
//! described in the sample file, and how secrets stay hidden.
//!
//! Owns the [`OptValue`] trait and its implementations. It does not know about files, sections
//! or defaults: see `mod.rs` and `section.rs` for those.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

use secrecy::{ExposeSecret, SecretString};

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
    fn parse(raw: &str) -> Result<Self, String>;

    /// Parses all the values given for a multi-valued option (only called when `MULTI`).
    ///
    /// # Errors
    /// As [`OptValue::parse`].
    fn parse_all(raws: &[&str]) -> Result<Self, String> {
        match raws.last() {
            Some(raw) => Self::parse(raw),
            None => Self::absent(),
        }
    }

    /// The value of an option that was not set and has no default.
    ///
    /// # Errors
    /// "a value is required" for types that cannot be absent.
    fn absent() -> Result<Self, String> {
        Err("a value is required".to_owned())
    }

    /// Extra words the sample adds after the kind (choices, ranges).
    fn describe() -> Option<String> {
        None
    }
}

impl OptValue for String {
    const KIND: &'static str = "string value";
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
}

impl OptValue for PathBuf {
    const KIND: &'static str = "path value";
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err("expected a file system path, got an empty value".to_owned());
        }
        Ok(PathBuf::from(raw))
    }
}

impl OptValue for bool {
    const KIND: &'static str = "boolean value";
    fn parse(raw: &str) -> Result<Self, String> {
        // oslo.config accepts these spellings, case-insensitively.
        match raw.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("invalid boolean '{raw}': expected true or false")),
        }
    }
}

macro_rules! int_value {
    ($t:ty, $kind:literal) => {
        impl OptValue for $t {
            const KIND: &'static str = $kind;
            fn parse(raw: &str) -> Result<Self, String> {
                raw.parse::<$t>().map_err(|_| {
                    format!(
                        "invalid {} '{raw}': expected a whole number from {} to {}",
                        $kind,
                        <$t>::MIN,
                        <$t>::MAX
                    )
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
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse().map_err(|_| {
            format!("invalid IP address '{raw}': expected e.g. 0.0.0.0, :: or 192.0.2.10")
        })
    }
}

impl OptValue for url::Url {
    const KIND: &'static str = "URI value";
    fn parse(raw: &str) -> Result<Self, String> {
        url::Url::parse(raw).map_err(|e| format!("invalid URL: {e}"))
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
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.is_empty() {
            return Err(
                "an empty secret is not allowed: remove the option or set a value".to_owned(),
            );
        }
        Ok(Secret::from(raw))
    }
}

impl<T: OptValue> OptValue for Option<T> {
    const KIND: &'static str = T::KIND;
    const SECRET: bool = T::SECRET;
    fn parse(raw: &str) -> Result<Self, String> {
        // `option =` (empty) means "unset", as in oslo.config.
        if raw.is_empty() {
            return Ok(None);
        }
        T::parse(raw).map(Some)
    }
    fn absent() -> Result<Self, String> {
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
    fn parse(raw: &str) -> Result<Self, String> {
        raw.split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .map(T::parse)
            .collect()
    }
    fn parse_all(raws: &[&str]) -> Result<Self, String> {
        let mut all = Vec::new();
        for raw in raws {
            all.extend(Self::parse(raw)?);
        }
        Ok(all)
    }
    fn absent() -> Result<Self, String> {
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
            fn parse(raw: &str) -> Result<Self, String> {
                match raw {
                    $($text => Ok(Self::$variant),)+
                    _ => Err(format!(
                        "invalid value '{raw}': expected one of {}",
                        [$($text),+].join(", ")
                    )),
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
            bool::parse("maybe").unwrap_err(),
            "invalid boolean 'maybe': expected true or false"
        );
    }

    #[test]
    fn ports_are_bounded() {
        assert_eq!(u16::parse("5900").unwrap(), 5900);
        assert_eq!(
            u16::parse("70000").unwrap_err(),
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
