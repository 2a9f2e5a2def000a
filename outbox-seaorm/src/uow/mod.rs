//! The unit of work: a transaction that turns the events of the aggregates saved through it
//! into outbox rows, written just before it commits.

mod connection;
mod model;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, EntityTrait, IntoActiveModel, ModelTrait,
};
use tracing::Instrument;
use uuid::Uuid;

use outbox_seaorm_core::staging::Unit;
use outbox_seaorm_core::{Aggregate, DomainEvent, Headers, PendingEvent, RecordOptions};

use crate::config::OutboxConfig;
use crate::driver::{self, Driver, NewMessage};
use crate::error::{Error, Result};
use crate::wake;

pub(crate) use model::SaveAs;

/// A database transaction that also collects domain events: the counterpart of Entity
/// Framework's `SaveChanges` interceptor.
///
/// Save aggregates through it ([`save`](Self::save), [`insert`](Self::insert),
/// [`update`](Self::update), or [`stage`](Self::stage) for rows you write yourself); use it as
/// the connection for every other SeaORM call (it implements [`ConnectionTrait`] and
/// `TransactionTrait`). [`commit`](Self::commit) writes one outbox row per recorded event,
/// commits, empties the saved aggregates' event buffers and wakes the relays of this process.
///
/// When it does not commit (it is dropped, [`rollback`](Self::rollback) is called, or the
/// commit fails) no row of it exists and **the events are still on their aggregates**: saving
/// the same instances in a new unit of work writes state and events together. Dropping it
/// while it holds staged events, without `commit` or `rollback` (an early `return`, a `?`,
/// a cancelled request future), is reported as events dropped unsaved are (an `ERROR` log by
/// default, see [`on_unsaved_events`](outbox_seaorm_core::on_unsaved_events)), and the events
/// it gave back are reported again if their aggregate is dropped still holding them.
///
/// A plain SeaORM write of an aggregate on `&uow` (`model.into_active_model().insert(&uow)`,
/// `ActiveModel::save`, `Entity::insert(..).exec(&uow)`) writes the row but not the events;
/// the event buffer reports them when it is dropped (see [`Events`](outbox_seaorm_core::Events)).
///
/// ```
/// # use outbox_seaorm::{Aggregate, DomainEvent, DomainEvents, Events, UnitOfWork};
/// # use sea_orm::entity::prelude::*;
/// # use serde::{Deserialize, Serialize};
/// # mod order {
/// #     use outbox_seaorm::{DomainEvents, Events};
/// #     use sea_orm::entity::prelude::*;
/// #     #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, DomainEvents)]
/// #     #[sea_orm(table_name = "orders")]
/// #     #[domain_events(aggregate = "order")]
/// #     pub struct Model {
/// #         #[sea_orm(primary_key)]
/// #         pub id: i32,
/// #         pub status: String,
/// #         #[sea_orm(ignore)]
/// #         #[events]
/// #         pub events: Events,
/// #     }
/// #     #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
/// #     pub enum Relation {}
/// #     impl ActiveModelBehavior for ActiveModel {}
/// # }
/// #[derive(Serialize, Deserialize, DomainEvent)]
/// #[event(name = "order.placed")]
/// struct OrderPlaced { status: String }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # outbox_seaorm::schema::create_tables(&db).await?;
/// # db.execute_unprepared("CREATE TABLE orders (id INTEGER PRIMARY KEY AUTOINCREMENT, status TEXT NOT NULL)").await?;
/// let mut order = order::Model { id: 0, status: "placed".into(), events: Events::new() };
/// order.record(OrderPlaced { status: order.status.clone() });
///
/// let uow = UnitOfWork::begin(&db).await?;
/// uow.save(&mut order).await?;   // inserted: the database's key is read back into `order.id`
/// uow.commit().await?;           // outbox row written (aggregate id "1"), then COMMIT
/// assert_eq!(order.id, 1);
/// assert!(order.events().is_empty());
/// # Ok(())
/// # }
/// ```
pub struct UnitOfWork {
    txn: DatabaseTransaction,
    driver: Arc<dyn Driver>,
    staged: Mutex<Vec<NewMessage>>,
    unit: Mutex<Unit>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
}

