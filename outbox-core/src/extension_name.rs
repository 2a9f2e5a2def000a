//! The CloudEvents naming rules for header names: a header travels as a CloudEvents extension
//! attribute, so its name holds only `a-z` and `0-9` and may not be an attribute the outbox sets
//! itself.

/// The CloudEvents attributes the outbox sets itself (and the spec reserves): a header may not
/// take their names.
pub(crate) const RESERVED_ATTRIBUTES: [&str; 17] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "aggregatetype",
    "eventversion",
    "aggregateposition",
    "traceparent",
    "tracestate",
    "correlationid",
    "causationid",
];

/// Whether `name` can be a CloudEvents extension attribute: `a-z` and `0-9` only, not one the
/// outbox sets itself.
pub(crate) fn is_extension_name(name: &str) -> bool {
    !name.is_empty() && is_extension_charset(name) && !RESERVED_ATTRIBUTES.contains(&name)
}

fn is_extension_charset(name: &str) -> bool {
    name.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// A header name as a CloudEvents extension attribute: `a-z` and `0-9` only, not reserved.
pub(crate) fn check_extension_name(name: &str) -> crate::Result<()> {
    let bad = |rule: String| crate::Error::InvalidName {
        what: "header",
        name: name.to_owned(),
        rule: rule.into(),
    };
    if !is_extension_charset(name) {
        return Err(bad(
            "a header travels as a CloudEvents extension attribute, so its name may hold only \
             a-z and 0-9"
                .into(),
        ));
    }
    if RESERVED_ATTRIBUTES.contains(&name) {
        return Err(bad(format!(
            "the outbox sets the CloudEvents attribute `{name}` itself, so no header may take \
             that name"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::aggregate::{PendingEvent, RecordOptions};

    #[test]
    fn header_names_follow_the_cloudevents_naming_rule() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Ping;
        impl crate::DomainEvent for Ping {
            const EVENT_TYPE: &'static str = "test.ping";
        }
        let with = |name: &str| PendingEvent::new(Ping, RecordOptions::new().header(name, "v"));
        assert!(with("tenant").validate().is_ok());
        let lowered = with("Tenant");
        assert!(lowered.validate().is_ok());
        assert!(lowered.headers.contains_key("tenant"));
        for bad in [
            "x-tenant",
            "tenant_id",
            "tënant",
            "id",
            "traceparent",
            "correlationid",
        ] {
            let err = with(bad).validate().unwrap_err();
            assert!(
                matches!(err, crate::Error::InvalidName { .. }),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            with("x-tenant").validate().unwrap_err().to_string(),
            "invalid header \"x-tenant\": a header travels as a CloudEvents extension \
             attribute, so its name may hold only a-z and 0-9"
        );
        assert_eq!(
            with("id").validate().unwrap_err().to_string(),
            "invalid header \"id\": the outbox sets the CloudEvents attribute `id` itself, so \
             no header may take that name"
        );
        assert_eq!(
            crate::check_name("aggregate id", "")
                .unwrap_err()
                .to_string(),
            "invalid aggregate id \"\": it must be 1 to 255 bytes long and contain no NUL \
             character, and it is empty"
        );
        assert_eq!(
            crate::check_name("aggregate id", &"a".repeat(256))
                .unwrap_err()
                .to_string(),
            format!(
                "invalid aggregate id {:?}: it must be 1 to 255 bytes long and contain no NUL \
                 character, and it is 256 bytes long",
                "a".repeat(256)
            )
        );
    }
}
