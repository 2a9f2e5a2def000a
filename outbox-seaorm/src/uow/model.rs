//! Writing an aggregate's own row: an upsert for client-generated keys, an insert that reads
//! the generated key back for database-generated ones, an update for rows that exist.

use sea_orm::sea_query::{Expr, OnConflict};
use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ConnectionTrait, EntityTrait, IntoActiveModel, Iterable,
    ModelTrait, PrimaryKeyToColumn, PrimaryKeyTrait, Value,
};

use outbox_seaorm_core::Aggregate;

use crate::error::{Error, Result};

/// How `save` writes a model's row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SaveAs {
    /// A client-generated key (a UUID, a natural key): insert, or update on a key conflict.
    Upsert,
    /// A database-generated key still at its zero value: insert without it and read it back.
    Insert,
    /// A database-generated key with a value: the row exists, update it.
    Update,
}

/// How `save` writes `model`, from its entity's key. A generated key that came from a unit of
/// work that did not commit is not in the database: the row is inserted again.
pub(crate) fn save_as<E, M>(model: &M) -> SaveAs
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate,
{
    match generated_key::<E>() {
        Some(col) if is_unset(&model.get(col)) || model.events().key_not_committed() => {
            SaveAs::Insert
        }
        Some(_) => SaveAs::Update,
        None => SaveAs::Upsert,
    }
}

/// The primary key column when it is a single auto-increment column.
fn generated_key<E: EntityTrait>() -> Option<E::Column> {
    if !<E::PrimaryKey as PrimaryKeyTrait>::auto_increment() {
        return None;
    }
    let mut keys = E::PrimaryKey::iter();
    let key = keys.next()?;
    keys.next().is_none().then(|| key.into_column())
}

/// Whether a generated key has not been generated yet: zero (what `Default` gives) or NULL.
fn is_unset(v: &Value) -> bool {
    match v {
        Value::TinyInt(n) => n.is_none_or(|n| n == 0),
        Value::SmallInt(n) => n.is_none_or(|n| n == 0),
        Value::Int(n) => n.is_none_or(|n| n == 0),
        Value::BigInt(n) => n.is_none_or(|n| n == 0),
        Value::TinyUnsigned(n) => n.is_none_or(|n| n == 0),
        Value::SmallUnsigned(n) => n.is_none_or(|n| n == 0),
        Value::Unsigned(n) => n.is_none_or(|n| n == 0),
        Value::BigUnsigned(n) => n.is_none_or(|n| n == 0),
        _ => false,
    }
}

/// Writes `model`'s row as `how` says, and puts what the database stored (a generated key,
/// defaults) back into `model`, which keeps its events. Returns whether the database generated
/// the key just now (the unit of work must then remember it, see
/// [`Unit::inserted_with_generated_key`](outbox_seaorm_core::staging::Unit::inserted_with_generated_key)).
pub(crate) async fn write<E, M>(
    db: &impl ConnectionTrait,
    model: &mut M,
    how: SaveAs,
    upsert_on_key: bool,
) -> Result<bool>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate + IntoActiveModel<E::ActiveModel> + Clone + Send + Sync,
    E::ActiveModel: ActiveModelTrait<Entity = E> + ActiveModelBehavior + Send,
{
    // A clone carries no events, so the model handed to SeaORM (and dropped by it) is safe.
    let am = model.clone().into_active_model().reset_all();
    let key = generated_key::<E>();
    let mut generated = false;
    let stored = match how {
        SaveAs::Upsert => {
            upsert::<E, M>(db, am, !upsert_on_key, model).await?;
            return Ok(false);
        }
        SaveAs::Insert => {
            let mut am = am;
            if let Some(key) = key {
                if is_unset(&model.get(key)) {
                    am.not_set(key);
                    generated = true;
                } else if model.events().key_not_committed() {
                    // Inserted again under the same key: the events recorded since it was read
                    // back may carry it in their payloads. If another row took that key meanwhile
                    // (SQLite reuses keys), the insert fails loudly on it.
                    generated = true;
                }
            }
            am.insert(db).await?
        }
        SaveAs::Update => {
            if key.is_some() && model.events().key_not_committed() {
                return Err(Error::KeyNotCommitted {
                    aggregate_type: M::AGGREGATE_TYPE,
                    aggregate_id: model.aggregate_id(),
                });
            }
            match am.update(db).await {
                Err(sea_orm::DbErr::RecordNotUpdated) => {
                    return Err(Error::RowMissing {
                        aggregate_type: M::AGGREGATE_TYPE,
                        aggregate_id: model.aggregate_id(),
                    });
                }
                other => other?,
            }
        }
    };
    let events = std::mem::take(model.events_mut());
    *model = stored;
    *model.events_mut() = events;
    Ok(generated)
}

