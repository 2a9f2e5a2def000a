//! The dashboard mounted in a service's own axum app: the README's snippet (a test keeps the
//! two identical).

use std::net::SocketAddr;

use outbox_seaorm::dashboard::{self, DashboardConfig};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let db = sea_orm::Database::connect("sqlite::memory:").await?;
    outbox_seaorm::schema::create_tables(&db).await?;

    let config = DashboardConfig::new()
        .read_only(false)
        .trace_link("https://grafana.example/explore?traceId={trace_id}");
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok" }))
        // The pages are under /outbox (not /outbox/); at the root, `merge` instead of `nest`.
        .nest("/outbox", dashboard::router(db, config));
    // Put your own authentication layer in front: the dashboard trusts whoever reaches it.

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
    println!("http://127.0.0.1:8080/outbox");
    // With the peer address, the action log says who acted from where.
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
