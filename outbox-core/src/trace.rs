//! W3C trace context: read from the current span when events are recorded, restored as the
//! parent of the delivery span.
//!
//! Both need the `opentelemetry` feature and a `tracing-opentelemetry` layer in the subscriber;
//! without them events carry no `traceparent` and delivery spans start their own trace.

/// The `traceparent` (`00-<trace id>-<span id>-<flags>`) of the current span, if it has a valid
/// OpenTelemetry context.
#[cfg(feature = "opentelemetry")]
pub fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The `traceparent` of the current span (always `None` without the `opentelemetry` feature).
#[cfg(not(feature = "opentelemetry"))]
pub fn current_traceparent() -> Option<String> {
    None
}

/// Makes the remote span named by `traceparent` the parent of `span`. Malformed values are
/// ignored: a broken header must not stop a delivery.
#[cfg(feature = "opentelemetry")]
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let Some(parts) = parse_traceparent(traceparent) else {
        return;
    };
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(parts.1), SpanId::from_hex(parts.2))
    else {
        return;
    };
    let sc = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(parts.3),
        true,
        TraceState::default(),
    );
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Without the `opentelemetry` feature there is no parent to set.
#[cfg(not(feature = "opentelemetry"))]
pub fn set_parent(_span: &tracing::Span, _traceparent: &str) {}

/// Splits a version-00 `traceparent` into its four fields.
pub fn parse_traceparent(tp: &str) -> Option<(&str, &str, &str, u8)> {
    let mut it = tp.trim().split('-');
    let (version, trace, span, flags) = (it.next()?, it.next()?, it.next()?, it.next()?);
    let hex = |s: &str, n| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if it.next().is_some() || version != "00" || !hex(trace, 32) || !hex(span, 16) || !hex(flags, 2)
    {
        return None;
    }
    Some((version, trace, span, u8::from_str_radix(flags, 16).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed_traceparents() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let (_, t, s, f) = parse_traceparent(tp).unwrap();
        assert_eq!(t, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(s, "b7ad6b7169203331");
        assert_eq!(f, 1);
        assert!(
            parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_none()
        );
        assert!(parse_traceparent("00-xyz-b7ad6b7169203331-01").is_none());
        assert!(
            parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x")
                .is_none()
        );
    }
}
