//! `DbUrl`: turns `[database] connection` into something Diesel can open.
//!
//! Operators copy SQLAlchemy URLs from the Python Kerbside and other OpenStack services
//! (`mysql+pymysql://kerbside:pw@db/kerbside?charset=utf8`, `sqlite:////var/lib/...`). This
//! module accepts those, strips what libmysqlclient does not understand, and keeps a
//! password-less display form for every log line and error. It does not connect: see
//! [`crate::db::conn`].
//!
//! Rules, in the order they are applied:
//! - scheme `mysql` or `mariadb`, optionally with a `+driver` suffix (`+pymysql`, `+mysqldb`,
//!   ...): the driver is irrelevant here and dropped. The URL must name a host (or
//!   `unix_socket`) and exactly one database. Query parameters Diesel understands
//!   (`unix_socket`, `ssl_mode`, `ssl_ca`, `ssl_cert`, `ssl_key`) are kept; the rest
//!   (`charset`, `plugin`, `read_default_file`, ...) are dropped with a warning naming them.
//!   `localhost` is rewritten to `127.0.0.1` unless `unix_socket` is given: PyMySQL always
//!   used TCP, while libmysqlclient would silently switch to a Unix socket that usually does
//!   not exist in a container.
//! - scheme `sqlite` (or `sqlite+pysqlite`): SQLAlchemy's rules, `sqlite:///relative/path`
//!   and `sqlite:////absolute/path`. In-memory databases are refused: each pooled connection
//!   would get its own empty database, and everything would be lost on restart.

use std::fmt;
use std::path::PathBuf;

use super::Backend;

/// Query parameters that Diesel's MySQL URL parser understands and that are kept.
const MYSQL_KEPT_PARAMS: &[&str] = &["unix_socket", "ssl_mode", "ssl_ca", "ssl_cert", "ssl_key"];

/// Values Diesel accepts for `ssl_mode` (compared case-insensitively).
const MYSQL_SSL_MODES: &[&str] = &[
    "disabled",
    "preferred",
    "required",
    "verify_ca",
    "verify_identity",
];

/// Text used in errors to list what is accepted.
const SUPPORTED_SCHEMES: &str =
    "mysql://, mysql+pymysql://, mysql+mysqldb://, mariadb:// or sqlite:///";

/// A parsed, validated database URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DbUrl {
    /// MySQL or MariaDB (Galera included).
    Mysql {
        /// The URL handed to Diesel's `MysqlConnection::establish`. Contains the password:
        /// never log it, use `display`.
        diesel_url: String,
        /// The same URL with the password replaced by `***`, for logs and errors.
        display: String,
    },
    /// A SQLite database file.
    Sqlite {
        /// Path of the database file, relative to the working directory unless absolute.
        path: PathBuf,
    },
}

impl DbUrl {
    /// Parse and normalise a SQLAlchemy- or Diesel-style database URL.
    ///
    /// # Errors
    /// [`InvalidUrl`] (with the password masked) when the scheme is not supported, the URL
    /// is malformed, names no host or database, or asks for an in-memory SQLite database.
    /// It converts into [`crate::db::DbError::InvalidUrl`].
    pub fn parse(raw: &str) -> Result<Self, InvalidUrl> {
        let trimmed = raw.trim();
        let invalid = |reason: UrlProblem| InvalidUrl {
            url: mask_password(trimmed),
            reason,
        };
        if trimmed.is_empty() {
            return Err(invalid(UrlProblem::Empty));
        }
        let Some((scheme, rest)) = trimmed.split_once("://") else {
            return Err(invalid(UrlProblem::NoScheme));
        };
        let scheme = scheme.to_ascii_lowercase();
        let dialect = scheme.split_once('+').map_or(scheme.as_str(), |(d, _)| d);
        match dialect {
            "mysql" | "mariadb" => parse_mysql(rest).map_err(invalid),
            "sqlite" => parse_sqlite(rest).map_err(invalid),
            _ => Err(invalid(UrlProblem::UnsupportedScheme(scheme.clone()))),
        }
    }