impl UnitOfWork {
    /// Begins a unit of work on the default outbox tables.
    pub async fn begin(db: &DatabaseConnection) -> Result<Self> {
        Self::begin_with(db, &OutboxConfig::default()).await
    }

    /// Begins a unit of work on the tables named by `config`.
    ///
    /// Inside an event handler, the events it records are caused by the message being handled:
    /// they inherit its correlation id and take its id as their causation id.
    ///
    /// On SQLite the transaction begins `IMMEDIATE` (a unit of work always writes): it waits for
    /// the write lock up front instead of failing with `SQLITE_BUSY` halfway.
    pub async fn begin_with(db: &DatabaseConnection, config: &OutboxConfig) -> Result<Self> {
        let driver = driver::cached(db.get_database_backend(), config);
        let txn = driver.begin_write(db).await?;
        let (correlation_id, causation_id) = ambient_ids();
        Ok(Self {
            txn,
            driver,
            staged: Mutex::new(Vec::new()),
            unit: Mutex::new(Unit::new().report_when_dropped()),
            correlation_id,
            causation_id,
        })
    }

    /// The correlation id given to every event of this unit of work.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }

    /// Sets the correlation id (a request id, say) for the events staged from now on.
    pub fn set_correlation_id(&mut self, id: Uuid) {
        self.correlation_id = id;
    }

    /// The underlying transaction.
    pub fn transaction(&self) -> &DatabaseTransaction {
        &self.txn
    }

    /// Saves the model's row and stages its events.
    ///
    /// - A client-generated key (`auto_increment = false`: a UUID, a natural key) is upserted:
    ///   inserted, or every column updated when the key exists, for new and existing rows
    ///   alike, in one statement on every backend (`ON CONFLICT .. DO UPDATE` on PostgreSQL and
    ///   SQLite; on MariaDB `ON DUPLICATE KEY UPDATE`, guarded so that a conflict on another
    ///   unique key fails instead of overwriting the row holding it). An upsert re-creates a
    ///   row deleted meanwhile; use [`update`](Self::update) when the row must exist.
    ///   `ActiveModelBehavior` hooks do not run.
    /// - A database-generated key (SeaORM's default, `#[sea_orm(primary_key)] id: i32`) at
    ///   zero is inserted without it (hooks run); the generated key and column defaults are
    ///   read back into `model`, and the events carry the generated id as their aggregate id.
    ///   Payloads are the events you recorded: an event recorded before the insert that copied
    ///   `self.id` carries 0, so record such events after the first save.
    /// - A database-generated key that is set is updated (hooks run); a missing row is
    ///   [`Error::RowMissing`](crate::Error::RowMissing). A key read back from an insert whose
    ///   unit of work did not commit is inserted again under the same key (events recorded
    ///   since may carry it); if another row took that key meanwhile, that fails.
    ///
    /// Saving one instance in two units of work that are both open fails at once with
    /// [`Error::StagedElsewhere`](crate::Error::StagedElsewhere) instead of waiting for the
    /// first one's row lock. On error nothing of it is staged and the events stay on the
    /// model.
    pub async fn save<E, M>(&self, model: &mut M) -> Result<()>
    where
        E: EntityTrait<Model = M>,
        M: ModelTrait<Entity = E>
            + Aggregate
            + IntoActiveModel<E::ActiveModel>
            + Clone
            + Send
            + Sync,
        E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
    {
        let how = model::save_as::<E, M>(model);
        self.write_model::<E, M>(model, how, "save").await
    }

    /// Inserts the model through SeaORM's `ActiveModel::insert` (hooks run; a generated key
    /// still at zero is left to the database, and what the database stored is read back into
    /// `model`) and stages its events.
    pub async fn insert<E, M>(&self, model: &mut M) -> Result<()>
    where
        E: EntityTrait<Model = M>,
        M: ModelTrait<Entity = E>
            + Aggregate
            + IntoActiveModel<E::ActiveModel>
            + Clone
            + Send
            + Sync,
        E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
    {
        self.write_model::<E, M>(model, SaveAs::Insert, "insert")
            .await
    }

