//! Static console sources: a Kerbside-compatible `sources.yaml` listing consoles, loaded into
//! the database and re-read when the file changes.
//!
//! A source whose entry is invalid is marked errored with the reason and keeps the consoles it
//! had published; a file that cannot be parsed at all marks every static source errored and
//! changes nothing else. OpenStack consoles do not come from this file: they arrive through
//! Nova spice-direct tokens.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::db::Db;
use crate::db::models::{self, NewConsole};
use crate::shutdown::Shutdown;

/// One source entry of the file.
#[derive(Debug, Deserialize)]
pub struct SourceEntry {
    /// Source name.
    pub source: String,
    /// Source type; only `static` sources are loaded from the file.
    #[serde(rename = "type")]
    pub source_type: String,
    /// PEM CA verifying this source's hypervisors' SPICE TLS certificates.
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// The consoles (static sources).
    #[serde(default)]
    pub consoles: Vec<ConsoleEntry>,
    /// The SPICE firewall profile of this source's consoles (a console may name its own).
    #[serde(default)]
    pub firewall_profile: Option<String>,
    /// Options of other source types (kept so such files still parse).
    #[serde(flatten)]
    pub other: serde_norway::Mapping,
}

/// One console of a static source.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleEntry {
    /// Instance UUID.
    pub uuid: String,
    /// Display name.
    pub name: String,
    /// Hypervisor host name (used for TLS verification when no host_subject is given).
    pub hypervisor: String,
    /// Address to connect to; defaults to `hypervisor`.
    #[serde(default)]
    pub hypervisor_ip: Option<String>,
    /// Plain SPICE port.
    #[serde(default)]
    pub insecure_port: Option<u16>,
    /// TLS SPICE port.
    #[serde(default)]
    pub secure_port: Option<u16>,
    /// The SPICE ticket (password) set on the hypervisor.
    #[serde(default)]
    pub ticket: Option<String>,
    /// Expected subject of the hypervisor's certificate.
    #[serde(default)]
    pub host_subject: Option<String>,
    /// The SPICE firewall profile of this console (overrides the source's).
    #[serde(default)]
    pub firewall_profile: Option<String>,
}