    /// Which backend this URL selects.
    #[must_use]
    pub fn backend(&self) -> Backend {
        match self {
            Self::Mysql { .. } => Backend::Mysql,
            Self::Sqlite { .. } => Backend::Sqlite,
        }
    }

    /// The URL without its password, for logs and errors (same as `to_string()`).
    #[must_use]
    pub fn redacted(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Mysql { display, .. } => f.write_str(display),
            // An absolute path yields the four-slash form, as SQLAlchemy writes it.
            Self::Sqlite { path } => write!(f, "sqlite:///{}", path.display()),
        }
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print `diesel_url`: it holds the password.
        f.debug_tuple("DbUrl").field(&self.to_string()).finish()
    }
}

/// `[database] connection` is not a URL this service can use.
#[derive(Debug, thiserror::Error)]
#[error("invalid database URL \"{url}\": {reason}")]
pub struct InvalidUrl {
    /// The URL as given, with any password replaced by `***`.
    pub url: String,
    /// What is wrong with it (in the message, so not also a `source`).
    pub reason: UrlProblem,
}

/// What is wrong with a database URL. Nothing here holds a password.
#[derive(Debug, thiserror::Error)]
pub enum UrlProblem {
    /// The URL is empty.
    #[error("the database URL is empty")]
    Empty,
    /// No `scheme://`.
    #[error("no scheme; expected one of {SUPPORTED_SCHEMES}")]
    NoScheme,
    /// A scheme other than MySQL/MariaDB or SQLite.
    #[error("unsupported scheme \"{0}\"; use {SUPPORTED_SCHEMES}")]
    UnsupportedScheme(String),
    /// A MySQL URL without a host (and no `unix_socket`).
    #[error("no host (expected mysql://user:password@host/database)")]
    NoHost,
    /// The URL parser refused it.
    #[error("{0}")]
    Malformed(#[source] ::url::ParseError),
    /// An `ssl_mode` MySQL does not know.
    #[error("unknown ssl_mode \"{0}\" (use {modes})", modes = MYSQL_SSL_MODES.join(", "))]
    UnknownSslMode(String),
    /// A MySQL URL without a database name.
    #[error("no database name (expected mysql://user:password@host/database)")]
    NoDatabase,
    /// A MySQL path with more than the database name.
    #[error("the path must be only the database name")]
    PathTooLong,
    /// A URL kind that cannot hold a password was given one.
    #[error("the URL cannot carry a password")]
    CannotCarryPassword,
    /// An in-memory SQLite database.
    #[error(
        "in-memory SQLite databases are not supported (each connection would see its own \
         empty database); give a file path such as sqlite:////var/lib/kerbside/kerbside.sqlite"
    )]
    InMemory,
    /// A SQLite URL with a host part.
    #[error(
        "SQLite URLs have no host part (\"{0}\"); use sqlite:///relative/path or \
         sqlite:////absolute/path"
    )]
    SqliteHost(String),
    /// A SQLite path naming a directory.
    #[error("\"{0}\" is a directory, not a database file")]
    Directory(String),
}

