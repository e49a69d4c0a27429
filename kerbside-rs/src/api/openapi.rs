//! The OpenAPI document's fixed parts: title, version, tags and the Keystone security scheme.
//! Paths, parameters and schemas come from the handlers' annotations as the routes are
//! registered ([`super::routes::register`]).

use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};

/// The document's fixed parts.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "kerbside",
        description = "SPICE console proxy for OpenStack: Nova spice-direct token exchange, \
                       the operator API and the broker call for dashboards.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&KeystoneToken),
    tags(
        (name = "versions", description = "API versions and health"),
        (name = "nova", description = "Nova spice-direct console token exchange"),
        (name = "sources", description = "Console sources"),
        (name = "consoles", description = "Consoles and their audit events"),
        (name = "sessions", description = "Proxy sessions"),
        (name = "servers", description = "Broker call for dashboards")
    )
)]
pub struct ApiDoc;

/// Adds the `X-Auth-Token` security scheme.
pub struct KeystoneToken;

impl Modify for KeystoneToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi
            .components
            .get_or_insert_with(utoipa::openapi::Components::new);
        components.add_security_scheme(
            "keystone",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Auth-Token",
                "A Keystone token (ignored with [api] auth_strategy = noauth).",
            ))),
        );
    }
}

/// The fixed parts, with the crate's version.
pub fn base() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc
}
