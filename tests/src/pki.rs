//! A throwaway X.509 PKI for TLS tests: one CA and leaf certificates signed by it.
//!
//! [`TestPki::new`] writes QEMU's `x509-dir` layout (`ca-cert.pem`, `server-cert.pem`,
//! `server-key.pem`) so the directory can be handed straight to `-spice x509-dir=`.
//! More leaves (the proxy's own certificate, for example) come from [`TestPki::issue`].
//! Keys are ECDSA P-256, generated in-process with rcgen; nothing here shells out to
//! openssl. This module does not start any server.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

/// Country of every test certificate subject.
const COUNTRY: &str = "XX";
/// Organisation of every test certificate subject.
const ORGANISATION: &str = "Kerbside Test";
/// Common name of the CA.
const CA_NAME: &str = "Kerbside Test CA";
/// Common name of the default server certificate (deliberately not a host name, so a
/// client that passes must really have checked the subject or the SAN).
pub const SERVER_NAME: &str = "spice-server.kerbside.test";
/// Subject alternative names put on every leaf unless the caller chooses others.
pub const LOOPBACK_SANS: &[&str] = &["127.0.0.1", "localhost"];

/// A leaf certificate and its private key, written to disk as PEM.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The subject common name.
    pub name: String,
    /// Path of the certificate PEM.
    pub cert_path: PathBuf,
    /// Path of the private key PEM (PKCS#8, mode 0600).
    pub key_path: PathBuf,
    /// The certificate PEM.
    pub cert_pem: String,
    /// The private key PEM.
    pub key_pem: String,
}

impl IssuedCert {
    /// The subject in spice-gtk `host-subject` format: `C=XX,O=Kerbside Test,CN=<name>`.
    pub fn host_subject(&self) -> String {
        host_subject_for(&self.name)
    }
}

/// A CA plus the default SPICE server certificate, in one directory.
pub struct TestPki {
    /// Directory holding every PEM this PKI wrote.
    dir: PathBuf,
    /// The CA, kept in memory so more leaves can be signed.
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate PEM (also at `ca-cert.pem`).
    ca_pem: String,
    /// The default server leaf (`server-cert.pem`, `server-key.pem`).
    server: IssuedCert,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki")
            .field("dir", &self.dir)
            .field("server", &self.server.name)
            .finish_non_exhaustive()
    }
}

/// `C=XX,O=Kerbside Test,CN=<name>`: the subject of a test leaf in spice-gtk format.
pub fn host_subject_for(name: &str) -> String {
    format!("C={COUNTRY},O={ORGANISATION},CN={name}")
}

fn subject(name: &str) -> Result<DistinguishedName> {
    let mut dn = DistinguishedName::new();
    let country = COUNTRY
        .try_into()
        .context("country code is not a PrintableString")?;
    dn.push(DnType::CountryName, DnValue::PrintableString(country));
    dn.push(DnType::OrganizationName, ORGANISATION);
    dn.push(DnType::CommonName, name);
    Ok(dn)
}

/// Write `contents` to `path` with the given Unix mode (the file is replaced).
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(contents.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

impl TestPki {
    /// Create the CA and the default server certificate (CN [`SERVER_NAME`], SANs
    /// 127.0.0.1 and localhost) in `dir`, which is created if needed.
    ///
    /// # Errors
    /// Key generation, signing or writing a file failed.
    pub fn new(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        params.distinguished_name = subject(CA_NAME)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().context("generating the CA key")?;
        let ca = CertifiedIssuer::self_signed(params, key).context("self-signing the CA")?;
        let ca_pem = ca.pem();
        write_file(&dir.join("ca-cert.pem"), &ca_pem, 0o644)?;

        let mut pki = TestPki {
            dir: dir.to_path_buf(),
            ca,
            ca_pem,
            server: IssuedCert {
                name: String::new(),
                cert_path: PathBuf::new(),
                key_path: PathBuf::new(),
                cert_pem: String::new(),
                key_pem: String::new(),
            },
        };
        pki.server = pki.issue("server", SERVER_NAME, LOOPBACK_SANS)?;
        Ok(pki)
    }

    /// Sign a new leaf (server and client auth) with CN `name` and the given SANs (IP
    /// addresses or DNS names), written as `<file_stem>-cert.pem` and `<file_stem>-key.pem`.
    ///
    /// # Errors
    /// A SAN is invalid, or generating, signing or writing failed.
    pub fn issue(&self, file_stem: &str, name: &str, sans: &[&str]) -> Result<IssuedCert> {
        let sans: Vec<String> = sans.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(sans).context("leaf SANs")?;
        params.distinguished_name = subject(name)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().with_context(|| format!("generating the {name} key"))?;
        let cert = params
            .signed_by(&key, &self.ca)
            .with_context(|| format!("signing the {name} certificate"))?;
        let issued = IssuedCert {
            name: name.to_owned(),
            cert_path: self.dir.join(format!("{file_stem}-cert.pem")),
            key_path: self.dir.join(format!("{file_stem}-key.pem")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        write_file(&issued.cert_path, &issued.cert_pem, 0o644)?;
        write_file(&issued.key_path, &issued.key_pem, 0o600)?;
        Ok(issued)
    }

    /// A QEMU `x509-dir` in `dir` (created if needed) holding this CA and `leaf` as the server
    /// certificate, so a test server can present a leaf other than the default one.
    ///
    /// # Errors
    /// Writing a file failed.
    pub fn x509_dir_for(&self, leaf: &IssuedCert, dir: &Path) -> Result<PathBuf> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_file(&dir.join("ca-cert.pem"), &self.ca_pem, 0o644)?;
        write_file(&dir.join("server-cert.pem"), &leaf.cert_pem, 0o644)?;
        write_file(&dir.join("server-key.pem"), &leaf.key_pem, 0o600)?;
        Ok(dir.to_path_buf())
    }

    /// The directory (QEMU `x509-dir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of `ca-cert.pem`.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.join("ca-cert.pem")
    }

    /// The CA certificate PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The default server leaf (`server-cert.pem`, `server-key.pem`).
    pub fn server(&self) -> &IssuedCert {
        &self.server
    }

    /// Path of `server-cert.pem`.
    pub fn server_cert_path(&self) -> &Path {
        &self.server.cert_path
    }

    /// Path of `server-key.pem`.
    pub fn server_key_path(&self) -> &Path {
        &self.server.key_path
    }

    /// The default server subject in spice-gtk `host-subject` format.
    pub fn host_subject(&self) -> String {
        self.server.host_subject()
    }
}
