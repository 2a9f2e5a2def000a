//! Named SQL statements loaded from a driver's `.sql` file, with `:name` parameters.
//!
//! A file holds sections that start with `-- name: <query>`. Table names are written
//! `{messages}`, `{deliveries}`, `{streams}`, `{inbox}`, `{locks}` (and `{messages_base}`,
//! ... for the unqualified name, in index names) and filled in once, when the driver is built.
//! Parameters are written `:name` and bound by name; each driver renders them in its own
//! placeholder style, and a list parameter becomes a PostgreSQL array or an expanded `?, ?, ?`.

use std::collections::HashMap;

use sea_orm::{DbBackend, Statement, Value};

use crate::config::{OutboxConfig, base_name, quote};

/// How a driver writes placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    /// `$1`, `$2`, ...; a name used twice is one parameter; lists are arrays.
    Dollar,
    /// `?` per occurrence; lists expand.
    Question,
}

/// A value to bind: one value, or a list.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    One(Value),
    /// Elements and the PostgreSQL array type they make.
    List(Vec<Value>, sea_orm::sea_query::ArrayType),
}

impl<T: Into<Value>> From<T> for Arg {
    fn from(v: T) -> Self {
        Arg::One(v.into())
    }
}

/// A list of sequence numbers, bound as one parameter.
pub(crate) fn seqs(seqs: &[i64]) -> Arg {
    Arg::List(
        seqs.iter().map(|&s| Value::BigInt(Some(s))).collect(),
        sea_orm::sea_query::ArrayType::BigInt,
    )
}

/// The rows a relay holds, for a claim to skip: never an empty list (`NOT IN (NULL)` would
/// skip every row), so `0` (no sequence number) stands for none.
pub(crate) fn held(held: &[i64]) -> Arg {
    if held.is_empty() {
        seqs(&[0])
    } else {
        seqs(held)
    }
}

#[derive(Debug, Clone)]
pub(super) enum Part {
    Text(String),
    Param(String),
}

/// One statement, split at its parameters.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    name: String,
    pub(super) parts: Vec<Part>,
}

/// The named statements of one driver, with the table names filled in.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    backend: DbBackend,
    style: Style,
    pub(super) queries: HashMap<String, Template>,
}

/// Fills the table names of `config` into `sql`.
pub(crate) fn fill_tables(backend: DbBackend, sql: &str, config: &OutboxConfig) -> String {
    let mut sql = sql.to_owned();
    for (key, name) in [
        ("messages", config.messages_table()),
        ("deliveries", config.deliveries_table()),
        ("streams", config.streams_table()),
        ("inbox", config.inbox_table()),
        ("locks", config.locks_table()),
        ("relays", config.relays_table()),
    ] {
        let base = base_name(name);
        let schema = match name.rsplit_once('.') {
            Some((schema, _)) => format!("{}.", quote(backend, schema)),
            None => String::new(),
        };
        sql = sql
            .replace(&format!("{{{key}_schema}}"), &schema)
            .replace(&format!("{{{key}_table}}"), &quote(backend, base))
            .replace(&format!("{{{key}_base}}"), base)
            .replace(&format!("{{{key}}}"), &quote(backend, name));
    }
    sql
}

