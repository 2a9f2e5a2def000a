//! The event catalog: what derives register, the AsyncAPI document (validated against the
//! official AsyncAPI 3.0 schema), the breaking-change check, `outbox catalog`, and stored
//! payloads validated against their event's schema.

use std::collections::BTreeSet;

use outbox_seaorm::catalog::{BreakingChange, Catalog, EventDescription};
use outbox_seaorm::cloudevents::Mode;
use outbox_seaorm::entity::message;
use outbox_seaorm::publish::amqp::AmqpPublisher;
use outbox_seaorm::publish::kafka::KafkaPublisher;
use outbox_seaorm::publish::webhook::{WebhookPublisher, WebhookSecret};
use outbox_seaorm::{
    DomainEvent, Envelope, HandlerEntry, HandlerError, Registry, Route, UnitOfWork,
};
use outbox_seaorm::{Publisher, publish::Transport};
use outbox_tests::fixtures::{OrderPlaced, order};
use outbox_tests::{Backend, TestDb};
use schemars::JsonSchema;
use sea_orm::EntityTrait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The official AsyncAPI 3.0.0 JSON Schema, from the npm package `@asyncapi/specs` 6.11.1
/// (`schemas/3.0.0-without-$id.json`: every `$ref` local, so validation needs no network).
const ASYNCAPI_3_0_0: &str = include_str!("../fixtures/asyncapi-3.0.0.schema.json");

/// The schema the derive registers for `T` (draft 7), for types that are not events.
fn schema_of<T: JsonSchema>() -> Value {
    schemars::generate::SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<T>()
        .to_value()
}

/// Every validation error of `instance`, as `path: message` lines.
fn errors(schema: &Value, instance: &Value) -> Vec<String> {
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(schema)
        .expect("the schema compiles");
    validator
        .iter_errors(instance)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

// ---- What the derive registers ------------------------------------------------------------

/// An event with a schema, a nested type and an option.
#[derive(Serialize, Deserialize, DomainEvent, JsonSchema)]
#[event(name = "catalog.cart.checked-out", version = 2, aggregate = "cart")]
struct CartCheckedOut {
    cart_id: u64,
    lines: Vec<Line>,
    coupon: Option<String>,
}

#[derive(Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    quantity: u32,
}

/// An event whose type does not derive `JsonSchema`.
#[derive(Serialize, Deserialize, DomainEvent)]
#[event(name = "catalog.no-schema")]
struct NoSchema {
    n: u32,
}

#[test]
fn derived_events_carry_name_version_aggregate_type_rust_type_and_schema() {
    let catalog = Catalog::from_inventory().unwrap();
    let e = catalog.find("catalog.cart.checked-out", 2).expect("listed");
    assert_eq!(e.aggregate_type.as_deref(), Some("cart"));
    assert_eq!(e.rust_type.as_deref(), Some("catalog::CartCheckedOut"));
    let schema = e.schema.as_ref().expect("a schema");
    assert_eq!(schema["properties"]["cart_id"]["type"], "integer");
    assert_eq!(
        schema["definitions"]["Line"]["properties"]["sku"]["type"],
        "string"
    );
    let required: BTreeSet<_> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(required, ["cart_id", "lines"].into());

    // The shared fixtures, from another crate, are there too.
    let placed = catalog.find("order.placed", 1).expect("fixture listed");
    assert_eq!(placed.aggregate_type.as_deref(), Some("order"));
    assert_eq!(
        placed.schema.as_ref().unwrap()["properties"]["order_id"]["format"],
        "uuid"
    );
}

#[test]
fn an_event_without_json_schema_is_listed_without_one_and_named() {
    let catalog = Catalog::from_inventory().unwrap();
    let e = catalog.find("catalog.no-schema", 1).expect("listed");
    assert!(e.schema.is_none());
    assert!(
        catalog
            .events_without_schema()
            .contains(&"catalog.no-schema v1".to_owned())
    );
    assert!(
        !catalog
            .events_without_schema()
            .iter()
            .any(|e| e.starts_with("order.placed"))
    );
    let _ = NoSchema { n: 1 }.n;
}