/// What is wrong with the sources file as a whole (nothing of it is applied).
#[derive(Debug, thiserror::Error)]
pub enum FileProblem {
    /// Not YAML, or not a list of sources (with the YAML error's line).
    #[error("invalid sources file: {0}")]
    Yaml(#[from] serde_norway::Error),
    /// Two entries with one name.
    #[error("source '{0}' is listed twice")]
    DuplicateSource(String),
}

/// Why one static source cannot be used (its previous consoles are kept).
#[derive(Debug, thiserror::Error)]
pub enum SourceProblem {
    /// Its `ca_cert`.
    #[error("ca_cert: {0}")]
    CaCert(#[source] Box<crate::tlsutil::TlsError>),
    /// One of its consoles, by position (from 1) and UUID as written.
    #[error("console {index} ({uuid}): {fault}")]
    Console {
        /// Position in the list, from 1.
        index: usize,
        /// The UUID as written.
        uuid: String,
        /// What is wrong.
        fault: ConsoleFault,
    },
}

/// What is wrong with one console entry.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleFault {
    /// `uuid` does not parse.
    #[error("uuid is not a UUID")]
    BadUuid,
    /// The UUID appears twice in the source.
    #[error("uuid is listed twice")]
    DuplicateUuid,
    /// Empty `name`.
    #[error("name is empty")]
    EmptyName,
    /// Empty `hypervisor`.
    #[error("hypervisor is empty")]
    EmptyHypervisor,
    /// Neither port.
    #[error("needs insecure_port or secure_port")]
    NoPort,
    /// Port 0.
    #[error("ports must be 1-65535")]
    ZeroPort,
    /// A ticket SPICE cannot carry.
    #[error("ticket must be at most 60 bytes without NUL (a SPICE limit)")]
    BadTicket,
    /// A malformed `host_subject`.
    #[error("host_subject: {0}")]
    HostSubject(#[source] Box<crate::tlsutil::TlsError>),
    /// A profile name that cannot name a profile.
    #[error("firewall_profile '{0}': use 1 to 64 letters, digits, '.', '_' or '-'")]
    ProfileName(String),
}

/// Why the sources file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The file's contents.
    #[error("{}: {problem}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        problem: FileProblem,
    },
    /// Storing the sources.
    #[error(transparent)]
    Database(#[from] crate::db::DbError),
}

/// A validated static source, ready to store.
#[derive(Debug)]
pub struct StaticSource {
    /// Source name.
    pub name: String,
    /// CA for hypervisor TLS.
    pub ca_cert: Option<String>,
    /// Consoles, or why the source is unusable.
    pub consoles: Result<Vec<NewConsoleSpec>, SourceProblem>,
}

/// A console as the file declares it.
#[derive(Debug, Clone)]
pub struct NewConsoleSpec {
    /// Instance UUID (lower case).
    pub uuid: String,
    /// Display name.
    pub name: String,
    /// Hypervisor host name.
    pub hypervisor: String,
    /// Address to connect to.
    pub hypervisor_ip: String,
    /// Plain port.
    pub insecure_port: Option<u16>,
    /// TLS port.
    pub secure_port: Option<u16>,
    /// Ticket.
    pub ticket: Option<String>,
    /// Host subject.
    pub host_subject: Option<String>,
    /// Firewall profile name (the console's, else the source's).
    pub firewall_profile: Option<String>,
}

/// Parses and validates the file's text.
///
/// # Errors
/// [`FileProblem`] (with the YAML error's line) when the text is not a list of sources.
pub fn parse(text: &str) -> Result<Vec<StaticSource>, FileProblem> {
    let entries: Vec<SourceEntry> = serde_norway::from_str(text)?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        if !seen.insert(entry.source.clone()) {
            return Err(FileProblem::DuplicateSource(entry.source));
        }
        if entry.source_type != "static" {
            tracing::info!(source.name = %entry.source, source.kind = %entry.source_type, "skipping non-static source: OpenStack consoles arrive through Nova spice-direct tokens");
            continue;
        }
        let consoles = validate_consoles(&entry);
        let ca_cert = entry.ca_cert.clone();
        if let Some(ca) = &ca_cert
            && let Err(e) = crate::tlsutil::parse_certs(ca)
        {
            out.push(StaticSource {
                name: entry.source,
                ca_cert: None,
                consoles: Err(SourceProblem::CaCert(Box::new(e))),
            });
            continue;
        }
        out.push(StaticSource {
            name: entry.source,
            ca_cert,
            consoles,
        });
    }
    Ok(out)
}

fn validate_consoles(entry: &SourceEntry) -> Result<Vec<NewConsoleSpec>, SourceProblem> {
    let mut uuids = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in entry.consoles.iter().enumerate() {
        let at = |fault: ConsoleFault| SourceProblem::Console {
            index: i + 1,
            uuid: c.uuid.clone(),
            fault,
        };
        let uuid = uuid::Uuid::parse_str(&c.uuid)
            .map_err(|_| at(ConsoleFault::BadUuid))?
            .to_string();
        if !uuids.insert(uuid.clone()) {
            return Err(at(ConsoleFault::DuplicateUuid));
        }
        if c.name.trim().is_empty() {
            return Err(at(ConsoleFault::EmptyName));
        }
        if c.hypervisor.trim().is_empty() {
            return Err(at(ConsoleFault::EmptyHypervisor));
        }
        if c.insecure_port.is_none() && c.secure_port.is_none() {
            return Err(at(ConsoleFault::NoPort));
        }
        if matches!(c.insecure_port, Some(0)) || matches!(c.secure_port, Some(0)) {
            return Err(at(ConsoleFault::ZeroPort));
        }
        if let Some(ticket) = &c.ticket
            && (ticket.len() > 60 || ticket.contains('\0'))
        {
            return Err(at(ConsoleFault::BadTicket));
        }
        if let Some(subject) = &c.host_subject {
            crate::tlsutil::parse_host_subject(subject)
                .map_err(|e| at(ConsoleFault::HostSubject(Box::new(e))))?;
        }
        let firewall_profile = c
            .firewall_profile
            .clone()
            .or_else(|| entry.firewall_profile.clone());
        if let Some(name) = &firewall_profile
            && !valid_profile_name(name)
        {
            return Err(at(ConsoleFault::ProfileName(name.clone())));
        }
        out.push(NewConsoleSpec {
            uuid,
            name: c.name.clone(),
            hypervisor: c.hypervisor.clone(),
            hypervisor_ip: c
                .hypervisor_ip
                .clone()
                .unwrap_or_else(|| c.hypervisor.clone()),
            insecure_port: c.insecure_port,
            secure_port: c.secure_port,
            ticket: c.ticket.clone(),
            host_subject: c.host_subject.clone(),
            firewall_profile,
        });
    }
    Ok(out)
}

