//! Aggregates and the buffer of events they record while their methods run.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::event::DomainEvent;
use crate::trace;
use crate::unsaved;

/// An aggregate root: something with a type, an id and a buffer of recorded [`Events`].
///
/// Derive it with `#[derive(DomainEvents)]`; saving the aggregate through a unit of work writes
/// the buffer's events as outbox rows in the same transaction as the aggregate's own row, and
/// empties the buffer once that transaction commits.
///
/// ```
/// use outbox_seaorm_core::{Aggregate, DomainEvent, DomainEvents, Events};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(name = "order.confirmed")]
/// struct OrderConfirmed { order_id: u64 }
///
/// #[derive(DomainEvents)]
/// #[domain_events(aggregate = "order", id = id)]
/// struct Order { id: u64, confirmed: bool, #[events] events: Events }
///
/// impl Order {
///     fn confirm(&mut self) {
///         self.confirmed = true;
///         self.record(OrderConfirmed { order_id: self.id });
///     }
/// }
///
/// let mut order = Order { id: 7, confirmed: false, events: Events::new() };
/// order.confirm();
/// assert_eq!(order.aggregate_id(), "7");
/// assert_eq!(order.events().event_types(), ["order.confirmed"]);
/// # order.events_mut().discard();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an aggregate",
    label = "does not record domain events",
    note = "derive it with `#[derive(DomainEvents)]` and mark its `Events` field with `#[events]`"
)]
pub trait Aggregate {
    /// The aggregate type stored on each outbox row (`"order"`).
    const AGGREGATE_TYPE: &'static str;

    /// The aggregate's id as stored on each outbox row; events of one id are delivered in order.
    fn aggregate_id(&self) -> String;

    /// The events recorded and not committed yet.
    fn events(&self) -> &Events;

    /// The buffer, to record into or drain.
    fn events_mut(&mut self) -> &mut Events;

    /// Records `event` on this aggregate. Unlike `self.events.record(..)`, the buffer learns
    /// which aggregate it belongs to at once, so an event that is dropped unsaved is reported
    /// with the aggregate's type and id.
    fn record<E: DomainEvent>(&mut self, event: E) -> Uuid
    where
        Self: Sized,
    {
        self.record_with(event, RecordOptions::default())
    }

    /// [`record`](Self::record) with options: a not-before time, extra headers.
    fn record_with<E: DomainEvent>(&mut self, event: E, options: RecordOptions) -> Uuid
    where
        Self: Sized,
    {
        let owner = Owner::new(Self::AGGREGATE_TYPE, self.aggregate_id());
        let events = self.events_mut();
        events.name_owner(owner);
        events.record_with(event, options)
    }
}

/// The buffer of events an aggregate records while its methods run.
///
/// It fits in a SeaORM model as a `#[sea_orm(ignore)]` field (it is `Default`, `Clone`,
/// `Debug` and `PartialEq`). It is not plain data, though:
///
/// - **Saving does not empty it; committing does.** A unit of work that saves the aggregate
///   stages its events; they leave the buffer when that unit of work commits. When it rolls
///   back, is dropped, or fails to commit, the events stay in the buffer, so saving the same
///   instance again in a new unit of work writes them with the state.
/// - **Clones start empty.** A clone of a model does not carry its events, so saving both the
///   clone and the original writes each event once. (Equality ignores the buffer for the same
///   reason: events are not part of the aggregate's state.)
/// - **Dropping it with unsaved events is a bug, and is reported**: an `ERROR` log with
///   `tracing` (target `outbox::unsaved`) and the `outbox.events.dropped` counter, in debug
///   and release builds alike (a panic in `Drop` would replace the error a function was
///   returning through `?`; tests may opt in to panicking with
///   [`on_unsaved_events`](crate::on_unsaved_events)). This catches an aggregate saved with a
///   plain SeaORM call (`into_active_model().insert(..)`), which writes the row but not the
///   events, and events recorded on an aggregate that is never saved. Call
///   [`discard`](Self::discard) when dropping them is what you mean. Events given back by a unit
///   of work that rolled back (`rollback`, or a failed commit) are not reported: nothing of
///   that unit of work was written. Events given back by a unit of work dropped without
///   `commit` or `rollback` are reported then, and again if the aggregate is dropped still
///   holding them.
#[derive(Default)]
pub struct Events {
    buffer: Option<Arc<Mutex<Buffer>>>,
}

#[derive(Default)]
pub(crate) struct Buffer {
    slots: Vec<Slot>,
    owner: Option<Owner>,
    /// The unit of work that wrote the aggregate's row and has not ended, and whether the
    /// database generated the row's key in it.
    writer: Option<(u64, bool)>,
    /// The key came from an insert whose unit of work did not commit.
    key_not_committed: bool,
}