#[test]
fn the_json_form_reads_back_equal() {
    let catalog = Catalog::from_inventory().unwrap();
    let text = serde_json::to_string_pretty(&catalog.to_json()).unwrap();
    assert_eq!(Catalog::from_json(&text).unwrap(), catalog);
    assert!(Catalog::from_json("{\"events\": 3}").is_err());
}

// ---- AsyncAPI -----------------------------------------------------------------------------

/// A NATS publisher as the catalog sees it; it never connects.
struct NatsLike;

#[async_trait::async_trait]
impl Publisher for NatsLike {
    async fn publish(&self, _: &Envelope, _: &str) -> Result<(), HandlerError> {
        Ok(())
    }

    fn transport(&self) -> Transport {
        Transport::new("nats").cloudevents(Mode::Binary, "/orders-service")
    }
}

/// A publisher that says nothing about itself: protocol `custom`, no CloudEvents.
struct AuditLog;

#[async_trait::async_trait]
impl Publisher for AuditLog {
    async fn publish(&self, _: &Envelope, _: &str) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn service_registry() -> Registry {
    let amqp = AmqpPublisher::new("amqp://127.0.0.1:1", "{aggregate_type}.events", "/orders")
        .unwrap()
        .mode(Mode::Binary);
    let webhook = WebhookPublisher::new(
        WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
        "/orders",
    );
    let handler = HandlerEntry::new("catalog-count-carts", |_: CartCheckedOut, _ctx| async {
        Ok::<_, std::io::Error>(())
    });
    Registry::new([handler])
        .unwrap()
        .with_route(
            Route::new("carts-to-nats", NatsLike)
                .event_types(["catalog.cart.checked-out"])
                .destination("shop.{event_type}.v{event_version}")
                .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("orders-to-rabbit", amqp)
                .aggregate_types(["order"])
                .destination("{event_type}")
                .unwrap(),
        )
        .unwrap()
        .with_route(
            // Connects only when it publishes: never here.
            Route::new(
                "orders-to-kafka",
                KafkaPublisher::connect("127.0.0.1:1", "/orders")
                    .unwrap()
                    .mode(Mode::Binary),
            )
            .aggregate_types(["order"])
            .destination("{aggregate_type}.events")
            .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("audit", AuditLog)
                .destination("audit/{aggregate_type}/{event_type}")
                .unwrap(),
        )
        .unwrap()
        .with_route(
            Route::new("orders-to-crm", webhook)
                .aggregate_types(["order"])
                .destination("https://crm.example/hooks/orders/{aggregate_id}")
                .unwrap(),
        )
        .unwrap()
}

#[test]
fn the_asyncapi_document_validates_against_the_official_asyncapi_3_schema() {
    let doc = Catalog::from_registry(&service_registry()).to_asyncapi("orders", "1.2.0");
    let asyncapi: Value = serde_json::from_str(ASYNCAPI_3_0_0).unwrap();
    let errs = errors(&asyncapi, &doc);
    assert!(
        errs.is_empty(),
        "{}\n{}",
        errs.join("\n"),
        serde_json::to_string_pretty(&doc).unwrap()
    );

    // The check can fail: a document with a wrong operation action does not validate.
    let mut broken = doc.clone();
    let (_, op) = broken["operations"]
        .as_object_mut()
        .unwrap()
        .iter_mut()
        .next()
        .unwrap();
    op["action"] = json!("publish");
    assert!(!errors(&asyncapi, &broken).is_empty());
}

#[test]
fn every_ref_in_the_asyncapi_document_resolves() {
    let doc = Catalog::from_registry(&service_registry()).to_asyncapi("orders", "1.2.0");
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 10, "{refs:?}");
    for r in refs {
        let pointer = r.strip_prefix('#').expect("a local ref");
        assert!(doc.pointer(pointer).is_some(), "`{r}` resolves to nothing");
    }
}

