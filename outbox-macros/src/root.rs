//! The path generated code uses to reach `outbox-seaorm-core`.

use proc_macro_crate::{FoundCrate, crate_name};
use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::Ident;

/// `::outbox_seaorm_core` when the calling crate depends on it (or is it), else the copy re-exported
/// by `outbox-seaorm`, so users need only one dependency line.
pub(crate) fn core_path() -> TokenStream {
    match crate_name("outbox-seaorm-core") {
        // `outbox-seaorm-core` declares `extern crate self as outbox_seaorm_core`, so the absolute path
        // also works inside it, its doc tests and its integration tests.
        Ok(FoundCrate::Itself) => quote!(::outbox_seaorm_core),
        Ok(FoundCrate::Name(name)) => {
            let ident = Ident::new(&name, Span::call_site());
            quote!(::#ident)
        }
        Err(_) => match crate_name("outbox-seaorm") {
            Ok(FoundCrate::Name(name)) => {
                let ident = Ident::new(&name, Span::call_site());
                quote!(::#ident::__core)
            }
            Ok(FoundCrate::Itself) => quote!(::outbox_seaorm::__core),
            Err(_) => quote!(::outbox_seaorm_core),
        },
    }
}
