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
}

/// A validated static source, ready to store.
#[derive(Debug)]
pub struct StaticSource {
    /// Source name.
    pub name: String,
    /// CA for hypervisor TLS.
    pub ca_cert: Option<String>,
    /// Consoles, or why the source is unusable.
    pub consoles: Result<Vec<NewConsoleSpec>, String>,
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
}

/// Parses and validates the file's text.
///
/// # Errors
/// A message with the YAML error's line when the text is not a list of sources.
pub fn parse(text: &str) -> Result<Vec<StaticSource>, String> {
    let entries: Vec<SourceEntry> =
        serde_norway::from_str(text).map_err(|e| format!("invalid sources file: {e}"))?;
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for entry in entries {
        if !seen.insert(entry.source.clone()) {
            return Err(format!("source '{}' is listed twice", entry.source));
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
                consoles: Err(format!("ca_cert: {e}")),
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

fn validate_consoles(entry: &SourceEntry) -> Result<Vec<NewConsoleSpec>, String> {
    let mut uuids = HashSet::new();
    let mut out = Vec::new();
    for (i, c) in entry.consoles.iter().enumerate() {
        let at = |msg: String| format!("console {} ({}): {msg}", i + 1, c.uuid);
        let uuid = uuid::Uuid::parse_str(&c.uuid)
            .map_err(|_| at("uuid is not a UUID".to_owned()))?
            .to_string();
        if !uuids.insert(uuid.clone()) {
            return Err(at("uuid is listed twice".to_owned()));
        }
        if c.name.trim().is_empty() {
            return Err(at("name is empty".to_owned()));
        }
        if c.hypervisor.trim().is_empty() {
            return Err(at("hypervisor is empty".to_owned()));
        }
        if c.insecure_port.is_none() && c.secure_port.is_none() {
            return Err(at("needs insecure_port or secure_port".to_owned()));
        }
        if matches!(c.insecure_port, Some(0)) || matches!(c.secure_port, Some(0)) {
            return Err(at("ports must be 1-65535".to_owned()));
        }
        if let Some(ticket) = &c.ticket
            && (ticket.len() > 60 || ticket.contains('\0'))
        {
            return Err(at(
                "ticket must be at most 60 bytes without NUL (a SPICE limit)".to_owned(),
            ));
        }
        if let Some(subject) = &c.host_subject {
            crate::tlsutil::parse_host_subject(subject)
                .map_err(|e| at(format!("host_subject: {e}")))?;
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
        });
    }
    Ok(out)
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
pub async fn apply_file(db: &Db, path: &Path) -> Result<Applied, String> {
    let parsed = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|text| parse(&text).map_err(|e| format!("{}: {e}", path.display())));
    let sources = match parsed {
        Ok(sources) => sources,
        Err(message) => {
            let m = message.clone();
            db.run(move |conn| {
                for source in models::list_sources(conn)? {
                    if source.source_type == "static" {
                        models::set_source_error(conn, &source.name, Some(&m))?;
                    }
                }
                Ok(())
            })
            .await
            .map_err(|e| e.to_string())?;
            return Err(message);
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
                            },
                        )?;
                    }
                    models::delete_consoles_not_in(conn, row.id, &keep)?;
                    models::set_source_error(conn, &source.name, None)?;
                    applied.ok.push(source.name);
                }
                Err(message) => {
                    // Keep what the source had published; say why it is not updated.
                    models::set_source_error(conn, &source.name, Some(&message))?;
                    applied.errored.push((source.name, message));
                }
            }
        }
        Ok(applied)
    })
    .await
    .map_err(|e| e.to_string())
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

fn report(path: &Path, result: Result<Applied, String>) {
    match result {
        Ok(applied) => {
            for (name, message) in &applied.errored {
                tracing::error!(source.name = %name, error = %message, "source not loaded; keeping its previous consoles");
            }
            tracing::info!(path = %path.display(), sources = applied.ok.len(), errored = applied.errored.len(), "sources loaded");
        }
        Err(message) => {
            tracing::error!(error = %message, "sources file not loaded; keeping the previous consoles")
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
            sources[0].consoles.as_ref().unwrap_err(),
            "console 1 (not-a-uuid): uuid is not a UUID"
        );
        assert_eq!(
            sources[1].consoles.as_ref().unwrap_err(),
            "console 1 (0d1e7a52-6f4b-4c3e-9a8e-2b7d5c1f9e01): needs insecure_port or secure_port"
        );
        assert!(
            sources[2]
                .consoles
                .as_ref()
                .unwrap_err()
                .contains("at most 60 bytes")
        );
    }

    #[test]
    fn unknown_console_keys_and_bad_yaml_are_errors() {
        let e = parse("- source: a\n  type: static\n  consoles:\n    - {uuid: u, name: x, hypervisor: h, tiket: t}\n").unwrap_err();
        assert!(e.contains("unknown field `tiket`"), "{e}");
        let e = parse("- source: [\n").unwrap_err();
        assert!(e.starts_with("invalid sources file:"), "{e}");
        let e = parse("- {source: a, type: static}\n- {source: a, type: static}\n").unwrap_err();
        assert_eq!(e, "source 'a' is listed twice");
    }
}
