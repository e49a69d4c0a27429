//! `consoles`: one SPICE console of one instance, as known through one source.
//!
//! A console is keyed by (source, instance uuid). Sources upsert consoles as they discover
//! them; a static source that is re-read removes the ones it no longer lists. A Nova
//! notification that ends access to an instance (deletion, power-off, shelving, rebuild,
//! migration, ...) marks its consoles `stale`: the hypervisor, port or ticket may have
//! changed, and a fresh Nova lookup is needed before the next connection. The next upsert
//! clears the flag.
//!
//! The `ticket` (hypervisor SPICE password) is stored because the proxy needs it to link
//! upstream; it is a [`Ticket`] so it cannot be logged or serialized by accident.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::ids::{ConsoleId, SourceId};
use super::{Ticket, UPSERT_ATTEMPTS};
use crate::db::conn::DbConnection;
use crate::db::error::{DbError, DbResult};
use crate::db::now;
use crate::db::schema::{consoles, sources};

/// A console row.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = consoles)]
#[diesel(check_for_backend(crate::db::conn::MultiBackend))]
pub struct Console {
    /// Surrogate key.
    pub id: ConsoleId,
    /// The source that knows this console.
    pub source_id: SourceId,
    /// Instance uuid (36 characters, exact match).
    pub uuid: String,
    /// Instance display name.
    pub name: String,
    /// Hypervisor host name.
    pub hypervisor: String,
    /// Address the proxy connects to.
    pub hypervisor_ip: String,
    /// Plain-text SPICE port, if any.
    pub insecure_port: Option<i32>,
    /// TLS SPICE port, if any.
    pub secure_port: Option<i32>,
    /// Expected subject of the hypervisor's TLS certificate, if it must be checked.
    pub host_subject: Option<String>,
    /// The hypervisor's SPICE password for this console. Never returned by APIs.
    pub ticket: Option<Ticket>,
    /// A notification said the instance changed: refresh from Nova before connecting.
    pub stale: bool,
    /// When this console was first seen (UTC).
    pub discovered_at: NaiveDateTime,
    /// When it last changed (UTC).
    pub updated_at: NaiveDateTime,
    /// The SPICE firewall profile its source or Nova flavor names; `None`: the default.
    pub firewall_profile: Option<String>,
}

/// What a source knows about a console; input to [`upsert_console`].
#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = consoles)]
pub struct NewConsole {
    /// The source that knows this console.
    pub source_id: SourceId,
    /// Instance uuid.
    pub uuid: String,
    /// Instance display name.
    pub name: String,
    /// Hypervisor host name.
    pub hypervisor: String,
    /// Address the proxy connects to.
    pub hypervisor_ip: String,
    /// Plain-text SPICE port, if any.
    pub insecure_port: Option<i32>,
    /// TLS SPICE port, if any.
    pub secure_port: Option<i32>,
    /// Expected TLS subject of the hypervisor.
    pub host_subject: Option<String>,
    /// Hypervisor SPICE password.
    pub ticket: Option<Ticket>,
    /// The SPICE firewall profile its source or Nova flavor names.
    pub firewall_profile: Option<String>,
}

/// The columns an upsert overwrites. `None` writes NULL (a ticket that went away must not
/// linger), and `stale` is cleared because the data is fresh.
#[derive(Debug, Clone, AsChangeset)]
#[diesel(table_name = consoles)]
#[diesel(treat_none_as_null = true)]
pub struct ConsoleChanges {
    /// Instance display name.
    pub name: String,
    /// Hypervisor host name.
    pub hypervisor: String,
    /// Address the proxy connects to.
    pub hypervisor_ip: String,
    /// Plain-text SPICE port.
    pub insecure_port: Option<i32>,
    /// TLS SPICE port.
    pub secure_port: Option<i32>,
    /// Expected TLS subject.
    pub host_subject: Option<String>,
    /// Hypervisor SPICE password.
    pub ticket: Option<Ticket>,
    /// Firewall profile name.
    pub firewall_profile: Option<String>,
    /// Staleness flag.
    pub stale: bool,
    /// Change time.
    pub updated_at: NaiveDateTime,
}

impl ConsoleChanges {
    /// The changes that make an existing row match `new`, as of `at`.
    #[must_use]
    pub fn from_new(new: &NewConsole, at: NaiveDateTime) -> Self {
        Self {
            name: new.name.clone(),
            hypervisor: new.hypervisor.clone(),
            hypervisor_ip: new.hypervisor_ip.clone(),
            insecure_port: new.insecure_port,
            secure_port: new.secure_port,
            host_subject: new.host_subject.clone(),
            ticket: new.ticket.clone(),
            firewall_profile: new.firewall_profile.clone(),
            stale: false,
            updated_at: at,
        }
    }
}

