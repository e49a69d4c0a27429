//! rustls configurations: the server side clients reach, and the client side towards
//! hypervisors, which verifies the hypervisor's certificate against a CA and either the server
//! name the connection is made with (the console's `hypervisor`, see `upstream`) or, when a
//! host subject is known, exactly that subject (in any RDN order) instead of any name, as
//! spice-gtk does.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

use crate::tlsutil::{self, DnEntry, TlsError};

/// Installs the process-wide crypto provider (aws-lc-rs). Safe to call repeatedly.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The TLS configuration of the client-facing listener.
///
/// # Errors
/// [`TlsError`] naming the file that cannot be used.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    install_crypto_provider();
    let certs = tlsutil::load_certs(cert_file)?;
    let key = tlsutil::load_key(key_file)?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|source| TlsError::Identity {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            source,
        })?;
    Ok(Arc::new(config))
}

/// The TLS configuration for one hypervisor connection: trust `ca` and, if given, require the
/// certificate subject `host_subject`.
///
/// # Errors
/// [`TlsError`] when the CA holds no usable certificate.
pub fn hypervisor_client_config(
    ca: &[CertificateDer<'static>],
    host_subject: Option<Vec<DnEntry>>,
) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    for cert in ca {
        roots.add(cert.clone()).map_err(TlsError::TrustAnchor)?;
    }
    let webpki = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(TlsError::Verifier)?;
    let verifier = Arc::new(SubjectVerifier {
        webpki,
        host_subject,
    });
    let config = ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Chain verification by webpki; name verification by host subject when one is configured.
struct SubjectVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    host_subject: Option<Vec<DnEntry>>,
}

impl fmt::Debug for SubjectVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectVerifier")
            .field("host_subject", &self.host_subject)
            .finish()
    }
}

impl ServerCertVerifier for SubjectVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain =
            self.webpki
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let Some(expected) = &self.host_subject else {
            return chain; // no subject configured: the host name must match
        };
        match chain {
            Ok(_) => {}
            // The subject replaces the name check, as in spice-gtk; every other failure stands.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(e) => return Err(e),
        }
        let actual = tlsutil::cert_subject(end_entity)
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        if tlsutil::subject_matches(expected, &actual) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(SubjectMismatch(tlsutil::format_host_subject(
                    &actual,
                )))),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// The certificate's subject is not the expected host subject.
#[derive(Debug)]
struct SubjectMismatch(String);

impl fmt::Display for SubjectMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "certificate subject '{}' is not the expected host subject",
            self.0
        )
    }
}

impl std::error::Error for SubjectMismatch {}
