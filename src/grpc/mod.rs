//! The gRPC front (tonic): `switchyard.v2.Registry` and `Admin` over the one registry, with
//! server reflection (v1 and v1alpha), the standard health service and bearer-token auth.

pub mod convert;
pub mod service;
pub mod status;
pub mod stream;

/// Generated protobuf and tonic code.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("switchyard.v2");

    /// The encoded file descriptor set, for reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/switchyard_descriptor.bin"));
}

use tonic::{Request, Status};

use crate::registry::Registry;
use service::{AdminService, RegistryService};

/// Who may call: with a token set, every call carries `authorization: Bearer <token>`.
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub token: Option<String>,
    pub admin_token: Option<String>,
}

fn check(expected: Option<&str>, request: &Request<()>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = request
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if crate::registry::same_secret(given, expected) {
        Ok(())
    } else {
        Err(Status::permission_denied(
            "permission denied: invalid auth token",
        ))
    }
}

/// The gRPC routes as an axum router, to be merged with the gateway's.
pub async fn router(registry: Registry, auth: Auth) -> axum::Router {
    let token = auth.token.clone();
    let admin = auth.admin_token.clone().or(auth.token.clone());
    let registry_service = pb::registry_server::RegistryServer::with_interceptor(
        RegistryService {
            registry: registry.clone(),
        },
        move |req: Request<()>| check(token.as_deref(), &req).map(|()| req),
    );
    let admin_service = pb::admin_server::AdminServer::with_interceptor(
        AdminService { registry },
        move |req: Request<()>| check(admin.as_deref(), &req).map(|()| req),
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::registry_server::RegistryServer<RegistryService>>()
        .await;
    health
        .set_serving::<pb::admin_server::AdminServer<AdminService>>()
        .await;
    let mut routes = tonic::service::Routes::builder();
    routes
        .add_service(registry_service)
        .add_service(admin_service)
        .add_service(health_service);
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET);
    if let Ok(v1) = reflection.build_v1() {
        routes.add_service(v1);
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET);
    if let Ok(v1alpha) = reflection.build_v1alpha() {
        routes.add_service(v1alpha);
    }
    routes.routes().into_axum_router()
}
