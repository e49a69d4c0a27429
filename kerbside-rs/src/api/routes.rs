//! The route table: every documented route is registered here through utoipa-actix-web, so
//! the OpenAPI document lists exactly what is served. The handlers live with what they serve
//! (`versions.rs`, `exchange.rs`, `html5.rs`, `v1/`); the web console registers its own
//! routes under `/ui/` (`ui/`), outside the document.

use actix_web::dev::{ServiceFactory, ServiceRequest};
use actix_web::{Error, HttpResponse, web};
use utoipa_actix_web::UtoipaApp;

use super::{exchange, v1, versions};

/// Adds every documented route to `app`.
pub fn register<T>(app: UtoipaApp<T>) -> UtoipaApp<T>
where
    T: ServiceFactory<ServiceRequest, Config = (), Error = Error, InitError = ()>,
{
    app.openapi(super::openapi::base())
        .service(versions::versions)
        .service(versions::healthcheck)
        .service(exchange::nova_console)
        .service(exchange::nova_console_vv)
        .service(super::html5::console_page)
        .service(v1::sources::list_sources)
        .service(v1::sources::show_source)
        .service(v1::consoles::list_consoles)
        .service(v1::consoles::show_console)
        .service(v1::consoles::console_vv)
        .service(v1::consoles::list_console_events)
        .service(v1::sessions::list_sessions)
        .service(v1::sessions::show_session)
        .service(v1::sessions::terminate_session)
        .service(v1::servers::create_server_console)
        .route("/openapi.json", web::get().to(openapi_json))
}

/// The OpenAPI document of every route (tests and the api-ref check use it).
pub fn openapi() -> utoipa::openapi::OpenApi {
    register(actix_web::App::new().into_utoipa_app())
        .split_for_parts()
        .1
}

use utoipa_actix_web::AppExt as _;

async fn openapi_json(doc: web::Data<utoipa::openapi::OpenApi>) -> HttpResponse {
    HttpResponse::Ok().json(doc.get_ref())
}
