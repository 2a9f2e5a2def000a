//! `#[derive(DomainEvents)]`: find the aggregate type, the id field and the `#[events]` field,
//! then implement `Aggregate`.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, LitStr, Member, Type};

use crate::attr::{self, Errors};
use crate::root::core_path;

/// The model of an aggregate.
struct AggregateModel<'a> {
    input: &'a DeriveInput,
    aggregate_type: String,
    /// `None` when the id field is missing (already reported).
    id: Option<Member>,
    events: Option<(Member, &'a Type)>,
}

pub(crate) fn derive(input: DeriveInput) -> TokenStream {
    let mut errors = Errors::default();
    let model = parse(&input, &mut errors);
    let expanded = expand(&model);
    match errors.into_tokens() {
        Some(errs) => quote!(#expanded #errs),
        None => expanded,
    }
}

fn parse<'a>(input: &'a DeriveInput, errors: &mut Errors) -> AggregateModel<'a> {
    let mut aggregate: Option<LitStr> = None;
    let mut id: Option<Ident> = None;
    for a in input
        .attrs
        .iter()
        .filter(|a| a.path().is_ident(attr::DOMAIN_EVENTS))
    {
        let result = a.parse_nested_meta(|meta| {
            if meta.path.is_ident(attr::AGGREGATE) {
                if aggregate.is_some() {
                    errors.spanned(&meta.path, "duplicate domain_events attribute `aggregate`");
                }
                aggregate = Some(meta.value()?.parse()?);
            } else if meta.path.is_ident(attr::ID) {
                if id.is_some() {
                    errors.spanned(&meta.path, "duplicate domain_events attribute `id`");
                }
                id = Some(meta.value()?.parse()?);
            } else {
                let path = &meta.path;
                let key = quote!(#path).to_string().replace(' ', "");
                errors.spanned(
                    &meta.path,
                    format!(
                        "unknown domain_events attribute `{key}`; expected `{}` or `{}`",
                        attr::AGGREGATE,
                        attr::ID
                    ),
                );
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

    let aggregate_type = match &aggregate {
        Some(lit) => {
            let v = lit.value();
            if let Some(msg) = attr::check_stored_name(&v) {
                errors.spanned(lit, format!("invalid aggregate type: {msg}"));
            }
            v
        }
        None if input.ident == "Model" => {
            // Every SeaORM entity's model is called `Model`: a default from the identifier
            // would put every entity's events in one aggregate type, and one stream per id.
            errors.spanned(
                &input.ident,
                "name the aggregate type of a SeaORM model: \
                 `#[domain_events(aggregate = \"order\")]` (every SeaORM model is called `Model`)",
            );
            input.ident.to_string()
        }
        None => input.ident.to_string(),
    };

    let fields = match &input.data {
        Data::Struct(s) => match &s.fields {
            Fields::Named(named) => Some(&named.named),
            _ => {
                errors.spanned(
                    &input.ident,
                    "`DomainEvents` needs a struct with named fields",
                );
                None
            }
        },
        _ => {
            errors.spanned(
                &input.ident,
                "`DomainEvents` can only be derived for a struct",
            );
            None
        }
    };

    let mut events = None;
    let mut id_member = None;
    if let Some(fields) = fields {
        for f in fields {
            for a in f.attrs.iter().filter(|a| a.path().is_ident(attr::EVENTS)) {
                if !matches!(a.meta, syn::Meta::Path(_)) {
                    errors.spanned(a, "`#[events]` takes no arguments");
                }
                if events.is_some() {
                    errors.spanned(a, "only one field can be marked `#[events]`");
                } else if let Some(ident) = &f.ident {
                    events = Some((Member::Named(ident.clone()), &f.ty));
                }
            }
        }
        if events.is_none() {
            errors.spanned(
                &input.ident,
                format!(
                    "missing `#[events]` field: add `#[events] events: Events` to `{}`",
                    input.ident
                ),
            );
        }
        let wanted = id
            .clone()
            .unwrap_or_else(|| Ident::new("id", input.ident.span()));
        match fields.iter().find(|f| f.ident.as_ref() == Some(&wanted)) {
            Some(_) => id_member = Some(Member::Named(wanted)),
            None if id.is_some() => {
                errors.spanned(&wanted, format!("no field `{wanted}` in `{}`", input.ident))
            }
            None => errors.spanned(
                &input.ident,
                "no `id` field: name the aggregate's id field with `#[domain_events(id = field)]`",
            ),
        }
    }

    AggregateModel {
        input,
        aggregate_type,
        id: id_member,
        events,
    }
}

fn expand(m: &AggregateModel<'_>) -> TokenStream {
    let root = core_path();
    let ident = &m.input.ident;
    let (impl_generics, ty_generics, where_clause) = m.input.generics.split_for_impl();
    let aggregate_type = &m.aggregate_type;
    let id = match &m.id {
        Some(member) => quote!(::std::string::ToString::to_string(&self.#member)),
        None => quote!(::core::unreachable!()),
    };
    let (events_ref, events_mut) = match &m.events {
        // Spanned on the field's type: a field that is not `Events` is reported there.
        Some((member, ty)) => (
            quote_spanned!(ty.span()=> &self.#member),
            quote_spanned!(ty.span()=> &mut self.#member),
        ),
        None => (
            quote!(::core::unreachable!()),
            quote!(::core::unreachable!()),
        ),
    };
    quote! {
        #[automatically_derived]
        impl #impl_generics #root::Aggregate for #ident #ty_generics #where_clause {
            const AGGREGATE_TYPE: &'static str = #aggregate_type;

            fn aggregate_id(&self) -> ::std::string::String {
                #id
            }

            fn events(&self) -> &#root::Events {
                #events_ref
            }

            fn events_mut(&mut self) -> &mut #root::Events {
                #events_mut
            }
        }
    }
}
