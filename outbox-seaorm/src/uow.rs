//! The unit of work: a transaction that turns the events of the aggregates saved through it
//! into outbox rows, written just before it commits.

use std::fmt;
use std::sync::Mutex;

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    AccessMode, ActiveModelBehavior, ActiveModelTrait, ConnectionTrait, DatabaseConnection,
    DatabaseTransaction, DbBackend, DbErr, EntityTrait, ExecResult, IntoActiveModel,
    IsolationLevel, Iterable, ModelTrait, PrimaryKeyToColumn, QueryResult, Statement,
    TransactionError, TransactionOptions, TransactionTrait,
};
use tracing::Instrument;
use uuid::Uuid;

use outbox_core::{Aggregate, DomainEvent, Events, Headers, PendingEvent, RecordOptions};

use crate::config::OutboxConfig;
use crate::error::{Error, Result};
use crate::store::{NewMessage, Store};
use crate::wake;

/// A database transaction that also collects domain events: the counterpart of Entity
/// Framework's `SaveChanges` interceptor.
///
/// Save aggregates through it; use it as the connection for every other SeaORM call (it
/// implements [`ConnectionTrait`] and [`TransactionTrait`]); [`commit`](Self::commit) writes one
/// outbox row per recorded event, commits, and wakes the relays of this process. Dropping it, or
/// [`rollback`](Self::rollback), rolls everything back, and no outbox row exists.
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
/// #         #[sea_orm(primary_key, auto_increment = false)]
/// #         pub id: Uuid,
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
/// struct OrderPlaced { order_id: Uuid }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let db = sea_orm::Database::connect("sqlite::memory:").await?;
/// # outbox_seaorm::schema::create_tables(&db, &Default::default()).await?;
/// # db.execute_unprepared("CREATE TABLE orders (id BLOB PRIMARY KEY, status TEXT NOT NULL)").await?;
/// let mut order = order::Model { id: Uuid::now_v7(), status: "placed".into(), events: Events::new() };
/// order.events.record(OrderPlaced { order_id: order.id });
///
/// let uow = UnitOfWork::begin(&db).await?;
/// uow.save(&mut order).await?;   // the order row is upserted, its events are staged
/// uow.commit().await?;           // outbox rows written, then COMMIT
/// assert!(order.events().is_empty());
/// # Ok(())
/// # }
/// ```
pub struct UnitOfWork {
    txn: DatabaseTransaction,
    staged: Mutex<Vec<NewMessage>>,
    store: Store,
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
        let txn = crate::store::begin_write(db).await?;
        let (correlation_id, causation_id) = ambient_ids();
        Ok(Self {
            store: Store::new(txn.get_database_backend(), config),
            txn,
            staged: Mutex::new(Vec::new()),
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

    /// Upserts the model's row (insert, or update every column on a primary-key conflict) and
    /// stages its events.
    ///
    /// An upsert is one round trip and works for client-generated keys (UUIDs) of new and
    /// existing rows alike, where SeaORM's `save()` would take a set key for an update. It does
    /// not run `ActiveModelBehavior::before_save`/`after_save`; use [`insert`](Self::insert) or
    /// [`update`](Self::update) when you need them. On error the events are put back.
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
        let span = save_span::<M>(model, "save");
        async {
            let events = model.events_mut().take();
            if let Err(e) = upsert::<E, M>(&self.txn, model).await {
                model.events_mut().restore(events);
                return Err(e);
            }
            self.stage_events(model, events)
        }
        .instrument(span)
        .await
    }

    /// Inserts the model through SeaORM's `ActiveModel::insert` (hooks run; database defaults
    /// and generated keys are read back into `model`) and stages its events.
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
        self.write_through(model, "insert", |am| am.insert(&self.txn))
            .await
    }

