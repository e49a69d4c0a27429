//! How the proxy reaches a console's hypervisor: `[proxy] hypervisor_tls` applied to the
//! console's ports, CA and host subject gives an [`upstream::Target`](super::upstream::Target)
//! (or the reason the console cannot be reached), and the rustls client configurations for
//! hypervisor TLS are built once per (CA, host subject) and cached.
//!
//! It does not connect: `upstream` dials the target and runs the hypervisor's link stage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::CertificateDer;

use super::error::{ProxyError, Unusable};
use super::store::ConsoleTarget;
use super::tls;
use super::upstream::Target;
use crate::config::{Config, HypervisorTls};

/// The hypervisor connection policy of this process, with its TLS configuration cache.
pub struct HypervisorPolicy {
    /// `[proxy] hypervisor_tls`.
    policy: HypervisorTls,
    /// `[proxy] connect_timeout`: connect, TLS and the hypervisor's link stage.
    connect_timeout: Duration,
    /// CA used for hypervisors whose source has none (`[proxy] hypervisor_ca_file`).
    default_ca: Option<Vec<CertificateDer<'static>>>,
    /// Hypervisor TLS configurations by (CA PEM, host subject), built once.
    client_configs: Mutex<HashMap<(String, String), Arc<ClientConfig>>>,
}

impl HypervisorPolicy {
    /// The policy `config` describes, with `[proxy] hypervisor_ca_file` loaded.
    ///
    /// # Errors
    /// The default CA file cannot be read or holds no certificate.
    pub fn from_config(config: &Config) -> Result<Self, crate::tlsutil::TlsError> {
        let default_ca = match &config.proxy.hypervisor_ca_file {
            Some(path) => Some(crate::tlsutil::load_certs(path)?),
            None => None,
        };
        Ok(HypervisorPolicy {
            policy: config.proxy.hypervisor_tls,
            connect_timeout: Duration::from_secs(config.proxy.connect_timeout),
            default_ca,
            client_configs: Mutex::new(HashMap::new()),
        })
    }

    /// How to reach a console's hypervisor under `[proxy] hypervisor_tls`: connect to its
    /// `hypervisor_ip`; over TLS, check the certificate against its `hypervisor` name, or
    /// against its host subject when it has one.
    ///
    /// # Errors
    /// When the policy and the console's ports, CA or host subject do not allow a connection.
    pub fn target(&self, console: &ConsoleTarget) -> Result<Target, ProxyError> {
        let unusable = |reason: Unusable| ProxyError::ConsoleUnusable {
            console: console.uuid.clone(),
            reason,
        };
        let policy = self.policy;
        let ca_pem = console.ca_pem.clone();
        let have_ca = ca_pem.is_some() || self.default_ca.is_some();
        let tls = match (policy, console.tls_port) {
            (HypervisorTls::Never, _) => None,
            (_, Some(port)) if have_ca => Some((
                port,
                self.client_config(
                    &console.uuid,
                    ca_pem.as_deref(),
                    console.host_subject.as_deref(),
                )?,
            )),
            (HypervisorTls::Require, Some(_)) => {
                return Err(unusable(Unusable::TlsRequiredWithoutCa));
            }
            (HypervisorTls::Require, None) => {
                return Err(unusable(Unusable::TlsRequiredWithoutTlsPort));
            }
            (HypervisorTls::Auto, _) => None,
        };
        let no_tls_reason = match (policy, console.tls_port) {
            (HypervisorTls::Never, _) => "[proxy] hypervisor_tls is 'never'",
            (_, None) => "the console has no TLS port",
            (_, Some(_)) => {
                "no CA is configured for its hypervisor (the source's ca_cert or [proxy] hypervisor_ca_file)"
            }
        };
        let plain_port = if policy == HypervisorTls::Require {
            None
        } else {
            console.plain_port
        };
        if tls.is_none() && plain_port.is_none() {
            return Err(unusable(Unusable::NoUsablePort));
        }
        Ok(Target {
            console: console.uuid.clone(),
            host: console.host.clone(),
            tls_name: console.name.clone(),
            plain_port,
            tls,
            subject_checked: console.host_subject.is_some(),
            no_tls_reason,
            ticket: console.ticket.clone(),
            timeout: self.connect_timeout,
        })
    }

    /// The TLS configuration for a hypervisor with this CA (or the default one) and host
    /// subject, built once per pair and then shared by every connection.
    fn client_config(
        &self,
        console: &str,
        ca_pem: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Arc<ClientConfig>, ProxyError> {
        let key = (
            ca_pem.unwrap_or_default().to_owned(),
            subject.unwrap_or_default().to_owned(),
        );
        if let Some(config) = self
            .client_configs
            .lock()
            .ok()
            .and_then(|m| m.get(&key).cloned())
        {
            return Ok(config);
        }
        let internal = |source: crate::tlsutil::TlsError| ProxyError::HypervisorTlsSetup {
            console: console.to_owned(),
            source: Box::new(source),
        };
        let ca = match ca_pem {
            Some(pem) => crate::tlsutil::parse_certs(pem).map_err(internal)?,
            None => self.default_ca.clone().unwrap_or_default(),
        };
        let subject = subject
            .map(crate::tlsutil::parse_host_subject)
            .transpose()
            .map_err(internal)?;
        let config = tls::hypervisor_client_config(&ca, subject).map_err(internal)?;
        if let Ok(mut map) = self.client_configs.lock() {
            map.insert(key, config.clone());
        }
        Ok(config)
    }
}