/// Whether `name` can name a firewall profile (which need not exist: an unknown name fails
/// closed when a session starts).
fn valid_profile_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// What applying the file changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// Sources loaded without error.
    pub ok: Vec<String>,
    /// Sources marked errored, with the reason.
    pub errored: Vec<(String, String)>,
}

/// Reads the file and stores its sources. A failure to read or parse it marks every static
/// source errored and changes nothing else.
///
/// # Errors
/// The file's problem (after recording it on the sources), or a database failure.
pub async fn apply_file(db: &Db, path: &Path) -> Result<Applied, SourcesError> {
    let parsed = std::fs::read_to_string(path)
        .map_err(|source| SourcesError::Read {
            path: path.to_path_buf(),
            source,
        })
        .and_then(|text| {
            parse(&text).map_err(|problem| SourcesError::File {
                path: path.to_path_buf(),
                problem,
            })
        });
    let sources = match parsed {
        Ok(sources) => sources,
        Err(error) => {
            let m = error.to_string();
            db.run(move |conn| {
                for source in models::list_sources(conn)? {
                    if source.source_type == "static" {
                        models::set_source_error(conn, &source.name, Some(&m))?;
                    }
                }
                Ok(())
            })
            .await?;
            return Err(error);
        }
    };
    db.run(move |conn| {
        let mut applied = Applied::default();
        for source in sources {
            let row = models::upsert_source(conn, &source.name, "static")?;
            match source.consoles {
                Ok(consoles) => {
                    models::set_source_ca_cert(conn, &source.name, source.ca_cert.as_deref())?;
                    let mut keep = Vec::with_capacity(consoles.len());
                    for c in consoles {
                        keep.push(c.uuid.clone());
                        models::upsert_console(
                            conn,
                            &NewConsole {
                                source_id: row.id,
                                uuid: c.uuid,
                                name: c.name,
                                hypervisor: c.hypervisor,
                                hypervisor_ip: c.hypervisor_ip,
                                insecure_port: c.insecure_port.map(i32::from),
                                secure_port: c.secure_port.map(i32::from),
                                host_subject: c.host_subject,
                                ticket: c.ticket.map(models::Ticket::new),
                                firewall_profile: c.firewall_profile,
                            },
                        )?;
                    }
                    models::delete_consoles_not_in(conn, row.id, &keep)?;
                    models::set_source_error(conn, &source.name, None)?;
                    applied.ok.push(source.name);
                }
                Err(problem) => {
                    // Keep what the source had published; say why it is not updated.
                    let message = problem.to_string();
                    models::set_source_error(conn, &source.name, Some(&message))?;
                    applied.errored.push((source.name, message));
                }
            }
        }
        Ok(applied)
    })
    .await
    .map_err(SourcesError::from)
}