    /// Updates every column of the model's row through SeaORM's `ActiveModel::update` (hooks
    /// run) and stages its events. Fails with [`Error::RowMissing`](crate::Error::RowMissing)
    /// if the row is missing.
    pub async fn update<E, M>(&self, model: &mut M) -> Result<()>
    where
        E: EntityTrait<Model = M>,
        M: ModelTrait<Entity = E>
            + Aggregate
            + IntoActiveModel<E::ActiveModel>
            + Clone
            + Send
            + Sync,
        E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
    {
        self.write_model::<E, M>(model, SaveAs::Update, "update")
            .await
    }

    async fn write_model<E, M>(&self, model: &mut M, how: SaveAs, op: &'static str) -> Result<()>
    where
        E: EntityTrait<Model = M>,
        M: ModelTrait<Entity = E>
            + Aggregate
            + IntoActiveModel<E::ActiveModel>
            + Clone
            + Send
            + Sync,
        E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
    {
        let span = save_span(model, op);
        async {
            // Everything that would make a row invalid is checked before anything is written.
            validate(model)?;
            self.lock_unit()
                .check(model.events())
                .map_err(|_| staged_elsewhere(model))?;
            let upsert_on_key = self.driver.upsert_on_key();
            let generated = model::write::<E, M>(&self.txn, model, how, upsert_on_key).await?;
            self.lock_unit().wrote_row(model.events_mut(), generated);
            self.stage(model).map(drop)
        }
        .instrument(span)
        .await
    }

    /// Stages the events of an aggregate you persist yourself (a plain domain struct mapped to
    /// rows with ordinary SeaORM calls on this unit of work). Returns how many were staged.
    pub fn stage<A: Aggregate>(&self, aggregate: &mut A) -> Result<usize> {
        validate(aggregate)?;
        let events = self
            .lock_unit()
            .stage(aggregate)
            .map_err(|_| Error::StagedElsewhere {
                aggregate_type: A::AGGREGATE_TYPE,
                aggregate_id: aggregate.aggregate_id(),
            })?;
        let n = events.len();
        let rows = self.rows(A::AGGREGATE_TYPE, &aggregate.aggregate_id(), events);
        self.lock_staged().extend(rows);
        Ok(n)
    }

    /// Records one event that belongs to no loaded aggregate (a command's outcome, an
    /// integration event). Returns its message id.
    ///
    /// Fails at once, writing nothing, on an invalid aggregate type or id (empty, over 255
    /// bytes, a NUL) or an event that does not serialize.
    pub fn record<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: impl fmt::Display,
        event: E,
        options: RecordOptions,
    ) -> Result<Uuid> {
        let aggregate_id = aggregate_id.to_string();
        outbox_seaorm_core::check_name("aggregate type", aggregate_type)?;
        outbox_seaorm_core::check_name("aggregate id", &aggregate_id)?;
        let event = PendingEvent::new(event, options);
        check_event(&event)?;
        let id = event.message_id;
        // No aggregate holds it: the unit names it if it is dropped without ending.
        self.lock_unit()
            .note_recorded(event.event_type, id, aggregate_type, &aggregate_id);
        let rows = self.rows(aggregate_type, &aggregate_id, vec![event]);
        self.lock_staged().extend(rows);
        Ok(id)
    }

    /// Number of events waiting for [`commit`](Self::commit).
    pub fn staged(&self) -> usize {
        self.lock_staged().len()
    }

