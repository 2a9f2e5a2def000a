//! Every query the Rust code runs, checked against every driver's `.sql` file without a
//! database.
//!
//! The `.sql` files are parsed when a driver is built, and [`Catalog::stmt`] panics on a query
//! name or a parameter it does not find: a typo would reach production as a panic. This test
//! reads the driver's Rust source, finds each `.stmt(name, args)` call, works out which query
//! names it can run (a string literal, or the literals of the `let` that set the variable) and
//! which parameters it binds (the `("name", value)` tuples of the call or of the `let` of its
//! argument list and its `push`es), and checks each against the `.sql` file of each driver the
//! call can run on: calls in `sqlite.rs`, `mysql.rs` or `postgres.rs` against that driver's
//! file, calls in the shared modules against all three.
//!
//! What fails: a query name missing from a file; a parameter the query uses that the call does
//! not bind; a parameter the call binds that none of its queries uses (a misspelt name); a call
//! whose query name this test cannot work out (write it as a literal or a `let` of literals).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use sea_orm::DbBackend;

use super::sql::{Catalog, Part, Style};
use crate::config::OutboxConfig;

/// The drivers' query files, by the driver source file that owns each.
const DRIVERS: [(&str, &str, DbBackend, Style); 3] = [
    (
        "sqlite.rs",
        include_str!("sqlite.sql"),
        DbBackend::Sqlite,
        Style::Question,
    ),
    (
        "mysql.rs",
        include_str!("mysql.sql"),
        DbBackend::MySql,
        Style::Question,
    ),
    (
        "postgres.rs",
        include_str!("postgres.sql"),
        DbBackend::Postgres,
        Style::Dollar,
    ),
];

/// One `.stmt(..)` call in the source.
#[derive(Debug)]
struct Call {
    at: String,
    names: BTreeSet<String>,
    bound: BTreeSet<String>,
}

/// The parameters of query `name` in `catalog`, or `None` when it has no such query.
fn params(catalog: &Catalog, name: &str) -> Option<BTreeSet<String>> {
    let t = catalog.queries.get(name)?;
    Some(
        t.parts
            .iter()
            .filter_map(|p| match p {
                Part::Param(p) => Some(p.clone()),
                Part::Text(_) => None,
            })
            .collect(),
    )
}

/// The text from `open` (an opening bracket) to its matching closing one, exclusive.
fn balanced(src: &str, open: usize) -> &str {
    let bytes = src.as_bytes();
    let mut depth = 0usize;
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => quoted = !quoted,
            b'(' | b'[' | b'{' if !quoted => depth += 1,
            b')' | b']' | b'}' if !quoted => {
                depth -= 1;
                if depth == 0 {
                    return &src[open + 1..i];
                }
            }
            _ => {}
        }
    }
    &src[open + 1..]
}

/// The string literals of `text`, each with the text before and after it.
fn literals(text: &str) -> Vec<(String, &str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut offset = 0;
    while let Some(start) = rest.find('"') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('"') else { break };
        out.push((
            after[..end].to_owned(),
            text[..offset + start].trim_end(),
            after[end + 1..].trim_start(),
        ));
        offset += start + end + 2;
        rest = &after[end + 1..];
    }
    out
}

/// Whether a literal is the name of a bound parameter: the first element of a
/// `("name", value)` tuple whose value is not a literal (not a macro's or a call's arguments).
fn is_param(before: &str, after: &str) -> bool {
    before.ends_with('(')
        && !before.ends_with("!(")
        && !before.ends_with("stmt(")
        && after.starts_with(',')
        && !after[1..].trim_start().starts_with('"')
}

/// The names bound as parameters in `text`.
fn bound_params(text: &str) -> BTreeSet<String> {
    literals(text)
        .into_iter()
        .filter(|(_, before, after)| is_param(before, after))
        .map(|(l, _, _)| l)
        .collect()
}

