//! Macros of `outbox-seaorm-core`: `#[derive(DomainEvent)]`, `#[derive(DomainEvents)]` and
//! `#[event_handler]`. Use them through `outbox-seaorm-core` or `outbox-seaorm`, which re-export them.
//!
//! Each macro parses its input into a small model (collecting every error, each on the
//! offending tokens), then expands the model. On error the input item is still emitted, so one
//! mistake does not cascade into "cannot find" errors elsewhere.

mod aggregate;
mod attr;
mod event;
mod handler;
mod root;

use proc_macro::TokenStream;
use syn::{DeriveInput, ItemFn, parse_macro_input};

/// Implements `DomainEvent`: `#[event(name = "order.created", version = 1)]`, both optional
/// (the type's identifier and 1 by default), and registers the type for the relay and the
/// event catalog. `aggregate = "order"` names the aggregate type that records it, for the
/// catalog; `schema` makes a missing `schemars::JsonSchema` derive (or `schema` feature) a
/// compile error instead of an event listed without a schema.
#[proc_macro_derive(DomainEvent, attributes(event))]
pub fn derive_domain_event(input: TokenStream) -> TokenStream {
    event::derive(parse_macro_input!(input as DeriveInput)).into()
}

/// Implements `Aggregate`: `#[domain_events(aggregate = "order", id = id)]` on the struct (both
/// optional: the type's identifier and the field `id` by default) and `#[events]` on the
/// `Events` field.
#[proc_macro_derive(DomainEvents, attributes(domain_events, events))]
pub fn derive_domain_events(input: TokenStream) -> TokenStream {
    aggregate::derive(parse_macro_input!(input as DeriveInput)).into()
}

/// Registers `async fn name(event: E, ctx: &HandlerContext) -> R` as a handler of event `E`
/// (the context argument is optional). `#[event_handler(name = "...")]` pins the stored name,
/// which defaults to `module::path::fn_name`.
#[proc_macro_attribute]
pub fn event_handler(args: TokenStream, item: TokenStream) -> TokenStream {
    let item2: proc_macro2::TokenStream = item.clone().into();
    match syn::parse::<ItemFn>(item) {
        Ok(f) => handler::expand(args.into(), f).into(),
        Err(e) => {
            let err = syn::Error::new(
                e.span(),
                "`#[event_handler]` goes on an `async fn` at module level",
            )
            .to_compile_error();
            quote::quote!(#item2 #err).into()
        }
    }
}