fn collect_refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                out.push(r.clone());
            }
            m.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(a) => a.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn channels_come_from_route_destinations_and_in_process_handlers() {
    let doc = Catalog::from_registry(&service_registry()).to_asyncapi("orders", "1.2.0");
    let channels = doc["channels"].as_object().unwrap();
    let address = |id: &str| channels[id]["address"].clone();

    // NATS: the subject with the event type and version filled in.
    let nats = "carts-to-nats.shop.catalog.cart.checked-out.v2";
    assert_eq!(address(nats), "shop.catalog.cart.checked-out.v2");
    let message = &channels[nats]["messages"]["catalog.cart.checked-out.v2.ce-binary"];
    assert_eq!(
        message["$ref"],
        "#/components/messages/catalog.cart.checked-out.v2.ce-binary"
    );
    let m = &doc["components"]["messages"]["catalog.cart.checked-out.v2.ce-binary"];
    assert_eq!(
        m["headers"]["properties"]["ce-type"]["const"],
        "catalog.cart.checked-out"
    );
    assert_eq!(
        m["payload"]["$ref"],
        "#/components/schemas/catalog.cart.checked-out.v2"
    );
    // The nested type is hoisted beside the payload, and the payload points at it.
    let payload = &doc["components"]["schemas"]["catalog.cart.checked-out.v2"];
    assert_eq!(
        payload["properties"]["lines"]["items"]["$ref"],
        "#/components/schemas/catalog.cart.checked-out.v2.Line"
    );

    // RabbitMQ: one routing key per event of the `order` aggregate, on the templated exchange.
    let rabbit = "orders-to-rabbit.order.placed";
    assert_eq!(address(rabbit), "order.placed");
    assert_eq!(
        channels[rabbit]["bindings"]["amqp"]["exchange"]["name"],
        "{aggregate_type}.events"
    );
    assert!(
        channels[rabbit]["messages"]
            .get("order.placed.v1.ce-amqp-binary")
            .is_some()
    );
    assert!(channels.contains_key("orders-to-rabbit.order.cancelled"));

    // Kafka: the topic with the aggregate type filled in, the key in the binding, `ce_` headers.
    let kafka = "orders-to-kafka.order.events";
    assert_eq!(address(kafka), "order.events");
    assert_eq!(
        channels[kafka]["bindings"]["kafka"]["topic"],
        "order.events"
    );
    assert_eq!(
        channels[kafka]["bindings"]["kafka"]["x-key"],
        "aggregate_id"
    );
    let m = &doc["components"]["messages"]["order.placed.v1.ce-kafka-binary"];
    assert_eq!(
        m["headers"]["properties"]["ce_type"]["const"],
        "order.placed"
    );

    // Webhook: one URL for every order event, the aggregate id a parameter; structured mode.
    let crm = channels
        .iter()
        .find(|(id, _)| id.starts_with("orders-to-crm."))
        .map(|(_, c)| c)
        .expect("a webhook channel");
    assert_eq!(
        crm["address"],
        "https://crm.example/hooks/orders/{aggregate_id}"
    );
    assert!(crm["parameters"]["aggregate_id"].is_object());
    assert!(
        crm["messages"]
            .get("order.confirmed.v1.ce-structured")
            .is_some()
    );
    let structured = &doc["components"]["messages"]["order.confirmed.v1.ce-structured"];
    assert_eq!(structured["contentType"], "application/cloudevents+json");
    assert_eq!(
        structured["payload"]["properties"]["data"]["$ref"],
        "#/components/schemas/order.confirmed.v1"
    );

    // A custom publisher taking everything: the bare payload; an event without a declared
    // aggregate keeps `{aggregate_type}` as a parameter; an event without schema, no payload.
    let audit = &channels["audit.audit__aggregate_type__catalog.no-schema"];
    assert_eq!(audit["address"], "audit/{aggregate_type}/catalog.no-schema");
    assert!(audit["parameters"]["aggregate_type"].is_object());
    let plain = &doc["components"]["messages"]["catalog.no-schema.v1"];
    assert!(plain.get("payload").is_none() && plain.get("headers").is_none());
    assert_eq!(
        address("audit.audit_order_order.placed"),
        "audit/order/order.placed"
    );

    // In process: the handler receives from the outbox, not a broker.
    let inproc = &channels["in-process.catalog.cart.checked-out"];
    assert!(inproc["address"].is_null());
    let op = &doc["operations"]["handler.catalog-count-carts"];
    assert_eq!(op["action"], "receive");
    assert_eq!(
        op["channel"]["$ref"],
        "#/channels/in-process.catalog.cart.checked-out"
    );
    assert_eq!(doc["operations"][nats]["action"], "send");
}

