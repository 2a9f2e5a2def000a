//! How a storage integration takes events out of aggregates without losing them.
//!
//! A unit of work is a [`Unit`]. Staging an aggregate's [`Events`] into it copies the events
//! that are not staged yet and marks them as held by the unit; the aggregate keeps them. When
//! the unit ends, [`Unit::settle`] removes them from every aggregate it staged (it committed)
//! or gives them back (it did not), so an aggregate saved again after a rollback still carries
//! its events. A unit that is dropped unsettled gives its events back.
//!
//! ```
//! use outbox_seaorm_core::staging::Unit;
//! use outbox_seaorm_core::{Aggregate, DomainEvent, DomainEvents, Events};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize, DomainEvent)]
//! #[event(name = "staged.ping")]
//! struct Pinged;
//!
//! #[derive(DomainEvents)]
//! struct Pinger { id: u32, #[events] events: Events }
//!
//! let mut p = Pinger { id: 1, events: Events::new() };
//! p.record(Pinged);
//!
//! let mut unit = Unit::new();
//! let staged = unit.stage(&mut p).unwrap();
//! assert_eq!(staged.len(), 1);
//! unit.settle(false);                  // rolled back: the event is still there
//! assert_eq!(p.events().len(), 1);
//!
//! let mut unit = Unit::new();
//! unit.stage(&mut p).unwrap();
//! unit.settle(true);                   // committed: gone
//! assert!(p.events().is_empty());
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::aggregate::{self, Aggregate, Events, Owner, PendingEvent};

static NEXT_UNIT: AtomicU64 = AtomicU64::new(1);

/// One unit of work, as seen by the event buffers it staged.
#[derive(Default)]
pub struct Unit {
    id: u64,
    buffers: Vec<aggregate::SharedBuffer>,
    /// Dropped unsettled while holding staged events: report them (see
    /// [`report_when_dropped`](Unit::report_when_dropped)).
    report_when_dropped: bool,
    /// Events recorded on the unit of work itself (no aggregate holds them), listed for the
    /// report of a unit dropped without ending.
    recorded: Vec<String>,
}

/// The events of an aggregate are already held by another unit of work that has not ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the aggregate's events are staged in another unit of work that has not ended yet")]
pub struct StagedElsewhere;

impl Unit {
    /// A new unit with a process-unique id.
    pub fn new() -> Self {
        Self {
            id: NEXT_UNIT.fetch_add(1, Ordering::Relaxed),
            buffers: Vec::new(),
            report_when_dropped: false,
            recorded: Vec::new(),
        }
    }

    /// Makes a drop without [`settle`](Self::settle) a reported mistake: the events it staged
    /// go back to their aggregates, are reported as events dropped unsaved (see
    /// [`on_unsaved_events`](crate::on_unsaved_events)), and are reported again if an
    /// aggregate is dropped still holding them. For a unit of work the user must end
    /// explicitly; without it, a dropped unit gives its events back silently, as a rollback.
    pub fn report_when_dropped(mut self) -> Self {
        self.report_when_dropped = true;
        self
    }

    /// Notes an event recorded on the unit of work itself, which no aggregate holds: a unit
    /// dropped without [`settle`](Self::settle) (and made to [report it](Self::report_when_dropped))
    /// names it among what it lost.
    pub fn note_recorded(
        &mut self,
        event_type: &str,
        message_id: uuid::Uuid,
        aggregate_type: &str,
        aggregate_id: &str,
    ) {
        self.recorded.push(format!(
            "{event_type} ({message_id}) for `{aggregate_type}` `{aggregate_id}`"
        ));
    }

    /// Stages the aggregate's events that this unit does not hold yet, naming the aggregate as
    /// their owner, and returns them in recording order.
    pub fn stage<A: Aggregate>(
        &mut self,
        aggregate: &mut A,
    ) -> Result<Vec<PendingEvent>, StagedElsewhere> {
        let owner = Owner::new(A::AGGREGATE_TYPE, aggregate.aggregate_id());
        self.stage_events(aggregate.events_mut(), owner)
    }

    /// [`stage`](Self::stage) for a buffer whose owner is given explicitly.
    pub fn stage_events(
        &mut self,
        events: &mut Events,
        owner: Owner,
    ) -> Result<Vec<PendingEvent>, StagedElsewhere> {
        let (staged, buffer) = events.stage(self.id, owner).map_err(|_| StagedElsewhere)?;
        if let Some(buffer) = buffer
            && !staged.is_empty()
            && !self.buffers.iter().any(|b| Arc::ptr_eq(b, &buffer))
        {
            self.buffers.push(buffer);
        }
        Ok(staged)
    }

    /// Fails when another unit of work that has not ended wrote the aggregate's row or staged
    /// its events: writing the row again would wait for that unit's row lock (for ever, when
    /// both belong to one task).
    pub fn check(&self, events: &Events) -> Result<(), StagedElsewhere> {
        if events.held_by_other(self.id) {
            return Err(StagedElsewhere);
        }
        Ok(())
    }

    /// Records that this unit wrote the aggregate's row, and whether the database generated its
    /// key: if the unit does not commit, [`Events::key_not_committed`] says so, and the next
    /// save inserts the row again instead of updating a key that is not in the database.
    pub fn wrote_row(&mut self, events: &mut Events, generated_key: bool) {
        let buffer = events.written_by(self.id, generated_key);
        if !self.buffers.iter().any(|b| Arc::ptr_eq(b, &buffer)) {
            self.buffers.push(buffer);
        }
    }

    /// Ends the unit: the staged events leave their aggregates when `committed`, and are given
    /// back otherwise.
    pub fn settle(mut self, committed: bool) {
        self.settle_all(committed);
    }

    fn settle_all(&mut self, committed: bool) {
        self.recorded.clear();
        for b in self.buffers.drain(..) {
            aggregate::settle(&b, self.id, committed);
        }
    }
}

impl Drop for Unit {
    fn drop(&mut self) {
        if !self.report_when_dropped {
            self.settle_all(false);
            return;
        }
        let mut given_back = Vec::new();
        for b in self.buffers.drain(..) {
            given_back.extend(aggregate::abandon(&b, self.id));
        }
        let recorded = std::mem::take(&mut self.recorded);
        if !given_back.is_empty() || !recorded.is_empty() {
            crate::unsaved::report_abandoned(&given_back, &recorded);
        }
    }
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("id", &self.id)
            .field("aggregates", &self.buffers.len())
            .finish()
    }
}