/// Parse the part after `mysql[+driver]://`.
fn parse_mysql(rest: &str) -> Result<DbUrl, UrlProblem> {
    // `user:pw@/db?unix_socket=...` (SQLAlchemy's socket form) has an empty host, which the
    // URL parser rejects: give it the `localhost` that makes Diesel use the socket.
    let before_query = rest.split_once('?').map_or(rest, |(b, _)| b);
    let host_start = before_query.rfind('@').map_or(0, |at| at + 1);
    let host_is_empty = before_query
        .get(host_start..)
        .is_none_or(|h| h.is_empty() || h.starts_with('/'));
    let rest = if host_is_empty {
        if !rest.contains("unix_socket=") {
            return Err(UrlProblem::NoHost);
        }
        let (userinfo, tail) = rest.split_at(host_start);
        format!("{userinfo}localhost{tail}")
    } else {
        rest.to_owned()
    };
    let mut url = ::url::Url::parse(&format!("mysql://{rest}")).map_err(UrlProblem::Malformed)?;

    // Keep only the query parameters Diesel understands, in their original order.
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    for (key, value) in url.query_pairs() {
        if MYSQL_KEPT_PARAMS.contains(&key.as_ref()) {
            kept.push((key.into_owned(), value.into_owned()));
        } else if key == "charset" {
            // Nearly every OpenStack URL has it; Diesel always talks utf8mb4 anyway.
        } else {
            dropped.push(key.into_owned());
        }
    }
    if let Some((_, mode)) = kept.iter().find(|(k, _)| k == "ssl_mode")
        && !MYSQL_SSL_MODES.contains(&mode.to_ascii_lowercase().as_str())
    {
        return Err(UrlProblem::UnknownSslMode(mode.clone()));
    }
    let has_socket = kept.iter().any(|(k, _)| k == "unix_socket");

    let host = url.host_str().unwrap_or_default().to_owned();
    if host.eq_ignore_ascii_case("localhost") && !has_socket {
        url.set_host(Some("127.0.0.1"))
            .map_err(UrlProblem::Malformed)?;
    }

    let segments: Vec<&str> = url
        .path_segments()
        .map(|s| s.filter(|seg| !seg.is_empty()).collect())
        .unwrap_or_default();
    match segments.as_slice() {
        [] => {
            return Err(UrlProblem::NoDatabase);
        }
        [_] => {}
        _ => return Err(UrlProblem::PathTooLong),
    }
    let database = segments.join("");
    url.set_path(&format!("/{database}"));

    url.set_query(None);
    if !kept.is_empty() {
        url.query_pairs_mut().extend_pairs(kept.iter());
    }
    if !dropped.is_empty() {
        // Names only: values such as read_default_file paths are not secrets, but keep the
        // line short and predictable.
        tracing::warn!(
            db.params = %dropped.join(","),
            "ignoring database URL parameters the MySQL client does not use"
        );
    }

    let diesel_url = url.to_string();
    let display = if url.password().is_some() {
        let mut masked = url.clone();
        masked
            .set_password(Some("***"))
            .map_err(|()| UrlProblem::CannotCarryPassword)?;
        masked.to_string()
    } else {
        diesel_url.clone()
    };
    Ok(DbUrl::Mysql {
        diesel_url,
        display,
    })
}

/// Parse the part after `sqlite://` following SQLAlchemy: `/<path>`.
fn parse_sqlite(rest: &str) -> Result<DbUrl, UrlProblem> {
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    if location.is_empty() {
        return Err(UrlProblem::InMemory);
    }
    let Some(path) = location.strip_prefix('/') else {
        return Err(UrlProblem::SqliteHost(location.to_owned()));
    };
    if path.is_empty() || path == ":memory:" || query.split('&').any(|p| p == "mode=memory") {
        return Err(UrlProblem::InMemory);
    }
    if path.ends_with('/') {
        return Err(UrlProblem::Directory(path.to_owned()));
    }
    Ok(DbUrl::Sqlite {
        path: PathBuf::from(path),
    })
}

/// Best-effort password masking for strings that may not even parse as URLs.
pub(crate) fn mask_password(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    // Mask everything between the user name and the last '@': a password may contain an
    // unencoded '/', so the authority cannot be trusted to end at the first one. Masking
    // too much in an error message is harmless; too little is not.
    let Some((userinfo, after)) = rest.rsplit_once('@') else {
        return raw.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{after}"),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_password_handles_odd_input() {
        assert_eq!(mask_password("mysql://u:p@h/db"), "mysql://u:***@h/db");
        assert_eq!(
            mask_password("mysql://u:p:q@h:1/db"),
            "mysql://u:***@h:1/db"
        );
        assert_eq!(mask_password("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(mask_password("no scheme"), "no scheme");
        assert_eq!(mask_password("x://u:p@w@h/db"), "x://u:***@h/db");
        assert_eq!(mask_password("x://u:pa/ss@h/db"), "x://u:***@h/db");
    }
}