struct Slot {
    event: PendingEvent,
    state: SlotState,
    /// A test assertion looked at it: the test meant to record it without saving it, so
    /// dropping it is not reported.
    inspected: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    /// Recorded, not in any unit of work.
    Unsaved,
    /// Written by this unit of work, which has not ended yet.
    Staged(u64),
    /// Given back by a unit of work that did not commit.
    RolledBack,
    /// Given back by a unit of work dropped without `commit` or `rollback` (already reported
    /// once; reported again if the aggregate is dropped still holding them).
    Abandoned,
}

/// The aggregate a buffer belongs to, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The aggregate type.
    pub aggregate_type: &'static str,
    /// The aggregate id.
    pub aggregate_id: String,
}

impl Owner {
    /// The owner `aggregate_type` / `aggregate_id`.
    pub fn new(aggregate_type: &'static str, aggregate_id: String) -> Self {
        Self {
            aggregate_type,
            aggregate_id,
        }
    }
}

impl Events {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `event`; it becomes an outbox row when the aggregate is saved.
    ///
    /// Returns the message id (a UUIDv7) the event will be delivered under.
    pub fn record<E: DomainEvent>(&mut self, event: E) -> Uuid {
        self.record_with(event, RecordOptions::default())
    }

    /// Records `event` with options: a not-before time, extra headers.
    pub fn record_with<E: DomainEvent>(&mut self, event: E, options: RecordOptions) -> Uuid {
        let event = PendingEvent::new(event, options);
        let id = event.message_id;
        self.lock_or_create().slots.push(Slot {
            event,
            state: SlotState::Unsaved,
            inspected: false,
        });
        id
    }

    /// Number of events not committed yet (staged in a unit of work that is still open
    /// included).
    pub fn len(&self) -> usize {
        self.lock().map_or(0, |b| b.slots.len())
    }

    /// Whether nothing is waiting to be committed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the events not committed yet, in recording order.
    pub fn pending(&self) -> Vec<PendingEvent> {
        self.lock().map_or_else(Vec::new, |b| {
            b.slots.iter().map(|s| s.event.clone()).collect()
        })
    }

    /// A copy of the events not committed yet, in recording order (see [`pending`](Self::pending)).
    pub fn iter(&self) -> std::vec::IntoIter<PendingEvent> {
        self.pending().into_iter()
    }

    /// The type names of the events not committed yet, in recording order.
    pub fn event_types(&self) -> Vec<&'static str> {
        self.lock().map_or_else(Vec::new, |b| {
            b.slots.iter().map(|s| s.event.event_type).collect()
        })
    }

    /// Checks every event for what would make its row invalid: a payload that failed to
    /// serialize, a header name or value that cannot be stored (see [`check_name`](crate::check_name)).
    pub fn validate(&self) -> crate::Result<()> {
        match self.lock() {
            Some(b) => b.slots.iter().try_for_each(|s| s.event.validate()),
            None => Ok(()),
        }
    }

    /// Takes the events that no open unit of work holds out of the buffer, in recording order.
    /// They are yours now: nothing reports them if you drop them.
    pub fn take(&mut self) -> Vec<PendingEvent> {
        let Some(mut b) = self.lock() else {
            return Vec::new();
        };
        let (taken, kept): (Vec<Slot>, Vec<Slot>) = std::mem::take(&mut b.slots)
            .into_iter()
            .partition(|s| !matches!(s.state, SlotState::Staged(_)));
        b.slots = kept;
        taken.into_iter().map(|s| s.event).collect()
    }

    /// Drops the events that no open unit of work holds, on purpose (the aggregate's changes
    /// are abandoned). Returns how many.
    pub fn discard(&mut self) -> usize {
        self.take().len()
    }

    /// Whether the aggregate's database-generated key came from an insert whose unit of work
    /// did not commit: the key is not in the database (and may be given to another row), so
    /// saving the aggregate must insert it again rather than update that key.
    pub fn key_not_committed(&self) -> bool {
        self.lock().is_some_and(|b| b.key_not_committed)
    }

    /// Tells the buffer which aggregate it belongs to, for the report of unsaved events.
    pub fn name_owner(&mut self, owner: Owner) {
        let mut b = self.lock_or_create();
        if b.owner.as_ref() != Some(&owner) {
            b.owner = Some(owner);
        }
    }

    /// Excuses the events recorded so far from the unsaved-events report: a test assertion
    /// inspected them, so recording without saving was the point.
    #[cfg(feature = "testing")]
    pub(crate) fn mark_inspected(&self) {
        if let Some(mut b) = self.lock() {
            for s in b.slots.iter_mut() {
                s.inspected = true;
            }
        }
    }

    fn lock(&self) -> Option<MutexGuard<'_, Buffer>> {
        self.buffer.as_ref().map(|b| lock(b))
    }

    fn lock_or_create(&mut self) -> MutexGuard<'_, Buffer> {
        lock(self.buffer.get_or_insert_with(Default::default))
    }

    /// Stages the events of this buffer that are not staged yet into the unit of work `unit`,
    /// on behalf of `owner`. Used by storage integrations ([`staging`](crate::staging)).
    pub(crate) fn stage(
        &mut self,
        unit: u64,
        owner: Owner,
    ) -> Result<(Vec<PendingEvent>, Option<SharedBuffer>), u64> {
        let Some(buffer) = self.buffer.clone() else {
            return Ok((Vec::new(), None));
        };
        let mut b = lock(&buffer);
        if let Some(other) = b.slots.iter().find_map(|s| match s.state {
            SlotState::Staged(u) if u != unit => Some(u),
            _ => None,
        }) {
            return Err(other);
        }
        b.owner = Some(owner);
        let mut staged = Vec::new();
        for s in b.slots.iter_mut() {
            if s.state != SlotState::Staged(unit) {
                s.state = SlotState::Staged(unit);
                staged.push(s.event.clone());
            }
        }
        drop(b);
        Ok((staged, Some(buffer)))
    }
}

