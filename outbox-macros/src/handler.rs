//! `#[event_handler]`: check the function's shape, then register an erased wrapper of it.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::parse::Parser;
use syn::spanned::Spanned;
use syn::{FnArg, Ident, ItemFn, LitStr, ReturnType, Type};

use crate::attr::{self, Errors};
use crate::root::core_path;

/// The model of a handler function.
struct HandlerModel<'a> {
    func: &'a ItemFn,
    name: Option<String>,
    event_ty: Option<&'a Type>,
    ctx_ty: Option<&'a Type>,
}

pub(crate) fn expand(args: TokenStream, func: ItemFn) -> TokenStream {
    let mut errors = Errors::default();
    let model = parse(args, &func, &mut errors);
    match errors.into_tokens() {
        // Emit the function untouched so calls to it elsewhere still resolve.
        Some(errs) => quote!(#func #errs),
        None => generate(&model),
    }
}

fn parse<'a>(args: TokenStream, func: &'a ItemFn, errors: &mut Errors) -> HandlerModel<'a> {
    let mut name: Option<LitStr> = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident(attr::NAME) {
            if name.is_some() {
                errors.spanned(&meta.path, "duplicate event_handler attribute `name`");
            }
            name = Some(meta.value()?.parse()?);
        } else {
            let path = &meta.path;
            let key = quote!(#path).to_string().replace(' ', "");
            errors.spanned(
                &meta.path,
                format!(
                    "unknown event_handler attribute `{key}`; expected `{}`",
                    attr::NAME
                ),
            );
            if meta.input.peek(syn::Token![=]) {
                let _: syn::Expr = meta.value()?.parse()?;
            }
        }
        Ok(())
    });
    if let Err(e) = parser.parse2(args) {
        errors.push(e);
    }
    let name = name.map(|lit| {
        let v = lit.value();
        if let Some(msg) = attr::check_stored_name(&v) {
            errors.spanned(&lit, format!("invalid handler name: {msg}"));
        }
        v
    });

    let sig = &func.sig;
    if sig.asyncness.is_none() {
        errors.spanned(
            sig.fn_token,
            "an event handler must be an `async fn`: add `async` before `fn`",
        );
    }
    if !sig.generics.params.is_empty() {
        errors.spanned(
            &sig.generics,
            "an event handler cannot be generic: it is registered once, for one event type",
        );
    }
    if let Some(c) = &sig.constness {
        errors.spanned(c, "an event handler cannot be `const`");
    }
    if let Some(v) = &sig.variadic {
        errors.spanned(v, "an event handler cannot be variadic");
    }

    let mut typed = Vec::new();
    for input in &sig.inputs {
        match input {
            FnArg::Receiver(r) => errors.spanned(
                r,
                "an event handler is a free function: it cannot take `self`",
            ),
            FnArg::Typed(pt) => typed.push(&*pt.ty),
        }
    }
    let event_ty = typed.first().copied();
    let ctx_ty = typed.get(1).copied();
    if event_ty.is_none() && sig.inputs.is_empty() {
        errors.spanned(
            &sig.ident,
            "an event handler takes the event as its first argument: `async fn h(event: MyEvent, ctx: &HandlerContext)`",
        );
    }
    if let Some(extra) = sig.inputs.iter().nth(2) {
        errors.spanned(
            extra,
            "an event handler takes at most two arguments: the event and `&HandlerContext`",
        );
    }

    HandlerModel {
        func,
        name,
        event_ty,
        ctx_ty,
    }
}

fn generate(m: &HandlerModel<'_>) -> TokenStream {
    let root = core_path();
    let func = m.func;
    let fn_ident = &func.sig.ident;
    let vis = &func.vis;
    let Some(event_ty) = m.event_ty else {
        return quote!(#func);
    };
    let function = {
        let ident = fn_ident.to_string();
        quote!(::core::concat!(::core::module_path!(), "::", #ident))
    };
    let name = match &m.name {
        Some(n) => quote!(#n),
        None => function.clone(),
    };
    let wrapper = format_ident!("__outbox_handler_{}", fn_ident);
    let registration = format_ident!("__OUTBOX_HANDLER_{}", fn_ident.to_string().to_uppercase());

    // Each check below is spanned on the user's tokens, so rustc reports a wrong event type, a
    // wrong context type or a wrong return type where it was written. (A type that is not an
    // event is reported by `decode`'s bound, on the argument's type.)
    let (call, ctx_check) = match m.ctx_ty {
        Some(ctx_ty) => {
            // The context reaches the handler through a function returning the user's declared
            // type, so a wrong type is one error, reported on that type.
            let check_fn = Ident::new("__outbox_context", Span::mixed_site());
            (
                quote!(#fn_ident(event, #check_fn(ctx))),
                quote_spanned! {ctx_ty.span()=>
                    fn #check_fn(ctx: &#root::HandlerContext) -> #ctx_ty { ctx }
                },
            )
        }
        None => (quote!(#fn_ident(event)), quote!()),
    };
    let ret_span = match &func.sig.output {
        ReturnType::Type(_, ty) => ty.span(),
        ReturnType::Default => fn_ident.span(),
    };
    let into_result = quote_spanned! {ret_span=>
        #root::IntoHandlerResult::into_handler_result(#call.await)
    };
    let boxed = quote_spanned! {fn_ident.span()=>
        ::std::boxed::Box::pin(async move {
            let event: #event_ty = #root::__private::decode::<#event_ty>(ctx)?;
            #into_result
        })
    };
    let doc = format!("The registry entry of the event handler `{fn_ident}`.");

    quote! {
        #func

        #[doc(hidden)]
        #[allow(non_snake_case)]
        fn #wrapper<'a>(
            ctx: &'a #root::HandlerContext,
        ) -> #root::BoxFuture<'a, ::core::result::Result<(), #root::HandlerError>> {
            #ctx_check
            #boxed
        }

        #[doc(hidden)]
        #[allow(non_upper_case_globals)]
        const #registration: #root::HandlerRegistration = #root::HandlerRegistration {
            name: #name,
            function: #function,
            event_type: <#event_ty as #root::DomainEvent>::EVENT_TYPE,
            event_version: <#event_ty as #root::DomainEvent>::VERSION,
            call: #wrapper,
        };

        #root::__private::inventory::submit! { #registration }

        /// Companion of the handler function of the same name.
        #[doc(hidden)]
        #vis mod #fn_ident {
            #[doc = #doc]
            ///
            /// Use it to build an explicit `Registry` (in tests, say).
            #[allow(dead_code)]
            pub fn handler() -> #root::HandlerEntry {
                #root::HandlerEntry::from_registration(&super::#registration)
            }
        }
    }
}
