//! TLS helpers shared by the proxy, the API and the CLI: reading PEM files, the spice-gtk
//! host-subject format and matching it against certificates, and generating a private CA with a
//! server certificate for single-node and demo deployments.
//!
//! It builds no rustls configurations and opens no sockets (see `proxy::tls`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// What went wrong with TLS material. File errors name the file; none carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or decoded.
    #[error("cannot read {what} from {}: {source}", path.display())]
    Pem {
        /// "certificates" or "a private key".
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        source: rustls_pki_types::pem::Error,
    },
    /// PEM text (not a file) did not decode.
    #[error("invalid PEM certificate: {0}")]
    PemText(#[source] rustls_pki_types::pem::Error),
    /// No certificate where one was expected.
    #[error("no certificate found in {0}")]
    NoCertificate(String),
    /// A certificate that does not parse as X.509.
    #[error("invalid certificate{}: {reason}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Certificate {
        /// The file it came from, when it came from one.
        path: Option<PathBuf>,
        /// The parser's words.
        reason: String,
    },
    /// A malformed host subject (spice-gtk format).
    #[error("invalid host subject: {0}")]
    HostSubject(&'static str),
    /// A malformed entry of a host subject.
    #[error("invalid host subject entry '{entry}': {reason}")]
    HostSubjectEntry {
        /// The entry as written.
        entry: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file or directory could not be written.
    #[error("cannot {action} {}: {source}", path.display())]
    File {
        /// "create", "read" or "write".
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A certificate and key that rustls cannot use together.
    #[error("{} and {} do not form a usable TLS identity: {source}", cert.display(), key.display())]
    Identity {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// rustls's reason.
        source: rustls::Error,
    },
    /// A CA certificate rustls refuses as a trust anchor.
    #[error("unusable CA certificate: {0}")]
    TrustAnchor(#[source] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("cannot build a certificate verifier: {0}")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// rcgen could not make a key or certificate.
    #[error("cannot generate TLS material: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Reads every certificate of a PEM file.
///
/// # Errors
/// [`TlsError`] naming the file when it cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = |source| TlsError::Pem {
        what: "certificates",
        path: path.to_path_buf(),
        source,
    };
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<_, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(path.display().to_string()));
    }
    Ok(certs)
}

/// Reads certificates from PEM text (a CA stored in the database).
///
/// # Errors
/// [`TlsError`] when the text holds no valid certificate.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(TlsError::PemText)?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate("PEM text".to_owned()));
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1). The error never includes
/// key material.
///
/// # Errors
/// [`TlsError::Pem`] naming the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Pem {
        what: "a private key",
        path: path.to_path_buf(),
        source,
    })
}

/// One `key=value` entry of a distinguished name.
pub type DnEntry = (String, String);

/// Parses a host subject in spice-gtk's format: `C=IL,L=Raanana,O=Red Hat,CN=my server`.
/// Spaces before a key are skipped; `\,` and `\\` escape a comma and a backslash.
///
/// # Errors
/// [`TlsError`] saying what is malformed.
pub fn parse_host_subject(subject: &str) -> Result<Vec<DnEntry>, TlsError> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut chars = subject.chars();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '\\')) => current.push(escaped),
                _ => {
                    return Err(TlsError::HostSubject(
                        "invalid escape: only \\, and \\\\ are allowed",
                    ));
                }
            },
            ',' => parts.push(std::mem::take(&mut current)),
            _ => current.push(c),
        }
    }
    parts.push(current);
    for part in parts {
        let part = part.trim_start();
        let Some((key, value)) = part.split_once('=') else {
            return Err(TlsError::HostSubjectEntry {
                entry: part.to_owned(),
                reason: "expected key=value",
            });
        };
        if key.is_empty() || value.is_empty() {
            return Err(TlsError::HostSubjectEntry {
                entry: part.to_owned(),
                reason: "empty key or value",
            });
        }
        entries.push((key.to_owned(), value.to_owned()));
    }
    Ok(entries)
}

