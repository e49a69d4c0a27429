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
                       browser consoles, the operator API and the broker call for dashboards.",
        license(name = "Apache-2.0")
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&KeystoneToken),
    tags(
        (name = "versions", description = "API versions and health"),
        (name = "nova", description = "Nova spice-direct console token exchange"),
        (name = "html5", description = "Browser consoles: the spice-html5 page for Nova spice-html5 and kerbside console tokens"),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    /// `api-ref/source`.
    fn api_ref() -> &'static Path {
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../api-ref/source"))
    }

    /// Every `.. rest_method:: METHOD /path` of index.rst and the files it includes.
    fn documented() -> BTreeSet<(String, String)> {
        let index = std::fs::read_to_string(api_ref().join("index.rst")).unwrap();
        let mut texts = vec![index.clone()];
        for line in index.lines() {
            if let Some(inc) = line.trim().strip_prefix(".. include:: ") {
                texts.push(std::fs::read_to_string(api_ref().join(inc.trim())).unwrap());
            }
        }
        texts
            .iter()
            .flat_map(|t| t.lines())
            .filter_map(|l| l.trim().strip_prefix(".. rest_method:: "))
            .map(|m| {
                let (method, path) = m.trim().split_once(' ').unwrap();
                (method.to_owned(), path.trim().to_owned())
            })
            .collect()
    }

    fn served() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
        out
    }

    #[test]
    fn every_openapi_path_is_in_the_api_ref() {
        let documented = documented();
        let missing: Vec<_> = served().difference(&documented).cloned().collect();
        assert!(
            missing.is_empty(),
            "add these to api-ref/source: {missing:?}"
        );
        let stale: Vec<_> = documented
            .iter()
            .filter(|(m, p)| !served().contains(&(m.clone(), p.clone())) && p != "/openapi.json")
            .collect();
        assert!(stale.is_empty(), "documented but not served: {stale:?}");
    }

    #[test]
    fn the_document_is_complete() {
        let doc = serde_json::to_value(crate::api::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        assert!(paths.len() >= 14, "{:?}", paths.keys());
        for (path, item) in paths {
            for (method, op) in item.as_object().unwrap() {
                let responses = op["responses"].as_object().unwrap();
                assert!(!responses.is_empty(), "{method} {path}: no responses");
                if path.starts_with("/v1/") {
                    assert!(responses.contains_key("401"), "{method} {path}: no 401");
                    assert!(op["security"].is_array(), "{method} {path}: no security");
                }
                // Every `{param}` of the path is described.
                for segment in path.split('/') {
                    if let Some(name) = segment.strip_prefix('{').and_then(|s| s.strip_suffix('}'))
                    {
                        let params = op["parameters"].as_array().unwrap();
                        assert!(
                            params
                                .iter()
                                .any(|p| p["name"] == name && p["in"] == "path"),
                            "{method} {path}: path parameter {name} undocumented"
                        );
                    }
                }
            }
        }
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for name in [
            "ErrorBody",
            "SourceList",
            "ConsoleList",
            "EventPage",
            "SessionShow",
        ] {
            assert!(schemas.contains_key(name), "schema {name} missing");
        }
        assert!(doc["components"]["securitySchemes"]["keystone"].is_object());
    }

    #[test]
    fn api_ref_samples_and_parameters_are_valid() {
        for entry in std::fs::read_dir(api_ref().join("samples")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "json") {
                let text = std::fs::read_to_string(&path).unwrap();
                serde_json::from_str::<serde_json::Value>(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        let params: std::collections::BTreeMap<String, serde_json::Value> = serde_norway::from_str(
            &std::fs::read_to_string(api_ref().join("parameters.yaml")).unwrap(),
        )
        .unwrap();
        for entry in std::fs::read_dir(api_ref()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "inc") {
                continue;
            }
            for line in std::fs::read_to_string(&path).unwrap().lines() {
                if let Some((_, key)) = line
                    .trim()
                    .strip_prefix("- ")
                    .and_then(|l| l.split_once(": "))
                    && !key.chars().all(|c| c.is_ascii_digit())
                    && line.trim_start().starts_with("- ")
                    && !["nova_token", "html5_token", "html5_unavailable"].contains(&key.trim())
                {
                    assert!(
                        params.contains_key(key.trim()),
                        "{}: parameter {key} not in parameters.yaml",
                        path.display()
                    );
                }
            }
        }
    }
}
