//! Calling one handler safely: panics caught, time bounded, inside its own span.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::context::{self, MessageScope};
use crate::error::Error;
use crate::handler::{HandlerContext, HandlerEntry};
use crate::trace;

/// Calls `entry`'s handler with `ctx` and turns every way it can end into a `Result`.
///
/// A panic becomes [`Error::HandlerPanicked`], running past the timeout (the entry's own, or
/// `default_timeout`) becomes [`Error::HandlerTimedOut`], a returned error keeps its kind. The
/// call runs in an `outbox.deliver` span whose parent is the trace the event was recorded in
/// (from the stored `traceparent`), and with the message as the ambient cause, so events the
/// handler records carry this message's id as their causation id.
pub async fn invoke(
    entry: &HandlerEntry,
    ctx: &HandlerContext,
    default_timeout: Duration,
) -> Result<(), Error> {
    let envelope = ctx.envelope();
    let span = tracing::info_span!(
        "outbox.deliver",
        otel.kind = "consumer",
        message_id = %envelope.message_id,
        event_type = %envelope.event_type,
        aggregate_id = %envelope.aggregate_id,
        handler = %entry.name(),
        attempt = ctx.attempt(),
    );
    if let Some(tp) = &envelope.headers.traceparent {
        trace::set_parent(&span, tp);
    }
    let timeout = entry.timeout_override().unwrap_or(default_timeout);
    let scope = MessageScope {
        message_id: envelope.message_id,
        correlation_id: envelope.headers.correlation_id,
    };
    let call = AssertUnwindSafe(entry.handler().call(ctx)).catch_unwind();
    let outcome = tokio::time::timeout(timeout, context::scope(scope, call))
        .instrument(span.clone())
        .await;
    let result = match outcome {
        Err(_) => Err(Error::HandlerTimedOut {
            handler: entry.name().to_owned(),
            timeout,
        }),
        Ok(Err(panic)) => Err(Error::HandlerPanicked {
            handler: entry.name().to_owned(),
            message: panic_message(&*panic),
        }),
        Ok(Ok(Err(e))) => Err(e.into_error(entry.name())),
        Ok(Ok(Ok(()))) => Ok(()),
    };
    if let Err(e) = &result {
        span.in_scope(|| tracing::warn!(error = %e.report(), kind = e.kind(), "handler failed"));
    }
    result
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