#[test]
fn an_explicit_list_gives_what_the_registry_gives_for_the_same_parts() {
    let route = || {
        Route::new("carts-to-nats", NatsLike)
            .event_types(["catalog.cart.checked-out"])
            .destination("shop.{event_type}.v{event_version}")
            .unwrap()
    };
    let handler = || {
        HandlerEntry::new("catalog-count-carts", |_: CartCheckedOut, _ctx| async {
            Ok::<_, std::io::Error>(())
        })
    };
    let explicit = Catalog::new()
        .event::<CartCheckedOut>()
        .handler(&handler())
        .route(&route())
        .upcaster("catalog.cart.checked-out", 1);
    assert_eq!(explicit.events.len(), 1, "only the listed event");
    let e = &explicit.events[0];
    assert_eq!(
        (e.name.as_str(), e.version),
        ("catalog.cart.checked-out", 2)
    );
    assert!(e.schema.is_some());
    assert_eq!(
        explicit.routes[0].destination,
        "shop.{event_type}.v{event_version}"
    );
    assert_eq!(explicit.routes[0].transport.protocol, "nats");

    let registry = Registry::new([handler()])
        .unwrap()
        .with_route(route())
        .unwrap();
    let from_registry = Catalog::from_registry(&registry);
    let (a, b) = (
        explicit.to_asyncapi("t", "1"),
        from_registry.to_asyncapi("t", "1"),
    );
    let id = "carts-to-nats.shop.catalog.cart.checked-out.v2";
    assert_eq!(a["channels"][id], b["channels"][id]);
    assert_eq!(
        a["operations"]["handler.catalog-count-carts"],
        b["operations"]["handler.catalog-count-carts"]
    );
}

#[test]
fn one_message_per_event_version() {
    let v = |n: u32| {
        EventDescription::new("catalog.versioned", n)
            .schema(json!({ "type": "object", "properties": { "n": { "type": "integer" } } }))
    };
    let catalog = Catalog::new()
        .with_event(v(1))
        .with_event(v(2))
        .handler(&HandlerEntry::erased(
            "versioned-handler",
            "catalog.versioned",
            NeverCalled,
        ));
    let doc = catalog.to_asyncapi("t", "1");
    let messages: BTreeSet<_> = doc["components"]["messages"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(
        messages,
        [
            "catalog.versioned.v1".to_owned(),
            "catalog.versioned.v2".to_owned()
        ]
        .into()
    );
}

struct NeverCalled;

impl outbox_seaorm::Handler for NeverCalled {
    fn call<'a>(
        &'a self,
        _: &'a outbox_seaorm::HandlerContext,
    ) -> outbox_seaorm::BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async { Ok(()) })
    }
}

// ---- The breaking-change check ------------------------------------------------------------

mod before {
    use super::*;

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    pub(super) struct Placed {
        pub(super) order_id: String,
        pub(super) amount: i64,
        pub(super) note: Option<String>,
        pub(super) lines: Vec<Line>,
        pub(super) channel: Channel,
    }

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    pub(super) struct Line {
        pub(super) sku: String,
    }

