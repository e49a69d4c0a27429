//! TLS helpers shared by the proxy, the API and the CLI: reading PEM files, the spice-gtk
//! host-subject format and matching it against certificates, and generating a private CA with a
//! server certificate for single-node and demo deployments.
//!
//! It builds no rustls configurations and opens no sockets (see `proxy::tls`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Reads every certificate of a PEM file.
///
/// # Errors
/// A message naming the file when it cannot be read or holds no certificate.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM certificate in {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("no certificate found in {}", path.display()));
    }
    Ok(certs)
}

/// Reads certificates from PEM text (a CA stored in the database).
///
/// # Errors
/// A message when the text holds no valid certificate.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no certificate found in PEM text".to_owned());
    }
    Ok(certs)
}

/// Reads the private key of a PEM file (PKCS#8, PKCS#1 or SEC1). The error never includes
/// key material.
///
/// # Errors
/// A message naming the file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// One `key=value` entry of a distinguished name.
pub type DnEntry = (String, String);

/// Parses a host subject in spice-gtk's format: `C=IL,L=Raanana,O=Red Hat,CN=my server`.
/// Spaces before a key are skipped; `\,` and `\\` escape a comma and a backslash.
///
/// # Errors
/// A message saying what is malformed.
pub fn parse_host_subject(subject: &str) -> Result<Vec<DnEntry>, String> {
    let mut entries = Vec::new();
    let mut current = String::new();
    let mut chars = subject.chars();
    let mut parts = Vec::new();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(escaped @ (',' | '\\')) => current.push(escaped),
                _ => {
                    return Err(
                        "invalid escape in host subject: only \\, and \\\\ are allowed".to_owned(),
                    );
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
            return Err(format!(
                "invalid host subject entry '{part}': expected key=value"
            ));
        };
        if key.is_empty() || value.is_empty() {
            return Err(format!(
                "invalid host subject entry '{part}': empty key or value"
            ));
        }
        entries.push((key.to_owned(), value.to_owned()));
    }
    Ok(entries)
}

/// The subject of a DER certificate as `(short name, value)` entries, in certificate order.
///
/// # Errors
/// A message when the certificate cannot be parsed.
pub fn cert_subject(der: &[u8]) -> Result<Vec<DnEntry>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("invalid certificate: {e}"))?;
    let mut entries = Vec::new();
    for rdn in cert.subject().iter() {
        for attr in rdn.iter() {
            let oid = attr.attr_type().to_id_string();
            let value = attr
                .as_str()
                .map_err(|_| format!("certificate subject attribute {oid} is not a string"))?;
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

/// Creates (once) a private CA and a server certificate for `hosts` in `dir`: `ca-cert.pem`,
/// `ca-key.pem`, `server-cert.pem`, `server-key.pem`. Existing files are kept, so clients that
/// trust the CA keep working across restarts.
///
/// # Errors
/// A message when files cannot be written or certificates cannot be made.
pub fn ensure_self_signed(
    dir: &Path,
    hosts: &[String],
    name: &str,
) -> Result<GeneratedTls, String> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };

    let tls = GeneratedTls {
        ca_file: dir.join("ca-cert.pem"),
        cert_file: dir.join("server-cert.pem"),
        key_file: dir.join("server-key.pem"),
        host_subject: String::new(),
    };
    let ca_key_file = dir.join("ca-key.pem");
    if !(tls.ca_file.is_file() && tls.cert_file.is_file() && tls.key_file.is_file()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let err = |e: rcgen::Error| format!("cannot generate TLS material: {e}");
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::new()).map_err(err)?;
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "Kerbside");
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("Kerbside CA for {name}"));
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let issuer = Issuer::new(ca_params, &ca_key);

        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(hosts.to_vec()).map_err(err)?;
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Kerbside");
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &issuer).map_err(err)?;

        write_file(&tls.ca_file, ca_cert.pem().as_bytes(), 0o644)?;
        write_file(&ca_key_file, ca_key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&tls.key_file, key.serialize_pem().as_bytes(), 0o600)?;
        write_file(&tls.cert_file, cert.pem().as_bytes(), 0o644)?;
    }
    let certs = load_certs(&tls.cert_file)?;
    let first = certs.first().ok_or("no certificate")?;
    let host_subject = format_host_subject(&cert_subject(first)?);
    Ok(GeneratedTls {
        host_subject,
        ..tls
    })
}

fn write_file(path: &Path, data: &[u8], mode: u32) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    f.write_all(data)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
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
}
