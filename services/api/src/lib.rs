//! kapp's object model, without IO: which Kubernetes resources are served (`resource`),
//! where objects live in the store (`keys`), and what makes an object valid (`validation`,
//! `schema`). The apiserver builds on this; so will gitops' pre-apply validation.

pub mod defaults;
pub mod groups;
pub mod heads;
pub mod kapp;
pub mod keys;
pub mod patch;
pub mod resource;
pub mod schema;
pub mod selector;
pub mod table;
pub mod validation;

pub use k8s_openapi;
pub use resource::{by_kind, by_plural, Resource, Subresource, RESOURCES};
pub use validation::{validate, ErrorType, FieldError};

/// What every written object goes through: Kubernetes' defaults, then validation.
pub fn admit(r: &Resource, obj: &mut serde_json::Value) -> Result<(), Vec<FieldError>> {
    defaults::apply(r, obj);
    validate(r, obj)
}