    #[derive(JsonSchema)]
    #[allow(dead_code)]
    pub(super) enum Channel {
        Web,
        Phone,
    }
}

/// A catalog with `order.placed` at `version` with the schema of `T`, and upcasters.
fn one<T: JsonSchema>(version: u32, upcasters: &[u32]) -> Catalog {
    let mut c = Catalog::new()
        .with_event(EventDescription::new("order.placed", version).schema(schema_of::<T>()));
    for &from in upcasters {
        c = c.upcaster("order.placed", from);
    }
    c
}

fn committed() -> Catalog {
    one::<before::Placed>(1, &[])
}

#[test]
fn an_unchanged_catalog_has_no_breaking_change() {
    assert_eq!(committed().check_against(&committed()), Ok(()));
}

#[test]
fn adding_an_optional_field_an_event_or_a_version_is_not_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        amount: i64,
        note: Option<String>,
        lines: Vec<before::Line>,
        channel: before::Channel,
        gift: Option<bool>,
        #[serde(default)]
        priority: u8,
    }
    let current = one::<Placed>(1, &[])
        .with_event(EventDescription::new("order.placed", 2).schema(schema_of::<Placed>()))
        .with_event(EventDescription::new("order.shipped", 1));
    assert_eq!(current.check_against(&committed()), Ok(()));
}

#[test]
fn making_a_required_field_optional_or_widening_integer_to_number_is_not_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: Option<String>,
        amount: f64,
        note: Option<String>,
        lines: Vec<before::Line>,
        channel: before::Channel,
    }
    assert_eq!(one::<Placed>(1, &[]).check_against(&committed()), Ok(()));
}

#[test]
fn removing_a_field_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        note: Option<String>,
        lines: Vec<before::Line>,
        channel: before::Channel,
    }
    let changes = one::<Placed>(1, &[])
        .check_against(&committed())
        .unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::FieldRemoved {
            event: "order.placed".into(),
            version: 1,
            field: "amount".into()
        }]
    );
    assert_eq!(
        changes[0].to_string(),
        "order.placed v1: field `amount` was removed; bump the version and add an upcaster \
         from the committed one"
    );
}

#[test]
fn removing_a_field_of_a_nested_type_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Line {
        quantity: Option<u32>,
    }
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        amount: i64,
        note: Option<String>,
        lines: Vec<Line>,
        channel: before::Channel,
    }
    let changes = one::<Placed>(1, &[])
        .check_against(&committed())
        .unwrap_err();
    assert!(
        changes.contains(&BreakingChange::FieldRemoved {
            event: "order.placed".into(),
            version: 1,
            field: "lines[].sku".into()
        }),
        "{changes:?}"
    );
}

#[test]
fn retyping_a_field_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        amount: String,
        note: Option<String>,
        lines: Vec<before::Line>,
        channel: before::Channel,
    }
    let changes = one::<Placed>(1, &[])
        .check_against(&committed())
        .unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::FieldRetyped {
            event: "order.placed".into(),
            version: 1,
            field: "amount".into(),
            was: "integer".into(),
            now: "string".into(),
        }]
    );
    assert!(
        changes[0]
            .to_string()
            .contains("field `amount` was integer and is now string")
    );
}

#[test]
fn making_a_field_required_or_adding_a_required_one_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        amount: i64,
        note: String,
        lines: Vec<before::Line>,
        channel: before::Channel,
        currency: String,
    }
    let changes = one::<Placed>(1, &[])
        .check_against(&committed())
        .unwrap_err();
    let fields: BTreeSet<_> = changes
        .iter()
        .map(|c| match c {
            BreakingChange::FieldRequired { field, .. } => field.as_str(),
            other => panic!("unexpected {other}"),
        })
        .collect();
    assert_eq!(fields, ["currency", "note"].into());
}