/// `INSERT .. ON CONFLICT (key) DO UPDATE SET every other column`: one round trip, for new and
/// existing rows alike; the row lock is taken at once, so concurrent saves of one aggregate
/// queue up instead of deadlocking.
///
/// `guard_key` is for MariaDB, whose `ON DUPLICATE KEY UPDATE` fires on a conflict on *any*
/// unique key: a new row whose email (say) is taken would overwrite the row holding it. The
/// first assignment keeps the key when the conflict is on it and otherwise evaluates a
/// subquery returning two rows, which fails the statement (error 1242, whatever the SQL
/// mode), so a conflict on another unique key fails, as on the other databases. (Inserting,
/// then updating on a primary-key error, deadlocks two saves of one existing row on their
/// shared locks; looking the key up `FOR UPDATE` first deadlocks two saves of new rows on
/// their gap locks.)
async fn upsert<E, M>(
    db: &impl ConnectionTrait,
    am: E::ActiveModel,
    guard_key: bool,
    model: &M,
) -> Result<()>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E> + Aggregate,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    use sea_orm::IdenStatic;
    let pk: Vec<E::Column> = E::PrimaryKey::iter().map(|k| k.into_column()).collect();
    let rest: Vec<E::Column> = E::Column::iter()
        .filter(|c| !pk.iter().any(|k| k.as_str() == c.as_str()))
        .collect();
    let mut on_conflict = OnConflict::columns(pk.clone());
    if guard_key {
        let quoted = |c: &E::Column| format!("`{}`", c.as_str().replace('`', "``"));
        let same_key = pk
            .iter()
            .map(|c| format!("{0} <=> VALUES({0})", quoted(c)))
            .collect::<Vec<_>>()
            .join(" AND ");
        let first = quoted(&pk[0]);
        on_conflict.value(
            pk[0],
            Expr::cust(format!(
                "IF({same_key}, {first}, (SELECT NULL UNION ALL SELECT NULL))"
            )),
        );
        on_conflict.update_columns(rest);
    } else if rest.is_empty() {
        on_conflict.do_nothing();
    } else {
        on_conflict.update_columns(rest);
    }
    let written = E::insert(am)
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await;
    match written {
        Err(e) if guard_key && mysql_error_number(&e) == Some(1242) => {
            Err(Error::Db(sea_orm::DbErr::Custom(format!(
                "saving {} `{}`: the row conflicts with another row on a unique key other than \
                 the primary key (a new row cannot take a value another row holds)",
                M::AGGREGATE_TYPE,
                model.aggregate_id()
            ))))
        }
        other => {
            other?;
            Ok(())
        }
    }
}

/// The server's error number of a MySQL/MariaDB error.
#[cfg(feature = "mysql")]
fn mysql_error_number(e: &sea_orm::DbErr) -> Option<u16> {
    use sea_orm::{DbErr, RuntimeErr};
    let (DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e))) = e else {
        return None;
    };
    let my = e
        .as_database_error()?
        .try_downcast_ref::<sea_orm::sqlx::mysql::MySqlDatabaseError>()?;
    Some(my.number())
}

/// Without the `mysql` feature no MySQL error can occur.
#[cfg(not(feature = "mysql"))]
fn mysql_error_number(_: &sea_orm::DbErr) -> Option<u16> {
    None
}