/// The subject of a DER certificate as `(short name, value)` entries, in certificate order.
///
/// # Errors
/// [`TlsError::Certificate`] when the certificate cannot be parsed.
pub fn cert_subject(der: &[u8]) -> Result<Vec<DnEntry>, TlsError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate {
            path: None,
            reason: e.to_string(),
        })?;
    let mut entries = Vec::new();
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let value = attr.as_str().map_err(|_| TlsError::Certificate {
                path: None,
                reason: format!("subject attribute {oid} is not a string"),
            })?;
            entries.push((
                short_name(&oid).unwrap_or(&oid).to_owned(),
                value.to_owned(),
            ));
        }
    }
    Ok(entries)
}

/// OpenSSL's short names for the attributes host subjects use.
fn short_name(oid: &str) -> Option<&'static str> {
    Some(match oid {
        "2.5.4.6" => "C",
        "2.5.4.8" => "ST",
        "2.5.4.7" => "L",
        "2.5.4.10" => "O",
        "2.5.4.11" => "OU",
        "2.5.4.3" => "CN",
        "2.5.4.5" => "serialNumber",
        "1.2.840.113549.1.9.1" => "emailAddress",
        "0.9.2342.19200300.100.1.25" => "DC",
        _ => return None,
    })
}

/// Whether a certificate's subject is exactly the expected one: the same entries, each as many
/// times, in any order (certificates list RDNs in whatever order their issuer chose).
pub fn subject_matches(expected: &[DnEntry], actual: &[DnEntry]) -> bool {
    let mut a: Vec<&DnEntry> = expected.iter().collect();
    let mut b: Vec<&DnEntry> = actual.iter().collect();
    a.sort();
    b.sort();
    a == b
}

/// Formats a subject in spice-gtk's host-subject format, escaping `,` and `\`.
pub fn format_host_subject(entries: &[DnEntry]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}={}", v.replace('\\', "\\\\").replace(',', "\\,"));
    }
    out
}

/// Paths of generated TLS material.
#[derive(Clone, Debug)]
pub struct GeneratedTls {
    /// The private CA certificate (give it to clients).
    pub ca_file: PathBuf,
    /// The server certificate.
    pub cert_file: PathBuf,
    /// The server key (mode 0600).
    pub key_file: PathBuf,
    /// The server certificate's subject in host-subject format.
    pub host_subject: String,
}

/// How long a generated CA is valid.
pub const GENERATED_CA_DAYS: i64 = 3650;

/// How long a generated server certificate is valid.
pub const GENERATED_CERT_DAYS: i64 = 825;

/// A generated server certificate this close to its end is issued again (same CA) at start.
pub const RENEW_BEFORE_DAYS: i64 = 30;

