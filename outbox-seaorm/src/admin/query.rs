//! The sea-query pieces the admin queries share: table and column references, a scalar count,
//! ages. Queries are built with sea-query, which renders them for each database, and touch the
//! pending and dead rows, never the whole delivered history.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::ConnectionTrait;
use sea_orm::sea_query::{Alias, Expr, IntoTableRef, SelectStatement, TableRef};

use super::Admin;
use crate::error::Result;

pub(crate) fn table(name: &str) -> TableRef {
    match name.split_once('.') {
        Some((schema, t)) => (Alias::new(schema), Alias::new(t)).into_table_ref(),
        None => Alias::new(name).into_table_ref(),
    }
}

pub(super) fn col(name: &'static str) -> Expr {
    Expr::col((Alias::new("m"), Alias::new(name)))
}

impl Admin {
    pub(super) async fn scalar(&self, q: &SelectStatement) -> Result<u64> {
        let row = self.db.query_one(q).await?;
        Ok(positive(row.map_or(Ok(0), |r| r.try_get::<i64>("", "n"))?))
    }
}

pub(super) fn positive(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Seconds from `then` to `now`, 0 when `then` is later.
pub(crate) fn age(now: DateTime<Utc>, then: DateTime<Utc>) -> f64 {
    (now - then)
        .to_std()
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}
