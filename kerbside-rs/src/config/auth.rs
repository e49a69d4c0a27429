//! The Keystone credential sections: `[keystone_authtoken]` (keystonemiddleware's names, used
//! to validate users' tokens) and `[nova]` (the service user for Nova lookups, falling back to
//! `[keystone_authtoken]`).

use std::path::PathBuf;

use super::section::section;
use super::value::{Secret, choice_value};

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
        /// Seconds to wait for Nova or Keystone to answer.
        timeout: u64 = "30",
    }
}
