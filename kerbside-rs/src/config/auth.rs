//! The Keystone credential sections: `[keystone_authtoken]` (keystonemiddleware's names, used
//! to validate users' tokens) and `[nova]` (the service user for Nova lookups, falling back to
//! `[keystone_authtoken]`).

use std::path::PathBuf;

use super::section::{Section, section};
use super::validation::Validator;
use super::value::{OptValue, Secret, ValueError, choice_value};

/// One `[nova] console_host_map` entry: the host name Nova gives for a console, and the
/// address kerbside connects to instead. The name still identifies the hypervisor (its
/// certificate is checked against it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsoleHostMapping {
    /// The console host exactly as Nova returns it.
    pub name: String,
    /// The host name or address to connect to.
    pub address: String,
}

impl OptValue for ConsoleHostMapping {
    const KIND: &'static str = "dict value";
    fn parse(raw: &str) -> Result<Self, ValueError> {
        // Split at the first colon: host names have none, IPv6 addresses may follow it.
        let (name, address) = raw
            .split_once(':')
            .map(|(n, a)| (n.trim(), a.trim()))
            .filter(|(n, a)| !n.is_empty() && !a.is_empty())
            .ok_or_else(|| ValueError::Invalid {
                kind: "console host map entry",
                raw: raw.to_owned(),
                expected: "NOVA_HOST:ADDRESS, e.g. compute1:192.0.2.11".to_owned(),
            })?;
        Ok(ConsoleHostMapping {
            name: name.to_owned(),
            address: address.to_owned(),
        })
    }
}

choice_value! {
    /// Which endpoint of the Keystone catalog to use.
    Interface {
        /// The public endpoint.
        Public = "public",
        /// The internal endpoint.
        Internal = "internal",
        /// The admin endpoint.
        Admin = "admin",
    }
}

choice_value! {
    /// Keystone authentication plugin.
    AuthType {
        /// Keystone v3 password authentication.
        Password = "password",
        /// The same, under its explicit name.
        V3Password = "v3password",
    }
}

section! {
    /// Keystone token validation (keystonemiddleware option names).
    pub struct KeystoneAuthSection("keystone_authtoken") {
        /// Public Keystone URL returned to unauthenticated clients in WWW-Authenticate.
        www_authenticate_uri: Option<url::Url>,
        /// Keystone URL the service user authenticates against.
        auth_url: Option<url::Url>,
        /// Authentication plugin.
        auth_type: AuthType = "password",
        /// Service user name.
        username: Option<String>,
        /// Service user password.
        password: Option<Secret>,
        /// Project of the service user.
        project_name: Option<String>,
        /// Domain of the service user.
        user_domain_name: String = "Default",
        /// Domain of the service user's project.
        project_domain_name: String = "Default",
        /// Region of the Keystone catalog to use.
        region_name: Option<String>,
        /// Catalog interface to use.
        interface: Interface = "internal",
        /// PEM CA bundle for verifying Keystone's certificate.
        cafile: Option<PathBuf>,
        /// Skip verification of Keystone's certificate (testing only).
        insecure: bool = "false",
        /// Seconds a validated user token is cached.
        token_cache_time: u64 = "300",
        /// Seconds to wait for a connection to Keystone.
        http_connect_timeout: u64 = "5",
        /// Seconds to wait for Keystone to answer a request (connection included). A request
        /// needing Keystone fails with 503 after this long; requests that do not need it
        /// (cached tokens, /healthcheck) are never held up.
        http_request_timeout: u64 = "10",
        /// Accepted for compatibility with deployment tools; kerbside caches in process.
        memcached_servers: Vec<String>,
    }
}

section! {
    /// The service user kerbside uses to ask Nova about console tokens. Unset options fall
    /// back to `[keystone_authtoken]`. The user needs the admin role in Nova.
    pub struct NovaSection("nova") {
        /// Keystone URL for the Nova service user.
        auth_url: Option<url::Url>,
        /// Authentication plugin.
        auth_type: Option<AuthType>,
        /// Service user name.
        username: Option<String>,
        /// Service user password.
        password: Option<Secret>,
        /// Project of the service user.
        project_name: Option<String>,
        /// Domain of the service user.
        user_domain_name: Option<String>,
        /// Domain of the service user's project.
        project_domain_name: Option<String>,
        /// Region of the compute endpoint.
        region_name: Option<String>,
        /// Catalog interface of the compute endpoint.
        interface: Interface = "internal",
        /// Compute endpoint to use instead of the catalog's.
        endpoint_override: Option<url::Url>,
        /// PEM CA bundle for verifying Nova's and Keystone's certificates.
        cafile: Option<PathBuf>,
        /// Skip certificate verification (testing only).
        insecure: Option<bool>,
        /// Seconds to wait for Nova or Keystone to answer a request (connection included).
        timeout: u64 = "30",
        /// Seconds to wait for a connection to Nova or Keystone.
        connect_timeout: u64 = "5",
        /// Seconds a console token Nova found is remembered (0: ask Nova every time). Nova
        /// is asked again after this even if the token is still valid.
        cache_time: u64 = "30",
        /// Seconds a console token Nova does not know is remembered, so a flood of bogus
        /// tokens does not reach Nova one for one.
        negative_cache_time: u64 = "5",
        /// Addresses to connect to for console hosts Nova names, as NOVA_HOST:ADDRESS pairs
        /// (e.g. "compute1.example.com:192.0.2.11"), for hypervisors whose console host name
        /// the proxy cannot resolve or should not use to connect. The name Nova gives still
        /// identifies the hypervisor. Hosts not listed are connected to by their name.
        console_host_map: Vec<ConsoleHostMapping>,
    }
}

impl KeystoneAuthSection {
    /// Checks that the Keystone timeouts are not 0. Whether the service user is complete
    /// depends on `[api] auth_strategy`, so [`super::Config`] checks that.
    pub fn validate(&self, validator: &mut Validator<'_>) {
        let mut check = validator.section(Self::NAME);
        check.at_least_one_second("http_connect_timeout", self.http_connect_timeout);
        check.at_least_one_second("http_request_timeout", self.http_request_timeout);
    }
}

impl NovaSection {
    /// Checks that the Nova timeouts are not 0.
    pub fn validate(&self, validator: &mut Validator<'_>) {
        let mut check = validator.section(Self::NAME);
        check.at_least_one_second("timeout", self.timeout);
        check.at_least_one_second("connect_timeout", self.connect_timeout);
    }

    /// The address to connect to for the console host `host` Nova returned.
    pub fn console_address<'a>(&'a self, host: &'a str) -> &'a str {
        self.console_host_map
            .iter()
            .find(|m| m.name == host)
            .map_or(host, |m| m.address.as_str())
    }
}
