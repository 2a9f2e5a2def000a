//! What the dashboard draws: delivered and failed per minute, per-handler counts and delivery
//! lags. The same named statements on every database, so methods of any driver.

use sea_orm::{ConnectionTrait, DatabaseConnection};

use super::Driver;
use crate::error::Result;

/// Which per-minute series.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Series {
    /// Messages delivered, by their `delivered_at`.
    Delivered,
    /// Deliveries whose latest outcome is a failure, by their `updated_at`.
    Failed,
}

impl dyn Driver {
    /// `(minutes ago, count)` over the last hour, by the database's clock; minutes with none
    /// are absent.
    pub(crate) async fn per_minute(
        &self,
        db: &DatabaseConnection,
        series: Series,
    ) -> Result<Vec<(i64, u64)>> {
        let name = match series {
            Series::Delivered => "delivered_per_minute",
            Series::Failed => "failed_per_minute",
        };
        let rows = db.query_all_raw(self.sql().stmt(name, &[])).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "minute")?, count(r.try_get("", "n")?))))
            .collect()
    }

    /// `(handler, delivery status, count)` over every delivery row.
    pub(crate) async fn handler_counts(
        &self,
        db: &DatabaseConnection,
    ) -> Result<Vec<(String, String, u64)>> {
        let rows = db
            .query_all_raw(self.sql().stmt("handler_counts", &[]))
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("", "handler")?,
                    r.try_get("", "status")?,
                    count(r.try_get("", "n")?),
                ))
            })
            .collect()
    }

    /// `(handler, milliseconds from recording to delivery)` of the `limit` latest delivered
    /// delivery rows.
    pub(crate) async fn handler_lags(
        &self,
        db: &DatabaseConnection,
        limit: u32,
    ) -> Result<Vec<(String, i64)>> {
        let stmt = self
            .sql()
            .stmt("handler_lags", &[("limit", i64::from(limit).into())]);
        let rows = db.query_all_raw(stmt).await?;
        rows.iter()
            .map(|r| Ok((r.try_get("", "handler")?, r.try_get("", "lag_ms")?)))
            .collect()
    }

    /// Milliseconds from recording to delivery of the `limit` latest messages delivered in the
    /// last hour.
    pub(crate) async fn message_lags(
        &self,
        db: &DatabaseConnection,
        limit: u32,
    ) -> Result<Vec<i64>> {
        let stmt = self
            .sql()
            .stmt("message_lags", &[("limit", i64::from(limit).into())]);
        let rows = db.query_all_raw(stmt).await?;
        rows.iter().map(|r| Ok(r.try_get("", "lag_ms")?)).collect()
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
