//! The ids of every table: `i64` surrogate keys as newtypes ([`ConsoleId`], [`SourceId`], ...)
//! and the UUID string [`SessionId`], each usable directly in Diesel queries and serialized as
//! the bare value.
//!
//! They live apart from the rows so that a model can name another table's id without
//! importing that table's module (a session names the token that opened it, a token the
//! session that used it). This module owns no row and runs no query.

use diesel::backend::Backend as DieselBackend;
use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::serialize::{self, Output, ToSql};
use diesel::sql_types::Text;

/// Define an `i64` surrogate-key newtype usable directly in Diesel queries.
macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Debug,
            Clone,
            Copy,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            diesel::expression::AsExpression,
            diesel::deserialize::FromSqlRow,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        #[serde(transparent)]
        pub struct $name(pub i64);

        impl<DB> diesel::serialize::ToSql<diesel::sql_types::BigInt, DB> for $name
        where
            DB: diesel::backend::Backend,
            i64: diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>,
        {
            fn to_sql<'b>(
                &'b self,
                out: &mut diesel::serialize::Output<'b, '_, DB>,
            ) -> diesel::serialize::Result {
                <i64 as diesel::serialize::ToSql<diesel::sql_types::BigInt, DB>>::to_sql(
                    &self.0, out,
                )
            }
        }

        impl<DB> diesel::deserialize::FromSql<diesel::sql_types::BigInt, DB> for $name
        where
            DB: diesel::backend::Backend,
            i64: diesel::deserialize::FromSql<diesel::sql_types::BigInt, DB>,
        {
            fn from_sql(bytes: DB::RawValue<'_>) -> diesel::deserialize::Result<Self> {
                <i64 as diesel::deserialize::FromSql<diesel::sql_types::BigInt, DB>>::from_sql(
                    bytes,
                )
                .map(Self)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl From<i64> for $name {
            fn from(id: i64) -> Self {
                Self(id)
            }
        }
    };
}

id_newtype!(
    /// Surrogate key of a [`Source`](super::Source).
    SourceId
);

id_newtype!(
    /// Surrogate key of a [`Console`](super::Console).
    ConsoleId
);

id_newtype!(
    /// Surrogate key of a [`ConsoleToken`](super::ConsoleToken).
    ConsoleTokenId
);

id_newtype!(
    /// Surrogate key of a [`SessionTermination`](super::SessionTermination).
    SessionTerminationId
);

id_newtype!(
    /// Surrogate key of a [`Channel`](super::Channel) row (not the SPICE channel id, which is
    /// [`Channel::channel_id`](super::Channel::channel_id)).
    ChannelId
);

id_newtype!(
    /// Surrogate key of an [`AuditEvent`](super::AuditEvent); also its position in the trail.
    AuditEventId
);

id_newtype!(
    /// Surrogate key of a [`WebSession`](super::WebSession).
    WebSessionId
);

/// A session id: a UUID in its 36-character hyphenated form.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    AsExpression,
    FromSqlRow,
    serde::Serialize,
    serde::Deserialize,
)]
#[diesel(sql_type = Text)]
#[serde(transparent)]
pub struct SessionId(pub String);

impl SessionId {
    /// A new random (v4) session id.
    #[must_use]
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().hyphenated().to_string())
    }

    /// The id as a string.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lets maps keyed by session id be searched with the id's text.
impl std::borrow::Borrow<str> for SessionId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl From<String> for SessionId {
    fn from(id: String) -> Self {
        Self(id)
    }
}

impl From<&str> for SessionId {
    fn from(id: &str) -> Self {
        Self(id.to_owned())
    }
}

impl<DB> ToSql<Text, DB> for SessionId
where
    DB: DieselBackend,
    str: ToSql<Text, DB>,
{
    fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, DB>) -> serialize::Result {
        <str as ToSql<Text, DB>>::to_sql(self.0.as_str(), out)
    }
}

impl<DB> FromSql<Text, DB> for SessionId
where
    DB: DieselBackend,
    String: FromSql<Text, DB>,
{
    fn from_sql(bytes: DB::RawValue<'_>) -> deserialize::Result<Self> {
        <String as FromSql<Text, DB>>::from_sql(bytes).map(Self)
    }
}