    /// Writes the staged events as outbox rows, commits, takes the events off their
    /// aggregates, and wakes this process's relays. On error everything is rolled back and the
    /// events stay on their aggregates.
    pub async fn commit(self) -> Result<()> {
        let rows = self
            .staged
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let unit = self
            .unit
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let span = tracing::info_span!("outbox.commit", messages = rows.len());
        let driver = self.driver;
        let txn = self.txn;
        async move {
            if !rows.is_empty()
                && let Err(e) = driver.append(&txn, &rows).await
            {
                // The transaction may be unusable now; end it before reporting.
                let _ = txn.rollback().await;
                unit.settle(false);
                return Err(e);
            }
            if let Err(e) = txn.commit().await {
                unit.settle(false);
                return Err(e.into());
            }
            unit.settle(true);
            if !rows.is_empty() {
                wake::notify();
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Rolls back: no row of this unit of work, outbox rows included, is written, and the
    /// events stay on their aggregates.
    pub async fn rollback(self) -> Result<()> {
        let unit = self
            .unit
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let result = self.txn.rollback().await;
        unit.settle(false);
        Ok(result?)
    }

    fn rows(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: Vec<PendingEvent>,
    ) -> Vec<NewMessage> {
        into_rows(
            aggregate_type,
            aggregate_id,
            events,
            self.correlation_id,
            self.causation_id,
        )
    }

    fn lock_staged(&self) -> MutexGuard<'_, Vec<NewMessage>> {
        // Nothing panics while holding the lock; recover anyway rather than poison the unit.
        self.staged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn lock_unit(&self) -> MutexGuard<'_, Unit> {
        self.unit
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("staged", &self.staged())
            .field("correlation_id", &self.correlation_id)
            .field("causation_id", &self.causation_id)
            .finish_non_exhaustive()
    }
}

/// Events written in a transaction this library does not commit (see [`save_aggregate`]).
///
/// Call [`committed`](Self::committed) once that transaction has committed: the events leave
/// the aggregate. Dropping it instead gives them back to the aggregate, as after a rollback: if
/// the transaction did commit, saving the aggregate again fails loudly on the duplicate message
/// ids rather than losing or silently repeating anything.
#[must_use = "call `committed()` after the transaction commits, or the events go back to the aggregate"]
#[derive(Debug)]
pub struct Written {
    unit: Unit,
    events: usize,
}

impl Written {
    /// The transaction committed: the events leave their aggregate. Relays are not woken
    /// (they find the rows at their next poll, or at once through `NOTIFY` with
    /// [`OutboxConfig::pg_notify`]).
    pub fn committed(self) {
        self.unit.settle(true);
    }

    /// How many outbox rows were written.
    pub fn events(&self) -> usize {
        self.events
    }
}

/// Saves `model` (as [`UnitOfWork::save`] does) and writes its events as outbox rows in
/// `txn`, at once.
///
/// The lower-level form for code that manages its own [`DatabaseTransaction`]. It takes a
/// transaction, never a pool, so the outbox rows cannot be written outside the transaction of
/// the aggregate's row. Call [`Written::committed`] once the **outermost** transaction has
/// committed (committing a nested one, a savepoint, commits nothing yet); keep the receipt in
/// a variable: `let _ = save_aggregate(..)` drops it at once, which gives the events back.
pub async fn save_aggregate<E, M>(txn: &DatabaseTransaction, model: &mut M) -> Result<Written>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate + IntoActiveModel<E::ActiveModel> + Clone + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
{
    save_aggregate_with::<E, M>(txn, &OutboxConfig::default(), model).await
}

/// [`save_aggregate`] on the tables named by `config`.
pub async fn save_aggregate_with<E, M>(
    txn: &DatabaseTransaction,
    config: &OutboxConfig,
    model: &mut M,
) -> Result<Written>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate + IntoActiveModel<E::ActiveModel> + Clone + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
{
    let span = save_span(model, "save");
    async {
        validate(model)?;
        let how = model::save_as::<E, M>(model);
        let mut unit = Unit::new();
        unit.check(model.events())
            .map_err(|_| staged_elsewhere(model))?;
        let upsert_on_key = driver::cached(txn.get_database_backend(), config).upsert_on_key();
        let generated = model::write::<E, M>(txn, model, how, upsert_on_key).await?;
        unit.wrote_row(model.events_mut(), generated);
        stage_into(txn, config, model, unit).await
    }
    .instrument(span)
    .await
}

/// Writes the events of an aggregate you persisted yourself as outbox rows in `txn`; call
/// [`Written::committed`] after you commit `txn`.
pub async fn stage_aggregate<A: Aggregate>(
    txn: &DatabaseTransaction,
    aggregate: &mut A,
) -> Result<Written> {
    stage_aggregate_with(txn, &OutboxConfig::default(), aggregate).await
}

/// [`stage_aggregate`] on the tables named by `config`.
pub async fn stage_aggregate_with<A: Aggregate>(
    txn: &DatabaseTransaction,
    config: &OutboxConfig,
    aggregate: &mut A,
) -> Result<Written> {
    stage_into(txn, config, aggregate, Unit::new()).await
}

async fn stage_into<A: Aggregate>(
    txn: &DatabaseTransaction,
    config: &OutboxConfig,
    aggregate: &mut A,
    mut unit: Unit,
) -> Result<Written> {
    validate(aggregate)?;
    let events = unit
        .stage(aggregate)
        .map_err(|_| staged_elsewhere(aggregate))?;
    let (correlation_id, causation_id) = ambient_ids();
    let rows = into_rows(
        A::AGGREGATE_TYPE,
        &aggregate.aggregate_id(),
        events,
        correlation_id,
        causation_id,
    );
    if !rows.is_empty() {
        // On error `unit` is dropped, which gives the events back.
        driver::cached(txn.get_database_backend(), config)
            .append(txn, &rows)
            .await?;
    }
    Ok(Written {
        unit,
        events: rows.len(),
    })
}

fn staged_elsewhere<A: Aggregate>(aggregate: &A) -> Error {
    Error::StagedElsewhere {
        aggregate_type: A::AGGREGATE_TYPE,
        aggregate_id: aggregate.aggregate_id(),
    }
}

fn save_span<A: Aggregate>(aggregate: &A, op: &'static str) -> tracing::Span {
    tracing::info_span!(
        "outbox.save",
        op,
        aggregate_type = A::AGGREGATE_TYPE,
        aggregate_id = %aggregate.aggregate_id(),
        events = aggregate.events().len(),
    )
}

/// Correlation and causation for events recorded now: inherited from the message being
/// handled on this task, if any, else a fresh correlation id.
fn ambient_ids() -> (Uuid, Option<Uuid>) {
    match outbox_seaorm_core::context::current_message() {
        Some(m) => (m.correlation_id.unwrap_or(m.message_id), Some(m.message_id)),
        None => (Uuid::now_v7(), None),
    }
}

/// Checks what would make the aggregate's rows invalid, before anything is written: names and
/// ids that do not fit their columns, payloads that failed to serialize, bad header names.
fn validate<A: Aggregate>(aggregate: &A) -> Result<()> {
    outbox_seaorm_core::check_name("aggregate type", A::AGGREGATE_TYPE)?;
    outbox_seaorm_core::check_name("aggregate id", &aggregate.aggregate_id())?;
    aggregate.events().validate()?;
    Ok(())
}

fn check_event(e: &PendingEvent) -> Result<()> {
    Ok(e.validate()?)
}

/// The rows of validated events.
fn into_rows(
    aggregate_type: &str,
    aggregate_id: &str,
    events: Vec<PendingEvent>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
) -> Vec<NewMessage> {
    let fallback_trace = outbox_seaorm_core::trace::current();
    events
        .into_iter()
        .filter_map(|e| {
            let payload = e.payload.ok()?;
            let mut headers = Headers::default();
            headers.correlation_id = Some(correlation_id);
            headers.causation_id = causation_id;
            // The span the event was recorded in, else the one it is saved in.
            headers.tracestate = if e.traceparent.is_some() {
                e.tracestate
            } else {
                fallback_trace.tracestate.clone()
            };
            headers.traceparent = e.traceparent.or_else(|| fallback_trace.traceparent.clone());
            headers.extra = e.headers;
            Some(NewMessage {
                id: e.message_id,
                aggregate_type: aggregate_type.to_owned(),
                aggregate_id: aggregate_id.to_owned(),
                event_type: e.event_type.to_owned(),
                event_version: e.version,
                payload,
                headers: serde_json::to_string(&headers)
                    .expect("headers are strings and UUIDs, which always serialize"),
                occurred_at: e.occurred_at,
                not_before: e.not_before,
            })
        })
        .collect()
}