#[test]
fn removing_an_enum_value_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    enum Channel {
        Web,
    }
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Placed {
        order_id: String,
        amount: i64,
        note: Option<String>,
        lines: Vec<before::Line>,
        channel: Channel,
    }
    let changes = one::<Placed>(1, &[])
        .check_against(&committed())
        .unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::ValueRemoved {
            event: "order.placed".into(),
            version: 1,
            field: "channel".into(),
            value: "\"Phone\"".into(),
        }]
    );
}

/// A catalog with one event `order.status` v1 whose payload is `T`.
fn status<T: JsonSchema>() -> Catalog {
    Catalog::new().with_event(EventDescription::new("order.status", 1).schema(schema_of::<T>()))
}

#[test]
fn removing_a_variant_of_a_data_enum_or_a_field_inside_one_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    enum Before {
        /// A documented unit variant (its own `oneOf` branch).
        Placed,
        Shipped {
            carrier: String,
        },
        Lost(u32),
    }
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    enum After {
        /// A documented unit variant.
        Placed,
        Shipped {
            tracking: Option<String>,
        },
    }
    let changes = status::<After>()
        .check_against(&status::<Before>())
        .unwrap_err();
    let texts: Vec<_> = changes.iter().map(ToString::to_string).collect();
    assert_eq!(
        changes,
        [
            BreakingChange::FieldRemoved {
                event: "order.status".into(),
                version: 1,
                field: "Shipped.carrier".into(),
            },
            BreakingChange::ValueRemoved {
                event: "order.status".into(),
                version: 1,
                field: "".into(),
                value: "\"Lost\"".into(),
            },
        ],
        "{texts:#?}"
    );
    assert_eq!(
        status::<Before>().check_against(&status::<Before>()),
        Ok(())
    );
}

#[test]
fn removing_a_variant_of_an_internally_tagged_enum_is_breaking() {
    #[derive(JsonSchema)]
    #[serde(tag = "kind")]
    #[allow(dead_code)]
    enum Before {
        Card { last4: String },
        Transfer { iban: String },
    }
    #[derive(JsonSchema)]
    #[serde(tag = "kind")]
    #[allow(dead_code)]
    enum After {
        Card { last4: String },
    }
    let changes = status::<After>()
        .check_against(&status::<Before>())
        .unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::ValueRemoved {
            event: "order.status".into(),
            version: 1,
            field: "".into(),
            value: "kind=\"Transfer\"".into(),
        }]
    );
    // The other way round a variant is added: not breaking.
    assert_eq!(status::<Before>().check_against(&status::<After>()), Ok(()));
}

#[test]
fn a_version_bump_without_an_upcaster_is_breaking_and_with_one_is_not() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct PlacedV2 {
        order_id: String,
        amount: String,
    }
    let without = one::<PlacedV2>(2, &[])
        .check_against(&committed())
        .unwrap_err();
    assert_eq!(
        without,
        [BreakingChange::VersionRemoved {
            event: "order.placed".into(),
            version: 1
        }]
    );
    assert!(without[0].to_string().contains("add an upcaster from v1"));
    assert_eq!(one::<PlacedV2>(2, &[1]).check_against(&committed()), Ok(()));

    // A chain counts only if it reaches a version that is here.
    assert!(
        one::<PlacedV2>(3, &[1])
            .check_against(&committed())
            .is_err()
    );
    assert_eq!(
        one::<PlacedV2>(3, &[1, 2]).check_against(&committed()),
        Ok(())
    );
}

#[test]
fn removing_an_event_is_breaking() {
    let changes = Catalog::new().check_against(&committed()).unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::VersionRemoved {
            event: "order.placed".into(),
            version: 1
        }]
    );
}

// ---- `outbox catalog` ---------------------------------------------------------------------

/// The command line inside a service's binary, with the service's events.
fn outbox() -> assert_cmd::Command {
    let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_outbox-service-cli"));
    c.env_remove("DATABASE_URL").env_remove("RUST_LOG");
    c
}