/// Applies the file now, then again whenever its modification time or size changes.
pub async fn spawn_watcher(db: Db, path: PathBuf, interval: Duration, shutdown: &Shutdown) {
    let mut last = stamp(&path);
    report(&path, apply_file(&db, &path).await);
    let token = shutdown.token().clone();
    shutdown.tracker().spawn(async move {
        loop {
            tokio::select! {
                () = token.cancelled() => return,
                () = tokio::time::sleep(interval.max(Duration::from_secs(1))) => {}
            }
            let now = stamp(&path);
            if now != last {
                last = now;
                tracing::info!(path = %path.display(), "sources file changed: reloading");
                report(&path, apply_file(&db, &path).await);
            }
        }
    });
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn report(path: &Path, result: Result<Applied, SourcesError>) {
    match result {
        Ok(applied) => {
            for (name, message) in &applied.errored {
                tracing::error!(source.name = %name, error = %message, "source not loaded; keeping its previous consoles");
            }
            tracing::info!(path = %path.display(), sources = applied.ok.len(), errored = applied.errored.len(), "sources loaded");
        }
        Err(error) => {
            tracing::error!(error = %error, "sources file not loaded; keeping the previous consoles")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "
- source: lab
  type: static
  consoles:
    - uuid: 0D1E7A52-6F4B-4C3E-9A8E-2B7D5C1F9E01
      name: vm one
      hypervisor: hv1
      insecure_port: 5900
      ticket: secret
- source: cloud
  type: openstack
  url: http://keystone
  username: admin
";

    #[test]
    fn static_sources_parse_and_others_are_skipped() {
        let sources = parse(GOOD).unwrap();
        assert_eq!(sources.len(), 1);
        let consoles = sources[0].consoles.as_ref().unwrap();
        assert_eq!(consoles[0].uuid, "0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01");
        assert_eq!(consoles[0].hypervisor_ip, "hv1");
    }

    #[test]
    fn invalid_consoles_mark_only_their_source() {
        let text = "
- source: a
  type: static
  consoles:
    - {uuid: not-a-uuid, name: x, hypervisor: h, insecure_port: 1}
- source: b
  type: static
  consoles:
    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: x, hypervisor: h}
- source: c
  type: static
  consoles:
    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: x, hypervisor: h, secure_port: 1, ticket: 0123456789012345678901234567890123456789012345678901234567890}
";
        let sources = parse(text).unwrap();
        assert_eq!(
            sources[0].consoles.as_ref().unwrap_err().to_string(),
            "console 1 (not-a-uuid): uuid is not a UUID"
        );
        assert_eq!(
            sources[1].consoles.as_ref().unwrap_err().to_string(),
            "console 1 (0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01): needs insecure_port or secure_port"
        );
        assert!(
            sources[2]
                .consoles
                .as_ref()
                .unwrap_err()
                .to_string()
                .contains("at most 60 bytes")
        );
    }

    #[test]
    fn unknown_console_keys_and_bad_yaml_are_errors() {
        let e = parse("- source: a\n  type: static\n  consoles:\n    - {uuid: u, name: x, hypervisor: h, tiket: t}\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `tiket`"), "{e}");
        let e = parse("- source: [\n").unwrap_err().to_string();
        assert!(e.starts_with("invalid sources file:"), "{e}");
        let e = parse("- {source: a, type: static}\n- {source: a, type: static}\n")
            .unwrap_err()
            .to_string();
        assert_eq!(e, "source 'a' is listed twice");
    }

    #[test]
    fn firewall_profiles_come_from_the_console_else_its_source() {
        let text = "
- source: a
  type: static
  firewall_profile: no-usb
  consoles:
    - {uuid: 0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: x, hypervisor: h, insecure_port: 1}
    - {uuid: 1d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: y, hypervisor: h, insecure_port: 1,
       firewall_profile: view-only}
- source: b
  type: static
  consoles:
    - {uuid: 2d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01, name: z, hypervisor: h, insecure_port: 1,
       firewall_profile: 'bad name'}
";
        let sources = parse(text).unwrap();
        let a = sources[0].consoles.as_ref().unwrap();
        assert_eq!(a[0].firewall_profile.as_deref(), Some("no-usb"));
        assert_eq!(a[1].firewall_profile.as_deref(), Some("view-only"));
        let e = sources[1].consoles.as_ref().unwrap_err().to_string();
        assert!(e.contains("firewall_profile 'bad name'"), "{e}");
    }
}
