//! The one error type of `outbox-seaorm`.

use uuid::Uuid;

/// A `Result` whose error is [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while saving events, relaying them or administering the outbox.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database returned an error (or the connection was lost).
    ///
    /// # Handling
    ///
    /// On the write side the transaction is rolled back and nothing was written: retry the whole
    /// unit of work. The relay logs it, backs off and reconnects by itself.
    #[error("database error")]
    Db(#[from] sea_orm::DbErr),

    /// An event could not be recorded, decoded or handled, or the handler registry is invalid.
    #[error(transparent)]
    Event(#[from] outbox_core::Error),

    /// A table name given to [`OutboxConfig`](crate::OutboxConfig) is not a plain identifier.
    #[error("invalid table name `{name}`: {reason}")]
    InvalidTableName {
        /// The rejected name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },

    /// No outbox message has this id (in a state the operation applies to).
    #[error("no outbox message {message_id} to {operation}")]
    MessageNotFound {
        /// The id asked for.
        message_id: Uuid,
        /// What was attempted (`"requeue"`, ...).
        operation: &'static str,
    },

    /// The relay was given an invalid setting.
    #[error("invalid relay setting: {0}")]
    InvalidSetting(&'static str),
}
