//! `#[derive(DomainEvent)]`: parse `#[event(..)]` into an [`Event`], then expand it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::{DeriveInput, Ident, LitInt, LitStr};

use crate::attr::{self, Errors};
use crate::root::core_path;

/// The model: what the derive needs to know about the event type.
struct Event {
    ident: Ident,
    name: String,
    version: u32,
    /// `#[event(aggregate = "order")]`: for the catalog only.
    aggregate: Option<String>,
    /// `#[event(schema)]`: the type must have a JSON Schema.
    schema: bool,
    /// Generic events are rejected; emitting their impl would only add rustc's own errors.
    generic: bool,
}

pub(crate) fn derive(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let event = parse(&input, &mut errors);
    let expanded = expand(&event);
    match errors.into_tokens() {
        // Still emit the impl, so uses of the type elsewhere report nothing extra.
        Some(errs) => quote!(#expanded #errs),
        None => expanded,
    }
}

fn parse(input: &DeriveInput, errors: &mut Errors) -> Event {
    let mut name: Option<LitStr> = None;
    let mut version: Option<LitInt> = None;
    let mut aggregate: Option<LitStr> = None;
    let mut schema = false;
    for a in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(attr::EVENT))
    {
        let result = a.parse_nested_meta(|meta| {
            if meta.path.is_ident(attr::NAME) {
                let lit: LitStr = meta.value()?.parse()?;
                if name.is_some() {
                    errors.spanned(&meta.path, "duplicate event attribute `name`");
                }
                name = Some(lit);
            } else if meta.path.is_ident(attr::VERSION) {
                let lit: LitInt = meta.value()?.parse()?;
                if version.is_some() {
                    errors.spanned(&meta.path, "duplicate event attribute `version`");
                }
                version = Some(lit);
            } else if meta.path.is_ident(attr::AGGREGATE) {
                let lit: LitStr = meta.value()?.parse()?;
                if aggregate.is_some() {
                    errors.spanned(&meta.path, "duplicate event attribute `aggregate`");
                }
                aggregate = Some(lit);
            } else if meta.path.is_ident(attr::SCHEMA) {
                if schema {
                    errors.spanned(&meta.path, "duplicate event attribute `schema`");
                }
                schema = true;
            } else {
                let path = &meta.path;
                let key = quote!(#path).to_string().replace(' ', "");
                errors.spanned(
                    &meta.path,
                    format!(
                        "unknown event attribute `{key}`; expected `{}`, `{}`, `{}` or `{}`",
                        attr::NAME,
                        attr::VERSION,
                        attr::AGGREGATE,
                        attr::SCHEMA
                    ),
                );
                // Skip the value, if any, so parsing goes on to the next key.
                if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                }
            }
            Ok(())
        });
        if let Err(e) = result {
            errors.push(e);
        }
    }

    if !input.generics.params.is_empty() {
        errors.spanned(
            &input.generics,
            "a domain event cannot be generic: its type name is stored in the database",
        );
    }

    let name = match name {
        Some(lit) => {
            let value = lit.value();
            if let Some(msg) = attr::check_stored_name(&value) {
                errors.spanned(&lit, format!("invalid event name: {msg}"));
            }
            value
        }
        None => input.ident.to_string(),
    };
    let version = match version {
        Some(lit) => match lit.base10_parse::<u32>() {
            Ok(0) => {
                errors.spanned(&lit, "event versions start at 1");
                1
            }
            Ok(v) => v,
            Err(e) => {
                errors.push(e);
                1
            }
        },
        None => 1,
    };
    let aggregate = aggregate.map(|lit| {
        let value = lit.value();
        if let Some(msg) = attr::check_stored_name(&value) {
            errors.spanned(&lit, format!("invalid aggregate type: {msg}"));
        }
        value
    });
    Event {
        ident: input.ident.clone(),
        name,
        version,
        aggregate,
        schema,
        generic: !input.generics.params.is_empty(),
    }
}

fn expand(event: &Event) -> TokenStream {
    let root = core_path();
    let Event {
        ident,
        name,
        version,
        aggregate,
        schema,
        generic,
    } = event;
    // On the type's name, so the error points at the type that lacks the derive.
    let require_schema = schema.then(|| {
        quote::quote_spanned! {ident.span()=>
            const _: () = #root::__private::require_schema::<#ident>();
        }
    });
    let aggregate = match aggregate {
        Some(a) => quote!(::core::option::Option::Some(#a)),
        None => quote!(::core::option::Option::None),
    };
    if *generic {
        return TokenStream::new();
    }
    quote! {
        #[automatically_derived]
        impl #root::DomainEvent for #ident {
            const EVENT_TYPE: &'static str = #name;
            const VERSION: u32 = #version;
        }

        #require_schema

        const _: () = {
            // Method resolution picks the schema where `#ident` is concrete: see
            // `outbox_seaorm_core::catalog::schema`.
            fn schema() -> ::core::option::Option<#root::__private::serde_json::Value> {
                #[allow(unused_imports)]
                use #root::__private::{NoSchema as _, WithSchema as _};
                (&#root::__private::SchemaProbe::<#ident>::new()).event_schema()
            }
            #root::__private::inventory::submit! {
                #root::EventTypeRegistration {
                    name: #name,
                    version: #version,
                    rust_type: ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    aggregate_type: #aggregate,
                    schema,
                }
            }
        };
    }
}