    /// Updates every column of the model's row through SeaORM's `ActiveModel::update` (hooks
    /// run) and stages its events. Fails with `DbErr::RecordNotUpdated` if the row is missing.
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
        self.write_through(model, "update", |am| am.update(&self.txn))
            .await
    }

    /// Writes the model with `write` (every column set), reads the stored model back into
    /// `model` and stages its events; on error the events are put back.
    async fn write_through<E, M, F, Fut>(
        &self,
        model: &mut M,
        op: &'static str,
        write: F,
    ) -> Result<()>
    where
        E: EntityTrait<Model = M>,
        M: ModelTrait<Entity = E> + Aggregate + IntoActiveModel<E::ActiveModel> + Clone,
        E::ActiveModel: ActiveModelTrait<Entity = E>,
        F: FnOnce(E::ActiveModel) -> Fut,
        Fut: std::future::Future<Output = Result<M, DbErr>>,
    {
        let span = save_span::<M>(model, op);
        async {
            let events = model.events_mut().take();
            match write(model.clone().into_active_model().reset_all()).await {
                Ok(saved) => *model = saved,
                Err(e) => {
                    model.events_mut().restore(events);
                    return Err(e.into());
                }
            }
            self.stage_events(model, events)
        }
        .instrument(span)
        .await
    }

    /// Stages the events of an aggregate you persist yourself (a plain domain struct mapped to
    /// rows with ordinary SeaORM calls on this unit of work). Returns how many were staged.
    pub fn stage<A: Aggregate>(&self, aggregate: &mut A) -> Result<usize> {
        let span = save_span::<A>(aggregate, "stage");
        let _entered = span.enter();
        let events = aggregate.events_mut().take();
        let n = events.len();
        self.stage_events(aggregate, events)?;
        Ok(n)
    }

    /// Records one event that belongs to no loaded aggregate (a command's outcome, an
    /// integration event). Returns its message id.
    pub fn record<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: impl fmt::Display,
        event: E,
        options: RecordOptions,
    ) -> Result<Uuid> {
        let mut events = Events::new();
        let id = events.record_with(event, options);
        let events = events.take();
        let aggregate_id = aggregate_id.to_string();
        validate(aggregate_type, &aggregate_id, &events)?;
        let staged = into_rows(
            aggregate_type,
            &aggregate_id,
            events,
            self.correlation_id,
            self.causation_id,
        );
        self.lock_staged().extend(staged);
        Ok(id)
    }

    /// Number of events waiting for [`commit`](Self::commit).
    pub fn staged(&self) -> usize {
        self.lock_staged().len()
    }

    /// Writes the staged events as outbox rows, commits, and wakes this process's relays.
    pub async fn commit(self) -> Result<()> {
        let staged = self
            .staged
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let span = tracing::info_span!("outbox.commit", messages = staged.len());
        async {
            if !staged.is_empty() {
                self.store.insert(&self.txn, &staged).await?;
                self.store.notify(&self.txn).await?;
            }
            self.txn.commit().await?;
            if !staged.is_empty() {
                wake::notify();
            }
            Ok(())
        }
        .instrument(span)
        .await
    }

    /// Rolls back: no row of this unit of work, outbox rows included, is written.
    pub async fn rollback(self) -> Result<()> {
        Ok(self.txn.rollback().await?)
    }

    fn stage_events<A: Aggregate>(
        &self,
        aggregate: &mut A,
        events: Vec<PendingEvent>,
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let aggregate_id = aggregate.aggregate_id();
        if let Err(e) = validate(A::AGGREGATE_TYPE, &aggregate_id, &events) {
            aggregate.events_mut().restore(events);
            return Err(e);
        }
        let rows = into_rows(
            A::AGGREGATE_TYPE,
            &aggregate_id,
            events,
            self.correlation_id,
            self.causation_id,
        );
        self.lock_staged().extend(rows);
        Ok(())
    }

    fn lock_staged(&self) -> std::sync::MutexGuard<'_, Vec<NewMessage>> {
        // Nothing panics while holding the lock; recover anyway rather than poison the unit.
        self.staged
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

/// Upserts `model` and writes its events as outbox rows in `txn`, at once.
///
/// The lower-level form of [`UnitOfWork::save`] for code that manages its own
/// [`DatabaseTransaction`]. It takes a transaction, never a pool, so the outbox rows cannot be
/// written outside the transaction of the aggregate's row. Relays are not woken (the commit is
/// yours); they find the rows at their next poll.
pub async fn save_aggregate<E, M>(txn: &DatabaseTransaction, model: &mut M) -> Result<()>
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
) -> Result<()>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate + IntoActiveModel<E::ActiveModel> + Clone + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
{
    let span = save_span::<M>(model, "save");
    async {
        let events = model.events_mut().take();
        if let Err(e) = upsert::<E, M>(txn, model).await {
            model.events_mut().restore(events);
            return Err(e);
        }
        stage_aggregate_with(txn, config, model, events).await
    }
    .instrument(span)
    .await
}

/// Writes the events of an aggregate you persisted yourself as outbox rows in `txn`.
pub async fn stage_aggregate<A: Aggregate>(
    txn: &DatabaseTransaction,
    aggregate: &mut A,
) -> Result<()> {
    let events = aggregate.events_mut().take();
    stage_aggregate_with(txn, &OutboxConfig::default(), aggregate, events).await
}