/// Insert the console (source, uuid) or overwrite its fields; clears `stale`.
///
/// # Errors
/// [`DbError::Query`] (a foreign-key violation if the source does not exist).
pub fn upsert_console(conn: &mut DbConnection, new: &NewConsole) -> DbResult<Console> {
    for _ in 0..UPSERT_ATTEMPTS {
        let at = now();
        let updated = diesel::update(
            consoles::table
                .filter(consoles::source_id.eq(new.source_id))
                .filter(consoles::uuid.eq(&new.uuid)),
        )
        .set(ConsoleChanges::from_new(new, at))
        .execute(conn)?;
        if updated == 0 {
            let inserted = diesel::insert_into(consoles::table)
                .values((
                    new,
                    consoles::stale.eq(false),
                    consoles::discovered_at.eq(at),
                    consoles::updated_at.eq(at),
                ))
                .execute(conn)
                .map_err(DbError::from);
            match inserted {
                Ok(_) => {}
                // Lost an insert race: go round and update the winner's row.
                Err(e) if e.is_unique_violation() => continue,
                Err(e) => return Err(e),
            }
        }
        if let Some(console) = find_console(conn, new.source_id, &new.uuid)? {
            return Ok(console);
        }
        // Deleted between our write and read: try again.
    }
    Err(DbError::Conflict {
        what: "console",
        id: new.uuid.clone(),
        reason: "concurrent writers kept changing it".to_owned(),
    })
}

/// The console with surrogate key `id`.
///
/// # Errors
/// [`DbError::NotFound`] if there is none.
pub fn get_console(conn: &mut DbConnection, id: ConsoleId) -> DbResult<Console> {
    consoles::table
        .find(id)
        .select(Console::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "console",
            id: id.to_string(),
        })
}

/// The console for instance `uuid` in source `source_id` (exact, case-sensitive match).
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn find_console(
    conn: &mut DbConnection,
    source_id: SourceId,
    uuid: &str,
) -> DbResult<Option<Console>> {
    Ok(consoles::table
        .filter(consoles::source_id.eq(source_id))
        .filter(consoles::uuid.eq(uuid))
        .select(Console::as_select())
        .first(conn)
        .optional()?)
}

/// The console for instance `uuid` in the source called `source_name`
/// (`/v1/consoles/{source}/{uuid}`, `kerbside-manage token create`).
///
/// # Errors
/// [`DbError::NotFound`] naming `source/uuid` if either does not exist.
pub fn get_console_by_source_name(
    conn: &mut DbConnection,
    source_name: &str,
    uuid: &str,
) -> DbResult<Console> {
    consoles::table
        .inner_join(sources::table)
        .filter(sources::name.eq(source_name))
        .filter(consoles::uuid.eq(uuid))
        .select(Console::as_select())
        .first(conn)
        .optional()?
        .ok_or_else(|| DbError::NotFound {
            what: "console",
            id: format!("{source_name}/{uuid}"),
        })
}

/// All consoles, or those of one source, ordered by id.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn list_consoles(
    conn: &mut DbConnection,
    source_id: Option<SourceId>,
) -> DbResult<Vec<Console>> {
    let mut query = consoles::table
        .select(Console::as_select())
        .order(consoles::id.asc())
        .into_boxed();
    if let Some(source_id) = source_id {
        query = query.filter(consoles::source_id.eq(source_id));
    }
    Ok(query.load(conn)?)
}

/// Remove the consoles of `source_id` whose uuid is not in `keep_uuids` (a re-read static
/// source dropped them), with their tokens and sessions. Returns the removed rows.
///
/// An empty `keep_uuids` removes every console of the source.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn delete_consoles_not_in(
    conn: &mut DbConnection,
    source_id: SourceId,
    keep_uuids: &[String],
) -> DbResult<Vec<Console>> {
    let doomed: Vec<Console> = consoles::table
        .filter(consoles::source_id.eq(source_id))
        .filter(consoles::uuid.ne_all(keep_uuids))
        .select(Console::as_select())
        .order(consoles::id.asc())
        .load(conn)?;
    if doomed.is_empty() {
        return Ok(doomed);
    }
    let ids: Vec<ConsoleId> = doomed.iter().map(|c| c.id).collect();
    // Repeat the uuid filter: a console re-listed meanwhile must survive.
    diesel::delete(
        consoles::table
            .filter(consoles::id.eq_any(&ids))
            .filter(consoles::uuid.ne_all(keep_uuids)),
    )
    .execute(conn)?;
    Ok(doomed)
}

/// Mark every console of instance `uuid` (in any source) stale; returns how many.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn mark_instance_stale(conn: &mut DbConnection, uuid: &str) -> DbResult<usize> {
    Ok(
        diesel::update(consoles::table.filter(consoles::uuid.eq(uuid)))
            .set((consoles::stale.eq(true), consoles::updated_at.eq(now())))
            .execute(conn)?,
    )
}

/// Every console of instance `uuid`, in any source, ordered by id.
///
/// # Errors
/// [`DbError::Query`] on database failure.
pub fn consoles_for_instance(conn: &mut DbConnection, uuid: &str) -> DbResult<Vec<Console>> {
    Ok(consoles::table
        .filter(consoles::uuid.eq(uuid))
        .select(Console::as_select())
        .order(consoles::id.asc())
        .load(conn)?)
}
