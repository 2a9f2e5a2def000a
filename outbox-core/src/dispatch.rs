//! Calling one handler safely: on its own task, panics caught, time bounded from outside,
//! inside its own span.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::context::{self, MessageScope};
use crate::error::Error;
use crate::handler::{HandlerContext, HandlerEntry};
use crate::trace;

/// Calls `entry`'s handler with `ctx` on a task of its own and turns every way it can end into
/// a `Result`.
///
/// A panic becomes [`Error::HandlerPanicked`], running past the timeout (the entry's own, or
/// `default_timeout`) becomes [`Error::HandlerTimedOut`], a returned error keeps its kind. The
/// timeout is measured by the caller, not inside the handler's task, so a handler that blocks
/// its thread (a synchronous call, a CPU-heavy step) still times out on time, and costs only
/// its own message; the timed-out task is aborted at its next `.await`. Dropping the returned
/// future aborts the handler's task too. The call runs in an `outbox.deliver` span whose parent
/// is the trace the event was recorded in (from the stored `traceparent`), and with the message
/// as the ambient cause, so events the handler records carry this message's id as their
/// causation id.
///
/// Needs a Tokio runtime.
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
        trace::set_parent(&span, tp, envelope.headers.tracestate.as_deref());
    }
    let timeout = entry.timeout_override().unwrap_or(default_timeout);
    let scope = MessageScope {
        message_id: envelope.message_id,
        correlation_id: envelope.headers.correlation_id,
    };
    let task = {
        let entry = entry.clone();
        let ctx = ctx.clone();
        let span = span.clone();
        // Aborted when dropped: a caller that stops waiting (a timeout, a shutdown) does not
        // leave the handler running on its own.
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
            let call = AssertUnwindSafe(entry.handler().call(&ctx)).catch_unwind();
            context::scope(scope, call).instrument(span).await
        }))
    };
    let result = match tokio::time::timeout(timeout, task).await {
        Err(_) => Err(Error::HandlerTimedOut {
            handler: entry.name().to_owned(),
            timeout,
        }),
        Ok(Err(join)) => Err(Error::HandlerPanicked {
            handler: entry.name().to_owned(),
            message: match join.try_into_panic() {
                Ok(panic) => panic_message(&*panic),
                Err(e) => e.to_string(),
            },
        }),
        Ok(Ok(Err(panic))) => Err(Error::HandlerPanicked {
            handler: entry.name().to_owned(),
            message: panic_message(&*panic),
        }),
        Ok(Ok(Ok(Err(e)))) => Err(e.into_error(entry.name())),
        Ok(Ok(Ok(Ok(())))) => Ok(()),
    };
    if let Err(e) = &result {
        // What a handler says is data: NUL bytes and megabytes of text are cleaned and capped
        // here as they are where the relay stores them.
        let error = crate::error_text::ErrorText::new(&e.report());
        span.in_scope(|| tracing::warn!(error = %error, kind = e.kind(), "handler failed"));
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
