//! W3C trace context: read from the current span when events are recorded, restored as the
//! parent of the delivery span.
//!
//! Both need the `opentelemetry` feature and a `tracing-opentelemetry` layer in the subscriber;
//! without them events carry no `traceparent` and delivery spans start their own trace.

/// The `opentelemetry` version trace context goes through. A `tracing-opentelemetry` layer
/// built on another version is invisible to the outbox: see [`propagation`].
pub const OPENTELEMETRY_VERSION: &str = "0.33";

/// The `tracing-opentelemetry` version whose layer the outbox reads span contexts from.
pub const TRACING_OPENTELEMETRY_VERSION: &str = "0.34";

/// Whether trace context reaches the outbox in this process (see [`propagation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Propagation {
    /// Spans have OpenTelemetry contexts: events carry the `traceparent` of the span they are
    /// recorded in, deliveries continue it.
    Active,
    /// The probe span has no OpenTelemetry context: no `tracing-opentelemetry` layer is
    /// installed, or one built on another `opentelemetry` version than
    /// [`OPENTELEMETRY_VERSION`] (`cargo tree -i opentelemetry` shows two versions), or the
    /// subscriber filters the probe span out.
    NotConnected,
    /// The `opentelemetry` feature is off.
    FeatureOff,
}

/// Whether `probe` (a span that is not filtered out, e.g. a relay's start span) has an
/// OpenTelemetry context the outbox can read. A layer of another `opentelemetry` version keeps
/// its data where this version cannot see it, which would otherwise show only as events with
/// no `traceparent`; a relay reports the answer when it starts (and can require it,
/// `RelayBuilder::require_trace_context` in `outbox-seaorm`).
#[cfg(feature = "opentelemetry")]
pub fn propagation(probe: &tracing::Span) -> Propagation {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    if probe.context().span().span_context().is_valid() {
        Propagation::Active
    } else {
        Propagation::NotConnected
    }
}

/// Without the `opentelemetry` feature nothing propagates.
#[cfg(not(feature = "opentelemetry"))]
pub fn propagation(_probe: &tracing::Span) -> Propagation {
    Propagation::FeatureOff
}

/// The W3C trace context of a span: `traceparent` and, when it carries vendor data,
/// `tracestate`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TraceContext {
    /// `00-<trace id>-<span id>-<flags>`.
    pub traceparent: Option<String>,
    /// Vendor entries (`vendor=value,...`), when there are any.
    pub tracestate: Option<String>,
}

/// The trace context of the current span, if it has a valid OpenTelemetry context.
///
/// Written by the application's OpenTelemetry propagator (`global::set_text_map_propagator`,
/// usually `TraceContextPropagator`), so the headers are what the rest of its services write.
/// OpenTelemetry's default propagator writes nothing: then the W3C format is written here.
#[cfg(feature = "opentelemetry")]
pub fn current() -> TraceContext {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let cx = tracing::Span::current().context();
    let mut carrier = std::collections::HashMap::new();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&cx, &mut carrier));
    if let Some(tp) = carrier.remove("traceparent") {
        return TraceContext {
            traceparent: Some(tp),
            tracestate: carrier.remove("tracestate").filter(|s| !s.is_empty()),
        };
    }
    let span = cx.span();
    let sc = span.span_context();
    if !sc.is_valid() {
        return TraceContext::default();
    }
    TraceContext {
        traceparent: Some(format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )),
        tracestate: Some(sc.trace_state().header()).filter(|s| !s.is_empty()),
    }
}

/// The trace context of the current span (always empty without the `opentelemetry` feature).
#[cfg(not(feature = "opentelemetry"))]
pub fn current() -> TraceContext {
    TraceContext::default()
}

/// The `traceparent` of the current span: [`current`]`().traceparent`.
pub fn current_traceparent() -> Option<String> {
    current().traceparent
}

/// Makes the remote span named by `traceparent` (and `tracestate`) the parent of `span`, read
/// by the application's propagator, or by the W3C format when none is set. Malformed values
/// are ignored: a broken header must not stop a delivery.
#[cfg(feature = "opentelemetry")]
pub fn set_parent(span: &tracing::Span, traceparent: &str, tracestate: Option<&str>) {
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_owned(), ts.to_owned());
    }
    let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&carrier));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
        return;
    }
    let Some(parts) = parse_traceparent(traceparent) else {
        return;
    };
    let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(parts.1), SpanId::from_hex(parts.2))
    else {
        return;
    };
    let state = tracestate
        .and_then(|ts| ts.parse::<TraceState>().ok())
        .unwrap_or_default();
    let sc = SpanContext::new(trace_id, span_id, TraceFlags::new(parts.3), true, state);
    if sc.is_valid() {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(sc));
    }
}

/// Without the `opentelemetry` feature there is no parent to set.
#[cfg(not(feature = "opentelemetry"))]
pub fn set_parent(_span: &tracing::Span, _traceparent: &str, _tracestate: Option<&str>) {}

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
    fn the_stated_versions_are_the_dependencies() {
        let manifest = include_str!("../Cargo.toml");
        let dep = |name: &str| {
            manifest
                .lines()
                .find(|l| l.starts_with(&format!("{name} = {{ version")))
                .unwrap_or_else(|| panic!("{name} is a dependency"))
                .to_owned()
        };
        let version = |v: &str| format!("version = \"{v}\"");
        assert!(dep("opentelemetry").contains(&version(OPENTELEMETRY_VERSION)));
        assert!(dep("tracing-opentelemetry").contains(&version(TRACING_OPENTELEMETRY_VERSION)));
    }

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