/// The `let` statement (to its `;`) or `for` loop head (to its `{`), before `at`, that binds
/// `ident`, alone or in a tuple.
fn let_of<'a>(src: &'a str, at: usize, ident: &str) -> Option<&'a str> {
    let before = &src[..at];
    let binds = |head: &str| {
        head.replace(['(', ')', ',', ':'], " ")
            .split_whitespace()
            .any(|w| w == ident)
    };
    let lets = before.match_indices("let ").filter(|(i, _)| {
        let head: String = before[i + 4..].chars().take_while(|c| *c != '=').collect();
        binds(&head)
    });
    let fors = before.match_indices("for ").filter(|(i, _)| {
        let rest = &before[i + 4..];
        rest.find(" in ").is_some_and(|end| binds(&rest[..end]))
    });
    let (start, word) = lets.chain(fors).max_by_key(|(i, _)| *i)?;
    // A `let` ends at the first `;` outside brackets, a `for` head at its `{`.
    let end = if word == "let " { b';' } else { b'{' };
    let mut depth = 0i32;
    for (i, b) in src.bytes().enumerate().skip(start) {
        match b {
            b if b == end && depth == 0 => return Some(&src[start..i]),
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    None
}

/// The `.stmt(..)` calls of one source file (its `#[cfg(test)]` module left out).
fn calls(file: &Path) -> Vec<Call> {
    let full = std::fs::read_to_string(file).unwrap();
    let src = match full.find("#[cfg(test)]\nmod tests") {
        Some(i) => &full[..i],
        None => &full[..],
    };
    let mut out = Vec::new();
    for (at, _) in src.match_indices(".stmt(") {
        let line = src[..at].lines().count();
        let where_ = format!("{}:{line}", file.display());
        let args = balanced(src, at + ".stmt".len());
        let (first, rest) = args.split_once(',').unwrap_or((args, ""));
        let first = first.trim();
        let names: BTreeSet<String> = if let Some(lit) = first.strip_prefix('"') {
            [lit.trim_end_matches('"').to_owned()].into()
        } else {
            let text = let_of(src, at, first).unwrap_or_else(|| {
                panic!(
                    "{where_}: cannot tell which query `{first}` names: write the name as a \
                     literal, or set `{first}` with a `let` of literals"
                )
            });
            literals(text)
                .into_iter()
                // `args.push(("window", ..))` in a branch binds a parameter, not a name.
                .filter(|(_, before, after)| !is_param(before, after))
                .map(|(l, _, _)| l)
                .collect()
        };
        assert!(!names.is_empty(), "{where_}: no query name found");
        let rest = rest.trim();
        let bound = match rest.strip_prefix('&') {
            Some(ident) if ident.chars().all(|c| c.is_alphanumeric() || c == '_') => {
                let text = let_of(src, at, ident)
                    .unwrap_or_else(|| panic!("{where_}: no `let` of `{ident}`"));
                let from = src.find(text).unwrap();
                bound_params(&src[from..at])
            }
            _ => bound_params(rest),
        };
        out.push(Call {
            at: where_,
            names,
            bound,
        });
    }
    out
}

#[test]
fn every_query_the_code_runs_is_in_each_drivers_sql_with_the_parameters_it_binds() {
    let config = OutboxConfig::default();
    let catalogs: Vec<(&str, Catalog)> = DRIVERS
        .iter()
        .map(|(file, source, backend, style)| {
            (*file, Catalog::load(*backend, *style, source, &config))
        })
        .collect();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src/driver");
    let mut checked = 0;
    let mut problems = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_str().unwrap().to_owned();
        if path.extension().is_none_or(|e| e != "rs") || file == "sql.rs" || file == "sql_check.rs"
        {
            continue;
        }
        for call in calls(&path) {
            checked += 1;
            let mut used = BTreeSet::new();
            for (driver, catalog) in &catalogs {
                if DRIVERS.iter().any(|d| d.0 == file) && *driver != file {
                    continue;
                }
                for name in &call.names {
                    let Some(params) = params(catalog, name) else {
                        problems.push(format!(
                            "{}: no query `{name}` in the {driver} driver's .sql file",
                            call.at
                        ));
                        continue;
                    };
                    for p in params.difference(&call.bound) {
                        problems.push(format!(
                            "{}: query `{name}` of the {driver} driver uses `:{p}`, which the \
                             call does not bind",
                            call.at
                        ));
                    }
                    used.extend(params);
                }
            }
            for p in call.bound.difference(&used) {
                problems.push(format!(
                    "{}: binds `{p}`, which none of its queries ({:?}) uses",
                    call.at, call.names
                ));
            }
        }
    }
    assert!(
        checked > 40,
        "only {checked} calls found: is the scan broken?"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_scan_sees_names_set_in_a_let_and_parameters_pushed_later() {
    let src = r#"
        fn claim() {
            let mut args = vec![("relay", a), ("lease", b)];
            let query = match order {
                Any => "claim_any",
                Ordered => { args.push(("window", w)); "claim_ordered" }
            };
            db.query(self.sql.stmt(query, &args));
            sql.stmt("release", &[("seqs", s), ("relay", r)]);
            let (stream, followers) = match hold {
                For(_) => ("hold_stream", "hold_followers"),
                Forever => ("block_stream", "block_followers"),
            };
            txn.execute(sql.stmt(stream, &args));
            for (table, query) in [(m, "check_messages"), (d, "check_deliveries")] {
                db.query(d.sql().stmt(query, &[]));
            }
        }
    "#;
    let path = std::env::temp_dir().join(format!("outbox-sql-check-{}.rs", std::process::id()));
    std::fs::write(&path, src).unwrap();
    let found = calls(&path);
    std::fs::remove_file(&path).unwrap();
    assert_eq!(found.len(), 4);
    assert_eq!(
        found[0].names,
        ["claim_any", "claim_ordered"].map(String::from).into()
    );
    assert_eq!(
        found[0].bound,
        ["lease", "relay", "window"].map(String::from).into()
    );
    assert_eq!(found[1].names, ["release"].map(String::from).into());
    assert_eq!(found[1].bound, ["relay", "seqs"].map(String::from).into());
    assert_eq!(found[2].names.len(), 4, "{:?}", found[2].names);
    assert_eq!(
        found[3].names,
        ["check_deliveries", "check_messages"]
            .map(String::from)
            .into()
    );
    assert!(found[3].bound.is_empty());
}
