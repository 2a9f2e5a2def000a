//! `outbox catalog`: print the event catalog, or check it against a committed one.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};

use crate::catalog::Catalog;

#[derive(Args, Debug)]
pub(super) struct CatalogArgs {
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::Json)]
    format: Format,
    /// Compare with this committed catalog (the JSON format) and fail (exit 1) on a breaking
    /// change, listing each; print nothing else.
    #[arg(long, value_name = "FILE")]
    check: Option<PathBuf>,
    /// The AsyncAPI document's `info.title`.
    #[arg(long, default_value = "events")]
    title: String,
    /// The AsyncAPI document's `info.version`.
    #[arg(long, default_value = "0.0.0")]
    api_version: String,
}

#[derive(ValueEnum, Debug, Clone, Copy)]
enum Format {
    /// The catalog itself: what `--check` reads.
    Json,
    /// An AsyncAPI 3.0 document.
    Asyncapi,
}

/// Why `outbox catalog` refuses to run in a binary that links no event: an empty catalog
/// printed would be committed as the truth, and checked against, it reports every committed
/// version as gone.
pub(crate) const NO_EVENTS: &str = "this binary knows no event types, so it has no catalog \
    to print or to check: run `outbox catalog` from the service's own binary, which links its \
    events, e.g. a `src/bin/outbox.rs` holding `fn main() -> std::process::ExitCode { \
    outbox_seaorm::cli::main_with_catalog(outbox_seaorm::catalog::Catalog::from_registry(&registry)) }` \
    (or `outbox_seaorm::cli::main()`, without the routes)";

/// Runs `outbox catalog`: 0 ok, 1 a breaking change or an error.
pub(super) fn run(args: &CatalogArgs, catalog: Option<Catalog>) -> ExitCode {
    match try_run(args, catalog) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", super::chain(&e));
            ExitCode::from(1)
        }
    }
}

fn try_run(args: &CatalogArgs, catalog: Option<Catalog>) -> anyhow::Result<ExitCode> {
    let current = match catalog {
        Some(c) => c,
        None => Catalog::from_inventory()?,
    };
    anyhow::ensure!(!current.events.is_empty(), NO_EVENTS);
    for event in current.events_without_schema() {
        eprintln!(
            "warning: {event} has no JSON Schema: derive `schemars::JsonSchema` on it, with \
             the `schema` feature on"
        );
    }
    if let Some(path) = &args.check {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let committed = Catalog::from_json(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an event catalog written by `outbox catalog --format json`: {}",
                path.display(),
                e.report()
            )
        })?;
        return Ok(match current.check_against(&committed) {
            Ok(()) => {
                eprintln!("no breaking change against {}", path.display());
                ExitCode::SUCCESS
            }
            Err(changes) => {
                eprintln!(
                    "{} breaking change(s) against {}:",
                    changes.len(),
                    path.display()
                );
                for c in changes {
                    eprintln!("  - {c}");
                }
                ExitCode::from(1)
            }
        });
    }
    let doc = match args.format {
        Format::Json => current.to_json(),
        Format::Asyncapi => current.to_asyncapi(&args.title, &args.api_version),
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}
