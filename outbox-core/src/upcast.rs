//! Upcasters: functions that turn a stored payload of version `n` into version `n + 1`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

use crate::error::BoxError;

/// An upcaster as a plain function, the form [`upcaster!`](crate::upcaster) registers.
pub type UpcastFn = fn(Value) -> Result<Value, BoxError>;

type DynUpcast = dyn Fn(Value) -> Result<Value, BoxError> + Send + Sync;

/// An upcaster submitted to the process-wide registry by [`upcaster!`](crate::upcaster).
#[derive(Debug, Clone, Copy)]
pub struct UpcasterRegistration {
    /// The event type name.
    pub event_type: &'static str,
    /// The version the upcaster reads; it returns version `from_version + 1`.
    pub from_version: u32,
    /// The function.
    pub upcast: UpcastFn,
}

inventory::collect!(UpcasterRegistration);

/// The upcasters a relay applies, keyed by event type and the version they start from.
///
/// A handler for version 3 of an event receives a stored version 1 payload after the
/// `1 → 2` and `2 → 3` upcasters ran; a missing step is [`Error::UnknownVersion`](crate::Error::UnknownVersion).
#[derive(Clone, Default)]
pub struct Upcasters {
    by_key: HashMap<(String, u32), Arc<DynUpcast>>,
}

impl Upcasters {
    /// No upcasters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every upcaster registered with [`upcaster!`](crate::upcaster) in the linked crates.
    pub fn from_inventory() -> Self {
        let mut this = Self::new();
        for r in inventory::iter::<UpcasterRegistration> {
            this = this.with(r.event_type, r.from_version, r.upcast);
        }
        this
    }

    /// Adds an upcaster from `from_version` to `from_version + 1` of `event_type`.
    pub fn with<F>(mut self, event_type: impl Into<String>, from_version: u32, upcast: F) -> Self
    where
        F: Fn(Value) -> Result<Value, BoxError> + Send + Sync + 'static,
    {
        self.by_key
            .insert((event_type.into(), from_version), Arc::new(upcast));
        self
    }

    /// The upcaster that reads `from_version` of `event_type`.
    pub fn get(&self, event_type: &str, from_version: u32) -> Option<&DynUpcast> {
        // A borrowed tuple key would need a custom `Borrow` impl; one short `String` per
        // upcast is cheaper than the code, and upcasting is the rare path.
        self.by_key
            .get(&(event_type.to_owned(), from_version))
            .map(|f| &**f)
    }

    /// Every step as (event type, version it reads), sorted.
    pub fn steps(&self) -> Vec<(&str, u32)> {
        let mut steps: Vec<_> = self.by_key.keys().map(|(t, v)| (t.as_str(), *v)).collect();
        steps.sort_unstable();
        steps
    }

    /// Number of upcasters.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

impl fmt::Debug for Upcasters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<_> = self.by_key.keys().collect();
        keys.sort();
        f.debug_struct("Upcasters").field("steps", &keys).finish()
    }
}

/// Registers an upcaster for the whole process.
///
/// ```standalone_crate
/// use serde_json::{json, Value};
///
/// fn order_created_v1_to_v2(mut v: Value) -> Result<Value, outbox_seaorm_core::BoxError> {
///     v["currency"] = json!("EUR");
///     Ok(v)
/// }
/// outbox_seaorm_core::upcaster!("order.created", from = 1, order_created_v1_to_v2);
///
/// let upcasters = outbox_seaorm_core::Upcasters::from_inventory();
/// let up = upcasters.get("order.created", 1).unwrap();
/// assert_eq!(up(json!({}))?, json!({"currency": "EUR"}));
/// # Ok::<(), outbox_seaorm_core::BoxError>(())
/// ```
#[macro_export]
macro_rules! upcaster {
    ($event_type:expr, from = $from:expr, $f:path $(,)?) => {
        const _: () = {
            $crate::__private::inventory::submit! {
                $crate::UpcasterRegistration {
                    event_type: $event_type,
                    from_version: $from,
                    upcast: $f,
                }
            }
        };
    };
}
