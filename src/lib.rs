//! Switchyard: a service registry and reverse proxy. Services stage routes over one of three
//! fronts and apply them atomically; one hyper engine serves the traffic.
//!
//! Dependencies point one way only:
//!
//! ```text
//! pipe ─┐
//! grpc ─┼─► registry ─► proxy (snapshot + read-only live state)
//! gateway┘
//! ```
//!
//! Fronts never import each other; `proxy` knows nothing of sessions or fronts; only `app`
//! wires everything together.

pub mod app;
pub mod config;
pub mod gateway;
pub mod grpc;
pub mod pipe;
pub mod proxy;
pub mod registry;
pub mod shutdown;
