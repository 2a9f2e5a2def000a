//! The JSON Schema of an event's payload, as `#[derive(DomainEvent)]` registers it.
//!
//! The derive expands in the user's crate, which cannot see outbox-seaorm-core's features, so it
//! always emits the same call, `(&SchemaProbe::<E>::new()).event_schema()`, and method
//! resolution picks the answer where the type is concrete: [`WithSchema`] (no autoref needed)
//! when the `schema` feature is on and `E: schemars::JsonSchema`, else [`NoSchema`] (one
//! autoref more), which returns `None`.
//!
//! A hard `E: JsonSchema` bound would have been simpler, but Cargo unifies features: one crate
//! in the build turning `schema` on would then break every crate that derives `DomainEvent`
//! without `JsonSchema` (a library's events, other services' tests). Here the feature only adds;
//! an event without a schema is listed with `"schema": null`, and
//! [`Catalog::events_without_schema`](super::Catalog::events_without_schema) names them for a
//! CI check. A type that must have one says `#[event(schema)]`: the derive then requires
//! [`EventSchema`], a compile error with a message that says what to do.

use std::marker::PhantomData;

use serde_json::Value;

/// Asks for the schema of `T`; see the module docs.
#[derive(Debug)]
pub struct SchemaProbe<T>(PhantomData<fn() -> T>);

impl<T> SchemaProbe<T> {
    /// A probe for `T`.
    #[allow(clippy::new_without_default)] // only generated code builds one
    pub const fn new() -> Self {
        Self(PhantomData)
    }
}

/// The schema of a type that derives `schemars::JsonSchema`, with the `schema` feature on.
pub trait WithSchema {
    /// The draft 7 schema.
    fn event_schema(&self) -> Option<Value>;
}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> WithSchema for SchemaProbe<T> {
    fn event_schema(&self) -> Option<Value> {
        Some(schema_of::<T>())
    }
}

/// No schema: the fallback method resolution reaches after [`WithSchema`].
pub trait NoSchema {
    /// `None`.
    fn event_schema(&self) -> Option<Value>;
}

impl<T> NoSchema for &SchemaProbe<T> {
    fn event_schema(&self) -> Option<Value> {
        None
    }
}

/// What `#[event(schema)]` requires of its type: implemented for every type that derives
/// `schemars::JsonSchema`, when the `schema` feature is on.
#[diagnostic::on_unimplemented(
    message = "`{Self}` has no JSON Schema, and `#[event(schema)]` asks for one",
    label = "derive `schemars::JsonSchema` on `{Self}`",
    note = "the schema also needs the `schema` feature of `outbox-seaorm` (or `outbox-seaorm-core`)"
)]
pub trait EventSchema {}

#[cfg(feature = "schema")]
impl<T: schemars::JsonSchema> EventSchema for T {}

/// Fails to compile unless `T: EventSchema`.
pub const fn require_schema<T: EventSchema>() {}

/// The root schema of `T` in JSON Schema draft 7: the dialect AsyncAPI 3.0's default schema
/// format extends, and one every validator knows. It describes what deserializes into `T`
/// (schemars' default contract), which is what matters for stored payloads: a field with
/// `#[serde(default)]` is not required.
#[cfg(feature = "schema")]
pub fn schema_of<T: schemars::JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}
