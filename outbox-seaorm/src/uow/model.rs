//! Writing an aggregate's own row: an upsert for client-generated keys, an insert that reads
//! the generated key back for database-generated ones, an update for rows that exist.

use sea_orm::sea_query::OnConflict;
use sea_orm::{
    ActiveModelBehavior, ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait,
    IntoActiveModel, Iterable, ModelTrait, PrimaryKeyToColumn, PrimaryKeyTrait, QueryFilter,
    QuerySelect, Value,
};

use outbox_core::Aggregate;

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
/// [`Unit::inserted_with_generated_key`](outbox_core::staging::Unit::inserted_with_generated_key)).
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
        SaveAs::Upsert if upsert_on_key => {
            upsert::<E, M>(db, am).await?;
            return Ok(false);
        }
        // MariaDB's `ON DUPLICATE KEY UPDATE` fires on any unique key: a new row whose email
        // (say) is taken would overwrite the row holding it. Lock the key, then insert or
        // update: a conflict on another unique key fails, as on the other databases.
        SaveAs::Upsert => {
            let mut find = E::find();
            for key in E::PrimaryKey::iter() {
                let col = key.into_column();
                find = find.filter(col.eq(model.get(col)));
            }
            if find.lock_exclusive().one(db).await?.is_some() {
                am.update(db).await?;
            } else {
                am.insert(db).await?;
            }
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
/// existing rows alike.
async fn upsert<E, M>(db: &impl ConnectionTrait, am: E::ActiveModel) -> Result<()>
where
    E: EntityTrait<Model = M>,
    M: ModelTrait<Entity = E>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
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
    E::insert(am)
        .on_conflict(on_conflict)
        .exec_without_returning(db)
        .await?;
    Ok(())
}
