//! The dashboard's pages on a big table: the median time of each page, through the router
//! (no network), with `BENCH_BIG` delivered rows (default 1M, delivered just now on PostgreSQL
//! and MariaDB, so the last hour's chart and lag queries see all of them) and 10 000 pending.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use outbox_seaorm::dashboard::{self, DashboardConfig};
use outbox_seaorm::{Admin, MessageFilter};
use outbox_tests::Backend;
use tower::ServiceExt;

use crate::backlog::seed;
use crate::{env_num, fresh, server_version};

pub(crate) async fn suite(backend: Backend) -> anyhow::Result<()> {
    let t = fresh(backend).await?;
    let big = env_num("BENCH_BIG", 1_000_000.0) as u64;
    seed(&t.db, big, 1000, "delivered").await?;
    seed(&t.db, 10_000, 10_000, "pending").await?;
    let admin = Admin::new(t.db.clone());
    let all = MessageFilter::new();
    let near_end = admin.list(&all.clone().limit(1)).await?[0].sequence + big as i64 - 100;
    let app = dashboard::router(t.db.clone(), DashboardConfig::new());
    println!(
        "\n## dashboard, {backend:?} ({}): {big} delivered + 10000 pending rows; median of 5 requests",
        server_version(&t.db).await
    );
    println!("| page | median ms | max ms |");
    println!("|---|---:|---:|");
    let pages = [
        "/".to_owned(),
        "/messages".to_owned(),
        format!("/messages?after={}", big as i64 / 2),
        format!("/messages?after={near_end}"),
        "/messages?status=pending".to_owned(),
        "/messages?status=delivered&since=1h".to_owned(),
        "/messages?aggregate_type=bench&aggregate=7".to_owned(),
        "/messages?status=dead".to_owned(),
        "/dead-letters".to_owned(),
        "/handlers".to_owned(),
        "/relays".to_owned(),
    ];
    for page in pages {
        let mut times = Vec::new();
        for _ in 0..5 {
            let start = Instant::now();
            let res = app
                .clone()
                .oneshot(Request::get(&page).body(Body::empty())?)
                .await?;
            anyhow::ensure!(res.status().is_success(), "{page}: {}", res.status());
            axum::body::to_bytes(res.into_body(), 64 << 20).await?;
            times.push(start.elapsed());
        }
        times.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("| `{page}` | {:.1} | {:.1} |", ms(times[2]), ms(times[4]));
    }
    t.cleanup().await;
    Ok(())
}