#[test]
fn outbox_catalog_refuses_to_print_or_check_where_no_event_is_linked() {
    let plain = || {
        let mut c = assert_cmd::Command::new(env!("CARGO_BIN_EXE_outbox-cli"));
        c.env_remove("DATABASE_URL").env_remove("RUST_LOG");
        c
    };
    for args in [
        &["catalog"][..],
        &["catalog", "--format", "asyncapi"],
        &["catalog", "--check", "committed.json"],
    ] {
        plain()
            .args(args)
            .assert()
            .code(1)
            .stdout("")
            .stderr(format!("{}\n", outbox_tests::said::NO_EVENTS));
    }
}

#[test]
fn outbox_catalog_prints_json_and_asyncapi_without_a_database() {
    let out = outbox()
        .args(["catalog", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();
    Catalog::from_json(&json.to_string()).expect("reads back as a catalog");

    let out = outbox()
        .args([
            "catalog",
            "--format",
            "asyncapi",
            "--title",
            "svc",
            "--api-version",
            "2.0.0",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["info"]["title"], "svc");
    assert_eq!(doc["info"]["version"], "2.0.0");
    let asyncapi: Value = serde_json::from_str(ASYNCAPI_3_0_0).unwrap();
    assert_eq!(errors(&asyncapi, &doc), Vec::<String>::new());
}

#[test]
fn outbox_catalog_check_fails_on_a_breaking_change_and_lists_it() {
    let dir = std::env::temp_dir().join(format!("outbox-catalog-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();

    // What this binary has now passes against itself.
    let out = outbox().args(["catalog"]).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("order.placed"),
        "the service's events are in its catalog"
    );
    let same = dir.join("same.json");
    std::fs::write(&same, &out.stdout).unwrap();
    outbox()
        .args(["catalog", "--check"])
        .arg(&same)
        .assert()
        .success()
        .stderr(predicates::str::contains("no breaking change"));

    // A committed event the binary no longer has fails, and says which.
    let committed = dir.join("committed.json");
    std::fs::write(
        &committed,
        serde_json::to_string(&committed_catalog_json()).unwrap(),
    )
    .unwrap();
    outbox()
        .args(["catalog", "--check"])
        .arg(&committed)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("1 breaking change(s)"))
        .stderr(predicates::str::contains(
            "catalog.gone v3: the version is gone and no upcaster leads from it",
        ));

    std::fs::write(&committed, "not json").unwrap();
    outbox()
        .args(["catalog", "--check"])
        .arg(&committed)
        .assert()
        .code(1)
        .stderr(predicates::str::contains(
            "the event catalog does not parse",
        ));
    std::fs::remove_dir_all(dir).unwrap();
}

fn committed_catalog_json() -> Value {
    json!({ "events": [{ "name": "catalog.gone", "version": 3 }] })
}

// ---- Stored payloads against their schemas ------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_stored_payload_validates_against_its_event_schema() {
    let t = TestDb::new(Backend::Sqlite)
        .await
        .expect("sqlite always runs");
    let mut orders = vec![
        order::Model::place("ada", 4200),
        order::Model::place("grace", 1999),
    ];
    orders[0].confirm();
    orders[1].cancel("changed their mind");
    let uow = UnitOfWork::begin(&t.db).await.unwrap();
    for o in &mut orders {
        uow.save(o).await.unwrap();
    }
    uow.commit().await.unwrap();

    let catalog = Catalog::from_inventory().unwrap();
    let rows = message::Entity::find().all(&t.db).await.unwrap();
    let types: BTreeSet<_> = rows.iter().map(|m| m.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["order.cancelled", "order.confirmed", "order.placed"].into()
    );
    for row in &rows {
        let version = u32::try_from(row.event_version).unwrap();
        let event = catalog
            .find(&row.event_type, version)
            .unwrap_or_else(|| panic!("{} v{version} is not in the catalog", row.event_type));
        let schema = event.schema.as_ref().expect("fixtures derive JsonSchema");
        let errs = errors(schema, &row.payload);
        assert!(
            errs.is_empty(),
            "{} {}: {errs:?}",
            row.event_type,
            row.payload
        );
    }

    // And the check can fail: a payload missing a required field does not validate.
    let placed = catalog
        .find(OrderPlaced::EVENT_TYPE, OrderPlaced::VERSION)
        .unwrap();
    let bad = json!({ "order_id": uuid::Uuid::nil() });
    assert!(!errors(placed.schema.as_ref().unwrap(), &bad).is_empty());
    let retyped = json!({ "order_id": uuid::Uuid::nil(), "amount": "12.50" });
    assert!(!errors(placed.schema.as_ref().unwrap(), &retyped).is_empty());
}

/// Field `a` of type `A` in the committed catalog, of type `B` now.
fn field_change<A: JsonSchema, B: JsonSchema>() -> Result<(), Vec<BreakingChange>> {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    struct Of<T> {
        a: T,
    }
    let c =
        |schema| Catalog::new().with_event(EventDescription::new("x.changed", 1).schema(schema));
    c(schema_of::<Of<B>>()).check_against(&c(schema_of::<Of<A>>()))
}

#[test]
fn narrowing_a_field_within_its_json_type_is_breaking() {
    #[derive(JsonSchema)]
    #[allow(dead_code)]
    enum Colour {
        Red,
        Blue,
    }
    let retyped = |r: Result<(), Vec<BreakingChange>>, field: &str| {
        let changes = r.expect_err("breaking");
        assert!(
            matches!(&changes[..], [BreakingChange::FieldRetyped { field: f, .. }] if f == field),
            "{changes:?}"
        );
        changes[0].to_string()
    };
    assert_eq!(
        retyped(field_change::<i64, i32>(), "a"),
        "x.changed v1: field `a` was integer (int64) and is now integer (int32); bump the \
         version and add an upcaster from the committed one"
    );
    retyped(field_change::<u32, i32>(), "a");
    retyped(field_change::<String, uuid::Uuid>(), "a");
    retyped(
        field_change::<chrono::DateTime<chrono::Utc>, chrono::NaiveDate>(),
        "a",
    );
    assert!(retyped(field_change::<String, Colour>(), "a").contains(r#"one of "Red", "Blue""#));
    assert!(retyped(field_change::<serde_json::Value, String>(), "a").contains("was any JSON"));
    retyped(
        field_change::<
            std::collections::HashMap<String, i32>,
            std::collections::HashMap<String, String>,
        >(),
        "a{}",
    );
}

#[test]
fn widening_a_field_is_not_breaking() {
    assert_eq!(field_change::<i32, i64>(), Ok(()));
    assert_eq!(field_change::<u32, u64>(), Ok(()));
    assert_eq!(field_change::<u32, i64>(), Ok(()));
    assert_eq!(field_change::<uuid::Uuid, String>(), Ok(()));
    assert_eq!(field_change::<i32, f64>(), Ok(()));
    assert_eq!(field_change::<String, serde_json::Value>(), Ok(()));
}

#[test]
fn an_event_that_lost_its_schema_is_reported_not_skipped() {
    let current = Catalog::new().with_event(EventDescription::new("order.placed", 1));
    let changes = current.check_against(&committed()).unwrap_err();
    assert_eq!(
        changes,
        [BreakingChange::SchemaMissing {
            event: "order.placed".into(),
            version: 1
        }]
    );
    assert!(changes[0].to_string().contains("cannot be checked"));
}

#[test]
fn a_file_that_is_not_a_catalog_is_refused_not_read_as_empty() {
    for not_a_catalog in [
        "{}",
        r#"{"catalog_version": 1, "event_types": []}"#,
        r#"{"asyncapi": "3.0.0", "info": {"title": "t", "version": "1"}}"#,
    ] {
        assert!(
            Catalog::from_json(not_a_catalog).is_err(),
            "{not_a_catalog} read as a catalog"
        );
    }
    let written = committed().to_json().to_string();
    assert_eq!(Catalog::from_json(&written).unwrap(), committed());
}