/// A buffer shared by an aggregate and the units of work that staged its events.
pub(crate) type SharedBuffer = Arc<Mutex<Buffer>>;

impl Events {
    /// Whether another unit of work that has not ended wrote the aggregate's row or staged its
    /// events.
    pub(crate) fn held_by_other(&self, unit: u64) -> bool {
        self.lock().is_some_and(|b| {
            b.writer.is_some_and(|(u, _)| u != unit)
                || b.slots
                    .iter()
                    .any(|s| matches!(s.state, SlotState::Staged(u) if u != unit))
        })
    }

    /// Marks the aggregate's row as written by `unit` (with a key the database generated).
    pub(crate) fn written_by(&mut self, unit: u64, generated_key: bool) -> SharedBuffer {
        let mut b = self.lock_or_create();
        let generated = generated_key || b.writer.is_some_and(|(u, g)| u == unit && g);
        b.writer = Some((unit, generated));
        drop(b);
        self.buffer.clone().expect("created above")
    }
}

fn lock(b: &Mutex<Buffer>) -> MutexGuard<'_, Buffer> {
    // Nothing panics while holding the lock; recover anyway rather than poison the aggregate.
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Settles the events a unit of work staged in `buffer`: gone when it committed, back to
/// unsaved-but-excused when it did not.
pub(crate) fn settle(buffer: &Mutex<Buffer>, unit: u64, committed: bool) {
    settle_as(buffer, unit, committed, SlotState::RolledBack);
}

/// Gives back the events a unit of work that was dropped without ending staged in `buffer`,
/// marked so that dropping the aggregate still holding them reports them; returns them with
/// their aggregate.
pub(crate) fn abandon(buffer: &Mutex<Buffer>, unit: u64) -> Vec<(Option<Owner>, PendingEvent)> {
    let given_back: Vec<(Option<Owner>, PendingEvent)> = {
        let b = lock(buffer);
        b.slots
            .iter()
            .filter(|s| s.state == SlotState::Staged(unit))
            .map(|s| (b.owner.clone(), s.event.clone()))
            .collect()
    };
    settle_as(buffer, unit, false, SlotState::Abandoned);
    given_back
}

fn settle_as(buffer: &Mutex<Buffer>, unit: u64, committed: bool, given_back: SlotState) {
    let mut b = lock(buffer);
    if let Some((u, generated)) = b.writer
        && u == unit
    {
        b.writer = None;
        if committed {
            b.key_not_committed = false;
        } else if generated {
            b.key_not_committed = true;
        }
    }
    if committed {
        b.slots.retain(|s| s.state != SlotState::Staged(unit));
    } else {
        for s in b.slots.iter_mut() {
            if s.state == SlotState::Staged(unit) {
                s.state = given_back;
            }
        }
    }
}