/// Creates (once) a private CA and a server certificate for `hosts` in `dir`: `ca-cert.pem`,
/// `ca-key.pem`, `server-cert.pem`, `server-key.pem`. Existing files are kept, so clients that
/// trust the CA keep working across restarts.
///
/// Both are valid from a day ago (clocks differ): the CA for [`GENERATED_CA_DAYS`], the
/// server certificate for [`GENERATED_CERT_DAYS`]. A server certificate within
/// [`RENEW_BEFORE_DAYS`] of its end is issued again by the same CA (logged). The directory
/// is created 0700, the keys 0600.
///
/// # Errors
/// [`TlsError`] when files cannot be written or certificates cannot be made.
pub fn ensure_self_signed(
    dir: &Path,
    hosts: &[String],
    name: &str,
) -> Result<GeneratedTls, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

    let tls = GeneratedTls {
        ca_file: dir.join("ca-cert.pem"),
        cert_file: dir.join("server-cert.pem"),
        key_file: dir.join("server-key.pem"),
        host_subject: String::new(),
    };
    let ca_key_file = dir.join("ca-key.pem");
    if !(tls.ca_file.is_file() && tls.cert_file.is_file() && tls.key_file.is_file()) {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| TlsError::File {
                action: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::new())?;
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "Kerbside");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("Kerbside CA for {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        (ca_params.not_before, ca_params.not_after) = validity(GENERATED_CA_DAYS);
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, &ca_key);
        write_file(&tls.ca_file, ca_cert.pem().as_bytes(), 0o644)?;
        write_file(&ca_key_file, ca_key.serialize_pem().as_bytes(), 0o600)?;
        issue_server_cert(&tls, &issuer, hosts, name)?;
    } else if expires_within(&tls.cert_file, RENEW_BEFORE_DAYS)? && ca_key_file.is_file() {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| TlsError::File {
                action: "read",
                path: path.to_path_buf(),
                source,
            })
        };
        let ca_key = KeyPair::from_pem(&read(&ca_key_file)?)?;
        let issuer = Issuer::from_ca_cert_pem(&read(&tls.ca_file)?, ca_key)?;
        issue_server_cert(&tls, &issuer, hosts, name)?;
        tracing::info!(
            cert_file = %tls.cert_file.display(),
            days = GENERATED_CERT_DAYS,
            "renewed the generated server certificate"
        );
    }
    let certs = load_certs(&tls.cert_file)?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate(tls.cert_file.display().to_string()))?;
    let host_subject = format_host_subject(&cert_subject(first)?);
    Ok(GeneratedTls {
        host_subject,
        ..tls
    })
}

/// A new server key and certificate for `hosts`, signed by `issuer`, written over the old.
fn issue_server_cert<S: rcgen::SigningKey>(
    tls: &GeneratedTls,
    issuer: &rcgen::Issuer<'_, S>,
    hosts: &[String],
    name: &str,
) -> Result<(), TlsError> {
    use rcgen::{CertificateParams, DnType, KeyPair};
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "Kerbside");
    params.distinguished_name.push(DnType::CommonName, name);
    (params.not_before, params.not_after) = validity(GENERATED_CERT_DAYS);
    let cert = params.signed_by(&key, issuer)?;
    write_file(&tls.key_file, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&tls.cert_file, cert.pem().as_bytes(), 0o644)
}

/// From a day ago (clocks differ) to `days` from now.
fn validity(days: i64) -> (time::OffsetDateTime, time::OffsetDateTime) {
    let now = time::OffsetDateTime::now_utc();
    (
        now - time::Duration::days(1),
        now + time::Duration::days(days),
    )
}