async fn stage_aggregate_with<A: Aggregate>(
    txn: &DatabaseTransaction,
    config: &OutboxConfig,
    aggregate: &mut A,
    events: Vec<PendingEvent>,
) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let (correlation_id, causation_id) = ambient_ids();
    let aggregate_id = aggregate.aggregate_id();
    if let Err(e) = validate(A::AGGREGATE_TYPE, &aggregate_id, &events) {
        aggregate.events_mut().restore(events);
        return Err(e);
    }
    // Kept only on this path: the rows go to the database now, and a failed insert must give
    // the aggregate its events back.
    let backup = events.clone();
    let rows = into_rows(
        A::AGGREGATE_TYPE,
        &aggregate_id,
        events,
        correlation_id,
        causation_id,
    );
    let store = Store::new(txn.get_database_backend(), config);
    if let Err(e) = async {
        store.insert(txn, &rows).await?;
        store.notify(txn).await
    }
    .await
    {
        aggregate.events_mut().restore(backup);
        return Err(e);
    }
    Ok(())
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
    match outbox_core::context::current_message() {
        Some(m) => (m.correlation_id.unwrap_or(m.message_id), Some(m.message_id)),
        None => (Uuid::now_v7(), None),
    }
}

async fn upsert<E, M>(db: &impl ConnectionTrait, model: &M) -> Result<()>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + IntoActiveModel<E::ActiveModel> + Clone + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
{
    use sea_orm::IdenStatic;
    let pk: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
    let rest: Vec<E::Column> = E::Column::iter()
        .filter(|c| !pk.iter().any(|k| k.as_str() == c.as_str()))
        .collect();
    let mut on_conflict = OnConflict::columns(pk);
    if rest.is_empty() {
        on_conflict.do_nothing();
    } else {
        on_conflict.update_columns(rest);
    }
    E::insert(model.clone().into_active_model())
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Checks what would make a row invalid, before anything is consumed: names that do not fit
/// their columns, payloads that failed to serialize.
fn validate(aggregate_type: &str, aggregate_id: &str, events: &[PendingEvent]) -> Result<()> {
    outbox_core_check_name("aggregate type", aggregate_type)?;
    outbox_core_check_name("aggregate id", aggregate_id)?;
    if let Some((event_type, failure)) = events
        .iter()
        .find_map(|e| e.payload.as_ref().err().map(|f| (e.event_type, f)))
    {
        return Err(outbox_core::Error::Serialize {
            event_type: event_type.to_owned(),
            source: failure.0.clone(),
        }
        .into());
    }
    Ok(())
}

/// The rows of validated events.
fn into_rows(
    aggregate_type: &str,
    aggregate_id: &str,
    events: Vec<PendingEvent>,
    correlation_id: Uuid,
    causation_id: Option<Uuid>,
) -> Vec<NewMessage> {
    let fallback_trace = outbox_core::trace::current_traceparent();
    events
        .into_iter()
        .filter_map(|e| {
            let payload = e.payload.ok()?;
            let headers = Headers {
                correlation_id: Some(correlation_id),
                causation_id,
                traceparent: e.traceparent.or_else(|| fallback_trace.clone()),
                extra: e.headers,
            };
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

fn outbox_core_check_name(what: &'static str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 255 {
        return Err(Error::Event(outbox_core::Error::InvalidName {
            what,
            name: name.to_owned(),
        }));
    }
    Ok(())
}

#[async_trait::async_trait]
impl ConnectionTrait for UnitOfWork {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute_raw(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute_raw(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one_raw(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one_raw(stmt).await
    }

    async fn query_all_raw(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all_raw(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }
}

/// Nested transactions are savepoints of the unit of work's transaction; what they write is
/// committed with the unit of work, or not at all.
#[async_trait::async_trait]
impl TransactionTrait for UnitOfWork {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, DbErr> {
        self.txn.begin().await
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.txn
            .begin_with_config(isolation_level, access_mode)
            .await
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<DatabaseTransaction, DbErr> {
        self.txn.begin_with_options(options).await
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: fmt::Display + fmt::Debug + Send,
    {
        self.txn.transaction(callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c DatabaseTransaction,
            ) -> std::pin::Pin<
                Box<dyn std::future::Future<Output = Result<T, E>> + Send + 'c>,
            > + Send,
        T: Send,
        E: fmt::Display + fmt::Debug + Send,
    {
        self.txn
            .transaction_with_config(callback, isolation_level, access_mode)
            .await
    }
}