impl Clone for Events {
    /// An empty buffer: a clone of an aggregate does not carry its pending events, so they
    /// cannot be written twice.
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Events {
    /// Always equal: recorded events are not part of an aggregate's state.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Events {}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.event_types()).finish()
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let Some(buffer) = self.buffer.take() else {
            return;
        };
        let b = lock(&buffer);
        // Staged events belong to their unit of work, which settles them; rolled-back ones were
        // given back by a unit of work that wrote nothing. Ones given back by a unit of work
        // dropped without ending were never saved either: they are reported.
        let unsaved: Vec<&PendingEvent> = b
            .slots
            .iter()
            .filter(|s| {
                matches!(s.state, SlotState::Unsaved | SlotState::Abandoned) && !s.inspected
            })
            .map(|s| &s.event)
            .collect();
        if !unsaved.is_empty() {
            unsaved::report(b.owner.as_ref(), &unsaved);
        }
    }
}

/// Options for [`Events::record_with`].
#[derive(Debug, Clone, Default)]
pub struct RecordOptions {
    not_before: Option<DateTime<Utc>>,
    headers: BTreeMap<String, String>,
}

impl RecordOptions {
    /// Default options: deliver as soon as possible, no extra headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Do not deliver the event before `at` (a delayed or scheduled event).
    pub fn not_before(mut self, at: DateTime<Utc>) -> Self {
        self.not_before = Some(at);
        self
    }

    /// Adds a header that travels with the message: to handlers (`ctx.envelope().headers.extra`), and to
    /// brokers and webhooks as a CloudEvents extension attribute (a field of a structured event;
    /// a `ce-<name>` / `cloudEvents:<name>` header in binary mode).
    ///
    /// The name follows the CloudEvents attribute naming rule: ASCII lower-case letters and
    /// digits only (it is lower-cased here), and not one of the attributes the outbox sets
    /// itself (`id`, `source`, `type`, `subject`, `time`, `traceparent`, `correlationid`, ...).
    /// A name that breaks the rule fails the `record`, `save` or `stage` that carries it, with
    /// [`Error::InvalidName`](crate::Error::InvalidName).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers
            .insert(name.into().to_ascii_lowercase(), value.into());
        self
    }
}

/// A recorded event waiting to be written as an outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PendingEvent {
    /// The message id, a UUIDv7 made when the event was recorded.
    pub message_id: Uuid,
    /// The event type name.
    pub event_type: &'static str,
    /// The event version.
    pub version: u32,
    /// The payload as JSON text, or why serialization failed (reported when the aggregate is
    /// saved, so recording never panics).
    pub payload: Result<String, SerializeFailure>,
    /// When the event was recorded.
    pub occurred_at: DateTime<Utc>,
    /// Not to be delivered before this time.
    pub not_before: Option<DateTime<Utc>>,
    /// Extra headers.
    pub headers: BTreeMap<String, String>,
    /// The W3C `traceparent` of the span the event was recorded in, if any.
    pub traceparent: Option<String>,
    /// The W3C `tracestate` that went with it.
    pub tracestate: Option<String>,
}

impl PendingEvent {
    /// Serializes `event` (keeping a failure for later) and stamps it with a new message id,
    /// the time and the current trace.
    pub fn new<E: DomainEvent>(event: E, options: RecordOptions) -> Self {
        let payload = serde_json::to_string(&event).map_err(|e| SerializeFailure(Arc::new(e)));
        let trace = trace::current();
        Self {
            message_id: Uuid::now_v7(),
            event_type: E::EVENT_TYPE,
            version: E::VERSION,
            payload,
            occurred_at: Utc::now(),
            not_before: options.not_before,
            headers: options.headers,
            traceparent: trace.traceparent,
            tracestate: trace.tracestate,
        }
    }
}

impl PendingEvent {
    /// Checks what would make its row invalid: a payload that failed to serialize, a header
    /// name that is empty, too long or has a NUL, a header value with a NUL.
    pub fn validate(&self) -> crate::Result<()> {
        if let Err(f) = &self.payload {
            return Err(crate::Error::Serialize {
                event_type: self.event_type.to_owned(),
                source: f.0.clone(),
            });
        }
        for (name, value) in &self.headers {
            crate::check_name("header", name)?;
            crate::extension_name::check_extension_name(name)?;
            if value.contains('\0') {
                return Err(crate::Error::InvalidName {
                    what: "header value",
                    name: value.clone(),
                    rule: format!("the value of header `{name}` contains a NUL character").into(),
                });
            }
        }
        Ok(())
    }
}

/// A serialization error kept until the event is saved (so recording never panics).
#[derive(Debug, Clone)]
pub struct SerializeFailure(pub Arc<serde_json::Error>);

impl PartialEq for SerializeFailure {
    fn eq(&self, other: &Self) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

impl Eq for SerializeFailure {}