/// The statements of a DDL file: comments dropped, split on `;`.
pub(crate) fn statements(sql: &str) -> Vec<String> {
    let sql: String = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    sql.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Catalog {
    /// Parses `source` (sections headed `-- name: x`) for `backend`.
    pub(crate) fn load(
        backend: DbBackend,
        style: Style,
        source: &str,
        config: &OutboxConfig,
    ) -> Self {
        let mut queries = HashMap::new();
        let mut current: Option<(String, String)> = None;
        let mut flush = |current: Option<(String, String)>| {
            if let Some((name, body)) = current {
                let body = fill_tables(backend, body.trim(), config);
                queries.insert(
                    name.clone(),
                    Template {
                        name,
                        parts: split(&body),
                    },
                );
            }
        };
        for line in source.lines() {
            if let Some(name) = line.trim().strip_prefix("-- name:") {
                flush(current.take());
                current = Some((name.trim().to_owned(), String::new()));
            } else if line.trim_start().starts_with("--") {
                continue;
            } else if let Some((_, body)) = current.as_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        flush(current);
        Self {
            backend,
            style,
            queries,
        }
    }

    /// The database these statements are written for.
    pub(crate) fn backend(&self) -> DbBackend {
        self.backend
    }

    /// The statement `name` with `args` bound.
    ///
    /// # Panics
    ///
    /// When the query or one of its parameters is missing: a bug in the driver, caught by its
    /// tests.
    pub(crate) fn stmt(&self, name: &str, args: &[(&str, Arg)]) -> Statement {
        let t = self
            .queries
            .get(name)
            .unwrap_or_else(|| panic!("no query `{name}` in the {:?} driver", self.backend));
        let mut sql = String::new();
        let mut values: Vec<Value> = Vec::new();
        let mut numbered: Vec<(&str, usize)> = Vec::new();
        for part in &t.parts {
            match part {
                Part::Text(s) => sql.push_str(s),
                Part::Param(p) => {
                    let arg = args.iter().find(|(n, _)| n == p).map(|(_, a)| a);
                    let arg = arg
                        .unwrap_or_else(|| panic!("query `{}` needs the parameter `{p}`", t.name));
                    match (self.style, arg) {
                        (Style::Dollar, a) => {
                            let n = match numbered.iter().find(|(n, _)| n == p) {
                                Some((_, i)) => *i,
                                None => {
                                    values.push(match a {
                                        Arg::One(v) => v.clone(),
                                        Arg::List(items, ty) => array(ty, items),
                                    });
                                    numbered.push((p, values.len()));
                                    values.len()
                                }
                            };
                            sql.push('$');
                            sql.push_str(&n.to_string());
                        }
                        (Style::Question, Arg::One(v)) => {
                            values.push(v.clone());
                            sql.push('?');
                        }
                        (Style::Question, Arg::List(items, _)) => {
                            // Padded to a power of two by repeating the last element (harmless
                            // in `IN`), so a handful of statement texts get prepared, not one
                            // per list length. An empty list matches nothing.
                            if items.is_empty() {
                                sql.push_str("NULL");
                                continue;
                            }
                            let n = items.len().next_power_of_two();
                            for i in 0..n {
                                if i > 0 {
                                    sql.push_str(", ");
                                }
                                sql.push('?');
                                values.push(items[i.min(items.len() - 1)].clone());
                            }
                        }
                    }
                }
            }
        }
        Statement::from_sql_and_values(self.backend, sql, values)
    }
}

/// A PostgreSQL array parameter.
#[cfg(feature = "postgres")]
fn array(ty: &sea_orm::sea_query::ArrayType, items: &[Value]) -> Value {
    Value::Array(ty.clone(), Some(Box::new(items.to_vec())))
}

/// Without the `postgres` feature no PostgreSQL statement is ever executed; the array is never
/// bound, only rendered in tests.
#[cfg(not(feature = "postgres"))]
fn array(_: &sea_orm::sea_query::ArrayType, items: &[Value]) -> Value {
    Value::String(Some(format!("{} values", items.len())))
}

/// Splits at `:name` parameters, leaving `::casts`, quoted strings and `:=` alone.
fn split(sql: &str) -> Vec<Part> {
    let mut parts = Vec::new();
    let mut text = String::new();
    let bytes = sql.as_bytes();
    let mut i = 0;
    let mut quoted = false;
    while i < bytes.len() {
        let c = bytes[i] as char;
        if c == '\'' {
            quoted = !quoted;
        }
        let starts_name = |j: usize| {
            bytes
                .get(j)
                .is_some_and(|b| b.is_ascii_alphabetic() || *b == b'_')
        };
        if !quoted && c == ':' && i > 0 && bytes[i - 1] != b':' && starts_name(i + 1) {
            let start = i + 1;
            let mut end = start;
            while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
                end += 1;
            }
            parts.push(Part::Text(std::mem::take(&mut text)));
            parts.push(Part::Param(sql[start..end].to_owned()));
            i = end;
            continue;
        }
        text.push(c);
        i += 1;
    }
    parts.push(Part::Text(text));
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "-- name: one\nSELECT a::text FROM {messages} WHERE x = :x AND y = :y AND z = :x AND t < '10:00'\n-- name: list\nDELETE FROM {messages} WHERE seq IN (:seqs)\n-- name: any\nDELETE FROM {messages} WHERE seq = ANY(:seqs)\n";

    #[test]
    fn dollar_style_numbers_each_name_once_and_keeps_casts_and_strings() {
        let c = Catalog::load(
            DbBackend::Postgres,
            Style::Dollar,
            SRC,
            &OutboxConfig::default(),
        );
        let s = c.stmt("one", &[("x", 1i64.into()), ("y", "b".into())]);
        assert_eq!(
            s.sql,
            "SELECT a::text FROM \"outbox_messages\" WHERE x = $1 AND y = $2 AND z = $1 AND t < '10:00'"
        );
        assert_eq!(s.values.unwrap().0.len(), 2);
        let s = c.stmt("any", &[("seqs", seqs(&[1, 2, 3]))]);
        assert_eq!(s.sql, "DELETE FROM \"outbox_messages\" WHERE seq = ANY($1)");
    }

    #[test]
    fn question_style_repeats_and_expands_lists_to_a_power_of_two() {
        let c = Catalog::load(
            DbBackend::MySql,
            Style::Question,
            SRC,
            &OutboxConfig::default(),
        );
        let s = c.stmt("one", &[("x", 1i64.into()), ("y", "b".into())]);
        assert!(
            s.sql.ends_with("x = ? AND y = ? AND z = ? AND t < '10:00'"),
            "{}",
            s.sql
        );
        assert_eq!(s.values.unwrap().0.len(), 3);
        let s = c.stmt("list", &[("seqs", seqs(&[1, 2, 3]))]);
        assert_eq!(
            s.sql,
            "DELETE FROM `outbox_messages` WHERE seq IN (?, ?, ?, ?)"
        );
        let s = c.stmt("list", &[("seqs", seqs(&[]))]);
        assert_eq!(s.sql, "DELETE FROM `outbox_messages` WHERE seq IN (NULL)");
    }
}
