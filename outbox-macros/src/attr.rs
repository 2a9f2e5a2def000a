//! Attribute names, and the collector that reports every error of an input at once.

use std::fmt::Display;

use proc_macro2::TokenStream;
use quote::ToTokens;

/// Keys of `#[event(...)]`.
pub(crate) const EVENT: &str = "event";
pub(crate) const NAME: &str = "name";
pub(crate) const VERSION: &str = "version";
pub(crate) const SCHEMA: &str = "schema";
/// Also a key of `#[domain_events(...)]`.
pub(crate) const AGGREGATE: &str = "aggregate";
/// Keys of `#[domain_events(...)]`.
pub(crate) const DOMAIN_EVENTS: &str = "domain_events";
pub(crate) const ID: &str = "id";
/// The marker of the events field.
pub(crate) const EVENTS: &str = "events";

/// The longest name a `VARCHAR(255)` column stores.
pub(crate) const MAX_NAME_LEN: usize = 255;

/// Collects errors so that an input with three mistakes reports three errors.
#[derive(Default)]
pub(crate) struct Errors {
    errors: Option<syn::Error>,
}

impl Errors {
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens.into_token_stream(), message));
    }

    pub(crate) fn push(&mut self, e: syn::Error) {
        match &mut self.errors {
            Some(all) => all.combine(e),
            None => self.errors = Some(e),
        }
    }

    pub(crate) fn into_tokens(self) -> Option<TokenStream> {
        self.errors.map(|e| e.to_compile_error())
    }
}

/// Checks a name that is stored in the database; returns the error message if it is bad.
pub(crate) fn check_stored_name(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("the name must not be empty".into())
    } else if name.len() > MAX_NAME_LEN {
        Some(format!(
            "the name is {} bytes long; at most {MAX_NAME_LEN} fit the column",
            name.len()
        ))
    } else {
        None
    }
}