/// Whether the first certificate of `path` ends within `days` (or has ended).
fn expires_within(path: &Path, days: i64) -> Result<bool, TlsError> {
    let certs = load_certs(path)?;
    let first = certs
        .first()
        .ok_or_else(|| TlsError::NoCertificate(path.display().to_string()))?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(first).map_err(|e| TlsError::Certificate {
            path: Some(path.to_path_buf()),
            reason: e.to_string(),
        })?;
    let not_after = cert.validity().not_after.timestamp();
    let limit = (time::OffsetDateTime::now_utc() + time::Duration::days(days)).unix_timestamp();
    Ok(not_after <= limit)
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .map_err(|source| TlsError::File {
            action: "write",
            path: path.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_subjects_parse_with_escapes() {
        let s = parse_host_subject("C=IL, L=Raanana,O=Red Hat\\, Inc.,CN=my server").unwrap();
        assert_eq!(
            s,
            [
                ("C".into(), "IL".into()),
                ("L".into(), "Raanana".into()),
                ("O".into(), "Red Hat, Inc.".into()),
                ("CN".into(), "my server".into())
            ]
        );
        assert_eq!(
            format_host_subject(&s),
            "C=IL,L=Raanana,O=Red Hat\\, Inc.,CN=my server"
        );
        assert!(parse_host_subject("CN").is_err());
        assert!(parse_host_subject("CN=a\\x").is_err());
        assert!(parse_host_subject("CN=a,").is_err());
    }

    #[test]
    fn subjects_match_in_any_order_but_completely() {
        let cert = parse_host_subject("C=AU,O=Example,CN=hv1").unwrap();
        assert!(subject_matches(
            &parse_host_subject("CN=hv1,O=Example,C=AU").unwrap(),
            &cert
        ));
        assert!(!subject_matches(
            &parse_host_subject("CN=hv1,O=Example").unwrap(),
            &cert
        ));
        assert!(!subject_matches(
            &parse_host_subject("C=AU,O=Example,CN=hv2").unwrap(),
            &cert
        ));
    }

    #[test]
    fn generated_material_is_reused_and_readable() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_self_signed(
            dir.path(),
            &["localhost".into(), "127.0.0.1".into()],
            "proxy",
        )
        .unwrap();
        let expected = parse_host_subject("O=Kerbside,CN=proxy").unwrap();
        assert!(subject_matches(
            &expected,
            &parse_host_subject(&a.host_subject).unwrap()
        ));
        let before = std::fs::read(&a.cert_file).unwrap();
        let b = ensure_self_signed(dir.path(), &["localhost".into()], "proxy").unwrap();
        assert_eq!(before, std::fs::read(&b.cert_file).unwrap());
        assert!(load_key(&b.key_file).is_ok());
        assert_eq!(load_certs(&b.ca_file).unwrap().len(), 1);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&b.key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    /// Validity of the first certificate of a file, as Unix times.
    fn validity_of(path: &Path) -> (i64, i64) {
        let certs = load_certs(path).unwrap();
        let (_, cert) = x509_parser::parse_x509_certificate(&certs[0]).unwrap();
        (
            cert.validity().not_before.timestamp(),
            cert.validity().not_after.timestamp(),
        )
    }

    #[test]
    fn generated_material_is_valid_from_yesterday_for_years_not_centuries() {
        let dir = tempfile::tempdir().unwrap();
        let tls = ensure_self_signed(&dir.path().join("tls"), &["localhost".into()], "p").unwrap();
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let day = 86_400;
        let (ca_from, ca_to) = validity_of(&tls.ca_file);
        let (from, to) = validity_of(&tls.cert_file);
        for start in [ca_from, from] {
            assert!((now - 2 * day..=now).contains(&start), "not_before {start}");
        }
        assert!(
            (ca_to - now - GENERATED_CA_DAYS * day).abs() < day,
            "CA not_after {ca_to}"
        );
        assert!(
            (to - now - GENERATED_CERT_DAYS * day).abs() < day,
            "not_after {to}"
        );
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dir.path().join("tls"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
    }

    #[test]
    fn a_server_certificate_near_its_end_is_renewed_by_the_same_ca() {
        use rcgen::{CertificateParams, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let hosts = vec!["localhost".to_owned()];
        let first = ensure_self_signed(dir.path(), &hosts, "p").unwrap();
        let ca_before = std::fs::read(&first.ca_file).unwrap();
        // Replace the server certificate by one ending in 10 days, from the same CA.
        let ca_key =
            KeyPair::from_pem(&std::fs::read_to_string(dir.path().join("ca-key.pem")).unwrap())
                .unwrap();
        let issuer =
            Issuer::from_ca_cert_pem(&std::fs::read_to_string(&first.ca_file).unwrap(), ca_key)
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(hosts.clone()).unwrap();
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(800);
        params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(10);
        let old = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(&first.cert_file, old.pem()).unwrap();

        let renewed = ensure_self_signed(dir.path(), &hosts, "p").unwrap();
        let (_, to) = validity_of(&renewed.cert_file);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        assert!(to - now > 800 * 86_400, "renewed certificate ends {to}");
        assert_eq!(ca_before, std::fs::read(&renewed.ca_file).unwrap());
        // A certificate far from its end is kept as it is.
        let kept = std::fs::read(&renewed.cert_file).unwrap();
        ensure_self_signed(dir.path(), &hosts, "p").unwrap();
        assert_eq!(kept, std::fs::read(&renewed.cert_file).unwrap());
    }
}
